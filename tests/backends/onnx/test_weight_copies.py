"""The ONNX backend holds a model's weights as few times as it can (models over 2 GB):
the QDQ writer copies only the FP32 weights still read, the graph view's constant cache
is bounded, and calibration sessions that use the weights in place give the same
statistics."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import rayq
from rayq.backends import get_backend
from rayq.backends.base import StatRequest
from rayq.backends.onnx import reader, runtime
from rayq.testing.models import mlp, random_inputs


def _shared_weight_model() -> onnx.ModelProto:
    """Two MatMuls reading one weight; the second one will be kept FP32 (ignored scope)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="mm_q"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w"], ["y"], name="mm_fp32"),
    ]
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_quantized_weight_still_read_in_fp32_is_kept():
    model = _shared_weight_model()
    x = np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32)
    q = rayq.quantize(
        model, x, subset_size=32, num_workers=1, cache=False, ignored_scope=rayq.IgnoredScope(names=["mm_fp32"])
    )
    inits = {t.name: t for t in q.graph.initializer}
    assert "w" in inits and inits["w"].data_type == TensorProto.FLOAT  # read by mm_fp32
    assert any(t.data_type == TensorProto.INT8 and tuple(t.dims) == (16, 16) for t in inits.values())
    fp32 = next(n for n in q.graph.node if n.name == "mm_fp32")
    assert fp32.input[1] == "w"
    out = ort.InferenceSession(q.SerializeToString()).run(None, {"x": x})[0]
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.95  # runs, and computes the same function


def test_replaced_weights_are_not_copied_into_the_qdq_model():
    model = mlp(in_features=32, hidden=(64, 64), op="MatMul")
    x = random_inputs(model, 16)
    q = rayq.quantize(model, np.concatenate([f["input"] for f in x]), subset_size=16, num_workers=1, cache=False)
    fp32_weights = [t.name for t in model.graph.initializer if len(t.dims) == 2]
    assert fp32_weights and not {t.name for t in q.graph.initializer} & set(fp32_weights)


def test_constant_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(reader, "CONSTANT_CACHE_BYTES", 40_000)
    model = get_backend("onnx").load(mlp(in_features=64, hidden=(128, 128), op="MatMul"))  # 3 weights, 32 KiB+
    view = reader.build_view(model)[0]
    cache = view._constant_fn
    weights = [t for t in model.graph.initializer if len(t.dims) == 2]
    for _ in range(2):
        for t in weights:
            np.testing.assert_array_equal(view.constant(t.name), numpy_helper.to_array(t))
            assert cache._bytes <= 40_000 or len(cache._cache) == 1
    assert len(cache._cache) < len(weights)


def test_weights_used_in_place_give_the_same_statistics(monkeypatch):
    """Above ``LARGE_WEIGHTS_BYTES`` the session maps its weights from a temporary file and
    skips pre-packing: same statistics."""
    backend = get_backend("onnx")
    model = backend.load(mlp(in_features=64, hidden=(128,), op="MatMul"))
    feeds = {"input": np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)}
    mm = next(n for n in model.graph.node if n.op_type == "MatMul")
    requests = [StatRequest(mm.output[0], ("min", "max", "ch_mean"), -1)]
    packed = backend.stat_runner(model, requests)(feeds)
    monkeypatch.setattr(runtime, "LARGE_WEIGHTS_BYTES", 0)
    in_place = backend.stat_runner(model, requests)(feeds)
    for red in ("min", "max", "ch_mean"):
        np.testing.assert_allclose(in_place[mm.output[0]][red], packed[mm.output[0]][red], rtol=1e-5, atol=1e-6)
