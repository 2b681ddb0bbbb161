"""Normalising what ONNX exporters produce into the few patterns the writer plans for.

Exporters store the same weight in many ways: an initializer, a ``Constant`` node
(Paddle2ONNX keeps every weight and bias so, with ``value`` or ``value_float(s)`` /
``value_int(s)`` attributes), an ``Identity`` or ``Cast`` of either (FP16-stored
models). On load, main-graph ``Constant`` nodes become initializers here, and the
reader folds ``Identity``/``Cast``/``Transpose`` of constants into initializers, so
every constant weight or bias the graph view reports is an initializer.

Names read by nested subgraphs (``If``/``Loop``/``Scan`` bodies may read main-graph
tensors without listing them as node inputs) are counted as used everywhere an
unused tensor would be dropped or a node order computed. Subgraphs themselves stay
FP32: :func:`subgraph_ops` lists their weighted ops for the summary.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)

_GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
#: Op types counted as "weighted ops" in the FP32 report of subgraphs.
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The value of a ``Constant`` node as a tensor named by its output; None for
    string values (never weights) and malformed nodes."""
    if node.op_type != "Constant" or len(node.attribute) != 1 or not node.output:
        return None
    attr = node.attribute[0]
    name = node.output[0]
    if attr.name == "value":
        t = onnx.TensorProto()
        t.CopyFrom(attr.t)
    elif attr.name in ("value_float", "value_floats"):
        t = numpy_helper.from_array(np.asarray(helper.get_attribute_value(attr), np.float32))
    elif attr.name in ("value_int", "value_ints"):
        t = numpy_helper.from_array(np.asarray(helper.get_attribute_value(attr), np.int64))
    elif attr.name == "sparse_value":
        t = numpy_helper.from_array(_dense(attr.sparse_tensor))
    else:  # value_string(s)
        return None
    t.name = name
    return t


def _dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """A sparse tensor's dense value (indices linear ``[NNZ]`` or per-dim ``[NNZ, rank]``)."""
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dims = tuple(sparse.dims)
    dense = np.zeros(dims, values.dtype)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), dims) if indices.size else indices.reshape(-1)
    dense.reshape(-1)[indices] = values
    return dense


def constants_to_initializers(proto: onnx.ModelProto) -> int:
    """Turn the main graph's ``Constant`` nodes into initializers, in place; returns
    how many. Kept as nodes: string constants, graph outputs (an initializer cannot
    be one), and every constant of a model older than IR 4 (its initializers must
    also be graph inputs)."""
    if proto.ir_version and proto.ir_version < 4:
        return 0
    graph = proto.graph
    outputs = {o.name for o in graph.output}
    keep, moved = [], []
    for node in graph.node:
        value = constant_value(node) if node.domain in ("", "ai.onnx") else None
        if value is None or node.output[0] in outputs:
            keep.append(node)
        else:
            moved.append(value)
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(moved)
        log.debug("%d Constant nodes became initializers", len(moved))
    return len(moved)


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held by ``node``'s attributes (``If`` branches, ``Loop``/``Scan`` bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in _GRAPH_ATTRS for a in node.attribute)


def _nested_names(graph: onnx.GraphProto, out: set[str]) -> None:
    for node in graph.node:
        out.update(t for t in node.input if t)
        for sub in subgraphs(node):
            _nested_names(sub, out)
    out.update(o.name for o in graph.output)


def references(node: onnx.NodeProto) -> set[str]:
    """Every tensor ``node`` may read: its inputs, and every name its subgraphs
    (recursively) read or return, which includes the outer-scope tensors they use.
    Names local to a subgraph are included too; SSA keeps them apart from the main
    graph's names, so the set is a safe "used" set."""
    out = {t for t in node.input if t}
    for sub in subgraphs(node):
        _nested_names(sub, out)
    return out


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Tensors the graph still reads: node inputs (subgraph references included) and outputs."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used |= references(node)
    return used


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name defined anywhere in ``graph``, subgraphs included."""
    names = {t.name for t in graph.initializer} | {vi.name for vi in graph.input}
    for node in graph.node:
        names.update(node.output)
        names.add(node.name)
        for sub in subgraphs(node):
            names |= all_names(sub)
    return names


def subgraph_ops(graph: onnx.GraphProto) -> list[tuple[str, str]]:
    """``(name, reason)`` for each weighted op inside a main-graph node's subgraphs."""
    out: list[tuple[str, str]] = []
    for node in graph.node:
        reason = f"inside a subgraph of {node.op_type} {node.name!r} (subgraphs stay FP32)"
        for sub in subgraphs(node):
            out += [(f"{node.name}/{name}", reason) for name, _ in _weighted_in(sub)]
    return out


def _weighted_in(graph: onnx.GraphProto) -> Iterator[tuple[str, str]]:
    for i, node in enumerate(graph.node):
        if node.op_type in WEIGHTED_OPS and node.domain in ("", "ai.onnx"):
            yield node.name or f"{node.op_type}_{i}", node.op_type
        for sub in subgraphs(node):
            yield from _weighted_in(sub)


_NOT_FLOAT32 = ("float16", "bfloat16", "float64")


def fp32_reason(node: onnx.NodeProto, dtypes: dict[str, str], dequantized: set[str]) -> str | None:
    """Why ``node`` must stay FP32 whatever the plan, or None.

    Args:
        node: A main-graph node.
        dtypes: numpy dtype name of its inputs (where known).
        dequantized: Outputs of the model's own ``DequantizeLinear`` nodes.
    """
    if any(t in dequantized for t in node.input):
        return "already quantized (reads a DequantizeLinear output)"
    odd = sorted({dtypes[t] for t in node.input if dtypes.get(t) in _NOT_FLOAT32})
    if odd:
        return f"computes in {'/'.join(odd)} (rayq quantizes float32 ops)"
    return None
