"""Normalising what ONNX exporters produce into the few patterns the writer plans for.

Exporters store the same weight in many ways: an initializer, a ``Constant`` node
(Paddle2ONNX keeps every weight and bias so, with ``value`` or ``value_float(s)`` /
``value_int(s)`` attributes), an ``Identity`` or ``Cast`` of either (FP16-stored
models), or list weights as graph inputs too (``keep_initializers_as_inputs``). On
load (:func:`rayq.backends.onnx.reader.load_model`), initializers stop being graph
inputs, main-graph ``Constant`` nodes become initializers, and nodes computed only
from constants (``Identity``, ``Cast``, ``Transpose``...) are folded into
initializers, so every constant weight or bias the graph view reports is an
initializer. ``DequantizeLinear`` of a constant is not folded: an already-quantized
weight stays as it is.

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
#: Recurrent ops: weighted, but QDQ has no INT8 form of them (neither runtime fuses one).
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})
RECURRENT_REASON = "recurrent op (LSTM/GRU/RNN): no INT8 form, stays FP32"


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


def initializer_inputs_to_constants(proto: onnx.ModelProto) -> int:
    """Drop initializers from the graph inputs, in place; returns how many.

    Older exporters (``keep_initializers_as_inputs``) list every weight as a graph
    input too, which makes it a default that a caller may override. rayq quantizes
    weights as constants; once the writer replaces an FP32 weight, such an input would
    be left without its initializer and become a required feed.
    """
    if proto.ir_version and proto.ir_version < 4:
        return 0  # IR < 4: every initializer must be a graph input
    inits = {t.name for t in proto.graph.initializer}
    kept = [vi for vi in proto.graph.input if vi.name not in inits]
    removed = len(proto.graph.input) - len(kept)
    if removed:
        del proto.graph.input[:]
        proto.graph.input.extend(kept)
        log.debug("%d initializers were also graph inputs: now constants only", removed)
    return removed


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


def recurrent_ops(graph: onnx.GraphProto) -> list[tuple[str, str]]:
    """``(name, reason)`` for each main-graph LSTM/GRU/RNN (their weights stay FP32)."""
    return [
        (node.name or f"{node.op_type}_{i}", RECURRENT_REASON)
        for i, node in enumerate(graph.node)
        if node.op_type in RECURRENT_OPS and node.domain in ("", "ai.onnx")
    ]


def _weighted_in(graph: onnx.GraphProto) -> Iterator[tuple[str, str]]:
    for i, node in enumerate(graph.node):
        if node.op_type in WEIGHTED_OPS and node.domain in ("", "ai.onnx"):
            yield node.name or f"{node.op_type}_{i}", node.op_type
        for sub in subgraphs(node):
            yield from _weighted_in(sub)


_NOT_FLOAT32 = ("float16", "bfloat16", "float64")
#: Data-movement ops through which a dequantized tensor stays on its quantization grid.
_MOVES_DATA = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "MaxPool"})


def dequantized(graph: onnx.GraphProto) -> set[str]:
    """Outputs of the model's own ``DequantizeLinear`` nodes, and of data-movement ops
    that read them (graph nodes in topological order)."""
    out: set[str] = set()
    for node in graph.node:
        if node.op_type == "DequantizeLinear" or (node.op_type in _MOVES_DATA and node.input and node.input[0] in out):
            out.add(node.output[0])
    return out


def fp32_reason(node: onnx.NodeProto, dtypes: dict[str, str], dequantized: set[str]) -> str | None:
    """Why ``node`` must stay FP32 whatever the plan, or None.

    Args:
        node: A main-graph node.
        dtypes: numpy dtype name of its inputs (where known).
        dequantized: Tensors already quantized in the model (see :func:`dequantized`).
    """
    if any(t in dequantized for t in node.input):
        return "already quantized (reads a DequantizeLinear output)"
    odd = sorted({dtypes[t] for t in node.input if dtypes.get(t) in _NOT_FLOAT32})
    if odd:
        return f"computes in {'/'.join(odd)} (rayq quantizes float32 ops)"
    return None


_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"}
)


def constant_tensors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers and ``Constant`` node values, by tensor name."""
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        value = constant_value(node)
        if value is not None:
            constants[node.output[0]] = value
    return constants


def pure(node: onnx.NodeProto) -> bool:
    """A standard, deterministic op other than ``Constant``: its outputs follow from its inputs."""
    return node.domain in ("", "ai.onnx") and node.op_type not in _NONDETERMINISTIC and node.op_type != "Constant"


_FOLD_MAX_ELEMENTS = 1 << 24  # never materialise a folded tensor larger than this
_QUANTIZATION_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def fold_constants(proto: onnx.ModelProto) -> None:
    """Replace nodes computed only from initializers (``Transpose(W)``, ``Cast``, a
    ``Gather`` of a constant table...) by their values, in place, so weights computed in
    the graph are quantized as weights. Nodes whose outputs are graph outputs, that
    carry subgraphs, are random, quantize or dequantize (an already-quantized weight
    stays so), or whose result would be huge are kept. Tensors read only inside
    subgraphs stay."""
    from onnx.reference import ReferenceEvaluator

    graph = proto.graph
    known = constant_tensors(graph)
    outputs = {o.name for o in graph.output}
    folded, keep = [], []
    for node in graph.node:
        ins = [t for t in node.input if t]
        foldable = (
            pure(node)
            and node.op_type not in _QUANTIZATION_OPS
            and ins
            and all(t in known for t in ins)
            and not outputs.intersection(node.output)
            and not has_subgraph(node)
        )
        if foldable:
            try:
                values = _evaluate(ReferenceEvaluator, proto, node, {t: known[t] for t in ins})
                names = [o for o in node.output if o]
                tensors = (
                    [numpy_helper.from_array(np.asarray(v), o) for o, v in zip(names, values)]
                    if all(np.asarray(v).size <= _FOLD_MAX_ELEMENTS for v in values)
                    else None
                )
            except Exception as exc:  # an op the reference runtime lacks, an odd dtype: keep the node
                log.debug("not folding %s: %s", node.name, exc)
                tensors = None
            if tensors is not None and len(tensors) == len(names):
                for t in tensors:
                    known[t.name] = t
                    folded.append(t)
                continue
        keep.append(node)
    if folded:
        del graph.node[:]
        graph.node.extend(keep)
        used = used_names(graph) | {vi.name for vi in graph.input}
        kept = [t for t in graph.initializer if t.name in used] + [t for t in folded if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        log.debug("folded %d constant tensors", len(folded))


def _evaluate(evaluator, proto: onnx.ModelProto, node: onnx.NodeProto, values: dict[str, onnx.TensorProto]) -> list:
    """Run one node on constant inputs (input name -> tensor) with ONNX's reference runtime."""
    inputs = []
    for name, t in values.items():
        if t.name != name:  # a Constant node's value is named by its output
            t = onnx.TensorProto()
            t.CopyFrom(values[name])
            t.name = name
        inputs.append(t)
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [node], "fold", [], [onnx.helper.make_tensor_value_info(o, 0, None) for o in node.output if o], inputs
        ),
        opset_imports=list(proto.opset_import),
        ir_version=proto.ir_version,
    )
    return evaluator(model).run(None, {})


def copy_fields(src, dst, *, skip: str) -> None:
    """Copy every set field of message ``src`` into ``dst`` except ``skip`` (e.g. a
    model without its graph, or a graph without its initializers: no weight copies)."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)
