"""OpenVINO IR in, OpenVINO IR out: the bundled example converted to IR, on real OpenVINO."""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

import rayq  # noqa: E402
from examples.digits.data import MODEL, load_calibration, load_validation, top1  # noqa: E402
from rayq.api.session import ModelSession  # noqa: E402


@pytest.fixture(scope="module")
def digits_ir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ir") / "digits.xml"
    ov.save_model(ov.convert_model(str(MODEL)), str(path), compress_to_fp16=False)
    return path


def _accuracy(model) -> float:
    x, y = load_validation()
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return top1(compiled(x)[0], y)


def test_ir_quantizes_to_fake_quantize_within_one_point(digits_ir, tmp_path):
    q = rayq.quantize(str(digits_ir), load_calibration(), num_workers=1)
    assert isinstance(q, ov.Model)
    fq = [op for op in q.get_ops() if op.get_type_name() == "FakeQuantize"]
    convs = [op for op in q.get_ops() if op.get_type_name() == "Convolution"]
    assert len(fq) >= len(convs) > 0
    fp32 = _accuracy(ov.Core().read_model(str(digits_ir)))
    assert fp32 - _accuracy(q) <= 0.01
    out = tmp_path / "q.xml"
    ov.save_model(q, str(out), compress_to_fp16=False)
    assert _accuracy(ov.Core().read_model(str(out))) == _accuracy(q)


def test_ir_sharded_statistics_equal_single_pass(digits_ir, ray_cluster):
    session = ModelSession(str(digits_ir), load_calibration(), subset_size=96)
    plan = rayq.QuantPlan.create()
    single = session.statistics(plan, histograms=True, num_workers=1, use_cache=False)
    sharded = session.statistics(plan, histograms=True, num_workers=2, use_cache=False)
    assert session.info.num_workers == 2
    assert single.equals(sharded)


def test_missing_bin_is_a_clear_error(digits_ir, tmp_path):
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes(digits_ir.read_bytes())
    with pytest.raises(rayq.BackendError, match=r"\.bin"):
        rayq.quantize(str(lonely), load_calibration(), num_workers=1)


def test_onnx_search_targets_openvino(tmp_path):
    from examples.digits.metric import accuracy

    result = rayq.search(
        str(MODEL),
        load_calibration()[:64],
        "examples/digits/validation.npz",
        accuracy,
        target="openvino",
        n_trials=3,
        num_workers=1,
    )
    # within budget; "no_speedup" where OpenVINO INT8 is not significantly faster on this CPU
    assert result.target == "openvino" and result.status in ("met", "no_speedup")
    assert result.latency_settings["runtime"] == "openvino"
    assert np.isfinite(result.latency_ms)


def test_onnx_frontend_biases_are_not_mistaken_for_residual_adds(tmp_path):
    """``ov.Core().read_model(x.onnx)`` reshapes biases through ShapeOf; after constant
    folding the placement matches ``ov.convert_model`` (16 residual Adds, not 69)."""
    import onnx

    from rayq.backends import get_backend
    from rayq.core.rules import place
    from rayq.testing.models import resnet50_like

    path = tmp_path / "r50.onnx"
    onnx.save(resnet50_like(input_shape=(3, 64, 64)), str(path))
    backend = get_backend("openvino")
    counts = []
    for model in (ov.Core().read_model(str(path)), ov.convert_model(str(path))):
        view = backend.graph(backend.load(model))
        counts.append(len(place(view, model_type=None).ops))
    assert counts[0] == counts[1] == 71  # 53 Conv + 16 residual Add + pool + classifier
