"""The op emitters of :mod:`rayq.testing.fuzz` (onnx and numpy only).

Each emitter takes the builder and an input activation, appends one to four nodes
valid for the builder's opset, and returns the new activation, or None when the op
does not apply to that input (rank, size, opset). Shapes are computed here exactly as
ONNX defines them; the batch dimension (axis 0) is never mixed with another.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rayq.testing.fuzz import Builder, Tensor


def _conv_out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv(b: Builder, x: Tensor) -> Tensor | None:
    if x.rank != 4:
        return None
    c, h, w = x.shape[1:]
    mode = b.ch.choice(("dense", "dense", "depthwise", "grouped"))
    groups, cout = 1, b.ch.integer(1, 12)
    if mode == "depthwise":
        groups, cout = c, c * b.ch.integer(1, 2)
    elif mode == "grouped":
        divisors = [g for g in range(2, c) if c % g == 0]
        if not divisors:
            return None
        groups = b.ch.choice(divisors)
        cout = groups * b.ch.integer(1, 3)
    k = b.ch.choice((1, 3, 3))
    s = b.ch.choice((1, 1, 2))
    p = b.ch.choice((k // 2, 0))
    d = b.ch.choice((1, 1, 2)) if k == 3 else 1
    shape = (x.shape[0], cout, _conv_out(h, k, s, p, d), _conv_out(w, k, s, p, d))
    if not b.fits(shape):
        return None
    inputs = [x.name, b.weight((cout, c // groups, k, k), c // groups * k * k)]
    if b.ch.choice((True, True, False)):
        inputs.append(b.bias(cout))
    return b.emit(
        "Conv", inputs, shape, kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, dilations=[d, d], group=groups
    )


def conv_transpose(b: Builder, x: Tensor) -> Tensor | None:
    if x.rank != 4:
        return None
    c, h, w = x.shape[1:]
    cout = b.ch.integer(1, 8)
    k, s, p, op = b.ch.choice(((2, 2, 0, 0), (3, 1, 1, 0), (3, 2, 1, 1), (4, 2, 1, 0)))
    shape = (x.shape[0], cout, s * (h - 1) + op + k - 2 * p, s * (w - 1) + op + k - 2 * p)
    if not b.fits(shape):
        return None
    inputs = [x.name, b.weight((c, cout, k, k), c * k * k // (s * s))]
    if b.ch.choice((True, False)):
        inputs.append(b.bias(cout))
    attrs = {"output_padding": [op, op]} if op else {}
    return b.emit("ConvTranspose", inputs, shape, kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, **attrs)


def pool(b: Builder, x: Tensor) -> Tensor | None:
    if x.rank != 4:
        return None
    op = b.ch.choice(("MaxPool", "AveragePool", "GlobalAveragePool"))
    if op == "GlobalAveragePool":
        return b.emit(op, [x.name], x.shape[:2] + (1, 1))
    k, s = b.ch.choice((2, 3)), b.ch.choice((1, 2))
    p = b.ch.choice((0, 0, 1))
    shape = x.shape[:2] + (_conv_out(x.shape[2], k, s, p), _conv_out(x.shape[3], k, s, p))
    if min(shape) < 1 or k > x.shape[2] + 2 * p or k > x.shape[3] + 2 * p:
        return None
    attrs = {"count_include_pad": b.ch.choice((0, 1))} if op == "AveragePool" else {}
    return b.emit(op, [x.name], shape, kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, **attrs)


def resize(b: Builder, x: Tensor) -> Tensor | None:
    if x.rank != 4:
        return None
    up = b.ch.choice((True, True, False))
    if not up and (x.shape[2] < 2 or x.shape[3] < 2):
        return None
    scale = 2.0 if up else 0.5
    shape = x.shape[:2] + (int(x.shape[2] * scale), int(x.shape[3] * scale))
    if not b.fits(shape):
        return None
    mode = b.ch.choice(("nearest", "linear"))
    if mode == "nearest":
        attrs = b.ch.choice(({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, {}))
    else:
        attrs = {
            "coordinate_transformation_mode": b.ch.choice(
                ("half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel")
            )
        }
    return b.emit("Resize", [x.name, "", _scales(b, scale)], shape, mode=mode, **attrs)


def _scales(b: Builder, scale: float) -> str:
    from onnx import numpy_helper

    name = b.name("scales")
    b.inits.append(numpy_helper.from_array(np.array([1.0, 1.0, scale, scale], np.float32), name))
    return name


def batch_norm(b: Builder, x: Tensor) -> Tensor | None:
    if x.rank < 2:
        return None
    c = x.shape[1]
    mean = b.floats(0.1 * b.rng.standard_normal(c), "bias")
    return b.emit(
        "BatchNormalization", [x.name, b.positive((c,)), b.bias(c), mean, b.positive((c,))], x.shape, epsilon=1e-5
    )


def layer_norm(b: Builder, x: Tensor) -> Tensor | None:
    if x.rank < 2 or b.opset < 17:
        return None
    n = x.shape[-1]
    inputs = [x.name, b.positive((n,))]
    if b.ch.choice((True, False)):
        inputs.append(b.bias(n))
    return b.emit("LayerNormalization", inputs, x.shape, axis=-1, epsilon=1e-5)


def matmul_weight(b: Builder, x: Tensor) -> Tensor | None:
    if x.rank < 2:
        return None
    n = b.ch.integer(2, 16)
    shape = x.shape[:-1] + (n,)
    if not b.fits(shape):
        return None
    y = b.emit("MatMul", [x.name, b.weight((x.shape[-1], n), x.shape[-1])], shape)
    if b.ch.choice((True, False)):
        b.pool.remove(y)
        y = b.emit("Add", [y.name, b.bias(n)], shape)
    return y


def matmul_activations(b: Builder, x: Tensor) -> Tensor | None:
    """``x @ y^T`` (attention scores) or ``x @ y`` when the shapes chain."""
    if x.rank < 3:
        return None
    same = b.pick(lambda t: t.shape == x.shape) or x
    shape = x.shape[:-1] + (x.shape[-2],)
    if not b.fits(shape):
        return None
    perm = list(range(x.rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    yt = b.emit("Transpose", [same.name], same.shape[:-2] + same.shape[-2:][::-1], perm=perm)
    b.pool.remove(yt)
    return b.emit("MatMul", [x.name, yt.name], shape)


def gemm(b: Builder, x: Tensor) -> Tensor | None:
    if x.rank != 2:
        return None
    k, n = x.shape[1], b.ch.integer(2, 16)
    trans_b = b.ch.choice((0, 1))
    inputs = [x.name, b.weight((n, k) if trans_b else (k, n), k)]
    if b.ch.choice((True, True, False)):
        inputs.append(b.bias(b.ch.choice(((n,), (1, n)))))
    attrs: dict[str, Any] = {"transB": trans_b} if trans_b else {}
    alpha, beta = b.ch.choice((1.0, 1.0, 0.5)), b.ch.choice((1.0, 1.0, 0.5))
    if alpha != 1.0:
        attrs["alpha"] = alpha
    if beta != 1.0:
        attrs["beta"] = beta
    return b.emit("Gemm", inputs, (x.shape[0], n), **attrs)


def unary(b: Builder, x: Tensor) -> Tensor | None:
    ops = (
        ["Relu", "Relu", "Sigmoid", "Tanh", "Erf"]
        + (["HardSwish"] * 2 if b.opset >= 14 else [])
        + (["Gelu"] * 4 if b.opset >= 20 else [])
    )  # the opset-gated ones are rarer: drawn more often
    op = b.ch.choice(ops)
    attrs = {"approximate": b.ch.choice(("none", "tanh"))} if op == "Gelu" else {}
    return b.emit(op, [x.name], x.shape, **attrs)


def softmax(b: Builder, x: Tensor) -> Tensor | None:
    if x.rank < 2:
        return None
    return b.emit("Softmax", [x.name], x.shape, axis=b.ch.choice((-1, 1)))


def binary_const(b: Builder, x: Tensor) -> Tensor | None:
    op = b.ch.choice(("Add", "Mul", "Sub", "Div"))
    shapes = [(), (x.shape[-1],), x.shape[1:], (1,) + x.shape[1:]]
    if x.rank >= 3:
        shapes.append((x.shape[1],) + (1,) * (x.rank - 2))
    shape = b.ch.choice(shapes)
    if op in ("Mul", "Div"):
        value = b.rng.uniform(0.5, 1.5, shape) * b.rng.choice((-1.0, 1.0), shape)
    else:
        value = 0.5 * b.rng.standard_normal(shape)
    const = b.floats(value, "positive" if op in ("Mul", "Div") else "bias")
    inputs = [x.name, const] if op == "Div" or b.ch.choice((True, False)) else [const, x.name]
    return b.emit(op, inputs, x.shape)


def binary_activations(b: Builder, x: Tensor) -> Tensor | None:
    def broadcasts(t: Tensor) -> bool:
        return t.rank == x.rank and t.shape[0] == x.shape[0] and all(d == e or d == 1 for d, e in zip(t.shape, x.shape))

    y = b.pick(broadcasts)
    if y is None:
        return None
    op = b.ch.choice(("Add", "Add", "Mul", "Sub") if y.name != x.name else ("Add", "Mul"))
    inputs = [x.name, y.name] if b.ch.choice((True, False)) else [y.name, x.name]
    return b.emit(op, inputs, x.shape)


def concat(b: Builder, x: Tensor) -> Tensor | None:
    if x.rank < 2:
        return None
    axis = b.ch.integer(1, x.rank - 1)
    y = (
        b.pick(
            lambda t: t.rank == x.rank and all(d == e for i, (d, e) in enumerate(zip(t.shape, x.shape)) if i != axis)
        )
        or x
    )
    shape = list(x.shape)
    shape[axis] += y.shape[axis]
    if not b.fits(shape):
        return None
    inputs = [x.name, y.name] if b.ch.choice((True, False)) else [y.name, x.name]
    return b.emit("Concat", inputs, shape, axis=b.ch.choice((axis, axis - x.rank)))


def split(b: Builder, x: Tensor) -> Tensor | None:
    axes = [a for a in range(1, x.rank) if x.shape[a] >= 2]
    if not axes:
        return None
    axis = b.ch.choice(axes)
    first = b.ch.integer(1, x.shape[axis] - 1)
    sizes = (first, x.shape[axis] - first)
    outs = b.node("Split", [x.name, b.ints(sizes)], n_out=2, axis=axis)
    result = None
    for name, size in zip(outs, sizes):
        shape = list(x.shape)
        shape[axis] = size
        result = type(x)(name, tuple(shape))
        b.pool.append(result)
    return result


def slice_(b: Builder, x: Tensor) -> Tensor | None:
    axes = [a for a in range(1, x.rank) if x.shape[a] >= 2]
    if not axes:
        return None
    axis = b.ch.choice(axes)
    d = x.shape[axis]
    start, step = b.ch.integer(0, d - 1), b.ch.choice((1, 1, 2))
    end = b.ch.choice((d, -1 if start < d - 1 else d, 2**62))
    length = len(range(d)[start : min(end, d) : step])
    if length < 1:
        return None
    axis_value = b.ch.choice((axis, axis - x.rank))
    shape = list(x.shape)
    shape[axis] = length
    return b.emit("Slice", [x.name, b.ints([start]), b.ints([end]), b.ints([axis_value]), b.ints([step])], shape)


def reshape(b: Builder, x: Tensor) -> Tensor | None:
    rest = x.shape[1:]
    targets: list[tuple[int, ...]] = [(-1,)]
    if x.rank == 4:
        targets.append((rest[0], -1))
    if x.rank == 3:
        targets += [(rest[0], h, rest[1] // h) for h in (2, 4) if rest[1] % h == 0]
    if x.rank == 2:
        targets += [(a, rest[0] // a) for a in (2, 4) if rest[0] % a == 0]
    target = b.ch.choice(targets)
    size = x.elements
    shape = (x.shape[0],) + tuple(size // -int(np.prod(target)) if t == -1 else t for t in target)
    lead = 0 if b.dynamic else b.ch.choice((0, x.shape[0]))  # a literal batch only where it is fixed
    return b.emit("Reshape", [x.name, b.ints((lead,) + target)], shape)


def dynamic_flatten(b: Builder, x: Tensor) -> Tensor | None:
    """``Reshape(x, Concat(Shape(x)[0:1], [-1]))``: the exporters' dynamic flatten."""
    if x.rank < 3:
        return None
    dims = b.node("Shape", [x.name])[0]
    first = b.node("Gather", [dims, b.ints([0])], axis=0)[0]
    target = b.node("Concat", [first, b.ints([-1])], axis=0)[0]
    return b.emit("Reshape", [x.name, target], (x.shape[0], x.elements))


def transpose(b: Builder, x: Tensor) -> Tensor | None:
    if x.rank < 3:
        return None
    perms = [p for p in itertools.permutations(range(1, x.rank)) if list(p) != list(range(1, x.rank))]
    perm = (0,) + b.ch.choice(perms)
    return b.emit("Transpose", [x.name], tuple(x.shape[i] for i in perm), perm=list(perm))


def flatten(b: Builder, x: Tensor) -> Tensor | None:
    if x.rank < 3:
        return None
    return b.emit("Flatten", [x.name], (x.shape[0], x.elements), axis=1)


def squeeze_unsqueeze(b: Builder, x: Tensor) -> Tensor | None:
    ones = [a for a in range(1, x.rank) if x.shape[a] == 1]
    if ones and x.rank > 2 and b.ch.choice((True, False)):
        axis = b.ch.choice(ones)
        shape = x.shape[:axis] + x.shape[axis + 1 :]
        return b.emit("Squeeze", [x.name, b.ints([b.ch.choice((axis, axis - x.rank))])], shape)
    if x.rank >= 4:
        return None
    axis = b.ch.integer(1, x.rank)
    return b.emit("Unsqueeze", [x.name, b.ints([axis])], x.shape[:axis] + (1,) + x.shape[axis:])


def reduce_mean(b: Builder, x: Tensor) -> Tensor | None:
    if x.rank < 2:
        return None
    axes = sorted({b.ch.integer(1, x.rank - 1) for _ in range(b.ch.integer(1, 2))})
    keep = b.ch.choice((0, 1))
    if not keep and x.rank - len(axes) < 2:
        return None
    shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes)
    if b.opset >= 18:
        return b.emit("ReduceMean", [x.name, b.ints(axes)], shape, keepdims=keep)
    return b.emit("ReduceMean", [x.name], shape, axes=axes, keepdims=keep)


def pad(b: Builder, x: Tensor) -> Tensor | None:
    if x.rank < 3:
        return None
    mode = b.ch.choice(("constant", "reflect", "edge"))
    spatial = range(2, x.rank)
    limit = {a: (min(2, x.shape[a] - 1) if mode == "reflect" else 2) for a in spatial}
    before = [0, 0] + [b.ch.integer(0, limit[a]) for a in spatial]
    after = [0, 0] + [b.ch.integer(0, limit[a]) for a in spatial]
    shape = tuple(d + p + q for d, p, q in zip(x.shape, before, after))
    if not b.fits(shape):
        return None
    inputs = [x.name, b.ints(before + after)]
    if mode == "constant" and b.ch.choice((True, False)):
        inputs.append(b.floats(np.array(b.rng.uniform(-0.5, 0.5)), "scalar"))
    return b.emit("Pad", inputs, shape, mode=mode)


def gather(b: Builder, x: Tensor) -> Tensor | None:
    if x.rank < 2:
        return None
    axis = b.ch.integer(1, x.rank - 1)
    d = x.shape[axis]
    if x.rank >= 3 and b.ch.choice((True, False)):  # a scalar index drops the axis (a CLS token)
        index = b.ints(np.array(b.ch.integer(-d, d - 1)))
        return b.emit("Gather", [x.name, index], x.shape[:axis] + x.shape[axis + 1 :], axis=axis)
    indices = [b.ch.integer(-d, d - 1) for _ in range(b.ch.integer(1, 4))]
    shape = x.shape[:axis] + (len(indices),) + x.shape[axis + 1 :]
    return b.emit("Gather", [x.name, b.ints(indices)], shape, axis=axis)


def where(b: Builder, x: Tensor) -> Tensor | None:
    cond_shape = b.ch.choice(((x.shape[-1],), x.shape[1:]))
    cond = b.ints(b.rng.random(cond_shape) < 0.5, dtype=np.bool_)
    other = b.pick(lambda t: t.shape == x.shape and t.name != x.name)
    other_name = other.name if other is not None else b.floats(b.rng.standard_normal(x.shape[-1]), "bias")
    inputs = [cond, x.name, other_name] if b.ch.choice((True, False)) else [cond, other_name, x.name]
    return b.emit("Where", inputs, x.shape)


EMITTERS = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Pool": pool,
    "Resize": resize,
    "BatchNormalization": batch_norm,
    "LayerNormalization": layer_norm,
    "MatMulWeight": matmul_weight,
    "MatMulActivations": matmul_activations,
    "Gemm": gemm,
    "Unary": unary,
    "Softmax": softmax,
    "BinaryConst": binary_const,
    "BinaryActivations": binary_activations,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Reshape": reshape,
    "DynamicFlatten": dynamic_flatten,
    "Transpose": transpose,
    "Flatten": flatten,
    "SqueezeUnsqueeze": squeeze_unsqueeze,
    "ReduceMean": reduce_mean,
    "Pad": pad,
    "Gather": gather,
    "Where": where,
}
#: the ops rayq quantizes are drawn three times as often, so most models hold some
_NAMES = tuple(EMITTERS) + ("Conv", "MatMulWeight", "Gemm", "ConvTranspose", "MatMulActivations") * 2


def step(b: Builder) -> None:
    """Apply one drawn emitter to one drawn activation (a few tries; a no-op if none applies)."""
    for _ in range(4):
        x = b.pick()
        assert x is not None  # the pool always holds the model's inputs
        name = b.ch.choice(_NAMES)
        if EMITTERS[name](b, x) is not None:
            b.steps.append(name)
            return
