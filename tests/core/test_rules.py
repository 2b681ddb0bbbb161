"""Placement rules on real graph views (ONNX backend used only to build the view)."""

from __future__ import annotations

import numpy as np

from rayq.backends import get_backend
from rayq.core import graph as g
from rayq.core.rules import ACTIVATION, WEIGHT, place
from rayq.testing.models import resnet_like, transformer_block


def _view(model):
    backend = get_backend("onnx")
    return backend.graph(backend.load(model))


def test_concat_inputs_share_one_unified_quantizer_group():
    view = _view(resnet_like(with_concat=True))
    placement = place(view, model_type=None)
    concat = next(n for n in view.nodes if n.meta == g.CONCAT)
    unified = [p for p in placement.points if p.unify == concat.outputs[0]]
    inputs = [p for p in unified if p.tensor != concat.outputs[0]]
    assert sorted(p.tensor for p in inputs) == sorted(concat.inputs)
    assert {e.node for p in inputs for e in p.edges} == {concat.name}
    # the Concat is its own fallback group; its consumers quantize its output with the
    # same (unified) scale, so the Concat runs on INT8 data
    assert concat.name in placement.ops
    assert all(set(p.serves) == {concat.name} for p in inputs)
    assert set(placement.activation_tensors()) >= {concat.outputs[0]}
    assert any(p.tensor == concat.outputs[0] and p.unify == concat.outputs[0] for p in placement.points)


def test_fallback_removes_exactly_the_ops_edges():
    view = _view(resnet_like(with_concat=True))
    placement = place(view, model_type=None)
    op = placement.ops[1]
    before = {p.id: len(e) for p, e in placement.active()}
    after = {p.id: len(e) for p, e in placement.active([op])}
    removed = sum(before.values()) - sum(after.values())
    assert removed == sum(s == op for p in placement.points for s in p.serves)
    assert f"w:{op}" not in after and f"w:{op}" in before


def test_residual_add_quantized_in_cnn_mode_not_in_transformer_mode():
    cnn = place(_view(resnet_like()), model_type=None)
    adds = [n for n in _view(resnet_like()).nodes if n.meta == g.ADD]
    assert adds and all(a.name in cnn.ops for a in adds)
    view = _view(transformer_block())
    tr = place(view, model_type="transformer")
    metas = {view.node(op).meta for op in tr.ops}
    assert metas <= {g.MATMUL, g.CONV, g.CONV_TRANSPOSE}
    softmax_out = [n.outputs[0] for n in view.nodes if n.meta == g.SOFTMAX]
    norm_in = {n.inputs[0] for n in view.nodes if n.meta == g.NORM}
    act_tensors = {p.tensor for p in tr.points if p.kind == ACTIVATION}
    assert not act_tensors & norm_in
    # attention probabilities stay FP32: the MatMul they feed is not quantized at all
    assert not set(softmax_out) & act_tensors
    prob_matmuls = [n for n, _ in view.consumers(softmax_out[0])]
    assert all(n.name not in tr.ops for n in prob_matmuls)
    assert all(p.axis is not None for p in tr.points if p.kind == WEIGHT)


def test_ignored_nodes_stay_fp32():
    view = _view(resnet_like())
    first = next(n.name for n in view.nodes if n.meta == g.CONV)
    placement = place(view, model_type=None, ignored=frozenset({first}))
    assert first not in placement.ops
    assert (first, "ignored scope") in placement.skipped
    assert np.all([first not in p.serves for p in placement.points])


def test_concat_inputs_get_identical_scales_in_the_built_model():
    from onnx import numpy_helper

    import rayq

    model = resnet_like(with_concat=True)
    calib = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    q = rayq.quantize(model, calib, num_workers=1, subset_size=16)
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    producers = {o: n for n in q.graph.node for o in n.output}
    concat = next(n for n in q.graph.node if n.op_type == "Concat")
    dqs = [producers[t] for t in concat.input]
    assert all(n.op_type == "DequantizeLinear" for n in dqs)
    scales = {float(inits[n.input[1]]) for n in dqs}
    zps = {int(inits[n.input[2]]) for n in dqs}
    assert len(scales) == 1 and len(zps) == 1


def _placement(model, model_type=None):
    backend = get_backend("onnx")
    return place(backend.graph(backend.load(model)), model_type=model_type)


def test_first_layer_is_the_stem_conv_of_a_cnn():
    p = _placement(resnet_like())
    assert len(p.first_layer) == 1
    (stem,) = p.first_layer
    assert stem == p.ops[0]


def test_first_layer_ignores_token_ids_masks_and_shape_arithmetic():
    # an int64 token input reaches every layer through the embedding, and the additive
    # mask reaches every attention block: neither makes a MatMul a "first layer"
    p = _placement(transformer_block(layers=2, vocab=50, with_attention_mask=True), "transformer")
    assert p.ops and p.first_layer == frozenset()


def test_first_layer_follows_uint8_pixels_through_cast():
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT, name="cast"),
            helper.make_node("Conv", ["x", "w"], ["y"], name="conv0"),
            helper.make_node("Relu", ["y"], ["z"], name="relu"),
            helper.make_node("Conv", ["z", "w2"], ["out"], name="conv1"),
        ],
        "g",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 4, 4])],
        [w, numpy_helper.from_array(np.ones((2, 4, 3, 3), np.float32), "w2")],
    )
    p = _placement(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert p.first_layer == frozenset({"conv0"})


def _graph(nodes, inits, *, channels=4, size=8, out_channels=2):
    """A hand-built float model: input ``x`` [1, C, H, W], output ``out``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name) for name, shape in inits.items()]
    graph = helper.make_graph(
        [helper.make_node(op, i, o, name=o[0], **attrs) for op, i, o, attrs in nodes],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, out_channels, size, size])],
        init,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _dense_block():
    # x -> conv a -> ya; c1 = Concat(x, ya) -> conv b -> yb; c2 = Concat(x, ya, yb) -> conv out
    return _graph(
        [
            ("Conv", ["x", "wa"], ["ya"], {}),
            ("Concat", ["x", "ya"], ["c1"], {"axis": 1}),
            ("Conv", ["c1", "wb"], ["yb"], {}),
            ("Concat", ["x", "ya", "yb"], ["c2"], {"axis": 1}),
            ("Conv", ["c2", "wc"], ["out"], {}),
        ],
        {"wa": (4, 4, 1, 1), "wb": (4, 8, 1, 1), "wc": (2, 12, 1, 1)},
    )


def test_a_tensor_read_by_several_concats_gets_one_quantizer():
    p = _placement(_dense_block())
    acts = [q for q in p.points if q.kind == ACTIVATION]
    tensors = [q.tensor for q in acts]
    assert sorted(tensors) == sorted(set(tensors)) == ["c1", "c2", "x", "ya", "yb"]
    x = next(q for q in acts if q.tensor == "x")
    assert sorted(e.node for e in x.edges) == ["c1", "c2", "ya"]  # conv a and both Concats share it
    # overlapping Concats form one unified-scale group, set by both outputs' joint range
    assert {q.unify for q in acts} == {"c1"}
    assert all(q.unify_tensors == ("c1", "c2") for q in acts)
    assert set(p.activation_tensors()) == {"c1", "c2"}
    # reverting one Concat leaves the shared quantizer to the other consumers
    active = {q.tensor: [e.node for e in edges] for q, edges in p.active(["c2"]) if q.kind == ACTIVATION}
    assert sorted(active["x"]) == ["c1", "ya"] and "c2" not in active.get("yb", [])


def test_dense_block_builds_one_qdq_per_tensor_with_one_scale():
    from onnx import numpy_helper

    import rayq

    model = _dense_block()
    calib = np.random.default_rng(0).normal(size=(8, 1, 4, 8, 8)).astype(np.float32)
    q = rayq.quantize(model, rayq.Dataset([{"x": c} for c in calib]), num_workers=1, subset_size=8, cache=False)
    quantize = [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
    inputs = [n.input[0] for n in quantize]
    assert len(inputs) == len(set(inputs)) == 5
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert len({float(inits[n.input[1]]) for n in quantize}) == 1


def _se_block():
    # stem conv -> swish (x * sigmoid(x)) -> squeeze-excitation -> projection conv
    return _graph(
        [
            ("Conv", ["x", "w0"], ["y"], {}),
            ("Sigmoid", ["y"], ["ys"], {}),
            ("Mul", ["y", "ys"], ["x1"], {}),  # swish: an activation, not a gate
            ("GlobalAveragePool", ["x1"], ["p"], {}),
            ("Conv", ["p", "ws1", "bs1"], ["s1"], {}),
            ("Relu", ["s1"], ["r"], {}),
            ("Conv", ["r", "ws2", "bs2"], ["s2"], {}),
            ("HardSigmoid", ["s2"], ["gate"], {}),
            ("Mul", ["x1", "gate"], ["m"], {}),
            ("Conv", ["m", "w1"], ["out"], {}),
        ],
        {"w0": (4, 4, 1, 1), "ws1": (2, 4, 1, 1), "bs1": (2,), "ws2": (4, 2, 1, 1), "bs2": (4,), "w1": (2, 4, 1, 1)},
    )


def test_squeeze_excitation_quantizes_the_gating_mul_not_the_branch_convs():
    p = _placement(_se_block())
    edges = {(e.node, e.index) for q in p.points if q.kind == ACTIVATION for e in q.edges}
    gating = "m"
    assert gating in p.ops and {(gating, 0), (gating, 1)} <= edges  # x and its gate
    assert "x1" not in p.ops  # the swish Mul is an activation function
    skipped = dict(p.skipped)
    assert "squeeze-excitation" in skipped["s1"] and "squeeze-excitation" in skipped["s2"]
    assert not any(q.tensor in ("p", "r") for q in p.points)
    # the pooled tensor x1 has one quantizer, shared by the pooling and the gating Mul
    x1 = [q for q in p.points if q.tensor == "x1"]
    assert len(x1) == 1 and {e.node for e in x1[0].edges} == {"p", "m"}


def _on_runtime(view, runtime):
    """The same graph view, read as a backend for ``runtime`` would report it."""
    return g.GraphView(
        list(view.nodes), dict(view.tensors), list(view.inputs), list(view.outputs), view.constant, runtime=runtime
    )


def test_squeeze_excitation_branch_is_quantized_on_openvino_only():
    view = _view(_se_block())
    assert view.runtime == "onnxruntime"
    ort, ov_ = place(view, model_type=None), place(_on_runtime(view, "openvino"), model_type=None)
    unknown = place(_on_runtime(view, None), model_type=None)
    assert {"s1", "s2"} <= dict(ort.skipped).keys() and {"s1", "s2"} <= dict(unknown.skipped).keys()
    # OpenVINO: the branch Convs are quantized like any Conv (input and weight)...
    assert {"s1", "s2"} <= set(ov_.ops) and not {"s1", "s2"} & dict(ov_.skipped).keys()
    acts = {q.tensor: {e.node for e in q.edges} for q in ov_.points if q.kind == ACTIVATION}
    assert acts["p"] == {"s1"} and acts["r"] == {"s2"}
    assert {"w:s1", "w:s2"} <= {q.id for q in ov_.points if q.kind == WEIGHT}
    # ...and everything else is placed as on ONNX Runtime
    ort_acts = {q.tensor: {e.node for e in q.edges} for q in ort.points if q.kind == ACTIVATION}
    assert {t: e for t, e in acts.items() if t not in ("p", "r")} == ort_acts
    assert ov_.group("s1") == ("a:p", "w:s1")


def test_default_mode_quantizes_the_attention_probabilities_matmul_symmetrically():
    view = _view(transformer_block())
    softmax_out = [n.outputs[0] for n in view.nodes if n.meta == g.SOFTMAX]
    prob_matmuls = {n.name for n, _ in view.consumers(softmax_out[0])}
    default = place(view, model_type=None)
    assert prob_matmuls <= set(default.ops)
    served = [p for p in default.points if p.kind == ACTIVATION and set(p.serves) & prob_matmuls]
    assert len(served) == 2 and all(p.symmetric for p in served)  # probabilities and V
    transformer = place(view, model_type="transformer")
    assert not prob_matmuls & set(transformer.ops)


def test_layer_scale_behind_a_transpose_is_quantized_not_one_fused_to_its_conv():
    # ConvNeXt: conv -> bias -> Transpose -> gamma * x -> residual Add; and conv -> gamma * x
    model = _graph(
        [
            ("Conv", ["x", "w0", "b0"], ["y"], {}),
            ("Transpose", ["y"], ["t"], {"perm": [0, 1, 3, 2]}),
            ("Mul", ["gamma", "t"], ["s"], {}),
            ("Add", ["s", "x"], ["r"], {}),
            ("Conv", ["r", "w1"], ["c"], {}),
            ("Mul", ["c", "gamma"], ["out"], {}),
        ],
        {"w0": (4, 4, 1, 1), "b0": (4,), "gamma": (1, 4, 1, 1), "w1": (2, 4, 1, 1)},
    )
    p = _placement(model)
    assert "s" in p.ops and "out" not in p.ops
    scale = next(q for q in p.points if "s" in q.serves)
    # the quantizer moved up through the Transpose: it runs on INT8 data
    assert scale.tensor == "y" and [(e.node, e.index) for e in scale.edges] == [("t", 0)]


def _shuffle_block():
    # ShuffleNet: c1 = Concat(x, relu(conv x)) -> channel shuffle -> split in two halves;
    # one half goes to the next Concat as is, the other through a Conv
    from onnx import numpy_helper

    model = _graph(
        [
            ("Conv", ["x", "wa"], ["ya"], {}),
            ("Relu", ["ya"], ["ra"], {}),
            ("Concat", ["x", "ra"], ["c1"], {"axis": 1}),
            ("Reshape", ["c1", "shape5"], ["r5"], {}),
            ("Transpose", ["r5"], ["t5"], {"perm": [0, 2, 1, 3, 4]}),
            ("Reshape", ["t5", "shape4"], ["s"], {}),
            ("Slice", ["s", "start0", "mid", "axis1"], ["sl0"], {}),
            ("Slice", ["s", "mid", "end", "axis1"], ["sl1"], {}),
            ("Conv", ["sl1", "wb"], ["yb"], {}),
            ("Relu", ["yb"], ["rb"], {}),
            ("Concat", ["sl0", "rb"], ["c2"], {"axis": 1}),
            ("Conv", ["c2", "wc"], ["out"], {}),
        ],
        {"wa": (4, 4, 1, 1), "wb": (4, 4, 1, 1), "wc": (2, 8, 1, 1)},
    )
    for name, value in {
        "shape5": [1, 2, 4, 8, 8],
        "shape4": [1, 8, 8, 8],
        "start0": [0],
        "mid": [4],
        "end": [8],
        "axis1": [1],
    }.items():
        model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
    return model


def test_channel_shuffle_split_shares_one_quantizer_and_one_scale_with_the_concats():
    p = _placement(_shuffle_block())
    acts = {q.tensor: q for q in p.points if q.kind == ACTIVATION}
    # both halves are quantized once, before the Slices (which then move INT8 data)
    assert "sl0" not in acts and "sl1" not in acts
    assert sorted(e.node for e in acts["s"].edges) == ["sl0", "sl1"]
    # the second Concat reads the first one's output through data movement only: one
    # unified-scale group, so the shuffled values are already on the second one's grid
    assert acts["s"].unify_tensors == ("c1", "c2")
    assert acts["rb"].unify_tensors == ("c1", "c2") and acts["ra"].unify_tensors == ("c1", "c2")


def test_a_concat_whose_output_only_leaves_the_model_stays_fp32():
    # a recurrent-state pattern: the new state is Concat(conv output, x) and only a graph
    # output reads it (through a Reshape); quantizing its inputs adds Q/DQ work and error
    # to what the model returns and gains no INT8 op (zoo: Silero-style VAD, 1.32x NNCF)
    from onnx import TensorProto, helper

    model = _graph(
        [
            ("Conv", ["x", "wa"], ["ya"], {}),
            ("Concat", ["ya", "x"], ["state"], {"axis": 1}),
            ("Reshape", ["state", "shape"], ["out"], {}),
        ],
        {"wa": (4, 4, 1, 1)},
        out_channels=8,
    )
    model.graph.initializer.append(helper.make_tensor("shape", TensorProto.INT64, [4], [1, 8, 8, 8]))
    p = _placement(model)
    assert p.ops == ("ya",)
    assert {q.tensor for q in p.points if q.kind == ACTIVATION} == {"x"}  # the Conv's input only
    # the same Concat feeding a Conv is quantized as before
    dense = _placement(_dense_block())
    assert {"c1", "c2"} <= set(dense.ops)
