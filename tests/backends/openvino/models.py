"""Small real OpenVINO models for the backend tests (needs openvino and onnx)."""

from __future__ import annotations

import numpy as np
import onnx
import openvino as ov
import openvino.opset13 as ops

from rayq.testing.models import resnet_like


def _const(value, name: str | None = None):
    return ops.constant(np.asarray(value), name=name)


def transformer_model(seed: int = 0, seq: int = 8, hidden: int = 32, heads: int = 4) -> ov.Model:
    """A post-LN encoder block built from opset13 ops.

    Q uses ``transpose_b=True`` weights, K/V ``[in, out]`` weights; the output projection
    stores its weight as ``Constant(f16) -> Convert(f32)``. Attention is
    ``MatMul(Q, K, transpose_b) * 1/sqrt(d) -> Softmax -> MatMul(V)``.
    """
    rng = np.random.default_rng(seed)
    d = hidden // heads

    def w(shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    def b(n):
        return (0.1 * rng.standard_normal((1, 1, n))).astype(np.float32)

    x = ops.parameter([-1, seq, hidden], ov.Type.f32, name="input")
    x.output(0).set_names({"input"})
    ln = ops.mvn(x, _const(np.array([-1], np.int64)), True, 1e-5, "inside_sqrt", name="ln")
    ln = ops.add(
        ops.multiply(ln, _const((1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)), name="ln_scale"),
        _const((0.1 * rng.standard_normal(hidden)).astype(np.float32)),
        name="ln_shift",
    )
    q = ops.add(
        ops.matmul(ln, _const(w((hidden, hidden)).T.copy(), "wq"), False, True, name="q_proj"),
        _const(b(hidden)),
        name="q_bias",
    )
    k = ops.add(
        ops.matmul(ln, _const(w((hidden, hidden)), "wk"), False, False, name="k_proj"), _const(b(hidden)), name="k_bias"
    )
    v = ops.add(
        ops.matmul(ln, _const(w((hidden, hidden)), "wv"), False, False, name="v_proj"), _const(b(hidden)), name="v_bias"
    )
    split = _const(np.array([0, 0, heads, d], np.int64))
    perm = _const(np.array([0, 2, 1, 3], np.int64))
    qh, kh, vh = (
        ops.transpose(ops.reshape(t, split, True), perm, name=f"{n}_heads") for t, n in ((q, "q"), (k, "k"), (v, "v"))
    )
    scores = ops.matmul(qh, kh, False, True, name="scores")
    scores = ops.multiply(scores, _const(np.array(1 / np.sqrt(d), np.float32)), name="scaled")
    probs = ops.softmax(scores, -1, name="softmax")
    ctx = ops.matmul(probs, vh, False, False, name="context")
    ctx = ops.reshape(ops.transpose(ctx, perm), _const(np.array([0, 0, hidden], np.int64)), True, name="merge_heads")
    wo = ops.convert(_const(w((hidden, hidden)).astype(np.float16), "wo_f16"), ov.Type.f32)
    out = ops.add(ops.matmul(ctx, wo, False, False, name="o_proj"), _const(b(hidden)), name="o_bias")
    res = ops.add(out, x, name="residual")
    h = ops.gelu(
        ops.add(
            ops.matmul(res, _const(w((hidden, 2 * hidden)), "w1"), False, False, name="ffn1"),
            _const(b(2 * hidden)),
            name="ffn1_bias",
        ),
        "erf",
        name="gelu",
    )
    y = ops.add(
        ops.matmul(h, _const(w((2 * hidden, hidden)), "w2"), False, False, name="ffn2"),
        _const(b(hidden)),
        name="ffn2_bias",
    )
    result = ops.result(ops.add(y, res, name="output"), name="output/result")
    return ov.Model([result], [x], "transformer")


def single_conv_model(seed: int = 0, *, cin: int = 3, cout: int = 4, k: int = 3):
    """``input -> Convolution -> Add(bias)`` and its float weight and bias."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((cout, cin, k, k)) * 0.3).astype(np.float32)
    bias = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    x = ops.parameter([-1, cin, 6, 6], ov.Type.f32, name="input")
    x.output(0).set_names({"input"})
    conv = ops.convolution(x, _const(weight, "weight"), [1, 1], [1, 1], [1, 1], [1, 1], name="conv")
    y = ops.add(conv, _const(bias.reshape(1, cout, 1, 1), "bias"), name="conv_bias")
    return ov.Model([ops.result(y, name="out")], [x], "single_conv"), weight, bias


def group_conv_model(seed: int = 0, *, channels: int = 8, groups: int = 8) -> ov.Model:
    """``input -> Relu -> GroupConvolution (+ bias) -> Relu`` (depthwise by default)."""
    rng = np.random.default_rng(seed)
    per = channels // groups
    weight = (rng.standard_normal((groups, per, per, 3, 3)) * 0.3).astype(np.float32)
    x = ops.parameter([-1, channels, 8, 8], ov.Type.f32, name="input")
    x.output(0).set_names({"input"})
    gc = ops.group_convolution(
        ops.relu(x, name="relu_in"), _const(weight, "gweight"), [1, 1], [1, 1], [1, 1], [1, 1], name="gconv"
    )
    y = ops.relu(ops.add(gc, _const(np.full((1, channels, 1, 1), 0.1, np.float32)), name="gconv_bias"), name="relu_out")
    return ov.Model([ops.result(y, name="out")], [x], "group_conv")


def conv_net_model(tmp_dir) -> ov.Model:
    """rayq's resnet_like (residual Adds, a Concat, GAP, Gemm) converted from ONNX."""
    path = tmp_dir / "resnet_like.onnx"
    onnx.save(resnet_like(widths=(8, 16)), str(path))
    return ov.convert_model(str(path))
