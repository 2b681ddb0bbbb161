"""0-d (scalar) model inputs, such as a speech model's sample rate: the data may hold
the value as a 0-d array or as one value of any rank (``np.array([16000])``, which ONNX
Runtime accepts), gets no batch axis, and batches only when every item agrees."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import rayq
from rayq.api.session import ModelSession
from rayq.backends.base import InputSpec
from rayq.backends.feeds import check_feeds
from rayq.pipeline import data
from tests.e2e.graph_patterns import scalar_input

SPECS = [InputSpec("audio", (None, 64), "float32"), InputSpec("sr", (), "int64")]


def _item(sr, seed: int = 0) -> dict:
    return {"audio": np.random.default_rng(seed).normal(size=(64,)).astype(np.float32), "sr": sr}


@pytest.mark.parametrize(
    "sr", [np.array(16000), np.array([16000]), np.array([[16000]]), 16000], ids=["0-d", "(1,)", "(1,1)", "int"]
)
def test_scalar_input_takes_one_value_of_any_rank(sr):
    feeds = data.to_feeds(_item(sr), SPECS)
    assert feeds["sr"].shape == () and feeds["sr"].dtype == np.int64 and int(feeds["sr"]) == 16000
    assert feeds["audio"].shape == (1, 64)  # the batched input gets its batch axis


def test_scalar_input_rejects_several_values():
    with pytest.raises(rayq.DataError, match=r"input 'sr': model expects shape \(\), data has shape \(2,\)"):
        check_feeds(SPECS, {"audio": np.zeros((1, 64), np.float32), "sr": np.array([16000, 8000])})


def test_onnx_runtime_and_openvino_both_run_the_normalised_scalar():
    """What the check hands on is what both runtimes accept: OpenVINO rejects shape (1,)."""
    ov = pytest.importorskip("openvino")
    model, _, _ = scalar_input()
    feeds = check_feeds(SPECS[::-1], {"audio": np.ones((2, 64), np.float32), "sr": np.array([16000])})
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(model=model.SerializeToString(), weights=b""), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    np.testing.assert_allclose(compiled(feeds)[compiled.outputs[0]], session.run(None, feeds)[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError):
        compiled({"audio": feeds["audio"], "sr": np.array([16000])})


def test_items_with_one_sample_rate_are_batched_and_keep_it_scalar():
    feeds = [data.to_feeds(_item(np.array([16000]), seed=i), SPECS) for i in range(10)]
    assert data.batch_size_for(feeds, SPECS, None) == data.AUTO_BATCH
    batches = data.batches(feeds, SPECS, 4)
    assert [b["audio"].shape for b in batches] == [(4, 64), (4, 64), (2, 64)]
    assert all(b["sr"].shape == () and int(b["sr"]) == 16000 for b in batches)


def test_items_with_different_sample_rates_are_not_batched():
    feeds = [data.to_feeds(_item(np.array(r)), SPECS) for r in (16000, 8000, 16000)]
    assert data.batch_size_for(feeds, SPECS, None) == 1
    with pytest.raises(rayq.DataError, match="same value of every scalar input"):
        data.batch_size_for(feeds, SPECS, 2)


def test_scalar_only_model_is_not_batched():
    specs = [InputSpec("sr", (), "int64")]
    assert data.batch_size_for([{"sr": np.array(1)}] * 3, specs, None) == 1


def test_model_with_sample_rate_and_audio_calibrates_in_batches():
    model, items, _ = scalar_input()
    session = ModelSession(model, items, subset_size=len(items))
    assert session.batch_size == data.AUTO_BATCH
    assert all(feeds["sr"].shape == () for _, feeds in session.batches)
