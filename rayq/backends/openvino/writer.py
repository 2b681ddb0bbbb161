"""Writing a :class:`~rayq.core.recipe.Recipe` into an OpenVINO model.

What the CPU plugin's low-precision transformations (LPT) need to run an op in INT8,
checked on OpenVINO 2026.4 through ``compiled.get_runtime_model()`` (``runtimePrecision``
``u8``/``i8`` on ``Convolution``, ``GroupConvolution``, ``Deconvolution``,
``FullyConnected`` and activation-by-activation ``MatMul``):

- activations: a ``FakeQuantize`` with 256 (or ``qmax - qmin + 1``) levels and equal
  input/output ranges, on each activation input of the op;
- weights: the *compressed-weight* pattern, no ``FakeQuantize``:
  ``Constant(i8) -> Convert(f32) [-> Subtract(zero point)] -> Multiply(scale)`` -- the
  same subgraph ``ov.save_model`` stores for NNCF's weight FakeQuantizes. LPT folds it
  into an ``i8`` weight and a dequantization scale.
- ``GroupConvolution`` weights (``[G, Cout/G, Cin/G, k...]``) need their scale either per
  tensor or over both leading axes, ``[G, Cout/G, 1, ...]``: a ``[G, 1, 1, ...]`` or
  ``[1, Cout/G, 1, ...]`` scale makes LPT fail at compile time. Scales on one of those
  axes are therefore broadcast to ``[G, Cout/G, 1, ...]`` (the same values).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from rayq.backends.openvino import reader, runtime
from rayq.core.params import QParams
from rayq.core.recipe import ActivationQuant, Recipe, WeightQuant
from rayq.errors import BackendError


def apply_recipe(model: ov.Model, recipe: Recipe) -> ov.Model:
    """Return a copy of ``model`` with ``recipe`` written in (``model`` is not modified).

    Example:
        >>> quantized = apply_recipe(model, recipe)       # doctest: +SKIP
    """
    clone, idx = reader.cloned(model)
    view = reader.build_view(clone, idx)
    for wq in recipe.weights:
        _weight(idx, wq)
    for aq in _off_grid(view, recipe.activations):
        _activation(idx, aq)
    for node, value in recipe.biases.items():
        _bias(idx, view, node, np.asarray(value))
    try:
        clone.validate_nodes_and_infer_types()
    except Exception as exc:  # openvino raises RuntimeError subclasses
        raise BackendError(f"the quantized model is invalid: {runtime.describe(exc)}") from exc
    return clone


#: Ops whose output values are some of their (first) input's values: a tensor on an
#: integer grid stays on it.
_MOVES_DATA = frozenset(
    {
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "ShuffleChannels",
        "StridedSlice",
        "Slice",
        "Split",
        "VariadicSplit",
        "MaxPool",
    }
)


def _same(a: QParams, b: QParams) -> bool:
    return a.levels == b.levels and all(np.array_equal(x, y) for x, y in zip(a.range(), b.range()))


def _off_grid(view: Any, activations: tuple[ActivationQuant, ...]) -> list[ActivationQuant]:
    """The activation quantizers that change their input: a tensor computed only by
    data movement and Concats from tensors fake-quantized with the same parameters
    is already on that grid (ShuffleNet: Concat -> shuffle -> Slice -> Concat), and a
    ``FakeQuantize`` there would be an identity costing a requantization. The CPU
    plugin moves the dequantization through those ops by itself."""
    by_edge = {(e.node, e.index): aq.params for aq in activations for e in aq.edges}
    memo: dict[str, bool] = {}

    def on_grid(tensor: str, params: QParams, depth: int = 0) -> bool:
        if tensor not in memo:
            node = view.producer(tensor) if depth < 64 else None
            if node is None or node.op_type not in _MOVES_DATA | {"Concat"}:
                memo[tensor] = False
            else:
                ins = [i for i, t in enumerate(node.inputs) if t and not view.is_constant(t)]
                ins = ins if node.op_type == "Concat" else ins[:1]
                memo[tensor] = bool(ins) and all(
                    _same(by_edge[(node.name, i)], params)
                    if (node.name, i) in by_edge
                    else on_grid(node.inputs[i], params, depth + 1)
                    for i in ins
                )
        return memo[tensor]

    out = []
    for aq in activations:
        memo.clear()
        if aq.smooth is not None or not on_grid(aq.tensor, aq.params):
            out.append(aq)
    return out


def _edge_input(idx: reader.Index, node: str, index: int, tensor: str) -> Any:
    op = idx.node(node)
    if not 0 <= index < op.get_input_size():
        raise BackendError(f"node {node!r} has no input {index}")
    source = idx.current_source(op, index)
    if source is None:
        raise BackendError(f"input {index} of node {node!r} is quantized twice by the recipe")
    if source != tensor:
        raise BackendError(f"input {index} of node {node!r} reads {source!r}, not {tensor!r}")
    return op.input(index)


def _broadcast_shape(values: np.ndarray, axis: int | None, rank: int | None) -> np.ndarray:
    """Reshape a per-tensor or per-channel vector to broadcast along ``axis``."""
    values = np.asarray(values)
    if rank is None or (values.ndim == rank and rank > 0):
        return values
    if values.size == 1:
        return values.reshape([1] * rank)
    if axis is None:
        raise BackendError(f"a per-channel parameter of shape {values.shape} needs an axis")
    shape = [1] * rank
    shape[axis % rank] = values.size
    return values.reshape(shape)


def _activation(idx: reader.Index, aq: ActivationQuant) -> None:
    port = idx.port(aq.tensor)
    inputs = [_edge_input(idx, e.node, e.index, aq.tensor) for e in aq.edges]
    if not inputs:
        raise BackendError(f"activation quantizer of {aq.tensor!r} has no edges")
    etype = port.get_element_type()
    np_type = etype.to_dtype() if etype in (ov.Type.f32, ov.Type.f16) else None
    if np_type is None:
        raise BackendError(f"cannot quantize {aq.tensor!r}: element type {etype} is not f32/f16")
    shape = reader.shape_of(port)
    rank = None if shape is None else len(shape)
    source = port
    if aq.smooth is not None:
        smooth = np.asarray(aq.smooth, dtype=np_type)
        if rank is not None:
            smooth = smooth.reshape([1] * (rank - 1) + [smooth.size])
        source = ops.multiply(port, ops.constant(smooth), name=f"{aq.tensor}/rayq_smooth").output(0)
    fq = fake_quantize(source, aq.params, rank, np_type, f"{aq.tensor}/rayq_fq")
    for inp in inputs:
        inp.replace_source_output(fq.output(0))


def fake_quantize(port: Any, params: QParams, rank: int | None, np_type: Any, name: str) -> Any:
    """A ``FakeQuantize`` of ``port`` with the integer grid of ``params``."""
    lo, hi = params.range()
    lo = ops.constant(_broadcast_shape(np.asarray(lo, np_type), params.axis, rank))
    hi = ops.constant(_broadcast_shape(np.asarray(hi, np_type), params.axis, rank))
    return ops.fake_quantize(port, lo, hi, lo, hi, params.levels, name=name)


def _weight(idx: reader.Index, wq: WeightQuant) -> None:
    inp = _edge_input(idx, wq.edge.node, wq.edge.index, wq.tensor)
    if wq.tensor not in idx.constant:
        raise BackendError(f"weight {wq.tensor!r} of {wq.node!r} is not a constant")
    old = inp.get_source_output()
    shape = tuple(old.get_shape())
    values = np.asarray(wq.values)
    if values.shape != shape:
        raise BackendError(f"weight values for {wq.node!r} have shape {values.shape}, the model's weight has {shape}")
    if wq.params.dtype not in ("int8", "uint8"):
        raise BackendError(f"weights must be int8 or uint8, got {wq.params.dtype!r}")
    group = inp.get_node().get_type_name() == "GroupConvolution"
    decompressed = compressed_weight(values.astype(wq.params.dtype), wq.params, f"{wq.node}/rayq_weight", group=group)
    if old.get_element_type() != ov.Type.f32:
        decompressed = ops.convert(decompressed, old.get_element_type())
    inp.replace_source_output(decompressed.output(0))


def compressed_weight(values: np.ndarray, params: QParams, name: str, *, group: bool = False) -> Any:
    """``Constant(int8) -> Convert(f32) [-> Subtract(zp)] -> Multiply(scale)``."""
    rank = values.ndim
    scale = _broadcast_shape(np.asarray(params.scale, np.float32), params.axis, rank)
    zp = _broadcast_shape(np.asarray(params.zero_point).astype(values.dtype), params.axis, rank)
    if group and scale.size > 1:
        full = (values.shape[0], values.shape[1]) + (1,) * (rank - 2)
        scale = np.broadcast_to(scale, full).copy()
        zp = np.broadcast_to(zp, full).copy() if zp.size > 1 else zp
    node = ops.convert(ops.constant(values, name=f"{name}/int8"), ov.Type.f32, name=f"{name}/convert")
    if np.any(zp != 0):
        zero = ops.convert(ops.constant(zp, name=f"{name}/zero_point"), ov.Type.f32)
        node = ops.subtract(node, zero, name=f"{name}/subtract")
    return ops.multiply(node, ops.constant(scale, name=f"{name}/scale"), name=f"{name}/multiply")


def _bias(idx: reader.Index, view: Any, node: str, value: np.ndarray) -> None:
    if not view.has_node(node) or view.node(node).bias_node is None:
        raise BackendError(f"cannot correct the bias of {node!r}: it has no bias Add")
    add = idx.node(view.node(node).bias_node)
    for i in range(2):
        source = idx.source(add, i)
        if source in idx.constant:
            old = add.input_value(i)
            shape = tuple(old.get_shape())
            if value.size != int(np.prod(shape)):
                raise BackendError(f"new bias of {node!r} has {value.size} values, the model's bias has shape {shape}")
            const = ops.constant(
                value.astype(old.get_element_type().to_dtype()).reshape(shape), name=f"{node}/rayq_bias"
            )
            add.input(i).replace_source_output(const.output(0))
            return
    raise BackendError(f"cannot correct the bias of {node!r}: its Add has no constant input")
