"""Normalising exporter patterns on load, and a writer that never meets one it did not
plan for: Constant nodes, subgraph references, shared and pre-quantized weights,
float16 ops, biases that are not initializers. Each test is a regression test for a
crash or a wrong output seen on real models."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import rayq
from rayq.backends import get_backend
from rayq.backends.onnx import normalize, reader
from rayq.core import graph as g
from rayq.core.params import quantize, weight_params
from rayq.core.recipe import Recipe, WeightQuant
from rayq.core.rules import Edge
from rayq.testing.models import random_inputs, resnet_like, transformer_block
from tests.e2e import graph_patterns as patterns


@pytest.fixture(scope="module")
def backend():
    return get_backend("onnx")


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def _quantize(model, items, **kwargs):
    return rayq.quantize(model, items, subset_size=len(items), num_workers=1, cache=False, **kwargs)


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# --------------------------------------------------------------------------------------
# Constant nodes
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "attrs, expected",
    [
        (
            {"value": numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3))},
            np.arange(6, dtype=np.float32).reshape(2, 3),
        ),
        ({"value_float": 0.5}, np.float32(0.5)),
        ({"value_floats": [1.0, 2.0]}, np.array([1, 2], np.float32)),
        ({"value_int": 3}, np.int64(3)),
        ({"value_ints": [-1, 4]}, np.array([-1, 4], np.int64)),
        (
            {
                "sparse_value": helper.make_sparse_tensor(
                    numpy_helper.from_array(np.array([5.0, 7.0], np.float32)),
                    numpy_helper.from_array(np.array([1, 4], np.int64)),
                    [2, 3],
                )
            },
            np.array([[0, 5, 0], [0, 7, 0]], np.float32),
        ),
    ],
    ids=["value", "value_float", "value_floats", "value_int", "value_ints", "sparse_value"],
)
def test_constant_value_reads_every_attribute_form(attrs, expected):
    t = normalize.constant_value(helper.make_node("Constant", [], ["c"], **attrs))
    assert t.name == "c"
    value = numpy_helper.to_array(t)
    assert value.dtype == expected.dtype
    np.testing.assert_array_equal(value, expected)
    assert normalize.constant_value(helper.make_node("Constant", [], ["s"], value_strings=["a"])) is None


def test_constant_nodes_become_initializers_except_graph_outputs(backend):
    model, _, _ = patterns.paddle_text_detector()
    out = helper.make_node("Constant", [], ["version"], value_int=2)
    model.graph.node.append(out)
    model.graph.output.append(helper.make_tensor_value_info("version", T.INT64, []))
    loaded = backend.load(model)
    constants = [n.output[0] for n in loaded.graph.node if n.op_type == "Constant"]
    assert constants == ["version"]  # a graph output stays a node
    inits = _inits(loaded)
    assert {"conv1.w_0", "dw.b_0", "half", "up"} <= set(inits)
    assert inits["shape"].dtype == np.int64 and inits["shape"].tolist() == [-1, 1, 16, 16]  # from value_ints
    view = backend.graph(loaded)
    stem = next(n for n in view.nodes if n.op_type == "Conv")
    assert stem.weight == "conv1.w_0" and stem.weight_input == 1


@pytest.mark.parametrize("bias_correction", [True, False], ids=["fast", "exact"])
def test_constant_weights_and_biases_quantize_with_bias_correction(bias_correction):
    """Paddle2ONNX-style Constant biases crashed the writer with a KeyError, in fast and
    in exact bias correction."""
    model, items, feeds = patterns.paddle_text_detector()
    q = _quantize(model, items, fast_bias_correction=bias_correction)
    onnx.checker.check_model(q, full_check=True)
    assert not [n for n in q.graph.node if n.op_type == "Constant"]
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    prods = {o: n for n in q.graph.node for o in n.output}
    assert all(prods[c.input[1]].op_type == "DequantizeLinear" for c in convs)
    ref, out = _run(model, feeds)[0], _run(q, feeds)[0]
    assert np.sum((ref - out) ** 2) / np.sum(ref**2) < 0.02


def _conv_with_bias(bias_node: onnx.NodeProto | None, bias: str) -> onnx.ModelProto:
    """A Conv whose bias is ``bias``, produced by ``bias_node`` (not an initializer)."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = ([bias_node] if bias_node is not None else []) + [
        helper.make_node("Conv", ["x", "w", bias], ["y"], name="conv", pads=[1] * 4)
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", T.FLOAT, [1, 3, 6, 6]),
            helper.make_tensor_value_info("b_in", T.FLOAT, [4]),
        ],
        [helper.make_tensor_value_info("y", T.FLOAT, [1, 4, 6, 6])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_writer_replaces_a_constant_node_bias_and_skips_a_computed_one(backend, caplog):
    new = np.arange(4, dtype=np.float32)
    const = helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(np.ones(4, np.float32)))
    q = backend.apply(_conv_with_bias(const, "b"), Recipe(biases={"conv": new}))
    conv = next(n for n in q.graph.node if n.op_type == "Conv")
    np.testing.assert_array_equal(_inits(q)[conv.input[2]], new)
    computed = _conv_with_bias(helper.make_node("Relu", ["b_in"], ["b"]), "b")
    with caplog.at_level(logging.WARNING, logger="rayq"):
        q = backend.apply(computed, Recipe(biases={"conv": new}))
    assert next(n for n in q.graph.node if n.op_type == "Conv").input[2] == "b"
    assert "bias correction of 'conv' skipped" in caplog.text


def test_int32_bias_skips_a_bias_that_is_not_an_initializer(backend):
    model = _conv_with_bias(helper.make_node("Relu", ["b_in"], ["b"]), "b")
    w = numpy_helper.to_array(model.graph.initializer[0])
    wp = weight_params(w, 0)
    q = backend.apply(model, Recipe(weights=(WeightQuant("conv", "w", Edge("conv", 1), quantize(w, wp), wp),)))
    onnx.checker.check_model(q, full_check=True)
    assert next(n for n in q.graph.node if n.op_type == "Conv").input[2] == "b"


# --------------------------------------------------------------------------------------
# shared and pre-quantized weights
# --------------------------------------------------------------------------------------
def test_shared_weight_quantized_per_user_and_kept_for_an_fp32_user():
    """Two Convs read one weight and one bias initializer. Each quantized Conv gets its
    own int8 copy (equal to the shared weight within half a step) and its own corrected
    bias; a Conv kept FP32 by the ignored scope still reads the untouched original."""
    model, items, _feeds = patterns.shared_weights()
    shared_w, shared_b = model.graph.node[2].input[1], model.graph.node[2].input[2]
    original = _inits(model)
    q = _quantize(model, items, ignored_scope=rayq.IgnoredScope(names=["Conv_c2"]))
    onnx.checker.check_model(q, full_check=True)
    nodes = {n.name: n for n in q.graph.node}
    inits = _inits(q)
    assert list(nodes["Conv_c2"].input[1:]) == [shared_w, shared_b]  # the FP32 user
    np.testing.assert_array_equal(inits[shared_w], original[shared_w])
    np.testing.assert_array_equal(inits[shared_b], original[shared_b])
    prods = {o: n for n in q.graph.node for o in n.output}
    dq = prods[nodes["Conv_c1"].input[1]]
    values, scale = inits[dq.input[0]], inits[dq.input[1]]
    deq = values.astype(np.float32) * scale.reshape(-1, 1, 1, 1)
    assert np.all(np.abs(deq - original[shared_w]) <= scale.reshape(-1, 1, 1, 1) / 2 + 1e-7)
    mm = [n for n in q.graph.node if n.op_type == "MatMul"]
    assert len({n.input[1] for n in mm}) == 2 and all(prods[n.input[1]].op_type == "DequantizeLinear" for n in mm)


def test_prequantized_weight_is_left_alone_and_reported(backend, caplog):
    """A Conv reading a DequantizeLinear of an int8 weight: the DQ is not folded into a
    float weight and quantized again; the Conv stays as it is and is reported."""
    model, items, _feeds = patterns.prequantized_weights()
    view = backend.graph(backend.load(model))
    conv = view.node("Conv_c1")
    assert conv.meta == g.OTHER and conv.weight_input is None
    assert view.fp32_ops == (("Conv_c1", "already quantized (reads a DequantizeLinear output)"),)
    with caplog.at_level(logging.INFO, logger="rayq"):
        q = _quantize(model, items)
    assert "1 ops left FP32: already quantized (reads a DequantizeLinear output)" in caplog.text
    nodes = {n.name: n for n in q.graph.node}
    assert list(nodes["Conv_c1"].input[:2]) == ["x", "w_deq"]  # no Q/DQ added on x, weight untouched
    dq = next(n for n in q.graph.node if n.output[0] == "w_deq")
    assert list(dq.input) == ["w_int8", "w_scale", "w_zp"]
    np.testing.assert_array_equal(_inits(q)["w_int8"], _inits(model)["w_int8"])
    assert nodes["Conv_y"].input[0] != "r1"  # the FP32 Conv after it is quantized


def test_float16_ops_stay_fp32_and_are_reported(backend, caplog):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float16), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
            helper.make_node("Cast", ["c"], ["y"], name="cast", to=T.FLOAT),
        ],
        "g",
        [helper.make_tensor_value_info("x", T.FLOAT16, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["N", 4, 8, 8])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    reason = "computes in float16 (rayq quantizes float32 ops)"
    assert backend.graph(backend.load(model)).fp32_ops == (("conv", reason),)
    with caplog.at_level(logging.INFO, logger="rayq"):
        q = _quantize(model, list(rng.normal(size=(4, 1, 3, 8, 8)).astype(np.float16)))
    assert [n.op_type for n in q.graph.node] == ["Conv", "Cast"]
    assert "1 ops left FP32: computes in float16" in caplog.text
    _run(q, {"x": np.ones((1, 3, 8, 8), np.float16)})  # still loads and runs


# --------------------------------------------------------------------------------------
# subgraphs
# --------------------------------------------------------------------------------------
def _nested_if() -> onnx.ModelProto:
    """An If whose then-branch holds another If; the innermost branch reads ``w_deep``,
    an initializer of the main graph that no main-graph node reads."""
    model, _, _ = patterns.if_subgraph()
    if_node = next(n for n in model.graph.node if n.op_type == "If")
    inner = helper.make_node(
        "If",
        ["cond"],
        ["then_out"],
        name="inner",
        then_branch=patterns.branch("deep", "w_deep"),
        else_branch=patterns.branch("deep2", "w_then"),
    )
    then = next(a for a in if_node.attribute if a.name == "then_branch")
    del then.g.node[:]
    then.g.node.append(inner)
    model.graph.initializer.append(numpy_helper.from_array(np.eye(64, dtype=np.float32), "w_deep"))
    onnx.checker.check_model(model, full_check=True)
    return model


def test_initializers_read_only_in_nested_subgraphs_survive_load_and_write(backend, caplog):
    model = _nested_if()
    model.graph.node.insert(0, helper.make_node("Identity", ["w_then"], ["unused_copy"], name="fold_me"))
    loaded = backend.load(model)  # folding runs (the Identity), then drops unused initializers
    assert {"w_then", "w_else", "w_deep"} <= set(_inits(loaded)) and "unused_copy" not in _inits(loaded)
    view = backend.graph(loaded)
    assert sorted(name for name, _ in view.fp32_ops) == ["if/deep2_mm", "if/deep_mm", "if/else_mm"]
    _, items, feeds = patterns.if_subgraph()
    with caplog.at_level(logging.INFO, logger="rayq"):
        q = _quantize(model, items)
    assert "3 ops left FP32: inside a subgraph of If 'if' (subgraphs stay FP32)" in caplog.text
    onnx.checker.check_model(q, full_check=True)
    for cond in (True, False):
        feeds["cond"] = np.array(cond)
        ref, out = _run(model, feeds)[0], _run(q, feeds)[0]
        assert np.sum((ref - out) ** 2) / np.sum(ref**2) < 0.02


def test_references_include_subgraph_reads():
    model = _nested_if()
    if_node = next(n for n in model.graph.node if n.op_type == "If")
    assert {"cond", "h", "w_then", "w_else", "w_deep"} <= normalize.references(if_node)
    assert {"w_deep", "y"} <= normalize.used_names(model.graph)
    assert {"inner", "deep_out", "if"} <= normalize.all_names(model.graph)


def test_loaded_view_of_a_model_without_subgraphs_reports_nothing(backend):
    model, _, _ = patterns.multi_io()
    assert backend.graph(backend.load(model)).fp32_ops == ()
    assert reader.opset(backend.load(model)) == 17


# --------------------------------------------------------------------------------------
# graph inputs and versions
# --------------------------------------------------------------------------------------
def test_initializers_listed_as_inputs_become_constants(backend):
    model, _, _ = patterns.initializers_as_inputs()
    assert len(model.graph.input) > 1
    loaded = backend.load(model)
    assert [vi.name for vi in loaded.graph.input] == ["x"]
    assert [s.name for s in backend.inputs(loaded)] == ["x"]
    assert backend.graph(loaded).node("Conv_c2").weight_input == 1  # weights are constants, quantizable


def test_opset_upgrade_raises_the_ir_version_to_what_the_opset_needs(backend):
    model, _, _ = patterns.conv_resize_net(11)
    assert model.ir_version == 6
    loaded = backend.load(model)
    assert reader.opset(loaded) == 13 and loaded.ir_version >= 7
    onnx.checker.check_model(loaded, full_check=True)


def _constified(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every initializer held in a ``Constant`` node instead, as
    Paddle2ONNX writes weights."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    consts = [
        helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in out.graph.initializer
    ]
    nodes = list(out.graph.node)
    del out.graph.initializer[:]
    del out.graph.node[:]
    out.graph.node.extend(consts + nodes)
    onnx.checker.check_model(out, full_check=True)
    return out


@pytest.mark.parametrize(
    "make, kwargs",
    [
        (lambda: resnet_like(), {}),
        (lambda: transformer_block(layers=1, vocab=50, with_attention_mask=True), {"model_type": "transformer"}),
    ],
    ids=["cnn", "transformer"],
)
def test_constant_stored_weights_quantize_exactly_like_initializers(make, kwargs):
    model = make()
    items, feeds = random_inputs(model, 16, seed=1), random_inputs(model, 1, batch=2, seed=2)[0]
    expected = _run(_quantize(model, items, **kwargs), feeds)
    actual = _run(_quantize(_constified(model), items, **kwargs), feeds)
    for e, a in zip(expected, actual):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize(
    "make, kwargs",
    [
        (lambda: resnet_like(with_concat=True), {}),
        (lambda: transformer_block(layers=1, vocab=50), {"model_type": "transformer"}),
    ],
    ids=["cnn", "transformer"],
)
def test_quantizing_a_qdq_model_again_leaves_it_alone(make, kwargs):
    """A model that is already QDQ (here rayq's own output) gets no second quantizer:
    not on its DequantizeLinear outputs, nor behind a Reshape/Transpose of them (the
    attention's Q x K^T)."""
    model = make()
    items, feeds = random_inputs(model, 16, seed=1), random_inputs(model, 1, batch=2, seed=2)[0]
    once = _quantize(model, items, **kwargs)
    twice = _quantize(once, items, **kwargs)
    assert [n.op_type for n in twice.graph.node] == [n.op_type for n in once.graph.node]
    np.testing.assert_array_equal(_run(twice, feeds)[0], _run(once, feeds)[0])
