"""A deterministic compute cost of a plan: the share of the model's work left in FP32.

The search's sampler minimises this cost (subject to the accuracy budget) instead of
measured latency, so timing noise never steers which plans are tried: the same seed
gives the same trials on any machine and worker count. Measured latency is kept for
the final, statistical choice among the feasible finalists
(:mod:`rayq.tuning.selection`).

A weighted op's work is its multiply-accumulates: weight elements times the output
positions each weight is applied at (spatial size of a convolution's output; 1 when
unknown, e.g. a dynamic sequence length). Other quantizable ops count one operation
per output element they produce (when static), at least 1.

Example:
    >>> shares = {"conv": 90.0, "fc": 10.0}
    >>> fp32_fraction(("fc",), shares)
    0.1
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from rayq.core.graph import GraphView


def _known(shape) -> list[int]:
    return [int(d) for d in (shape or ()) if isinstance(d, int) and d > 0]


def op_work(graph: GraphView, op: str) -> float:
    """Multiply-accumulates (weighted ops) or output elements (others) of ``op``, >= 1."""
    node = graph.node(op)
    out = graph.tensors.get(node.outputs[0]) if node.outputs else None
    out_dims = _known(out.shape[1:]) if out is not None and out.shape else []
    if node.weight is not None:
        w = graph.tensors.get(node.weight)
        size = math.prod(_known(w.shape)) if w is not None else 1
        if node.weight_axis is not None and w is not None and w.shape and out_dims:
            channels = w.shape[node.weight_axis]
            positions = math.prod(out_dims) // channels if isinstance(channels, int) and channels > 0 else 1
            return float(max(1, size) * max(1, positions))
        return float(max(1, size))
    return float(max(1, math.prod(out_dims) if out_dims else 1))


def compute_shares(graph: GraphView, ops: Sequence[str]) -> dict[str, float]:
    """Each quantizable op's work (see :func:`op_work`)."""
    return {op: op_work(graph, op) for op in ops}


def fp32_fraction(fallback: Iterable[str], shares: Mapping[str, float]) -> float:
    """Share of the quantizable work that ``fallback`` keeps in FP32, in ``[0, 1]``.

    Ops missing from ``shares`` count as one unit each, as does every op when
    ``shares`` is empty.
    """
    fb = set(fallback)
    if not shares:
        return 0.0 if not fb else 1.0
    total = sum(shares.values())
    return sum(shares.get(op, 0.0) for op in fb) / total if total > 0 else 0.0


__all__ = ["op_work", "compute_shares", "fp32_fraction"]
