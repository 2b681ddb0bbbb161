"""Bad input gives one clear rayq error (type and message), never a raw library traceback."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rayq
from rayq.testing.models import mlp

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"
MODEL = str(DIGITS / "digits_cnn.onnx")


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    with np.load(DIGITS / "calibration.npz") as z:
        return z["input"][:16].copy()


def _quantize(model=MODEL, data=None, **kwargs):
    kwargs.setdefault("num_workers", 1)
    kwargs.setdefault("cache", False)
    return rayq.quantize(model, data, **kwargs)


def _raises(error: type, fragment: str, model=MODEL, data=None, **kwargs) -> rayq.RayqError:
    with pytest.raises(rayq.RayqError) as info:
        _quantize(model, data, **kwargs)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert fragment in str(info.value), str(info.value)
    return info.value


# --------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"this is not a model\n", bytes(range(256)) * 4], ids=["text", "binary"])
def test_corrupt_model_file(tmp_path, calib, content):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    _raises(rayq.BackendError, "is not a readable ONNX model", str(path), calib)


def test_empty_model_file(tmp_path, calib):
    (tmp_path / "empty.onnx").write_bytes(b"")
    _raises(rayq.BackendError, "no nodes", str(tmp_path / "empty.onnx"), calib)


def test_missing_model_file(tmp_path, calib):
    _raises(rayq.BackendError, "does not exist", str(tmp_path / "nope.onnx"), calib)


@pytest.mark.parametrize("model", ["model.h5", 42, None], ids=["suffix", "int", "none"])
def test_not_a_model(calib, model):
    _raises(rayq.BackendError, "cannot tell the format", model, calib)


def test_invalid_graph(calib):
    model = mlp()
    model.graph.node[0].input[1] = "no_such_tensor"
    _raises(rayq.BackendError, "the ONNX model is invalid", model, calib)


# --------------------------------------------------------------------------------------
# the data
# --------------------------------------------------------------------------------------
def test_wrong_input_name(calib):
    _raises(rayq.DataError, "do not include the model input 'input'", data=[{"pixels": x} for x in calib])


@pytest.mark.parametrize(
    "shape, fragment",
    [
        ((16, 3, 8, 8), "model expects shape ('?', 1, 8, 8), data has shape (1, 3, 8, 8)"),
        ((16, 64), "data has shape (64,)"),
        ((16, 1, 1, 1, 8, 8), "data has shape (1, 1, 1, 8, 8)"),
    ],
    ids=["channels", "flat", "rank"],
)
def test_wrong_shape(shape, fragment):
    _raises(rayq.DataError, fragment, data=np.zeros(shape, np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_calibration_data(calib, bad):
    data = calib.copy()
    data[5, 0, 3, 3] = bad
    _raises(rayq.DataError, "contains NaN or Inf", data=data)


def test_wrong_dtype_and_non_numeric_items(calib):
    _raises(rayq.DataError, "model expects float32, data has int64", data=calib.astype(np.int64))
    _raises(rayq.DataError, "model expects shape", data=["a", "b"])


@pytest.mark.parametrize("data", [[], np.zeros((0, 1, 8, 8), np.float32), iter(())], ids=["list", "array", "generator"])
def test_empty_dataset(data):
    _raises(rayq.DataError, "the dataset is empty", data=data)


def test_missing_or_unreadable_data_file(tmp_path):
    _raises(rayq.DataError, "does not exist", data=str(tmp_path / "calib.npz"))
    (tmp_path / "bad.npz").write_text("not a zip")
    _raises(rayq.DataError, "cannot read dataset", data=str(tmp_path / "bad.npz"))
    (tmp_path / "calib.csv").write_text("1,2,3")
    _raises(rayq.DataError, "unsupported dataset file", data=str(tmp_path / "calib.csv"))


def test_failing_transform_fn(calib):
    ds = rayq.Dataset([{"image": x} for x in calib], lambda item: item["pixels"])
    err = _raises(rayq.DataError, "reading dataset item 0 failed: KeyError: 'pixels'", data=ds)
    assert isinstance(err.__cause__, KeyError)  # the user's traceback is kept


def test_unsupported_dataset_type():
    _raises(rayq.DataError, "unsupported dataset type", data=3.5)


def test_subset_size_larger_than_data_warns_and_uses_all(calib, caplog):
    with caplog.at_level(logging.WARNING, logger="rayq"):
        q = _quantize(data=calib, subset_size=1000)
    assert "subset_size=1000 but the dataset has 16 items: using all of them" in caplog.text
    assert q.SerializeToString() == _quantize(data=calib, subset_size=16).SerializeToString()


# --------------------------------------------------------------------------------------
# the arguments
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"preset": "fast"}, "preset='fast' is not valid"),
        ({"model_type": "llm"}, "model_type='llm' is not valid"),
        ({"target_device": "TPU"}, "target_device='TPU' is not valid"),
        ({"subset_size": 0}, "subset_size=0 must be a positive integer"),
        ({"num_workers": 0}, "num_workers=0 must be"),
    ],
)
def test_invalid_arguments(calib, kwargs, fragment):
    _raises(rayq.ConfigError, fragment, data=calib, **kwargs)


def test_invalid_advanced_parameters():
    with pytest.raises(rayq.ConfigError, match="activation_estimator='median' is not valid"):
        rayq.AdvancedQuantizationParameters(activation_estimator="median")
    with pytest.raises(rayq.ConfigError, match="overflow_fix"):
        rayq.AdvancedQuantizationParameters(overflow_fix="yes")


@pytest.mark.parametrize(
    "scope, fragment",
    [
        (
            rayq.IgnoredScope(names=["/conv2/Conv"]),
            "ignored_scope name '/conv2/Conv' matches no node; close names: ['/conv2/conv2.0/Conv'",
        ),
        (rayq.IgnoredScope(patterns=[r"/conv9/.*"]), "ignored_scope pattern '/conv9/.*' matches no node; close names"),
        (
            rayq.IgnoredScope(types=["Softmax"]),
            "ignored_scope type 'Softmax' matches no node; types in the model: ['Add', 'Conv'",
        ),
    ],
    ids=["name", "pattern", "type"],
)
def test_ignored_scope_rule_matching_nothing(calib, scope, fragment):
    _raises(rayq.ConfigError, fragment, data=calib, ignored_scope=scope)


def test_ignored_scope_invalid_regex():
    with pytest.raises(rayq.ConfigError, match="not a valid regular expression"):
        rayq.IgnoredScope(patterns=["conv[("])


# --------------------------------------------------------------------------------------
# an op rayq does not quantize: left FP32 and named in the summary
# --------------------------------------------------------------------------------------
def _per_head_model() -> onnx.ModelProto:
    """``MatMul`` with a 2-D weight (quantized), then a per-head ``MatMul`` whose weight is
    a 3-D constant ``[heads, d, e]``: no per-channel weight quantizer fits it."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["input", "w_in"], ["h"], name="proj"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w_heads"], ["out"], name="per_head_matmul"),
    ]
    graph = helper.make_graph(
        nodes,
        "per_head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4, 3, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4, 3, 6])],
        [
            numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w_in"),
            numpy_helper.from_array(rng.standard_normal((4, 8, 6)).astype(np.float32), "w_heads"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_unsupported_op_left_fp32_and_named_in_summary(caplog):
    model = _per_head_model()
    data = np.random.default_rng(1).standard_normal((16, 4, 3, 8)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="rayq"):
        q = _quantize(model, data, subset_size=16)
    onnx.checker.check_model(q, full_check=True)
    nodes = {n.name: n for n in q.graph.node}
    prods = {o: n for n in q.graph.node for o in n.output}
    assert prods[nodes["proj"].input[0]].op_type == "DequantizeLinear"  # the 2-D MatMul is quantized
    head = nodes["per_head_matmul"]
    assert list(head.input) == ["r", "w_heads"]  # untouched: FP32 input and FP32 weight
    assert "1 ops left FP32: no constant weight that can be quantized per channel" in caplog.text
    assert "kept FP32: per_head_matmul (no constant weight that can be quantized per channel" in caplog.text


# --------------------------------------------------------------------------------------
# the cluster
# --------------------------------------------------------------------------------------
def test_unreachable_cluster_address_fails_fast():
    """A fresh interpreter (the session's Ray fixture must not be reused) connecting to a
    closed port gets a ClusterError within seconds instead of hanging in Ray's retries."""
    code = textwrap.dedent("""
        import time, rayq
        start = time.monotonic()
        try:
            rayq.init(address="127.0.0.1:1")
        except rayq.ClusterError as exc:
            print("ClusterError", round(time.monotonic() - start, 1), str(exc).splitlines()[0])
        else:
            print("connected")
    """)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("rayq.init(address='127.0.0.1:1') did not fail within 20 s (Ray keeps retrying)")
    assert out.stdout.startswith("ClusterError"), out.stdout + out.stderr[-2000:]
    assert "127.0.0.1:1" in out.stdout


# --------------------------------------------------------------------------------------
# outputs and stored runs
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "output, fragment",
    [
        ("foo://bucket/run", "cannot open the output location"),
        ("s3:/bucket/run", "missing '/'"),
        ("{file}", "is an existing file"),
    ],
)
def test_search_output_errors_come_before_calibration(tmp_path, calib, monkeypatch, output, fragment):
    from rayq.api import search as search_api

    monkeypatch.setattr(search_api, "ModelSession", lambda *a, **k: pytest.fail("calibrated for a bad output"))
    (tmp_path / "f").write_text("x")
    with pytest.raises(rayq.OutputError, match=fragment):
        rayq.search(MODEL, calib, calib, lambda m, d: 1.0, num_workers=1, output=output.format(file=tmp_path / "f"))


@pytest.mark.parametrize(
    "setup, fragment",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "incomplete (result.json is missing)"),
        (lambda p: p.write_text("x"), "it is a file"),
    ],
)
def test_loading_a_missing_or_incomplete_run(tmp_path, setup, fragment):
    setup(tmp_path / "run")
    with pytest.raises(rayq.OutputError) as info:
        rayq.SearchResult.load(str(tmp_path / "run"))
    assert fragment in str(info.value)
