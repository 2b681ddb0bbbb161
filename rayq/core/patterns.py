"""Graph patterns the placement rules treat specially, found on a :class:`GraphView`.

- *Gating Mul*: ``x * sigmoid(f(x'))`` where the gate is computed from another tensor,
  e.g. the scale of a squeeze-excitation block. Quantizing both inputs lets the Mul and
  the Conv after it run on INT8 data. A Swish / SiLU ``x * sigmoid(x)`` is not a gate:
  it is an activation function, left to the runtime's fusions.
- *Squeeze-excitation branch*: the Convs (or MatMuls) between a global pooling of ``x``
  and the gate of a gating Mul of ``x``. They run on ``[N, C, 1, 1]`` tensors: INT8
  saves nothing there, while on ONNX Runtime each Q/DQ pair costs a kernel launch, so
  they stay FP32 there (the rules decide per runtime, :mod:`rayq.core.rules`).
"""

from __future__ import annotations

from rayq.core import graph as g
from rayq.core.graph import GraphView, NodeInfo

#: Op types whose output is a gate in [0, 1] (ONNX and OpenVINO names).
GATES = frozenset({"Sigmoid", "HardSigmoid", "HSigmoid"})
_POOLS = frozenset({"ReduceMean", "GlobalAveragePool", "AdaptiveAvgPool"})
_SE_DEPTH = 8  # ops between the pooling and the gate (Conv, activation, Conv, Sigmoid...)


def gate_input(graph: GraphView, node: NodeInfo) -> int | None:
    """Index of the gate operand of a gating Mul, or None if ``node`` is not one."""
    if node.meta != g.MUL or len(node.inputs) != 2:
        return None
    for i, tensor in enumerate(node.inputs):
        producer = graph.producer(tensor)
        other = node.inputs[1 - i]
        if (
            producer is not None
            and producer.op_type in GATES
            and producer.inputs[0] != other
            and not graph.is_constant(other)
        ):
            return i
    return None


def se_branch(graph: GraphView, mul: NodeInfo) -> frozenset[str]:
    """Weighted ops of the squeeze-excitation branch that computes ``mul``'s gate from a
    global pooling of ``mul``'s other operand; empty if there is none."""
    gate = gate_input(graph, mul)
    if gate is None:
        return frozenset()
    x = mul.inputs[1 - gate]
    weighted: set[str] = set()
    frontier, seen = [mul.inputs[gate]], set()
    for _ in range(_SE_DEPTH):
        nxt: list[str] = []
        for tensor in frontier:
            node = graph.producer(tensor)
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.meta in g.WEIGHTED:
                weighted.add(node.name)
            if (node.op_type in _POOLS or node.meta == g.AVG_POOL) and node.inputs[0] == x:
                return frozenset(weighted) if weighted else frozenset()
            nxt.extend(t for t in node.inputs if t and not graph.is_constant(t))
        frontier = nxt
    return frozenset()


def se_branches(graph: GraphView) -> frozenset[str]:
    """Weighted ops of every squeeze-excitation branch of ``graph``."""
    out: set[str] = set()
    for node in graph.nodes:
        if node.meta == g.MUL:
            out |= se_branch(graph, node)
    return frozenset(out)


def layer_scale_input(graph: GraphView, node: NodeInfo) -> int | None:
    """Index of the activation operand of a *layer scale*: a Mul by a constant whose
    input is a weighted op's (biased) output behind data-movement ops, e.g. ConvNeXt's
    ``Linear -> permute -> gamma * x``. Quantizing that input (the quantizer then moves
    up through the data-movement ops) lets them run on INT8 data. Directly after the
    weighted op the Mul is fused by the runtimes, so it is not a layer scale then."""
    if node.meta != g.MUL or len(node.inputs) != 2:
        return None
    const = [graph.is_constant(t) for t in node.inputs]
    if const.count(True) != 1:
        return None
    index = const.index(False)
    producer, moved = graph.producer(node.inputs[index]), False
    while producer is not None and producer.meta == g.SHAPE:
        producer, moved = graph.producer(producer.inputs[0]), True
    if producer is not None and producer.meta == g.ADD and any(graph.is_constant(t) for t in producer.inputs):
        act = [t for t in producer.inputs if not graph.is_constant(t)]
        producer = graph.producer(act[0]) if len(act) == 1 else None
    return index if moved and producer is not None and producer.meta in g.WEIGHTED else None
