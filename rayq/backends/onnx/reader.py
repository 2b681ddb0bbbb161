"""Reading ONNX models: loading, opset upgrade, and the metatyped graph view."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from rayq.backends.base import InputSpec
from rayq.backends.onnx import normalize
from rayq.core import graph as g
from rayq.core.graph import GraphView, NodeInfo, TensorInfo
from rayq.errors import BackendError

log = logging.getLogger(__name__)

MIN_OPSET = 13
_TWO_GB = 2**31 - 1

_META = {
    "Conv": g.CONV,
    "ConvTranspose": g.CONV_TRANSPOSE,
    "MatMul": g.MATMUL,
    "Gemm": g.MATMUL,
    "Add": g.ADD,
    "Mul": g.MUL,
    "Concat": g.CONCAT,
    "MaxPool": g.MAX_POOL,
    "AveragePool": g.AVG_POOL,
    "GlobalAveragePool": g.AVG_POOL,
    "Reshape": g.SHAPE,
    "Transpose": g.SHAPE,
    "Flatten": g.SHAPE,
    "Squeeze": g.SHAPE,
    "Unsqueeze": g.SHAPE,
    "Softmax": g.SOFTMAX,
    "LayerNormalization": g.NORM,
    "BatchNormalization": g.NORM,
    "InstanceNormalization": g.NORM,
    "Relu": g.ACTIVATION,
    "Sigmoid": g.ACTIVATION,
    "Tanh": g.ACTIVATION,
    "Gelu": g.ACTIVATION,
    "Clip": g.ACTIVATION,
    "LeakyRelu": g.ACTIVATION,
    "HardSwish": g.ACTIVATION,
    "HardSigmoid": g.ACTIVATION,
    "Elu": g.ACTIVATION,
}
_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)
_DTYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
    onnx.TensorProto.BFLOAT16: "bfloat16",
}


def load_model(model: Any) -> onnx.ModelProto:
    """Load and validate an ONNX model from a ``ModelProto`` or a path.

    Nodes without a name get a unique one; opsets below 13 are upgraded; initializers
    stop being graph inputs, main-graph ``Constant`` nodes become initializers and
    constant subexpressions (``Identity``, ``Cast`` of FP16 weights, ``Transpose``...)
    are folded (see :mod:`rayq.backends.onnx.normalize`).

    Raises:
        BackendError: the file is missing, not ONNX, invalid, or cannot be upgraded.
    """
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    else:
        path = Path(os.fspath(model))
        if path.is_dir():
            raise BackendError(f"model path {str(path)!r} is a folder, not an ONNX model file")
        if not path.is_file():
            raise BackendError(f"model file {str(path)!r} does not exist")
        try:
            proto = onnx.load(str(path), load_external_data=True)
        except Exception as exc:  # protobuf DecodeError, OSError for external data
            raise BackendError(f"{str(path)!r} is not a readable ONNX model: {exc}") from exc
    if not proto.graph.node:
        raise BackendError("the ONNX model has no nodes (not a model, or an empty graph)")
    proto = _upgrade_opset(proto)
    _name_nodes(proto)
    normalize.initializer_inputs_to_constants(proto)
    normalize.constants_to_initializers(proto)
    normalize.fold_constants(proto)
    try:
        if fits_in_memory_proto(proto):
            onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise BackendError(f"the ONNX model is invalid: {str(exc).splitlines()[0]}") from exc
    return proto


def opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def _upgrade_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    version = opset(proto)
    if version >= MIN_OPSET:
        return proto
    log.info("upgrading ONNX opset %d -> %d", version, MIN_OPSET)
    try:
        from onnx import version_converter

        upgraded = version_converter.convert_version(proto, MIN_OPSET)
        # the converter keeps the IR version: IR 3 would need every initializer as an input
        upgraded.ir_version = max(
            upgraded.ir_version,
            onnx.helper.find_min_ir_version_for([o for o in upgraded.opset_import if o.domain in ("", "ai.onnx")]),
        )
        return upgraded
    except Exception as exc:
        raise BackendError(
            f"the model uses ONNX opset {version}; rayq needs opset >= {MIN_OPSET} (per-channel "
            f"DequantizeLinear) and the automatic upgrade failed: {exc}. Re-export with opset >= 13."
        ) from exc


def _name_nodes(proto: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(proto.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def fingerprint(proto: onnx.ModelProto) -> str:
    """sha256 of the graph structure and every initializer's bytes."""
    h = hashlib.sha256()
    graph = onnx.GraphProto()
    normalize.copy_fields(proto.graph, graph, skip="initializer")  # no weight copies
    h.update(graph.SerializeToString(deterministic=True))
    for init in proto.graph.initializer:  # one weight at a time
        h.update(init.name.encode())
        value = np.ascontiguousarray(numpy_helper.to_array(init))
        h.update(value.tobytes() if value.dtype.kind == "O" else value.data)
    return h.hexdigest()


def _shape(vi: onnx.ValueInfoProto) -> tuple[tuple[int | str | None, ...] | None, str]:
    t = vi.type.tensor_type
    dtype = _DTYPES.get(t.elem_type, "unknown")
    if not t.HasField("shape"):
        return None, dtype
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
    return dims, dtype


def input_specs(proto: onnx.ModelProto) -> list[InputSpec]:
    inits = {i.name for i in proto.graph.initializer}
    specs = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        dims, dtype = _shape(vi)
        shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (dims or ()))
        specs.append(InputSpec(vi.name, shape, dtype))
    return specs


def batch_symbols(proto: onnx.ModelProto) -> set[str]:
    """Symbolic names of the inputs' first dims (the batch dimension)."""
    out = set()
    for vi in proto.graph.input:
        dims, _ = _shape(vi)
        if dims and isinstance(dims[0], str):
            out.add(dims[0])
    return out


def tensor_bytes(t: onnx.TensorProto) -> int:
    """Serialised size of an initializer, without serialising it: a ``raw_data`` tensor's
    payload is its element count times the element size (``ByteSize()`` encodes the whole
    tensor to measure it: 60 ms per model of 58 MB of weights)."""
    if t.HasField("raw_data"):
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            return t.ByteSize()
        return int(np.prod(t.dims, dtype=np.int64)) * itemsize + 64 + len(t.name)
    return t.ByteSize()


def size_bytes(proto: onnx.ModelProto) -> int:
    """Serialised size of ``proto``, from its parts (weights by :func:`tensor_bytes`)."""
    graph = proto.graph
    return (
        sum(tensor_bytes(t) for t in graph.initializer)
        + sum(n.ByteSize() for n in graph.node)
        + sum(v.ByteSize() for v in (*graph.input, *graph.output, *graph.value_info))
        + 4096
    )


def fits_in_memory_proto(proto: onnx.ModelProto) -> bool:
    """True when ``proto`` can be serialised in memory (protobuf's 2 GB limit)."""
    return size_bytes(proto) < _TWO_GB - (1 << 20)


_SHAPE_CONST_ELEMENTS = 4096  # integer initializers up to this size stay for data propagation


def _light(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` without its large weights: they become typed graph inputs. Shape
    inference needs only their shapes, and skips serialising the weights."""
    light = onnx.ModelProto()
    light.ir_version = proto.ir_version
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    graph = light.graph
    graph.name = proto.graph.name
    graph.node.extend(proto.graph.node)
    graph.input.extend(proto.graph.input)
    graph.output.extend(proto.graph.output)
    declared = {vi.name for vi in proto.graph.input}
    for t in proto.graph.initializer:
        n = math.prod(t.dims)
        small_int = t.data_type not in _FLOAT_TYPES and n <= _SHAPE_CONST_ELEMENTS
        if n <= 64 or small_int:
            graph.initializer.append(t)
        elif t.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference (with data propagation) on the weight-free copy of ``proto``:
    use its value infos only, not its initializers. A ``Reshape`` whose target is computed
    (``Concat(Shape(x)[0:1], [-1])``) gets the rank its target's length gives, and inference
    runs again from there: ONNX leaves such outputs, and all after them, without a rank."""
    try:
        light = _light(proto)
        inferred = shape_inference.infer_shapes(light, data_prop=True)
        for _ in range(4):
            ranked = _reshape_ranks(inferred)
            if not ranked:
                break
            light.graph.value_info.extend(ranked)
            inferred = shape_inference.infer_shapes(light, data_prop=True)
        return inferred
    except Exception as exc:  # inference is best-effort
        log.debug("shape inference failed: %s", exc)
    return proto


def _reshape_ranks(inferred: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Value infos of unknown dims for Reshape outputs without a rank whose target has a static length."""
    known = {vi.name: vi for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    out = []
    for node in inferred.graph.node:
        if (
            node.op_type != "Reshape"
            or len(node.input) < 2
            or (known.get(node.output[0]) is not None and known[node.output[0]].type.tensor_type.HasField("shape"))
        ):
            continue
        target = known.get(node.input[1])
        dims = (
            target.type.tensor_type.shape.dim
            if target is not None and target.type.tensor_type.HasField("shape")
            else []
        )
        data = known.get(node.input[0])
        if len(dims) == 1 and dims[0].HasField("dim_value") and data is not None:
            shape = [f"{node.output[0]}_d{i}" for i in range(dims[0].dim_value)]
            out.append(onnx.helper.make_tensor_value_info(node.output[0], data.type.tensor_type.elem_type, shape))
    return out


def build_view(proto: onnx.ModelProto) -> tuple[GraphView, dict[str, tuple | None]]:
    """Build the :class:`GraphView`; also returns raw shapes (with dim symbols)."""
    inferred = infer(proto).graph  # shapes only: nodes and constants come from ``proto``
    graph = proto.graph
    constants = normalize.constant_tensors(graph)
    raw_shapes: dict[str, tuple | None] = {}
    tensors: dict[str, TensorInfo] = {}
    for vi in [*inferred.input, *inferred.value_info, *inferred.output]:
        dims, dtype = _shape(vi)
        raw_shapes[vi.name] = dims
        shape = None if dims is None else tuple(d if isinstance(d, int) and d > 0 else None for d in dims)
        tensors[vi.name] = TensorInfo(vi.name, shape, dtype, vi.name in constants)
    for name, t in constants.items():
        tensors[name] = TensorInfo(name, tuple(t.dims), _DTYPES.get(t.data_type, "unknown"), True)
    producers = {}
    independent = _data_independent(graph, constants)
    for node in graph.node:
        for out in node.output:
            producers[out] = node.name
            info = tensors.get(out, TensorInfo(out, None, "unknown"))
            tensors[out] = TensorInfo(
                out, info.shape, info.dtype, out in constants, node.name, data_independent=out in independent
            )
    nodes, fp32 = _nodes(graph, tensors)
    constant_fn = _ConstantCache(constants)

    inits = set(constants)
    inputs = [vi.name for vi in graph.input if vi.name not in inits]
    view = GraphView(
        nodes, tensors, inputs, [o.name for o in graph.output], constant_fn, fp32_ops=tuple(fp32), runtime="onnxruntime"
    )
    return view, raw_shapes


#: Most bytes of converted constants a graph view keeps (least recently used dropped first):
#: every weight of a ResNet-50 (100 MB) stays converted across a search's builds, while a
#: model of several GB is not held a second time as numpy arrays.
CONSTANT_CACHE_BYTES = 256 << 20


class _ConstantCache:
    """``name -> numpy array`` of the graph's constants, converted on first use and kept
    up to ``CONSTANT_CACHE_BYTES`` (least recently used first out)."""

    def __init__(self, constants: dict[str, onnx.TensorProto]) -> None:
        self._constants = constants
        self._cache: dict[str, np.ndarray] = {}
        self._bytes = 0

    def __call__(self, name: str) -> np.ndarray:
        value = self._cache.pop(name, None)
        if value is None:
            value = numpy_helper.to_array(self._constants[name])
            self._bytes += value.nbytes
        self._cache[name] = value  # most recently used last
        while self._bytes > CONSTANT_CACHE_BYTES and len(self._cache) > 1:
            self._bytes -= self._cache.pop(next(iter(self._cache))).nbytes
        return value


def _nodes(graph: onnx.GraphProto, tensors: dict[str, TensorInfo]) -> tuple[list[NodeInfo], list[tuple[str, str]]]:
    """The view's nodes, and ``(name, reason)`` for the weighted ops that must stay FP32:
    those are typed ``other`` so that no rule places a quantizer on them."""
    dequantized = normalize.dequantized(graph)
    fp32 = normalize.subgraph_ops(graph) + normalize.recurrent_ops(graph)
    nodes = []
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        info = _node_info(node, tensors, graph)
        reason = normalize.fp32_reason(node, {t: tensors[t].dtype for t in node.input if t in tensors}, dequantized)
        if reason is not None and info.meta != g.OTHER:
            if info.meta in g.WEIGHTED:
                fp32.append((node.name, reason))
            info = dataclasses.replace(
                info,
                meta=g.OTHER,
                weight_input=None,
                weight_axis=None,
                weight_in_axis=None,
                bias_input=None,
                bias_node=None,
            )
        nodes.append(info)
    return nodes, fp32


_SHAPE_READERS = frozenset({"Shape", "Size"})


def _data_independent(graph: onnx.GraphProto, constants: dict) -> set[str]:
    """Outputs computed only from constants and input shapes (``Shape``/``Size``), in
    topological order: e.g. position ids and their embedding, zero token-type ids."""
    out: set[str] = set()
    for node in graph.node:
        if not normalize.pure(node):
            continue
        ins = [t for t in node.input if t]
        if node.op_type in _SHAPE_READERS or (ins and all(t in constants or t in out for t in ins)):
            out.update(node.output)
    return out


def _node_info(node: onnx.NodeProto, tensors: dict[str, TensorInfo], graph: onnx.GraphProto) -> NodeInfo:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.type in (1, 2, 3, 7)}
    meta = _META.get(node.op_type, g.OTHER) if node.domain in ("", "ai.onnx") else g.OTHER
    info: dict[str, Any] = dict(
        weight_input=None, weight_axis=None, weight_in_axis=None, bias_input=None, bias_node=None
    )

    def const(i: int) -> bool:
        return (
            len(node.input) > i
            and bool(node.input[i])
            and tensors.get(node.input[i]) is not None
            and tensors[node.input[i]].is_constant
        )

    if meta in (g.CONV, g.CONV_TRANSPOSE) and const(1):
        out_axis = 0 if meta == g.CONV else 1
        info.update(weight_input=1, weight_axis=out_axis, weight_in_axis=1 - out_axis)
        if const(2):
            info["bias_input"] = 2
    elif node.op_type == "Gemm" and const(1) and not attrs.get("transA", 0):
        trans_b = bool(attrs.get("transB", 0))
        info.update(weight_input=1, weight_axis=0 if trans_b else 1, weight_in_axis=1 if trans_b else 0)
        if const(2):
            info["bias_input"] = 2
    elif node.op_type == "MatMul" and const(1) and (tensors[node.input[1]].rank or 0) == 2:
        info.update(weight_input=1, weight_axis=1, weight_in_axis=0)
        info["bias_node"] = _bias_add(node, tensors, graph)
    return NodeInfo(node.name, node.op_type, meta, tuple(node.input), tuple(node.output), attrs=attrs, **info)


def _bias_add(node: onnx.NodeProto, tensors: dict[str, TensorInfo], graph: onnx.GraphProto) -> str | None:
    """The Add right after a MatMul that adds a constant vector, if any."""
    out = node.output[0]
    users = [n for n in graph.node if out in n.input]
    if len(users) != 1 or users[0].op_type != "Add":
        return None
    other = [t for t in users[0].input if t != out]
    if len(other) == 1 and tensors.get(other[0]) is not None and tensors[other[0]].is_constant:
        shape = tensors[other[0]].shape or ()
        if len([d for d in shape if d != 1]) <= 1:
            return users[0].name
    return None
