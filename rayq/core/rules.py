"""Quantizer placement: where Q/DQ (or FakeQuantize) go, and the fallback groups.

The unit of placement is the *quantizable op* (Conv, MatMul, residual Add, ...):
its activation inputs get per-tensor quantizers and its constant weight a
per-channel one. Reverting an op to FP32 (a *fallback group*) removes exactly the
quantizer edges that serve it, so fallback sets compose freely.

Attention: the MatMuls of two activations (Q x K^T, and the probabilities x V) are
quantized with symmetric inputs; with ``model_type="transformer"`` the probabilities
x V MatMul stays FP32 (better accuracy, the transformer preset's trade-off).

Squeeze-excitation blocks (:mod:`rayq.core.patterns`): the gating Mul is quantized
(both inputs). The Convs of the branch that computes the gate stay FP32 on ONNX
Runtime, where each Q/DQ pair on a ``[N, C, 1, 1]`` tensor costs more than INT8 saves;
on OpenVINO they are quantized like any Conv (:data:`_INT8_SE_BRANCH`). A layer
scale (a Mul by a constant, behind data-movement ops after a Linear: ConvNeXt) gets
its input quantized, so the data movement runs on INT8 data.

Activation quantizers are moved upward through data-movement ops (Reshape,
Transpose, Flatten, MaxPool...) with a single consumer, so those ops run on INT8
data instead of adding a Q/DQ pair each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeGuard

from rayq.core import graph as g
from rayq.core import patterns
from rayq.core.graph import GraphView, NodeInfo

ACTIVATION = "activation"
WEIGHT = "weight"

_CNN_OPS = frozenset({g.CONV, g.CONV_TRANSPOSE, g.MATMUL, g.ADD, g.MUL, g.CONCAT, g.AVG_POOL})
_TRANSFORMER_OPS = frozenset({g.CONV, g.CONV_TRANSPOSE, g.MATMUL})
_PASS_THROUGH = frozenset({g.SHAPE, g.MAX_POOL})
#: Data-movement ops the readers leave as ``other`` (ONNX and OpenVINO op types):
#: slicing channels (ShuffleNet's split) moves values without changing them.
_MOVEMENT_TYPES = frozenset({"Slice", "Split", "StridedSlice", "VariadicSplit", "ShuffleChannels"})
_SHAPE_READERS = frozenset({"Shape", "ShapeOf", "Size"})
#: Runtimes on which the squeeze-excitation branch Convs are quantized. OpenVINO's CPU
#: plugin fuses the FakeQuantizes into the pooling and the Convs (``u8`` in, ``u8``
#: out, no extra kernels), while FP32 Convs there cost an ``f32`` pooling output and
#: FP32 1x1 kernels (MobileNetV3-S: 0.92x the latency, bench/README.md "OV placement").
_INT8_SE_BRANCH = frozenset({"openvino"})
_FLOAT = ("float32", "float16", "float64", "bfloat16")
_PIXELS = ("uint8", "int8")


@dataclass(frozen=True)
class Edge:
    """Input ``index`` of node ``node``."""

    node: str
    index: int


@dataclass(frozen=True)
class QuantizerPoint:
    """One quantizer: a tensor and the op inputs that read its quantized value.

    Attributes:
        id: Stable id, ``a:<tensor>`` for activations, ``w:<node>`` for weights.
        tensor: The quantized tensor.
        kind: :data:`ACTIVATION` or :data:`WEIGHT`.
        edges: Op inputs rewired to the dequantized tensor.
        serves: The quantizable op each edge serves (parallel to ``edges``).
        axis: Per-channel axis of a weight quantizer.
        unify: For quantizers on a Concat's inputs or output: the output tensor of the
            first Concat of its *unified-scale group*. Every quantizer with the same
            ``unify`` gets the same scale, so the Concats run on INT8 data without
            requantization. Concats that share an input (DenseNet's dense blocks) form
            one group: a tensor gets one quantizer, shared by all its consumers.
        unify_tensors: The output tensors of every Concat of that group, whose joint
            range sets the group's scale (empty when ``unify`` is None).
        symmetric: The quantizer is symmetric in every preset: it serves only
            activation x activation MatMuls (attention's Q x K^T), which runtimes fuse
            into integer attention kernels only with signed, zero-point-free inputs.
    """

    id: str
    tensor: str
    kind: str
    edges: tuple[Edge, ...]
    serves: tuple[str, ...]
    axis: int | None = None
    unify: str | None = None
    symmetric: bool = False
    unify_tensors: tuple[str, ...] = ()

    @property
    def stats_tensors(self) -> tuple[str, ...]:
        """The tensors whose joint range sets this quantizer's range: the group's Concat
        outputs for a unified-scale quantizer (so the group shares one scale), else its
        own tensor."""
        return self.unify_tensors or (self.tensor,)

    def active_edges(self, fallback: frozenset[str]) -> tuple[Edge, ...]:
        return tuple(e for e, op in zip(self.edges, self.serves) if op not in fallback)


@dataclass(frozen=True)
class Placement:
    """All quantizers of a model for a given preset / model type / ignored scope.

    Attributes:
        ops: Quantizable ops in topological order -- the fallback groups.
        points: Quantizer points.
        skipped: ``(node, reason)`` for weighted ops left FP32 by the rules.
        first_layer: Weighted ops reached from the inputs without another weighted op.
    """

    ops: tuple[str, ...]
    points: tuple[QuantizerPoint, ...]
    skipped: tuple[tuple[str, str], ...]
    first_layer: frozenset[str]

    def group(self, op: str) -> tuple[str, ...]:
        """Ids of the quantizers that serve ``op`` (its fallback group)."""
        return tuple(p.id for p in self.points if op in p.serves)

    def active(self, fallback: Iterable[str] = ()) -> list[tuple[QuantizerPoint, tuple[Edge, ...]]]:
        """Points that still have at least one edge once ``fallback`` ops are FP32."""
        fb = frozenset(fallback)
        out = []
        for p in self.points:
            edges = p.active_edges(fb)
            if edges:
                out.append((p, edges))
        return out

    def activation_tensors(self) -> tuple[str, ...]:
        """Tensors whose statistics the activation quantizers need."""
        return tuple(dict.fromkeys(t for p in self.points if p.kind == ACTIVATION for t in p.stats_tensors))


def _is_float_activation(graph: GraphView, tensor: str) -> bool:
    info = graph.tensors.get(tensor)
    return (
        bool(tensor)
        and info is not None
        and not info.is_constant
        and not info.data_independent
        and info.dtype in _FLOAT
    )


def _quantizable(
    node: NodeInfo, graph: GraphView, model_type: str | None, se: frozenset[str] = frozenset()
) -> str | None:
    """Return None if ``node`` is quantizable, else the reason it is not."""
    ops = _TRANSFORMER_OPS if model_type == "transformer" else _CNN_OPS
    if node.meta not in ops:
        return "not a quantizable op type"
    if node.name in se:
        return "squeeze-excitation branch stays FP32 ([N, C, 1, 1] tensors: Q/DQ costs more than INT8 saves)"
    if (
        node.meta == g.MUL
        and patterns.gate_input(graph, node) is None
        and patterns.layer_scale_input(graph, node) is None
    ):
        return "only a gating Mul (x * sigmoid(f(x)), e.g. squeeze-excitation) or a layer scale is quantized"
    acts = [t for t in node.inputs if _is_float_activation(graph, t)]
    if not acts and node.weight_input is None:
        return "no float inputs"
    if model_type == "transformer" and node.meta == g.MATMUL and any(_from_softmax(graph, t) for t in acts):
        return "attention-probabilities MatMul stays FP32 (a Softmax output loses its small values in INT8)"
    if node.meta == g.ADD and len(acts) < 2:
        return "Add with a constant operand stays FP32"
    if node.meta == g.CONCAT and len(acts) != len([t for t in node.inputs if t]):
        return "Concat with a non-float or constant operand stays FP32"
    if node.meta == g.CONCAT and not _feeds_compute(graph, node.outputs[0]):
        return "Concat whose output only leaves the model (e.g. a state output) stays FP32"
    if node.meta in g.WEIGHTED and node.weight_input is None and len(acts) < 2:
        return "no constant weight that can be quantized per channel (e.g. a MatMul weight that is not 2-D)"
    return None


def _feeds_compute(graph: GraphView, tensor: str) -> bool:
    """True if ``tensor`` reaches a computing op (not only graph outputs), through
    data-movement ops and Concats. A Concat whose output only leaves the model (a
    recurrent state concatenated into a state output) gains nothing from INT8 inputs:
    they would only add Q/DQ work and error to what the model returns."""
    seen, todo = set(), [tensor]
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        for consumer, _ in graph.consumers(t):
            if consumer.meta == g.CONCAT or _moves_data(consumer):
                todo.extend(o for o in consumer.outputs if o)
            else:
                return True
    return False


def _activation_matmul(graph: GraphView, node: NodeInfo) -> bool:
    """A MatMul of two activations (no constant weight), e.g. attention's Q x K^T."""
    return (
        node.meta == g.MATMUL
        and node.weight_input is None
        and sum(_is_float_activation(graph, t) for t in node.inputs) == 2
    )


def _from_softmax(graph: GraphView, tensor: str) -> bool:
    """True if ``tensor`` is a Softmax output, possibly behind data-movement ops."""
    producer = graph.producer(tensor)
    while producer is not None and producer.meta == g.SHAPE:
        producer = graph.producer(producer.inputs[0])
    return producer is not None and producer.meta == g.SOFTMAX


def _moves_data(node: NodeInfo | None) -> TypeGuard[NodeInfo]:
    return node is not None and (node.meta in _PASS_THROUGH or node.op_type in _MOVEMENT_TYPES)


def _concat_origin(graph: GraphView, tensor: str, concats: set[str]) -> str | None:
    """The quantized Concat output that ``tensor`` is read from through data-movement ops
    only (ShuffleNet: Concat -> shuffle -> Slice -> next Concat), else None."""
    while tensor not in concats:
        producer = graph.producer(tensor)
        if not _moves_data(producer):
            return None
        tensor = producer.inputs[0]
    return tensor


def _move_up(graph: GraphView, edge: Edge, tensor: str) -> tuple[Edge, str]:
    """Walk from ``edge`` up through single-consumer data-movement ops."""
    while True:
        producer = graph.producer(tensor)
        if not _moves_data(producer):
            return edge, tensor
        readers = [n for n, _ in graph.consumers(tensor) if n.op_type not in _SHAPE_READERS]
        if len(readers) != 1 or tensor in graph.outputs:
            return edge, tensor
        source = producer.inputs[0]
        if not _is_float_activation(graph, source):
            return edge, tensor
        edge, tensor = Edge(producer.name, 0), source


def _first_layer(graph: GraphView) -> frozenset[str]:
    """Weighted ops that read the model's data inputs without a weighted op in between.

    Only float activations are followed, starting from float inputs and 8-bit integer
    inputs (image pixels, cast to float): integer index and mask inputs (``input_ids``,
    ``attention_mask``) and integer shape arithmetic would otherwise reach every layer
    of a transformer and put 7-bit weights on all of them.
    """
    reached = {
        t
        for t in graph.inputs
        if (info := graph.tensors.get(t)) is not None and (info.dtype in _FLOAT or info.dtype in _PIXELS)
    }
    first = set()
    for node in graph.nodes:
        if not any(t in reached for t in node.inputs):
            continue
        if node.meta in g.WEIGHTED:
            first.add(node.name)
        else:
            reached.update(t for t in node.outputs if _is_float_activation(graph, t))
    return frozenset(first)


def _spr_fp32_input(graph: GraphView, node: NodeInfo) -> int | None:
    """For ``target_device="CPU_SPR"``: the input of a two-activation Add left in FP32.

    On Sapphire Rapids the runtime fuses an elementwise Add into the op producing one
    of its inputs, which then needs no quantizer (NNCF documents the same device pass
    as a performance gain there). The quantizer stays on the input read by more ops
    (the residual branch, quantized for its other readers anyway); on a tie, on the
    first input.
    """
    if node.meta != g.ADD:
        return None
    acts = [i for i, t in enumerate(node.inputs) if _is_float_activation(graph, t)]
    if len(acts) != 2:
        return None
    readers = [len(graph.consumers(node.inputs[i])) for i in acts]
    return acts[1] if readers[0] >= readers[1] else acts[0]


def place(
    graph: GraphView, *, model_type: str | None, ignored: frozenset[str] = frozenset(), target_device: str = "ANY"
) -> Placement:
    """Compute the quantizer placement for ``graph``.

    Args:
        graph: The model's graph view.
        model_type: None (CNN-style rules) or ``"transformer"``.
        ignored: Node names that must stay FP32 (resolved ignored scope).
        target_device: ``CPU_SPR`` leaves one input of each two-activation Add in FP32
            (:func:`_spr_fp32_input`); other devices place alike.

    Returns:
        The :class:`Placement`; weighted ops that cannot be quantized are listed in
        ``skipped`` with the reason.

    Example:
        >>> placement = place(view, model_type=None)           # doctest: +SKIP
        >>> placement.group(placement.ops[0])                   # doctest: +SKIP
        ('a:input', 'w:/conv1/Conv')
    """
    acts: dict[str, tuple[list[Edge], list[str]]] = {}
    concats: dict[str, list[str]] = {}  # tensor -> outputs of the quantized Concats that read it
    weights: list[QuantizerPoint] = []
    ops: list[str] = []
    skipped: list[tuple[str, str]] = []
    se = frozenset() if graph.runtime in _INT8_SE_BRANCH else patterns.se_branches(graph)
    for node in graph.nodes:
        if node.name in ignored:
            if node.meta in g.WEIGHTED:
                skipped.append((node.name, "ignored scope"))
            continue
        reason = _quantizable(node, graph, model_type, se)
        if reason is not None:
            if node.meta in g.WEIGHTED:
                skipped.append((node.name, reason))
            continue
        ops.append(node.name)
        fp32_input = _spr_fp32_input(graph, node) if target_device == "CPU_SPR" else None
        for i, tensor in enumerate(node.inputs):
            if i in (node.weight_input, fp32_input) or not _is_float_activation(graph, tensor):
                continue
            edge, src = _move_up(graph, Edge(node.name, i), tensor)
            edges, serves = acts.setdefault(src, ([], []))  # one quantizer per tensor
            edges.append(edge)
            serves.append(node.name)
            if node.meta == g.CONCAT:
                concats.setdefault(src, []).append(node.outputs[0])
                origin = _concat_origin(graph, src, {o for outs in concats.values() for o in outs})
                if origin is not None and origin != node.outputs[0]:  # values already on its grid
                    concats.setdefault(origin, []).append(node.outputs[0])
        if node.weight_input is not None:
            weights.append(
                QuantizerPoint(
                    f"w:{node.name}",
                    node.inputs[node.weight_input],
                    WEIGHT,
                    (Edge(node.name, node.weight_input),),
                    (node.name,),
                    node.weight_axis,
                )
            )
    groups = _unified_groups(concats)
    points = []
    for t, (e, s) in acts.items():
        members = groups.get(t, ())
        points.append(
            QuantizerPoint(
                f"a:{t}",
                t,
                ACTIVATION,
                tuple(e),
                tuple(s),
                unify=members[0] if members else None,
                symmetric=all(_activation_matmul(graph, graph.node(n)) for n in s),
                unify_tensors=members,
            )
        )
    return Placement(tuple(ops), tuple(points + weights), tuple(skipped), _first_layer(graph))


def _unified_groups(concats: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
    """Unified-scale groups: Concats whose inputs overlap (or nest: a Concat's output
    read by another Concat) must share one scale, since each tensor gets one quantizer.

    Args:
        concats: For every quantized tensor read by a quantized Concat, the outputs
            of those Concats, in topological order.

    Returns:
        For every tensor in a group (Concat inputs and outputs): the group's Concat
        outputs, in topological order.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    order = list(dict.fromkeys(out for outs in concats.values() for out in outs))
    for out in order:
        find(out)
    for tensor, outs in concats.items():
        for out in outs[1:]:
            parent[find(out)] = find(outs[0])
        if tensor in parent:  # a Concat output read by another Concat
            parent[find(tensor)] = find(outs[0])
    members: dict[str, list[str]] = {}
    for out in order:
        members.setdefault(find(out), []).append(out)
    groups = {out: tuple(members[find(out)]) for out in order}
    groups.update({t: groups[outs[0]] for t, outs in concats.items()})
    return groups
