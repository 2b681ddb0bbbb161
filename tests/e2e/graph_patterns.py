"""Small ONNX models with the graph patterns real exporters produce, built with
``onnx.helper``: each builder returns ``(model, calibration items, evaluation feeds)``.
Used by ``test_graph_patterns.py`` and the ONNX backend's normalisation tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper

#: IR version per opset: the lowest that carries the opset (what exporters write).
IR_FOR_OPSET = {11: 6, 13: 7, 15: 8, 17: 8, 19: 9, 21: 10}


class _B:
    """A tiny model builder: seeded weights, unique names."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def w(self, *shape: int, scale: float = 0.3, name: str | None = None) -> str:
        name = name or f"w{len(self.inits)}"
        self.inits.append(numpy_helper.from_array((self.rng.normal(0, scale, shape)).astype(np.float32), name))
        return name

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{op}_{output}", **attrs))
        return output

    def model(self, inputs, outputs, *, opset: int = 17) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", inputs, outputs, self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_FOR_OPSET.get(opset, 8)
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def _images(n: int, shape, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


# --------------------------------------------------------------------------------------
# the cases: each returns (model, calibration items, evaluation feeds)
# --------------------------------------------------------------------------------------
def conv_resize_net(opset: int, ir_version: int | None = None):
    """Strided Conv, depthwise Conv, residual Add, Resize, 1x1 Conv; dynamic batch and
    spatial dims, evaluated at a spatial size that calibration never saw."""
    b = _B(opset)
    roi = b.const("roi", np.zeros(0, np.float32)) if opset < 13 else ""  # opset 11: roi is required
    scales = b.const("scales", np.array([1, 1, 2, 2], np.float32))
    b.op("Conv", ["x", b.w(8, 3, 3, 3), b.w(8, scale=0.1)], "c1", pads=[1] * 4, strides=[2, 2])
    b.op("Relu", ["c1"], "r1")
    b.op("Conv", ["r1", b.w(8, 1, 3, 3)], "c2", pads=[1] * 4, group=8)
    b.op("Add", ["c2", "r1"], "a")
    b.op("Resize", ["a", roi, scales], "u", mode="nearest")
    b.op("Conv", ["u", b.w(4, 8, 1, 1), b.w(4, scale=0.1)], "y")
    model = b.model(
        [helper.make_tensor_value_info("x", T.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["N", 4, "H2", "W2"])],
        opset=opset,
    )
    if ir_version is not None:
        model.ir_version = ir_version
    return model, list(_images(16, (1, 3, 16, 16))), {"x": _images(2, (3, 20, 24), seed=9)}


def multi_io():
    """Two inputs (an image and a vector), two outputs."""
    b = _B(1)
    b.op("Conv", ["img", b.w(8, 3, 3, 3), b.w(8, scale=0.1)], "c", pads=[1] * 4)
    b.op("Relu", ["c"], "r")
    b.op("GlobalAveragePool", ["r"], "p")
    b.op("Flatten", ["p"], "f")
    b.op("Gemm", ["vec", b.w(32, 32, scale=0.2), b.w(32, scale=0.1)], "v", transB=1)
    b.op("Relu", ["v"], "vr")
    b.op("Concat", ["f", "vr"], "cat", axis=1)
    b.op("Gemm", ["cat", b.w(3, 40), b.w(3, scale=0.1)], "logits", transB=1)
    b.op("MatMul", ["vr", b.w(32, 4)], "aux")
    model = b.model(
        [
            helper.make_tensor_value_info("img", T.FLOAT, ["N", 3, 8, 8]),
            helper.make_tensor_value_info("vec", T.FLOAT, ["N", 32]),
        ],
        [
            helper.make_tensor_value_info("logits", T.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("aux", T.FLOAT, ["N", 4]),
        ],
    )
    items = [{"img": i, "vec": v} for i, v in zip(_images(16, (1, 3, 8, 8)), _images(16, (1, 32), seed=2))]
    return model, items, {"img": _images(3, (3, 8, 8), seed=5), "vec": _images(3, (32,), seed=6)}


def token_ids():
    """Integer inputs: token ids through an embedding Gather, an int64 mask cast to float."""
    b = _B(2)
    b.op("Gather", [b.w(50, 16, scale=1.0), "ids"], "emb")
    b.op("Cast", ["mask"], "maskf", to=T.FLOAT)
    b.op("Unsqueeze", ["maskf", b.const("axis", np.array([-1], np.int64))], "m3")
    b.op("Mul", ["emb", "m3"], "h0")
    b.op("MatMul", ["h0", b.w(16, 32)], "h1")
    b.op("Add", ["h1", b.w(32, scale=0.1)], "h2")
    b.op("Relu", ["h2"], "h3")
    b.op("MatMul", ["h3", b.w(32, 4)], "h4")
    b.op("Add", ["h4", b.w(4, scale=0.1)], "out")
    model = b.model(
        [
            helper.make_tensor_value_info("ids", T.INT64, ["N", "S"]),
            helper.make_tensor_value_info("mask", T.INT64, ["N", "S"]),
        ],
        [helper.make_tensor_value_info("out", T.FLOAT, ["N", "S", 4])],
    )
    rng = np.random.default_rng(3)
    items = [
        {"ids": rng.integers(0, 50, (1, 12)), "mask": (rng.random((1, 12)) > 0.2).astype(np.int64)} for _ in range(16)
    ]
    return model, items, {"ids": rng.integers(0, 50, (2, 7)), "mask": np.ones((2, 7), np.int64)}


def output_is_intermediate():
    """Graph outputs that other nodes also read: a Relu and a Flatten (whose quantized
    value the writer re-quantizes for the Gemm)."""
    b = _B(3)
    b.op("Conv", ["x", b.w(8, 3, 3, 3), b.w(8, scale=0.1)], "c1", pads=[1] * 4)
    b.op("Relu", ["c1"], "feat")
    b.op("Conv", ["feat", b.w(8, 8, 3, 3, scale=0.15)], "c2", pads=[1] * 4, strides=[2, 2])
    b.op("MaxPool", ["c2"], "mp", kernel_shape=[2, 2], strides=[2, 2])
    b.op("Flatten", ["mp"], "flat")
    b.op("Gemm", ["flat", b.w(5, 32, scale=0.2), b.w(5, scale=0.1)], "logits", transB=1)
    model = b.model(
        [helper.make_tensor_value_info("x", T.FLOAT, ["N", 3, 8, 8])],
        [
            helper.make_tensor_value_info("feat", T.FLOAT, ["N", 8, 8, 8]),
            helper.make_tensor_value_info("flat", T.FLOAT, ["N", 32]),
            helper.make_tensor_value_info("logits", T.FLOAT, ["N", 5]),
        ],
    )
    return model, list(_images(16, (1, 3, 8, 8))), {"x": _images(2, (3, 8, 8), seed=4)}


def _constant(b: _B, name: str, **value) -> str:
    b.nodes.append(helper.make_node("Constant", [], [name], name=f"const_{name}", **value))
    return name


def _tensor(b: _B, name: str, *shape: int, scale: float = 0.3, positive: bool = False) -> str:
    value = b.rng.normal(0, scale, shape).astype(np.float32)
    return _constant(b, name, value=numpy_helper.from_array(np.abs(value) + 0.5 if positive else value, name))


def paddle_text_detector():
    """A DBNet-style detector as Paddle2ONNX exports it: every weight, bias and
    BatchNorm parameter in a ``Constant`` node, scalars as ``value_float(s)`` /
    ``value_ints``, a stem Conv, HardSwish, depthwise Conv, upsampling and a Sigmoid map."""
    b = _B(4)
    b.op("Conv", ["x", _tensor(b, "conv1.w_0", 8, 3, 3, 3)], "stem", pads=[1] * 4, strides=[2, 2])
    b.op(
        "BatchNormalization",
        [
            "stem",
            _tensor(b, "bn1.scale", 8, positive=True),
            _tensor(b, "bn1.offset", 8),
            _tensor(b, "bn1.mean", 8, scale=0.1),
            _tensor(b, "bn1.var", 8, positive=True),
        ],
        "bn1",
    )
    b.op("HardSwish", ["bn1"], "hs1")
    b.op(
        "Conv",
        ["hs1", _tensor(b, "dw.w_0", 8, 1, 3, 3), _tensor(b, "dw.b_0", 8, scale=0.1)],
        "dw",
        pads=[1] * 4,
        group=8,
    )
    b.op("Relu", ["dw"], "dwr")
    b.op("Conv", ["dwr", _tensor(b, "pw.w_0", 16, 8, 1, 1), _tensor(b, "pw.b_0", 16, scale=0.1)], "pw")
    b.op("Mul", ["pw", _constant(b, "half", value_float=0.5)], "pwh")
    b.op("Resize", ["pwh", "", _constant(b, "up", value_floats=[1.0, 1.0, 2.0, 2.0])], "up2", mode="nearest")
    b.op(
        "Conv",
        ["up2", _tensor(b, "head.w_0", 1, 16, 3, 3, scale=0.1), _tensor(b, "head.b_0", 1, scale=0.1)],
        "logit",
        pads=[1] * 4,
    )
    b.op("Reshape", ["logit", _constant(b, "shape", value_ints=[-1, 1, 16, 16])], "logit2")
    b.op("Sigmoid", ["logit2"], "prob")
    model = b.model(
        [helper.make_tensor_value_info("x", T.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("prob", T.FLOAT, ["N", 1, 16, 16])],
    )
    return model, list(_images(16, (1, 3, 16, 16))), {"x": _images(2, (3, 16, 16), seed=7)}


def identity_and_fp16_weights():
    """Weights stored as FP16 and Cast to float; a bias and a weight behind Identity."""
    b = _B(5)
    b.inits.append(numpy_helper.from_array(b.rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float16), "w16"))
    b.op("Cast", ["w16"], "w_cast", to=T.FLOAT)
    b.op("Identity", [b.w(8, scale=0.1)], "b_id")
    b.op("Conv", ["x", "w_cast", "b_id"], "c1", pads=[1] * 4)
    b.op("Relu", ["c1"], "r1")
    b.op("Identity", [b.w(4, 8, 3, 3, scale=0.2)], "w_id")
    b.op("Conv", ["r1", "w_id"], "y", pads=[1] * 4)
    model = b.model(
        [helper.make_tensor_value_info("x", T.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["N", 4, 8, 8])],
    )
    return model, list(_images(16, (1, 3, 8, 8))), {"x": _images(2, (3, 8, 8), seed=8)}


def shared_weights():
    """One weight and bias initializer read by two Convs, one weight by two MatMuls."""
    b = _B(6)
    w, bias = b.w(8, 8, 3, 3, scale=0.15), b.w(8, scale=0.1)
    b.op("Conv", ["x", b.w(8, 3, 3, 3), b.w(8, scale=0.1)], "c0", pads=[1] * 4)
    b.op("Relu", ["c0"], "r0")
    b.op("Conv", ["r0", w, bias], "c1", pads=[1] * 4)
    b.op("Relu", ["c1"], "r1")
    b.op("Conv", ["r1", w, bias], "c2", pads=[1] * 4)
    b.op("GlobalAveragePool", ["c2"], "p")
    b.op("Flatten", ["p"], "f")
    m = b.w(8, 8, scale=0.4)
    b.op("MatMul", ["f", m], "m1")
    b.op("Relu", ["m1"], "mr")
    b.op("MatMul", ["mr", m], "y")
    model = b.model(
        [helper.make_tensor_value_info("x", T.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["N", 8])],
    )
    return model, list(_images(16, (1, 3, 8, 8))), {"x": _images(2, (3, 8, 8), seed=10)}


def prequantized_weights():
    """A Conv whose weight is already int8 behind a DequantizeLinear (left as it is),
    followed by an FP32 Conv (quantized)."""
    b = _B(7)
    wq = b.rng.integers(-100, 100, (8, 3, 3, 3)).astype(np.int8)
    b.inits.append(numpy_helper.from_array(wq, "w_int8"))
    b.op(
        "DequantizeLinear",
        ["w_int8", b.const("w_scale", np.full(8, 0.003, np.float32)), b.const("w_zp", np.zeros(8, np.int8))],
        "w_deq",
        axis=0,
    )
    b.op("Conv", ["x", "w_deq", b.w(8, scale=0.1)], "c1", pads=[1] * 4)
    b.op("Relu", ["c1"], "r1")
    b.op("Conv", ["r1", b.w(4, 8, 3, 3, scale=0.2)], "y", pads=[1] * 4)
    model = b.model(
        [helper.make_tensor_value_info("x", T.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["N", 4, 8, 8])],
    )
    return model, list(_images(16, (1, 3, 8, 8))), {"x": _images(2, (3, 8, 8), seed=11)}


def branch(name: str, weight: str) -> onnx.GraphProto:
    """A subgraph reading the main graph's ``h`` and initializer ``weight`` (outer scope)."""
    return helper.make_graph(
        [helper.make_node("MatMul", ["h", weight], [f"{name}_out"], name=f"{name}_mm")],
        name,
        [],
        [helper.make_tensor_value_info(f"{name}_out", T.FLOAT, ["N", 64])],
    )


def if_subgraph():
    """An ``If`` whose branches read main-graph initializers only they use (a
    voice-activity model's layout): the main graph is quantized, the branches stay FP32."""
    b = _B(8)
    b.op("MatMul", ["x", b.w(64, 64, scale=0.15)], "m0")
    b.op("Add", ["m0", b.w(64, scale=0.1)], "a0")
    b.op("Relu", ["a0"], "h")
    then_w, else_w = b.w(64, 64, scale=0.15, name="w_then"), b.w(64, 64, scale=0.15, name="w_else")
    b.nodes.append(
        helper.make_node(
            "If",
            ["cond"],
            ["branch"],
            name="if",
            then_branch=branch("then", then_w),
            else_branch=branch("else", else_w),
        )
    )
    b.op("MatMul", ["branch", b.w(64, 8, scale=0.15)], "y")
    model = b.model(
        [helper.make_tensor_value_info("x", T.FLOAT, ["N", 64]), helper.make_tensor_value_info("cond", T.BOOL, [])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["N", 8])],
    )
    items = [{"x": x, "cond": np.array(i % 2 == 0)} for i, x in enumerate(_images(16, (1, 64)))]
    return model, items, {"x": _images(3, (64,), seed=12), "cond": np.array(False)}


def loop_subgraph():
    """A ``Loop`` whose body reads a main-graph initializer (a recurrent state update)."""
    b = _B(9)
    b.op("MatMul", ["x", b.w(64, 64, scale=0.15)], "h0")
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["state", "w_rec"], ["s1"], name="body_mm"),
            helper.make_node("Tanh", ["s1"], ["state_out"], name="body_tanh"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", T.INT64, []),
            helper.make_tensor_value_info("cond_in", T.BOOL, []),
            helper.make_tensor_value_info("state", T.FLOAT, ["N", 64]),
        ],
        [
            helper.make_tensor_value_info("cond_out", T.BOOL, []),
            helper.make_tensor_value_info("state_out", T.FLOAT, ["N", 64]),
        ],
    )
    b.w(64, 64, scale=0.15, name="w_rec")
    trips, keep = b.const("trips", np.array(3, np.int64)), b.const("keep", np.array(True))
    b.nodes.append(helper.make_node("Loop", [trips, keep, "h0"], ["hs"], name="loop", body=body))
    b.op("MatMul", ["hs", b.w(64, 8, scale=0.15)], "y")
    model = b.model(
        [helper.make_tensor_value_info("x", T.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["N", 8])],
    )
    return model, list(_images(16, (1, 64))), {"x": _images(2, (64,), seed=13)}


def scan_subgraph():
    """A ``Scan`` over time whose body reads main-graph initializers (an RNN cell)."""
    b = _B(11)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["x_t", "w_in"], ["u"], name="scan_in"),
            helper.make_node("MatMul", ["state", "w_state"], ["v"], name="scan_rec"),
            helper.make_node("Add", ["u", "v"], ["uv"], name="scan_add"),
            helper.make_node("Tanh", ["uv"], ["state_out"], name="scan_tanh"),
            helper.make_node("Identity", ["state_out"], ["y_t"], name="scan_y"),
        ],
        "cell",
        [
            helper.make_tensor_value_info("state", T.FLOAT, ["N", 64]),
            helper.make_tensor_value_info("x_t", T.FLOAT, ["N", 32]),
        ],
        [
            helper.make_tensor_value_info("state_out", T.FLOAT, ["N", 64]),
            helper.make_tensor_value_info("y_t", T.FLOAT, ["N", 64]),
        ],
    )
    b.w(32, 64, scale=0.15, name="w_in")
    b.w(64, 64, scale=0.1, name="w_state")
    b.op("MatMul", ["seq", b.w(32, 32, scale=0.2)], "proj")
    b.op("MatMul", ["state0", b.w(64, 64, scale=0.15)], "s0")
    b.nodes.append(
        helper.make_node(
            "Scan",
            ["s0", "proj"],
            ["final", "ys"],
            name="scan",
            body=body,
            num_scan_inputs=1,
            scan_input_axes=[1],
            scan_output_axes=[1],
        )
    )
    b.op("MatMul", ["final", b.w(64, 8, scale=0.15)], "y")
    model = b.model(
        [
            helper.make_tensor_value_info("seq", T.FLOAT, ["N", 5, 32]),
            helper.make_tensor_value_info("state0", T.FLOAT, ["N", 64]),
        ],
        [
            helper.make_tensor_value_info("y", T.FLOAT, ["N", 8]),
            helper.make_tensor_value_info("ys", T.FLOAT, ["N", 5, 64]),
        ],
    )
    items = [{"seq": s, "state0": z} for s, z in zip(_images(16, (1, 5, 32)), _images(16, (1, 64), seed=2))]
    return model, items, {"seq": _images(2, (5, 32), seed=15), "state0": _images(2, (64,), seed=16)}


def initializers_as_inputs():
    """Every weight also listed as a graph input (``keep_initializers_as_inputs``, as
    older exporters write): the quantized model must not ask for them as feeds."""
    model, items, feeds = conv_resize_net(11)
    model.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer
    )
    onnx.checker.check_model(model, full_check=True)
    return model, items, feeds


def gemm_broadcast_bias():
    """Gemm with ``alpha``/``beta`` and biases of shape [1, N] and [1] (broadcast)."""
    b = _B(12)
    b.op("Gemm", ["x", b.w(32, 32, scale=0.2), b.w(1, 32, scale=0.1)], "h", alpha=0.5, beta=2.0)
    b.op("Relu", ["h"], "r")
    b.op("Gemm", ["r", b.w(8, 32, scale=0.3), b.w(1, scale=0.1)], "y", transB=1)
    model = b.model(
        [helper.make_tensor_value_info("x", T.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["N", 8])],
    )
    return model, list(_images(64, (1, 32))), {"x": _images(2, (32,), seed=17)}


def scalar_input():
    """A 0-d sample-rate input next to a batched audio input; the items give the rate as
    ``np.array([16000])``, as ONNX Runtime accepts."""
    b = _B(10)
    b.op("Cast", ["sr"], "srf", to=T.FLOAT)
    b.op("Div", ["audio", "srf"], "scaled")
    b.op("MatMul", ["scaled", b.w(64, 16, scale=0.3)], "h")
    b.op("Relu", ["h"], "hr")
    b.op("MatMul", ["hr", b.w(16, 4)], "y")
    model = b.model(
        [helper.make_tensor_value_info("audio", T.FLOAT, ["N", 64]), helper.make_tensor_value_info("sr", T.INT64, [])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["N", 4])],
    )
    items = [{"audio": a * 16000, "sr": np.array([16000])} for a in _images(16, (1, 64))]
    return model, items, {"audio": _images(2, (64,), seed=14) * 16000, "sr": np.array(16000, np.int64)}


CASES = {
    **{f"opset{o}": (lambda o=o: conv_resize_net(o)) for o in IR_FOR_OPSET},
    "opset21_ir12": lambda: conv_resize_net(21, 12),  # the newest IR that ORT 1.32 and OV 2026.4 load
    "multi_io": multi_io,
    "token_ids": token_ids,
    "output_is_intermediate": output_is_intermediate,
    "paddle_constants": paddle_text_detector,
    "identity_fp16_cast": identity_and_fp16_weights,
    "shared_weights": shared_weights,
    "prequantized_weights": prequantized_weights,
    "if_subgraph": if_subgraph,
    "loop_subgraph": loop_subgraph,
    "scan_subgraph": scan_subgraph,
    "scalar_input": scalar_input,
    "initializers_as_inputs": initializers_as_inputs,
    "gemm_broadcast_bias": gemm_broadcast_bias,
}
