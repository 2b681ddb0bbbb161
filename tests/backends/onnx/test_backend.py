"""The ONNX backend on real ONNX models and ONNX Runtime: graph view, in-graph
statistics, QDQ writing, opset upgrade, external data, fingerprints."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import rayq
from rayq.backends import detect, get_backend
from rayq.backends.base import Backend, StatRequest
from rayq.core import graph as g
from rayq.core.params import activation_params, dequantize, fake_quantize, quantize, weight_params
from rayq.core.recipe import ActivationQuant, Recipe, WeightQuant
from rayq.core.rules import Edge
from rayq.errors import BackendError, DataError
from rayq.testing.models import mlp, random_inputs, resnet_like, transformer_block


@pytest.fixture(scope="module")
def backend():
    return get_backend("onnx")


@pytest.fixture(scope="module")
def cnn():
    return resnet_like(with_concat=True)


def _run(model: onnx.ModelProto, feeds: dict, outputs: list[str] | None = None) -> list[np.ndarray]:
    """Run ``model`` on ORT, exposing intermediate ``outputs`` as extra graph outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if outputs:
        del m.graph.output[:]
        m.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in outputs)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(outputs, feeds)


def test_protocol_and_detection(backend, cnn, tmp_path):
    assert isinstance(backend, Backend)
    assert detect(cnn) is backend
    assert detect(str(tmp_path / "m.onnx")) is backend
    assert not backend.accepts(str(tmp_path / "m.xml"))
    assert backend.from_bytes(backend.to_bytes(cnn)) == cnn


# --------------------------------------------------------------------------------------
# graph view
# --------------------------------------------------------------------------------------
def test_cnn_metatypes(backend, cnn):
    view = backend.graph(backend.load(cnn))
    metas = {n.op_type: n.meta for n in view.nodes}
    assert metas == {
        "Conv": g.CONV,
        "Relu": g.ACTIVATION,
        "MaxPool": g.MAX_POOL,
        "Add": g.ADD,
        "Concat": g.CONCAT,
        "GlobalAveragePool": g.AVG_POOL,
        "Flatten": g.SHAPE,
        "Gemm": g.MATMUL,
    }
    conv = view.node("Conv_0")
    assert (conv.weight_input, conv.weight_axis, conv.weight_in_axis, conv.bias_input) == (1, 0, 1, 2)
    gemm = view.node("Gemm_0")  # transB=1: weight [out, in]
    assert (gemm.weight_input, gemm.weight_axis, gemm.weight_in_axis, gemm.bias_input) == (1, 0, 1, 2)
    assert view.inputs == ("input",) and view.outputs == ("logits",)
    assert view.tensors["input"].shape == (None, 3, 32, 32)
    assert view.is_constant(conv.weight) and not view.is_constant("input")
    assert view.constant(conv.weight).shape == (16, 3, 3, 3)
    # identity shortcut, then projection shortcut, then the inception branches
    assert [view.producer(t).name for t in view.node("Add_0").inputs] == ["Conv_2", "MaxPool_0"]
    assert [view.producer(t).name for t in view.node("Add_1").inputs] == ["Conv_6", "Conv_7"]
    assert [view.producer(t).name for t in view.node("Concat_0").inputs] == ["Relu_3", "Relu_4"]
    assert view.producer("input") is None
    assert [c.name for c, _ in view.consumers(conv.outputs[0])] == ["Relu_0"]


def test_matmul_and_transformer_metatypes(backend):
    view = backend.graph(backend.load(mlp(op="MatMul")))
    mm = view.node("MatMul_0")
    assert mm.meta == g.MATMUL
    assert (mm.weight_input, mm.weight_axis, mm.weight_in_axis) == (1, 1, 0)  # weight [in, out]
    assert mm.bias_node == "Add_0" and mm.bias_input is None
    view = backend.graph(backend.load(transformer_block()))
    by_type = {}
    for n in view.nodes:
        by_type.setdefault(n.op_type, set()).add(n.meta)
    assert by_type["Softmax"] == {g.SOFTMAX} and by_type["LayerNormalization"] == {g.NORM}
    assert by_type["Erf"] == {g.OTHER} and by_type["Reshape"] == {g.SHAPE}
    matmuls = [n for n in view.nodes if n.op_type == "MatMul"]
    with_weight = [n for n in matmuls if n.weight_input is not None]
    assert len(matmuls) == 8 and len(with_weight) == 6  # QK^T and PV have no constant weight
    assert all(n.bias_node is not None for n in with_weight)


def test_unnamed_nodes_get_unique_names(backend):
    model = mlp()
    for n in model.graph.node:
        n.name = ""
    names = [n.name for n in backend.load(model).graph.node]
    assert all(names) and len(set(names)) == len(names)


# --------------------------------------------------------------------------------------
# in-graph statistics
# --------------------------------------------------------------------------------------
def test_stat_runner_reductions_equal_numpy(backend, cnn):
    model = backend.load(cnn)
    feeds = random_inputs(cnn, 1, batch=3, seed=5)[0]
    conv_out, relu_out, gemm_in, logits = "conv_0", "relu_0", "flatten_0", "logits"
    reqs = [
        StatRequest(conv_out, ("min", "max", "ch_mean", "ch_min", "ch_max", "ch_absmax", "raw"), 1),
        StatRequest(relu_out, ("min", "max")),
        StatRequest(gemm_in, ("ch_mean", "ch_min", "ch_max"), -1),
        StatRequest(logits, ("ch_absmax",), -1),
    ]
    got = backend.stat_runner(model, reqs)(feeds)
    x, r, f, y = _run(model, feeds, [conv_out, relu_out, gemm_in, logits])
    c = got[conv_out]
    np.testing.assert_array_equal(c["min"], x.reshape(3, -1).min(axis=1))
    np.testing.assert_array_equal(c["max"], x.reshape(3, -1).max(axis=1))
    np.testing.assert_allclose(c["ch_mean"], x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(c["ch_min"], x.min(axis=(2, 3)))
    np.testing.assert_array_equal(c["ch_max"], x.max(axis=(2, 3)))
    np.testing.assert_array_equal(c["ch_absmax"], np.abs(x).max(axis=(2, 3)))
    np.testing.assert_array_equal(c["raw"], x)
    assert c["min"].shape == (3,) and c["ch_mean"].shape == (3, 16)
    np.testing.assert_array_equal(got[relu_out]["min"], r.reshape(3, -1).min(axis=1))
    assert (got[relu_out]["min"] >= 0).all()
    np.testing.assert_array_equal(got[gemm_in]["ch_max"], f)  # [B, C] with C last: per sample
    np.testing.assert_array_equal(got[logits]["ch_absmax"], np.abs(y))
    # the model outputs are untouched by instrumentation
    np.testing.assert_array_equal(_run(model, feeds)[0], y)


def test_stat_runner_unbatched_tensor_is_one_sample(backend):
    """A tensor without the batch dim (a reshaped shape-constant, a static-batch model...)
    is reduced as a single sample."""
    model = transformer_block(seq_len=4, hidden=16, heads=2, ffn=32)
    feeds = random_inputs(model, 1, batch=2, seed=0)[0]
    loaded = backend.load(model)
    weight = next(n.input[1] for n in loaded.graph.node if n.op_type == "MatMul")
    transposed = helper.make_node("Transpose", [weight], ["w_t"], name="w_t")  # computed, no batch dim
    loaded.graph.node.append(transposed)
    got = backend.stat_runner(loaded, [StatRequest("w_t", ("min", "max", "ch_mean"), -1)])(feeds)
    w = numpy_helper.to_array(next(t for t in loaded.graph.initializer if t.name == weight)).T
    assert got["w_t"]["min"].shape == (1,)
    assert got["w_t"]["min"][0] == w.min() and got["w_t"]["max"][0] == w.max()
    np.testing.assert_allclose(got["w_t"]["ch_mean"][0], w.mean(axis=0), rtol=1e-5, atol=1e-7)


def _reshape_model(second_shape):
    """x[batch, 8] -> MatMul -> Reshape[-1, 2, 4] -> Relu -> Reshape(second_shape) -> MatMul:
    shape inference names the reshaped first dims ``unk__*``, not ``batch``."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.array([-1, 2, 4], np.int64), "s1"),
        numpy_helper.from_array(np.array(second_shape, np.int64), "s2"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["a"], name="mm1"),
            helper.make_node("Reshape", ["a", "s1"], ["b"], name="r1"),
            helper.make_node("Relu", ["b"], ["c"], name="relu"),
            helper.make_node("Reshape", ["c", "s2"], ["d"], name="r2"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, ["n", second_shape[1]])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_stat_runner_reshaped_batch_dim_is_reduced_per_sample(backend):
    """Per-sample statistics must not depend on the batch size, also after a Reshape
    that shape inference cannot follow (MiniLM's attention reshapes)."""
    model = backend.load(_reshape_model([-1, 8]))
    x = np.random.default_rng(1).normal(size=(6, 8)).astype(np.float32)
    got = backend.stat_runner(model, [StatRequest("c", ("min", "max", "ch_mean"), -1), StatRequest("d", ("max",))])(
        {"x": x}
    )
    c = np.maximum(x @ numpy_helper.to_array(model.graph.initializer[0]), 0).reshape(6, 2, 4)
    np.testing.assert_allclose(got["c"]["max"], c.reshape(6, -1).max(1), rtol=1e-6)
    np.testing.assert_allclose(got["c"]["min"], c.reshape(6, -1).min(1), rtol=1e-6)
    np.testing.assert_allclose(got["c"]["ch_mean"], c.mean(1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["d"]["max"], c.reshape(6, -1).max(1), rtol=1e-6)


def test_stat_runner_reshaped_non_batch_first_dim_is_folded(backend):
    """A reshape that merges the batch into another dim ([6, 8] -> [12, 4]) has no
    per-sample rows: its rows fold into one value per batch."""
    model = backend.load(_reshape_model([-1, 4]))
    x = np.random.default_rng(2).normal(size=(6, 8)).astype(np.float32)
    got = backend.stat_runner(model, [StatRequest("d", ("min", "max", "ch_mean"), -1)])({"x": x})
    d = np.maximum(x @ numpy_helper.to_array(model.graph.initializer[0]), 0).reshape(12, 4)
    assert got["d"]["max"].shape == (1,) and got["d"]["ch_mean"].shape == (1, 4)
    assert got["d"]["max"][0] == pytest.approx(d.max()) and got["d"]["min"][0] == pytest.approx(d.min())
    np.testing.assert_allclose(got["d"]["ch_mean"][0], d.mean(0), rtol=1e-5, atol=1e-7)


def test_stat_runner_errors(backend, cnn):
    model = backend.load(cnn)
    with pytest.raises(BackendError, match="channel axis"):
        backend.stat_runner(model, [StatRequest("conv_0", ("ch_mean",))])
    runner = backend.stat_runner(model, [StatRequest("conv_0", ("min",))])
    with pytest.raises(DataError, match="model expects shape"):
        runner({"input": np.zeros((1, 3, 16, 16), np.float32)})
    with pytest.raises(DataError, match="missing"):
        runner({"x": np.zeros((1, 3, 32, 32), np.float32)})


# --------------------------------------------------------------------------------------
# writing QDQ
# --------------------------------------------------------------------------------------
def _single_conv(opset: int = 17) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(4) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "single_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 6, 6])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


def _conv_recipe(model, x):
    w = numpy_helper.to_array(model.graph.initializer[0])
    ap = activation_params(float(x.min()), float(x.max()), symmetric=False)
    wp = weight_params(w, 0)
    return (
        ap,
        wp,
        w,
        Recipe(
            activations=(ActivationQuant("input", (Edge("conv", 0),), ap),),
            weights=(WeightQuant("conv", "w", Edge("conv", 1), quantize(w, wp), wp),),
        ),
    )


def test_writer_output_equals_numpy_fake_quant_simulation(backend):
    """The QDQ model computes conv(fake_quant(x), dequant(W_q)) + b, exactly as simulated."""
    model = _single_conv()
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    ap, wp, w, recipe = _conv_recipe(model, x)
    q = backend.apply(model, recipe)
    onnx.checker.check_model(q, full_check=True)
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    reference.graph.initializer[0].CopyFrom(numpy_helper.from_array(dequantize(quantize(w, wp), wp), "w"))
    expected = _run(reference, {"input": fake_quantize(x, ap)})[0]
    np.testing.assert_allclose(_run(q, {"input": x})[0], expected, rtol=1e-4, atol=1e-4)
    # the input model is untouched
    assert model.graph.node[0].input[0] == "input"


def test_writer_graph_structure(backend):
    model = _single_conv()
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    _, _, _, recipe = _conv_recipe(model, x)
    q = backend.apply(model, recipe)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 3  # x, W, int32 bias
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    conv = next(n for n in q.graph.node if n.op_type == "Conv")
    prods = {o: n for n in q.graph.node for o in n.output}
    x_dq, w_dq, b_dq = (prods[t] for t in conv.input)
    assert prods[x_dq.input[0]].op_type == "QuantizeLinear"
    assert inits[x_dq.input[2]].dtype == np.uint8  # asymmetric activation
    assert inits[w_dq.input[0]].dtype == np.int8 and inits[w_dq.input[1]].shape == (4,)
    assert next(a.i for a in w_dq.attribute if a.name == "axis") == 0
    assert inits[b_dq.input[0]].dtype == np.int32
    np.testing.assert_allclose(inits[b_dq.input[1]], inits[x_dq.input[1]] * inits[w_dq.input[1]], rtol=1e-6)
    assert "w" not in inits and "b" not in inits  # FP32 weight and bias dropped
    assert [n.name for n in q.graph.node].index(conv.name) == len(q.graph.node) - 1  # topologically sorted


def test_writer_rejects_unknown_nodes(backend):
    model = _single_conv()
    ap = activation_params(-1.0, 1.0, symmetric=True)
    with pytest.raises(BackendError, match="unknown node"):
        backend.apply(model, Recipe(activations=(ActivationQuant("input", (Edge("nope", 0),), ap),)))


def test_bias_correction_replaces_the_bias(backend):
    model = _single_conv()
    new_bias = np.arange(4, dtype=np.float32)
    q = backend.apply(model, Recipe(biases={"conv": new_bias}))
    conv = q.graph.node[0]
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    np.testing.assert_array_equal(inits[conv.input[2]], new_bias)
    assert "b" not in inits


# --------------------------------------------------------------------------------------
# loading: opset upgrade, external data, fingerprints
# --------------------------------------------------------------------------------------
def test_opset_11_model_is_upgraded_and_quantized(backend):
    old = _single_conv(opset=11)
    loaded = backend.load(old)
    assert next(o.version for o in loaded.opset_import if o.domain in ("", "ai.onnx")) >= 13
    x = np.random.default_rng(2).standard_normal((16, 3, 6, 6)).astype(np.float32)
    q = rayq.quantize(old, x, subset_size=16, num_workers=1, cache=False)
    onnx.checker.check_model(q, full_check=True)
    assert any(
        n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute) for n in q.graph.node
    )  # per-channel DQ needs opset >= 13
    y, yq = _run(old, {"input": x[:4]})[0], _run(q, {"input": x[:4]})[0]
    assert np.mean((y - yq) ** 2) / np.mean(y**2) < 0.01


def test_external_data_model_loads_by_path(backend, cnn, tmp_path):
    path = tmp_path / "model.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(cnn)  # onnx.save with external data rewrites the proto it is given
    onnx.save(
        copy,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    assert (tmp_path / "model.onnx.data").stat().st_size > 50_000
    assert path.stat().st_size < 20_000  # the weights really are outside
    loaded = backend.load(str(path))
    assert backend.fingerprint(loaded) == backend.fingerprint(backend.load(cnn))
    calib = np.concatenate([f["input"] for f in random_inputs(cnn, 8, seed=1)])
    from_path = rayq.quantize(str(path), calib, subset_size=8, num_workers=1, cache=False)
    in_memory = rayq.quantize(cnn, calib, subset_size=8, num_workers=1, cache=False)
    assert from_path.SerializeToString() == in_memory.SerializeToString()
    # the weight file must be there
    (tmp_path / "model.onnx.data").unlink()
    with pytest.raises(BackendError, match="not a readable ONNX model"):
        backend.load(str(path))


def test_save_and_reload(backend, cnn, tmp_path):
    files = backend.save(cnn, str(tmp_path / "out" / "m.onnx"))
    assert files == [str(tmp_path / "out" / "m.onnx")]
    assert backend.fingerprint(backend.load(files[0])) == backend.fingerprint(backend.load(cnn))


def test_fingerprint_is_stable_and_content_based(backend, cnn):
    fp = backend.fingerprint(backend.load(cnn))
    assert fp == backend.fingerprint(backend.load(cnn))
    assert fp == backend.fingerprint(backend.load(backend.from_bytes(cnn.SerializeToString())))
    assert len(fp) == 64 and int(fp, 16) >= 0
    changed = onnx.ModelProto()
    changed.CopyFrom(cnn)
    w = numpy_helper.to_array(changed.graph.initializer[0]).copy()
    w.flat[0] += 1e-3
    changed.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, changed.graph.initializer[0].name))
    assert backend.fingerprint(backend.load(changed)) != fp
    assert backend.fingerprint(backend.load(resnet_like(with_concat=True, seed=1))) != fp
    # a fingerprint is also reproducible in a fresh interpreter (no hash randomisation)
    import subprocess
    import sys

    code = (
        "from rayq.backends import get_backend; from rayq.testing.models import resnet_like; "
        "b = get_backend('onnx'); print(b.fingerprint(b.load(resnet_like(with_concat=True))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == fp


@pytest.mark.parametrize(
    "make",
    [
        lambda: resnet_like(with_concat=True),
        lambda: transformer_block(layers=2, vocab=50, with_attention_mask=True),
        lambda: _reshape_model([-1, 8]),
    ],
    ids=["cnn", "transformer", "reshape"],
)
def test_shape_inference_without_weights_matches_full_inference(make):
    """Shape inference runs on a weight-free copy (large initializers as typed inputs):
    every shape must equal full inference's, and the size estimate must match ByteSize."""
    from onnx import shape_inference

    from rayq.backends.onnx import reader

    model = reader.load_model(make())
    _, raw = reader.build_view(model)
    full = shape_inference.infer_shapes(model, data_prop=True).graph
    expected = {vi.name: reader._shape(vi)[0] for vi in [*full.input, *full.value_info, *full.output]}
    assert {k: v for k, v in raw.items() if k in expected} == expected
    assert abs(reader.size_bytes(model) - model.ByteSize()) <= 8192
    assert reader.fits_in_memory_proto(model)


def test_weights_computed_from_constants_are_folded_and_quantized(backend):
    """MatMul(x, Transpose(W)): the transposed weight is folded on load, so the MatMul
    gets a per-channel int8 weight instead of staying FP32."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["W"], ["Wt"], name="t"),
            helper.make_node("MatMul", ["x", "Wt"], ["y"], name="mm"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    loaded = backend.load(model)
    assert [n.op_type for n in loaded.graph.node] == ["MatMul"]
    assert [t.name for t in loaded.graph.initializer] == ["Wt"]
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), w.T)
    x = rng.normal(size=(32, 8)).astype(np.float32)
    q = rayq.quantize(model, x, num_workers=1, cache=False)
    dq = {n.output[0]: n for n in q.graph.node if n.op_type == "DequantizeLinear"}
    mm = next(n for n in q.graph.node if n.op_type == "MatMul")
    assert mm.input[1] in dq  # the weight is read through a DequantizeLinear
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert inits[dq[mm.input[1]].input[0]].dtype == np.int8


def test_folding_keeps_random_ops_graph_outputs_and_ops_it_cannot_run(backend):
    shape = numpy_helper.from_array(np.array([2, 3], np.int64), "shape")
    w = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("RandomNormalLike", ["w"], ["noise"], name="noise"),  # random: kept
            helper.make_node("Transpose", ["w"], ["wt"], name="wt"),  # graph output: kept
            helper.make_node("Reshape", ["w", "shape"], ["w2"], name="reshape"),  # folded
            helper.make_node("MatMul", ["x", "w2"], ["y"], name="mm"),
            helper.make_node("Add", ["y", "noise"], ["z"], name="add"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("wt", TensorProto.FLOAT, [2, 3]),
        ],
        [shape, w],
    )
    loaded = backend.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.name for n in loaded.graph.node] == ["noise", "wt", "mm", "add"]
    inits = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    assert inits["w2"].shape == (2, 3) and "shape" not in inits and "w" in inits  # w still read by kept nodes


@pytest.mark.parametrize(
    "make",
    [lambda: resnet_like(with_concat=True), lambda: transformer_block(layers=2, vocab=50, with_attention_mask=True)],
    ids=["cnn", "transformer"],
)
def test_sessions_take_large_weights_as_external_initializers(make):
    """ORT sessions get the large weights as values, not inside the serialised model: the
    model shrinks, the caller's proto is untouched, and the FP32 and QDQ sessions compute
    exactly what sessions of the whole model compute."""
    from rayq.backends.onnx import reader, runtime

    model = make()
    data = random_inputs(model, 8, seed=2)
    qdq = rayq.quantize(model, data, subset_size=8, num_workers=1, cache=False)
    feeds = random_inputs(model, 1, batch=2, seed=3)[0]
    for proto in (model, qdq):
        before = proto.SerializeToString()
        light, names, values = runtime.split_weights(proto)
        assert proto.SerializeToString() == before
        assert names and len(values) == len(names)
        moved = sum(reader.tensor_bytes(t) for t in proto.graph.initializer if t.name in names)
        assert len(light.SerializeToString()) <= len(before) - 0.9 * moved
        inline = {t.name for t in light.graph.initializer if t.data_location != TensorProto.EXTERNAL}
        assert all(
            reader.tensor_bytes(t) < runtime.EXTERNAL_MIN_BYTES for t in proto.graph.initializer if t.name in inline
        )
        got = runtime.ort_session(proto).run(None, feeds)
        for a, b in zip(got, _run(proto, feeds)):
            np.testing.assert_array_equal(a, b)


def test_tensor_size_estimate_matches_serialised_size():
    from rayq.backends.onnx import reader

    for dtype in (np.float32, np.int8, np.int64, np.float16):
        t = numpy_helper.from_array(np.zeros((7, 300), dtype), "w")
        assert 0 <= reader.tensor_bytes(t) - t.ByteSize() <= 80
    t = helper.make_tensor("f", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])  # float_data, no raw_data
    assert reader.tensor_bytes(t) == t.ByteSize()


def test_openvino_compile_of_a_model_over_2gb_removes_its_temporary_folder(backend, monkeypatch, tmp_path):
    """Models over protobuf's 2 GB reach OpenVINO through a temporary file: removed once compiled."""
    pytest.importorskip("openvino")
    import tempfile

    from rayq.backends.onnx import runtime

    model = mlp()
    feeds = random_inputs(model, 1, batch=2, seed=0)[0]
    expected = backend.runner(model, runtime="openvino")(feeds)
    monkeypatch.setattr(runtime.reader, "fits_in_memory_proto", lambda proto: False)  # take the > 2 GB path
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run = backend.runner(model, runtime="openvino")
    assert list(tmp_path.glob("rayq-ov-*")) == []
    for got, want in zip(run(feeds), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
