"""Reading OpenVINO models: names, constants and the metatyped :class:`GraphView`.

Naming (stable for a given model, and kept through ``save``/``to_bytes`` round trips):

- A node is named by its friendly name; a repeated friendly name gets ``#1``, ``#2``...
  in topological order.
- A tensor (an output port) is named by its tensor name when it has one that no other
  port uses (the lexicographically smallest if it has several), a ``Parameter`` without
  tensor names by its node name, and any other port by ``"<node name>:<port index>"``.

Constant folding: the output of a ``Constant`` is a constant tensor, and so is the
output of a small side-effect-free op (``Convert``, ``Multiply``, ``Subtract``,
``Reshape``, ``FakeQuantize``...) whose inputs are all constant. Such ops are hidden
from the view, so a weight stored as ``Constant(f16) -> Convert`` or as a compressed
``Constant(i8) -> Convert -> Subtract -> Multiply`` reads as one constant weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import openvino as ov

from rayq.backends.base import InputSpec
from rayq.core import graph as g
from rayq.core.graph import GraphView, NodeInfo, TensorInfo
from rayq.errors import BackendError

_META = {
    "Convolution": g.CONV,
    "GroupConvolution": g.CONV,
    "ConvolutionBackpropData": g.CONV_TRANSPOSE,
    "MatMul": g.MATMUL,
    "Add": g.ADD,
    "Multiply": g.MUL,
    "Concat": g.CONCAT,
    "MaxPool": g.MAX_POOL,
    "AvgPool": g.AVG_POOL,
    "AdaptiveAvgPool": g.AVG_POOL,
    "Reshape": g.SHAPE,
    "Transpose": g.SHAPE,
    "Squeeze": g.SHAPE,
    "Unsqueeze": g.SHAPE,
    "Softmax": g.SOFTMAX,
    "LogSoftmax": g.SOFTMAX,
    "MVN": g.NORM,
    "NormalizeL2": g.NORM,
    "BatchNormInference": g.NORM,
    "Relu": g.ACTIVATION,
    "Gelu": g.ACTIVATION,
    "Sigmoid": g.ACTIVATION,
    "Clamp": g.ACTIVATION,
    "Swish": g.ACTIVATION,
    "HSwish": g.ACTIVATION,
    "HSigmoid": g.ACTIVATION,
    "Tanh": g.ACTIVATION,
    "Elu": g.ACTIVATION,
    "PRelu": g.ACTIVATION,
    "Mish": g.ACTIVATION,
    "SoftPlus": g.ACTIVATION,
}
#: Ops evaluated at read time when all their inputs are constant.
_FOLDABLE = frozenset(
    {
        "Convert",
        "Multiply",
        "Subtract",
        "Add",
        "Divide",
        "Negative",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "FakeQuantize",
        "Concat",
        "Broadcast",
    }
)
_HIDDEN = frozenset({"Parameter", "Result", "Constant"})
_DTYPES = {
    "f32": "float32",
    "f16": "float16",
    "f64": "float64",
    "bf16": "bfloat16",
    "i64": "int64",
    "i32": "int32",
    "i16": "int16",
    "i8": "int8",
    "u64": "uint64",
    "u32": "uint32",
    "u16": "uint16",
    "u8": "uint8",
    "boolean": "bool",
}


def dtype_name(element_type: ov.Type) -> str:
    """numpy dtype name of an OpenVINO element type (``"f32"`` -> ``"float32"``)."""
    name = element_type.get_type_name()
    return _DTYPES.get(name, name)


def shape_of(port: Any) -> tuple[int | None, ...] | None:
    """Static shape with None for dynamic dims; None for a dynamic rank."""
    pshape = port.get_partial_shape()
    if pshape.rank.is_dynamic:
        return None
    return tuple(d.get_length() if d.is_static else None for d in pshape)


@dataclass
class Index:
    """Names of one ``ov.Model``'s nodes and ports (see the module docstring).

    Attributes:
        ops: Every op in topological order.
        node_name: Internal op name (``op.get_name()``) -> rayq node name.
        nodes: rayq node name -> op.
        ports: rayq tensor name -> output port.
        port_name: (internal op name, port index) -> rayq tensor name.
        constant: rayq tensor names that are constant (after folding).
    """

    ops: list[Any]
    node_name: dict[str, str]
    nodes: dict[str, Any]
    ports: dict[str, Any]
    port_name: dict[tuple[str, int], str]
    constant: set[str]

    def name_of(self, port: Any) -> str:
        """rayq tensor name of an output port."""
        return self.port_name[(port.get_node().get_name(), port.get_index())]

    def source(self, node: Any, index: int) -> str:
        """rayq tensor name read by input ``index`` of ``node``."""
        return self.name_of(node.input_value(index))

    def current_source(self, node: Any, index: int) -> str | None:
        """Like :meth:`source`, but None when the input now reads a node added later."""
        port = node.input_value(index)
        return self.port_name.get((port.get_node().get_name(), port.get_index()))

    def node(self, name: str) -> Any:
        if name not in self.nodes:
            raise BackendError(f"the model has no node named {name!r}")
        return self.nodes[name]

    def port(self, name: str) -> Any:
        if name not in self.ports:
            raise BackendError(f"the model has no tensor named {name!r}")
        return self.ports[name]


def index(model: ov.Model) -> Index:
    """Name every node and port of ``model`` and find its constant tensors."""
    ops = list(model.get_ordered_ops())
    node_name: dict[str, str] = {}
    nodes: dict[str, Any] = {}
    for op in ops:
        name = _unique(op.get_friendly_name(), nodes)
        node_name[op.get_name()] = name
        nodes[name] = op
    counts: dict[str, int] = {}
    for op in ops:
        if op.get_type_name() != "Result":
            for out in op.outputs():
                for n in out.get_names():
                    counts[n] = counts.get(n, 0) + 1
    ports: dict[str, Any] = {}
    port_name: dict[tuple[str, int], str] = {}
    constant: set[str] = set()
    for op in ops:
        if op.get_type_name() == "Result":
            continue
        base = node_name[op.get_name()]
        folded = _folds(op, lambda i: port_name.get(_src_key(op, i)) in constant)  # noqa: B023 (called right here)
        for out in op.outputs():
            unique = sorted(n for n in out.get_names() if counts[n] == 1)
            if unique:
                name = unique[0]
            elif op.get_type_name() == "Parameter":
                name = base
            else:
                name = f"{base}:{out.get_index()}"
            name = _unique(name, ports)
            ports[name] = out
            port_name[(op.get_name(), out.get_index())] = name
            if folded:
                constant.add(name)
    return Index(ops, node_name, nodes, ports, port_name, constant)


def cloned(model: ov.Model) -> tuple[ov.Model, Index]:
    """A clone of ``model`` and its :class:`Index`, with the same names as ``model``'s."""
    clone = model.clone()
    idx = index(clone)
    if [op.get_friendly_name() for op in model.get_ordered_ops()] != [op.get_friendly_name() for op in idx.ops]:
        raise BackendError("OpenVINO reordered the ops of a cloned model; node names would not match")
    return clone, idx


def _unique(name: str, taken: dict[str, Any]) -> str:
    out, k = name, 0
    while out in taken:
        k += 1
        out = f"{name}#{k}"
    return out


def _src_key(op: Any, i: int) -> tuple[str, int]:
    src = op.input_value(i)
    return src.get_node().get_name(), src.get_index()


def _folds(op: Any, is_const: Any) -> bool:
    kind = op.get_type_name()
    if kind == "Constant":
        return True
    if kind not in _FOLDABLE or op.get_input_size() == 0:
        return False
    return all(is_const(i) for i in range(op.get_input_size()))


class ConstantEvaluator:
    """Evaluates constant (possibly folded) tensors with OpenVINO's own op semantics."""

    def __init__(self, idx: Index) -> None:
        self._idx = idx
        self._cache: dict[str, ov.Tensor] = {}

    def tensor(self, name: str) -> ov.Tensor:
        if name not in self._idx.constant:
            raise BackendError(f"tensor {name!r} is not a constant")
        if name not in self._cache:
            self._cache[name] = self._evaluate(name)
        return self._cache[name]

    def __call__(self, name: str) -> np.ndarray:
        """The value of constant tensor ``name`` as a numpy array (a copy)."""
        value = self.tensor(name)
        if value.get_element_type().get_type_name() not in _DTYPES:
            raise BackendError(
                f"constant {name!r} has element type {value.get_element_type()}, which numpy cannot represent"
            )
        return np.array(value.data, copy=True)

    def _evaluate(self, name: str) -> ov.Tensor:
        port = self._idx.ports[name]
        op = port.get_node()
        if op.get_type_name() == "Constant":
            return op.get_tensor_view()  # shares the constant's memory; read only
        inputs = [self.tensor(self._idx.source(op, i)) for i in range(op.get_input_size())]
        outputs = [ov.Tensor(o.get_element_type(), o.get_shape()) for o in op.outputs()]
        try:
            ok = op.evaluate(outputs, inputs)
        except Exception as exc:  # openvino raises RuntimeError subclasses
            raise BackendError(f"cannot evaluate constant {name!r}: {exc}") from exc
        if not ok:
            raise BackendError(f"cannot evaluate constant {name!r} ({op.get_type_name()})")
        for out, value in zip(op.outputs(), outputs):
            self._cache[self._idx.name_of(out)] = value
        return outputs[port.get_index()]


def build_view(model: ov.Model, idx: Index | None = None) -> GraphView:
    """The read-only :class:`GraphView` of ``model`` (see the module docstring)."""
    idx = idx or index(model)
    tensors: dict[str, TensorInfo] = {}
    for name, port in idx.ports.items():
        op = port.get_node()
        const = name in idx.constant
        producer = None if const or op.get_type_name() == "Parameter" else idx.node_name[op.get_name()]
        tensors[name] = TensorInfo(name, shape_of(port), dtype_name(port.get_element_type()), const, producer)
    nodes = [
        _node_info(op, idx, tensors) for op in idx.ops if op.get_type_name() not in _HIDDEN and not _is_folded(op, idx)
    ]
    inputs = [idx.name_of(p.output(0)) for p in model.get_parameters()]
    outputs = [idx.source(r, 0) for r in model.get_results()]
    return GraphView(
        nodes, tensors, inputs, outputs, ConstantEvaluator(idx), fp32_ops=_unplaced(idx), runtime="openvino"
    )


#: Ops whose weights or bodies no rule quantizes, with the reason the summary gives.
_UNPLACED = {
    **dict.fromkeys(
        ("LSTMSequence", "GRUSequence", "RNNSequence", "LSTMCell", "GRUCell", "RNNCell"),
        "recurrent op (LSTM/GRU/RNN): no INT8 form, stays FP32",
    ),
    **dict.fromkeys(("Loop", "TensorIterator", "If"), "subgraph op: its bodies stay FP32"),
}


def _unplaced(idx: Index) -> tuple[tuple[str, str], ...]:
    """``(name, reason)`` for the recurrent and subgraph ops of the model."""
    return tuple(
        (idx.node_name[op.get_name()], _UNPLACED[op.get_type_name()])
        for op in idx.ops
        if op.get_type_name() in _UNPLACED
    )


def _is_folded(op: Any, idx: Index) -> bool:
    return op.get_output_size() > 0 and idx.name_of(op.output(0)) in idx.constant


def input_specs(model: ov.Model) -> list[InputSpec]:
    """The model's Parameters as :class:`InputSpec` (named like the view's tensors)."""
    idx = index(model)
    specs = []
    for param in model.get_parameters():
        port = param.output(0)
        shape = shape_of(port)
        if shape is None:
            raise BackendError(
                f"input {idx.name_of(port)!r} has a dynamic rank; reshape the model to a known rank first"
            )
        specs.append(InputSpec(idx.name_of(port), shape, dtype_name(port.get_element_type())))
    return specs


def _node_info(op: Any, idx: Index, tensors: dict[str, TensorInfo]) -> NodeInfo:
    kind = op.get_type_name()
    inputs = tuple(idx.source(op, i) for i in range(op.get_input_size()))
    outputs = tuple(idx.name_of(o) for o in op.outputs())
    meta = _META.get(kind, g.OTHER)
    attrs = _attrs(op)
    if kind == "ReduceMean":
        meta = g.AVG_POOL if _spatial_mean(op, idx, inputs) else g.OTHER
    weight = _weight_axes(kind, inputs, tensors, attrs)
    info: dict[str, Any] = dict(weight_input=None, weight_axis=None, weight_in_axis=None)
    bias = None
    if weight is not None:
        info = dict(zip(("weight_input", "weight_axis", "weight_in_axis"), weight))
        channels = _out_channels(kind, tensors[inputs[weight[0]]].shape, weight[1])
        bias = _bias_add(op, idx, tensors, kind, channels)
    return NodeInfo(
        idx.node_name[op.get_name()], kind, meta, inputs, outputs, bias_node=bias, attrs=MappingProxyType(attrs), **info
    )


def _attrs(op: Any) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in op.get_attributes().items():
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif (
            isinstance(value, (list, tuple))
            and len(value) <= 16
            and all(isinstance(v, (bool, int, float, str)) for v in value)
        ):
            out[key] = tuple(value)
    if op.get_type_name() == "GroupConvolution":
        shape = op.get_input_partial_shape(1)
        if shape.rank.is_static and shape[0].is_static:
            out["group"] = shape[0].get_length()
    return out


def _spatial_mean(op: Any, idx: Index, inputs: tuple[str, ...]) -> bool:
    """ReduceMean over spatial axes only (axes >= 2 of a rank >= 3 input)."""
    rank = op.get_input_partial_shape(0).rank
    if rank.is_dynamic or rank.get_length() < 3 or inputs[1] not in idx.constant:
        return False
    axes = ConstantEvaluator(idx)(inputs[1]).reshape(-1) % rank.get_length()
    return axes.size > 0 and bool(np.all(axes >= 2))


def _weight_axes(
    kind: str, inputs: tuple[str, ...], tensors: dict[str, TensorInfo], attrs: dict[str, object]
) -> tuple[int, int, int] | None:
    """(weight input, output-channel axis, input-channel axis) of a weighted op.

    GroupConvolution weights are ``[G, Cout/G, Cin/G, k...]``: the output-channel axis
    is reported as 0 -- exactly per output channel for depthwise convolutions (where
    ``Cout/G == 1``), per group otherwise -- and the input-channel axis as 2. The
    writer expands per-group scales to ``[G, Cout/G, 1, ...]`` for the CPU plugin.
    """
    if len(inputs) < 2 or not tensors[inputs[1]].is_constant:
        return None
    rank = tensors[inputs[1]].rank
    if kind == "Convolution":
        return 1, 0, 1
    if kind == "GroupConvolution":
        return 1, 0, 2
    if kind == "ConvolutionBackpropData":
        return 1, 1, 0
    if kind == "MatMul" and rank == 2 and not tensors[inputs[0]].is_constant:
        return (1, 0, 1) if attrs.get("transpose_b") else (1, 1, 0)
    return None


def _out_channels(kind: str, shape: tuple[int | None, ...] | None, axis: int) -> int | None:
    if shape is None:
        return None
    if kind == "GroupConvolution":
        return None if None in shape[:2] else shape[0] * shape[1]  # type: ignore[operator]  # no None: checked
    return shape[axis]


def _bias_add(op: Any, idx: Index, tensors: dict[str, TensorInfo], kind: str, channels: int | None) -> str | None:
    """The single consumer ``Add`` that adds a constant per-output-channel vector."""
    targets = list(op.output(0).get_target_inputs())
    if len(targets) != 1 or channels is None:
        return None
    add = targets[0].get_node()
    if add.get_type_name() != "Add":
        return None
    other = idx.source(add, 1 - targets[0].get_index())
    info = tensors[other]
    out_rank = op.get_output_partial_shape(0).rank
    if not info.is_constant or info.shape is None or out_rank.is_dynamic:
        return None
    rank = out_rank.get_length()
    axis = rank - 1 if kind == "MatMul" else 1
    if not _bias_shape_ok(info.shape, rank, axis, channels):
        return None
    return idx.node_name[add.get_name()]


def _bias_shape_ok(shape: tuple[int | None, ...], rank: int, axis: int, channels: int) -> bool:
    if len(shape) > rank or int(np.prod([d or 0 for d in shape])) != channels:
        return False
    pos = axis - (rank - len(shape))  # the channel axis in the bias's own (right-aligned) axes
    return all(d == 1 for i, d in enumerate(shape) if i != pos) and (channels == 1 or 0 <= pos < len(shape))
