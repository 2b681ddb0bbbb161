"""The OpenVINO backend on real OpenVINO models: graph, statistics, quantization, I/O."""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

import openvino.opset13 as ops  # noqa: E402

from rayq.backends import get_backend  # noqa: E402
from rayq.backends.base import Backend, StatRequest  # noqa: E402
from rayq.backends.openvino.runtime import int8_saturates  # noqa: E402
from rayq.core import graph as g  # noqa: E402
from rayq.core.params import activation_params, fake_quantize, quantize, weight_params  # noqa: E402
from rayq.core.recipe import ActivationQuant, Recipe, WeightQuant  # noqa: E402
from rayq.core.rules import Edge, place  # noqa: E402
from rayq.errors import BackendError, DataError  # noqa: E402

from .models import group_conv_model, single_conv_model  # noqa: E402

INT8 = {"u8", "i8"}


@pytest.fixture(scope="module")
def backend():
    return get_backend("openvino")


def _feeds(shape, seed=0, batch=4):
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((batch, *shape)).astype(np.float32)}


def _port(model, name):
    """The output port of ``model`` named ``name`` (a tensor name or ``node:port``)."""
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Result":
            continue
        for out in op.outputs():
            if name in out.get_names():
                return out
    node, index = name.rsplit(":", 1)
    op = next(o for o in model.get_ordered_ops() if o.get_friendly_name() == node)
    return op.output(int(index))


def _tensors(model, names, feeds):
    """Reference values of intermediate tensors: extra Results added by hand."""
    clone = model.clone()
    results = [ops.result(_port(clone, n)) for n in names]
    clone.add_results(results)
    compiled = ov.Core().compile_model(clone, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled(feeds)
    return {n: out[compiled.outputs[len(compiled.outputs) - len(names) + i]] for i, n in enumerate(names)}


def _runtime_precisions(model):
    """layerType -> list of runtimePrecision of the compiled CPU model."""
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out: dict[str, list[str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        out.setdefault(info["layerType"].astype(str), []).append(info["runtimePrecision"].astype(str))
    return out


#: Weight bits for tests that compare INT8 outputs with FP32: 7 on CPUs whose INT8
#: kernels saturate pair sums (AVX2 without VNNI), as the overflow fix does.
BITS = 7 if int8_saturates() else 8


def _full_recipe(backend, model, feeds, *, model_type=None, bits=BITS):
    """Placement + min/max calibration on ``feeds`` -> a complete recipe."""
    view = backend.graph(model)
    placement = place(view, model_type=model_type)
    acts = [p for p in placement.points if p.kind == "activation"]
    stats = backend.stat_runner(model, [StatRequest(p.tensor, ("min", "max")) for p in acts])(feeds)
    aqs, wqs = [], []
    for point, edges in placement.active():
        if point.kind == "activation":
            s = stats[point.tensor]
            params = activation_params(float(s["min"].min()), float(s["max"].max()), symmetric=True)
            aqs.append(ActivationQuant(point.tensor, edges, params))
        else:
            w = view.constant(point.tensor)
            params = weight_params(w, point.axis, bits=bits)
            wqs.append(WeightQuant(point.serves[0], point.tensor, edges[0], quantize(w, params), params))
    return Recipe(tuple(aqs), tuple(wqs))


# --------------------------------------------------------------------------- protocol


def test_protocol_and_accepts(backend, conv_net, tmp_path):
    assert isinstance(backend, Backend)
    assert backend.name == "openvino" and backend.runtimes == ("openvino",)
    assert backend.accepts(conv_net)
    assert backend.accepts("model.xml") and backend.accepts(tmp_path / "m.XML")
    assert not backend.accepts("model.onnx") and not backend.accepts(b"model.xml")
    assert not backend.accepts(object())


# --------------------------------------------------------------------------- graph


def test_conv_net_graph(backend, conv_net):
    view = backend.graph(conv_net)
    metas = {n.meta for n in view.nodes}
    assert {g.CONV, g.ADD, g.CONCAT, g.MAX_POOL, g.AVG_POOL, g.SHAPE, g.MATMUL, g.ACTIVATION} <= metas
    assert view.inputs == ("input",) and view.outputs == ("logits",)
    convs = [n for n in view.nodes if n.meta == g.CONV]
    assert len(convs) == 8
    for conv in convs:
        assert (conv.weight_input, conv.weight_axis, conv.weight_in_axis) == (1, 0, 1)
        assert view.is_constant(conv.weight)
        assert view.constant(conv.weight).ndim == 4
        bias_add = view.node(conv.bias_node)
        assert bias_add.op_type == "Add" and conv.outputs[0] in bias_add.inputs
    residual = [
        n
        for n in view.nodes
        if n.meta == g.ADD and n.bias_node is None and all(not view.is_constant(t) for t in n.inputs)
    ]
    assert len(residual) == 2
    fc = next(n for n in view.nodes if n.meta == g.MATMUL)
    assert fc.attrs["transpose_b"] is True and (fc.weight_axis, fc.weight_in_axis) == (0, 1)
    assert fc.bias_node == "logits"
    # names are unique, tensors point back at their producers, constants have no producer
    assert len(set(view.node_names())) == len(view.nodes)
    for node in view.nodes:
        for t in node.outputs:
            assert view.tensors[t].producer == node.name
    assert all(view.tensors[t].producer is None for t in view.tensors if view.is_constant(t))
    assert view.tensors["input"].shape == (None, 3, 32, 32)


def test_transformer_graph(backend, transformer):
    view = backend.graph(transformer)
    node = view.node
    assert node("q_proj").meta == g.MATMUL
    assert (node("q_proj").weight_axis, node("q_proj").weight_in_axis) == (0, 1)  # transpose_b
    assert (node("k_proj").weight_axis, node("k_proj").weight_in_axis) == (1, 0)
    assert node("q_proj").bias_node == "q_bias" and node("ffn2").bias_node == "ffn2_bias"
    # Constant(f16) -> Convert reads as one constant float32 weight
    o_proj = node("o_proj")
    assert o_proj.weight_input == 1 and view.is_constant(o_proj.weight)
    assert view.constant(o_proj.weight).dtype == np.float32
    assert not any(n.op_type == "Convert" for n in view.nodes)
    # activation x activation MatMuls have no weight
    assert node("scores").weight_input is None and node("context").weight_input is None
    assert node("softmax").meta == g.SOFTMAX and node("ln").meta == g.NORM
    assert node("gelu").meta == g.ACTIVATION and node("q_heads").meta == g.SHAPE
    assert node("residual").meta == g.ADD and node("ln_scale").meta == g.MUL
    placement = place(view, model_type="transformer")
    assert {"q_proj", "k_proj", "v_proj", "scores", "o_proj", "ffn1", "ffn2"} <= set(placement.ops)
    assert "context" not in placement.ops  # reads the Softmax probabilities: stays FP32


def test_group_convolution_axes(backend):
    view = backend.graph(group_conv_model(groups=2))
    conv = view.node("gconv")
    assert conv.meta == g.CONV and conv.attrs["group"] == 2
    assert (conv.weight_input, conv.weight_axis, conv.weight_in_axis) == (1, 0, 2)
    assert conv.bias_node == "gconv_bias"


def test_quantized_model_still_reads_weights_as_constants(backend, conv_net):
    quantized = backend.apply(conv_net, _full_recipe(backend, conv_net, _feeds((3, 32, 32))))
    view = backend.graph(quantized)
    original = backend.graph(conv_net)
    for conv in (n for n in view.nodes if n.meta == g.CONV):
        assert view.is_constant(conv.weight)
        w = view.constant(conv.weight)
        w0 = original.constant(original.node(conv.name).weight)
        scale = np.abs(w0).max(axis=(1, 2, 3), keepdims=True) / (2 ** (BITS - 1) - 1)
        assert np.all(np.abs(w - w0) <= scale / 2 + 1e-6)


# --------------------------------------------------------------------------- statistics


def _check_stats(stats, ref, tensor, channel_axis):
    x = ref[tensor].astype(np.float64)
    batch = x.shape[0]
    flat = x.reshape(batch, -1)
    np.testing.assert_allclose(stats[tensor]["min"], flat.min(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats[tensor]["max"], flat.max(axis=1), rtol=1e-6)
    moved = np.moveaxis(x, channel_axis, 1).reshape(batch, x.shape[channel_axis], -1)
    np.testing.assert_allclose(stats[tensor]["ch_mean"], moved.mean(axis=2), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats[tensor]["ch_min"], moved.min(axis=2), rtol=1e-6)
    np.testing.assert_allclose(stats[tensor]["ch_max"], moved.max(axis=2), rtol=1e-6)
    np.testing.assert_allclose(stats[tensor]["ch_absmax"], np.abs(moved).max(axis=2), rtol=1e-6)
    np.testing.assert_allclose(stats[tensor]["raw"], ref[tensor], rtol=1e-6)
    for red in ("min", "max"):
        assert stats[tensor][red].shape == (batch,) and stats[tensor][red].dtype == np.float32
    assert stats[tensor]["ch_mean"].shape == (batch, x.shape[channel_axis])


ALL = ("min", "max", "ch_mean", "ch_min", "ch_max", "ch_absmax", "raw")


def test_stat_runner_conv_net_matches_numpy(backend, conv_net):
    tensors = ["input", "relu_0", "Conv_2/WithoutBiases:0", "add_0", "concat_0", "flatten_0"]
    requests = [StatRequest(t, ALL, channel_axis=1) for t in tensors]
    run = backend.stat_runner(conv_net, requests, num_threads=1)
    for batch in (3, 5):  # dynamic batch: one compiled runner, several batch sizes
        feeds = _feeds((3, 32, 32), seed=batch, batch=batch)
        stats = run(feeds)
        ref = _tensors(conv_net, tensors, feeds)
        assert set(stats) == set(tensors)
        for t in tensors:
            _check_stats(stats, ref, t, 1)


def test_stat_runner_transformer_last_axis(backend, transformer):
    tensors = ["ln_shift:0", "scores:0", "softmax:0", "gelu:0", "merge_heads:0"]
    run = backend.stat_runner(transformer, [StatRequest(t, ALL, channel_axis=-1) for t in tensors])
    feeds = _feeds((8, 32), batch=3)
    stats = run(feeds)
    ref = _tensors(transformer, tensors, feeds)
    for t in tensors:
        _check_stats(stats, ref, t, ref[t].ndim - 1)


def test_stat_runner_static_batch_and_unbatched_tensors(backend):
    x = ops.parameter([2, 4, 8], ov.Type.f32, name="input")
    x.output(0).set_names({"input"})
    flat = ops.relu(ops.reshape(x, ops.constant(np.array([8, 8], np.int64)), False), name="flat")
    model = ov.Model([ops.result(flat)], [x], "static")
    out = backend.graph(model).node("flat").outputs[0]  # the graph output's tensor name
    run = backend.stat_runner(
        model,
        [
            StatRequest("input", ("min", "ch_max"), channel_axis=-1),
            StatRequest(out, ("max", "ch_mean", "raw"), channel_axis=1),
        ],
    )
    feeds = _feeds((4, 8), batch=2)
    stats = run(feeds)
    xin = feeds["input"]
    np.testing.assert_allclose(stats["input"]["min"], xin.reshape(2, -1).min(axis=1))
    np.testing.assert_allclose(stats["input"]["ch_max"], xin.max(axis=1))
    relu = np.maximum(xin.reshape(8, 8), 0)  # first dim 8 is not the batch: one sample
    np.testing.assert_allclose(stats[out]["max"], [relu.max()])
    np.testing.assert_allclose(stats[out]["ch_mean"], relu.mean(axis=0)[None], rtol=1e-6)
    assert stats[out]["raw"].shape == (1, 8, 8)


def test_stat_runner_rejects_bad_requests_and_feeds(backend, conv_net):
    with pytest.raises(BackendError, match="no tensor named"):
        backend.stat_runner(conv_net, [StatRequest("nope", ("min",))])
    with pytest.raises(BackendError, match="batch axis"):
        backend.stat_runner(conv_net, [StatRequest("relu_0", ("ch_max",), channel_axis=0)])
    with pytest.raises(BackendError, match="channel axis"):
        backend.stat_runner(conv_net, [StatRequest("relu_0", ("ch_max",))])
    run = backend.stat_runner(conv_net, [StatRequest("relu_0", ("max",))])
    bad = np.zeros((2, 3, 31, 32), np.float32)
    with pytest.raises(DataError, match=r"'input'.*\(2, 3, 31, 32\)") as info:
        run({"input": bad})
    assert "32, 32" in str(info.value)  # the expected shape is named too
    with pytest.raises(DataError, match="image"):
        run({"image": np.zeros((2, 3, 32, 32), np.float32)})


# --------------------------------------------------------------------------- apply


def test_single_conv_equals_numpy_fake_quant_simulation(backend):
    model, weight, bias = single_conv_model()
    rng = np.random.default_rng(1)
    for symmetric_lo in (0.0, -2.0):  # uint8 (non-negative range) and int8 activations
        a_params = activation_params(symmetric_lo, 2.0, symmetric=True)
        # keep inputs off the rounding midpoints so both sides round the same way
        levels = rng.integers(a_params.qmin, a_params.qmax + 1, size=(2, 3, 6, 6))
        x = ((levels + rng.uniform(-0.3, 0.3, size=levels.shape)) * a_params.scale).astype(np.float32)
        w_params = weight_params(weight, 0, bits=7)
        w_q = quantize(weight, w_params)
        recipe = Recipe(
            (ActivationQuant("input", (Edge("conv", 0),), a_params),),
            (WeightQuant("conv", "weight:0", Edge("conv", 1), w_q, w_params),),
        )
        quantized = backend.apply(model, recipe)
        got = backend.runner(quantized)({"input": x})[0]
        xq = fake_quantize(x, a_params).astype(np.float64)
        wq = w_q.astype(np.float64) * w_params.scale.reshape(-1, 1, 1, 1)
        want = _conv2d(xq, wq) + bias.reshape(1, -1, 1, 1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert (
            "u8" in _runtime_precisions(quantized)["Convolution"]
            or "i8" in _runtime_precisions(quantized)["Convolution"]
        )


def _conv2d(x, w):
    """3x3 convolution, stride 1, padding 1 (float64 reference)."""
    b, _, h, wd = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((b, w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            out += np.einsum("bchw,oc->bohw", padded[:, :, i : i + h, j : j + wd], w[:, :, i, j])
    return out


def test_conv_net_quantized_runs_int8_and_close_to_fp32(backend, conv_net):
    feeds = _feeds((3, 32, 32), batch=8)
    recipe = _full_recipe(backend, conv_net, feeds)
    before = backend.fingerprint(conv_net)
    quantized = backend.apply(conv_net, recipe)
    assert backend.fingerprint(conv_net) == before  # the input model is not modified
    fq = [op for op in quantized.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(fq) == len(recipe.activations)
    ref = backend.runner(conv_net)(feeds)[0]
    got = backend.runner(quantized, runtime="openvino", num_threads=2)(feeds)[0]
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    precisions = _runtime_precisions(quantized)
    assert len(precisions["Convolution"]) == 8
    assert set(precisions["Convolution"]) <= INT8
    assert set(precisions["FullyConnected"]) <= INT8


def test_fake_quantize_feeds_only_the_given_edges(backend, conv_net):
    view = backend.graph(conv_net)
    # relu_2 feeds Conv_3 and Conv_4; quantize it for Conv_3 only
    consumers = sorted(n.name for n, _ in view.consumers("relu_2"))
    assert consumers == ["Conv_3/WithoutBiases", "Conv_4/WithoutBiases"]
    params = activation_params(0.0, 4.0, symmetric=True)
    quantized = backend.apply(
        conv_net, Recipe((ActivationQuant("relu_2", (Edge("Conv_3/WithoutBiases", 0),), params),))
    )
    qview = backend.graph(quantized)
    conv3, conv4 = qview.node("Conv_3/WithoutBiases"), qview.node("Conv_4/WithoutBiases")
    fq = qview.producer(conv3.inputs[0])
    assert fq.op_type == "FakeQuantize" and fq.inputs[0] == "relu_2"
    assert fq.attrs["levels"] == 256
    assert conv4.inputs[0] == "relu_2"
    lo, hi = (qview.constant(t) for t in fq.inputs[1:3])
    np.testing.assert_allclose([lo.item(), hi.item()], [0.0, 255 * params.scale], rtol=1e-6)


def test_transformer_quantized_with_smoothing(backend, transformer):
    feeds = _feeds((8, 32), batch=4)
    view = backend.graph(transformer)
    recipe = _full_recipe(backend, transformer, feeds, model_type="transformer")
    assert len(recipe.weights) == 6
    # SmoothQuant on the FFN input: x * s quantized, W rows divided by s
    ffn1 = view.node("ffn1")
    act = next(a for a in recipe.activations if a.edges == (Edge("ffn1", 0),))
    x = _tensors(transformer, [act.tensor], feeds)[act.tensor]
    w = view.constant(ffn1.weight)
    smooth = (np.sqrt(np.abs(w).max(axis=1)) / np.sqrt(np.abs(x).max(axis=(0, 1)))).astype(np.float32)
    smoothed = x * smooth
    a_params = activation_params(float(smoothed.min()), float(smoothed.max()), symmetric=True)
    w_s = w / smooth[:, None]
    w_params = weight_params(w_s, ffn1.weight_axis, bits=BITS)
    new_act = ActivationQuant(act.tensor, act.edges, a_params, smooth=smooth)
    new_w = WeightQuant("ffn1", ffn1.weight, Edge("ffn1", 1), quantize(w_s, w_params), w_params)
    activations = tuple(new_act if a is act else a for a in recipe.activations)
    weights = tuple(new_w if q.node == "ffn1" else q for q in recipe.weights)
    quantized = backend.apply(transformer, Recipe(activations, weights))
    muls = [op for op in quantized.get_ops() if op.get_friendly_name().endswith("rayq_smooth")]
    assert len(muls) == 1
    ref = backend.runner(transformer)(feeds)[0]
    got = backend.runner(quantized)(feeds)[0]
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    precisions = _runtime_precisions(quantized)
    assert set(precisions["FullyConnected"]) <= INT8


@pytest.mark.parametrize("groups", [8, 2])
def test_group_convolution_quantized_runs_int8(backend, groups):
    model = group_conv_model(groups=groups)
    feeds = _feeds((8, 8, 8))
    recipe = _full_recipe(backend, model, feeds)
    quantized = backend.apply(model, recipe)
    ref = backend.runner(model)(feeds)[0]
    got = backend.runner(quantized)(feeds)[0]
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    assert set(_runtime_precisions(quantized)["Convolution"]) <= INT8


def test_bias_replacement(backend):
    model, _weight, bias = single_conv_model()
    feeds = _feeds((3, 6, 6))
    new_bias = np.arange(4, dtype=np.float32)
    quantized = backend.apply(model, Recipe(biases={"conv": new_bias}))
    ref = backend.runner(model)(feeds)[0]
    got = backend.runner(quantized)(feeds)[0]
    np.testing.assert_allclose(got - ref, np.broadcast_to((new_bias - bias).reshape(1, -1, 1, 1), ref.shape), atol=1e-5)
    with pytest.raises(BackendError, match="values"):
        backend.apply(model, Recipe(biases={"conv": np.zeros(3, np.float32)}))


def test_apply_rejects_inconsistent_recipes(backend):
    model, weight, _ = single_conv_model()
    params = activation_params(0.0, 1.0, symmetric=True)
    with pytest.raises(BackendError, match="reads"):
        backend.apply(model, Recipe((ActivationQuant("input", (Edge("conv", 1),), params),)))
    with pytest.raises(BackendError, match="no node"):
        backend.apply(model, Recipe((ActivationQuant("input", (Edge("nope", 0),), params),)))
    twice = ActivationQuant("input", (Edge("conv", 0),), params)
    with pytest.raises(BackendError, match="twice"):
        backend.apply(model, Recipe((twice, twice)))
    w_params = weight_params(weight, 0)
    with pytest.raises(BackendError, match="shape"):
        backend.apply(
            model,
            Recipe(
                weights=(WeightQuant("conv", "weight:0", Edge("conv", 1), quantize(weight, w_params)[:2], w_params),)
            ),
        )


# --------------------------------------------------------------------------- run / save


def test_runner_rejects_onnxruntime_and_bad_feeds(backend, conv_net):
    with pytest.raises(BackendError, match="OpenVINO only"):
        backend.runner(conv_net, runtime="onnxruntime")
    run = backend.runner(conv_net)
    assert run(_feeds((3, 32, 32), batch=2))[0].shape == (2, 10)
    with pytest.raises(DataError, match="input"):
        run({"input": np.zeros((2, 3, 32), np.float32)})
    spec = backend.inputs(conv_net)
    assert [(s.name, s.shape, s.dtype) for s in spec] == [("input", (None, 3, 32, 32), "float32")]


def test_save_reload_and_bytes_round_trip(backend, transformer, tmp_path):
    feeds = _feeds((8, 32), batch=2)
    quantized = backend.apply(transformer, _full_recipe(backend, transformer, feeds, model_type="transformer"))
    want = backend.runner(quantized)(feeds)[0]
    files = backend.save(quantized, str(tmp_path / "out" / "model.xml"))
    assert [f.rsplit(".", 1)[1] for f in files] == ["xml", "bin"]
    reloaded = backend.load(files[0])
    np.testing.assert_allclose(backend.runner(reloaded)(feeds)[0], want, rtol=1e-5, atol=1e-5)
    # loading folds constants but keeps compressed int8 weights: the layers still run in INT8
    assert set(_runtime_precisions(reloaded)["FullyConnected"]) <= INT8
    assert backend.graph(reloaded).node_names() == backend.graph(quantized).node_names()
    data = backend.to_bytes(quantized)
    assert isinstance(data, bytes) and data.startswith(b"RAYQOVIR")
    copy = backend.from_bytes(data)
    del data
    np.testing.assert_allclose(backend.runner(copy)(feeds)[0], want, rtol=1e-5, atol=1e-5)
    assert backend.fingerprint(copy) == backend.fingerprint(quantized)
    assert backend.fingerprint(quantized) != backend.fingerprint(transformer)
    assert sorted(backend.graph(copy).tensors) == sorted(backend.graph(quantized).tensors)
    with pytest.raises(BackendError):
        backend.from_bytes(b"RAYQOVIR" + b"\0" * 30)
    with pytest.raises(BackendError):
        backend.from_bytes(b"not a model")


def test_load_errors(backend, conv_net, tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        backend.load(str(tmp_path / "missing.xml"))
    xml, _weights = backend.save(conv_net, str(tmp_path / "model"))
    assert xml.endswith("model.xml")
    (tmp_path / "model.bin").unlink()
    with pytest.raises(BackendError, match=r"model\.bin"):
        backend.load(xml)
    (tmp_path / "broken.xml").write_text("<net>")
    (tmp_path / "broken.bin").write_bytes(b"")
    with pytest.raises(BackendError, match="cannot read"):
        backend.load(str(tmp_path / "broken.xml"))


def test_save_to_unwritable_path(backend, conv_net, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(BackendError, match="cannot write"):
        backend.save(conv_net, str(blocker / "model.xml"))


def test_size_bytes_is_the_weight_payload_without_serialising():
    from rayq.backends import get_backend
    from rayq.testing.models import resnet_like

    onnx_backend, ov_backend = get_backend("onnx"), get_backend("openvino")
    import openvino as ov

    proto = onnx_backend.load(resnet_like())
    assert abs(onnx_backend.size_bytes(proto) - proto.ByteSize()) <= 8192
    model = ov_backend.load(ov.Core().read_model(proto.SerializeToString(), b""))
    weights = sum(t.ByteSize() for t in proto.graph.initializer)
    assert 0.9 * weights <= ov_backend.size_bytes(model) <= len(ov_backend.to_bytes(model))
