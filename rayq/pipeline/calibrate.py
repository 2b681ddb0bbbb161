"""Calibration: which statistics a plan needs, and collecting them on one process.

Statistics are requested once for everything any plan of the same model type can
need (so a search never recalibrates): per-sample min/max of every activation
quantizer input, per-channel means of weighted-op inputs and outputs (bias
correction), per-channel min/max of MatMul inputs (SmoothQuant), and -- when a
histogram estimator may be used -- a second pass of histograms on edges fixed by
the first pass's global min/max, so shards merge exactly.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from rayq.backends.base import Backend, StatRequest
from rayq.core import graph as g
from rayq.core.graph import GraphView
from rayq.core.rules import Placement
from rayq.core.stats import StatisticSet
from rayq.errors import CalibrationError, DataError, RayqError

log = logging.getLogger(__name__)

HIST_BINS = 2048

Batch = tuple[int, dict[str, np.ndarray]]


@dataclass(frozen=True)
class StatSpec:
    """What to collect: the per-batch requests, and whether to add histograms."""

    requests: tuple[StatRequest, ...]
    histogram_tensors: tuple[str, ...] = ()

    def key_material(self) -> str:
        reqs = ";".join(f"{r.tensor}|{','.join(r.reductions)}|{r.channel_axis}" for r in self.requests)
        return f"{reqs}#hist:{','.join(self.histogram_tensors)}#{HIST_BINS}"

    def tensors(self) -> tuple[str, ...]:
        """Every tensor this spec collects statistics of."""
        return tuple(dict.fromkeys([*(r.tensor for r in self.requests), *self.histogram_tensors]))


def _channel_axis(node) -> int:
    return 1 if node.meta in (g.CONV, g.CONV_TRANSPOSE) else -1


def stat_spec(
    graph: GraphView, placement: Placement, *, histograms: bool, smooth_quant: bool, exact_bias: bool = False
) -> StatSpec:
    """Statistics needed by any plan built on ``placement`` (``smooth_quant``: per-channel
    min/max of MatMul inputs too)."""
    wanted: dict[str, tuple[list[str], int | None]] = {}

    def want(tensor: str, reductions: Sequence[str], axis: int | None = None) -> None:
        reds, old = wanted.get(tensor, ([], None))
        info = graph.tensors.get(tensor)
        rank = info.rank if info is not None else None
        if axis is not None and old is not None and rank and axis % rank != old % rank:
            return  # a second, different channel axis on the same tensor: keep the first
        wanted[tensor] = (reds, old if old is not None else axis)
        reds.extend(r for r in reductions if r not in reds)

    for tensor in placement.activation_tensors():
        want(tensor, ("min", "max"))
    for name in placement.ops:
        node = graph.node(name)
        if node.meta not in g.WEIGHTED or node.weight_input is None:
            continue
        x = node.inputs[0]
        if graph.tensors.get(x) is None or graph.tensors[x].rank is None:
            continue
        want(x, ("ch_mean",), _channel_axis(node))
        if smooth_quant and node.meta == g.MATMUL:
            want(x, ("ch_min", "ch_max"), -1)
        out = _bias_output(graph, node) if exact_bias else None
        if out is not None:  # FP32 output means: the target of the exact bias correction
            want(out, ("ch_mean",), _channel_axis(node))
    requests = tuple(StatRequest(t, tuple(r), a) for t, (r, a) in wanted.items())
    hist = placement.activation_tensors() if histograms else ()
    return StatSpec(requests, hist)


def _bias_output(graph: GraphView, node) -> str | None:
    """The tensor that holds ``node``'s biased output, if it has a bias."""
    if node.bias_input is not None:
        return node.outputs[0]
    if node.bias_node is not None:
        return graph.node(node.bias_node).outputs[0]
    return None


def collect(
    backend: Backend,
    model,
    batches: Sequence[Batch],
    spec: StatSpec,
    *,
    num_threads: int = 0,
    on_batch: Callable[[int], None] | None = None,
    histogram_edges: dict[str, tuple[float, float]] | None = None,
    runner: Callable | None = None,
) -> StatisticSet:
    """Run the instrumented model over ``batches`` and reduce into a StatisticSet.

    With ``histogram_edges`` this is the histogram pass: only ``raw`` values of
    those tensors are collected, into histograms on the given fixed edges.
    ``runner``: a stat runner built earlier for the same requests (see
    :func:`pass_requests`), so callers that collect chunk by chunk build it once.
    """
    requests = pass_requests(spec, histogram_edges)
    if not requests:
        return StatisticSet()
    if runner is None:
        runner = backend.stat_runner(model, requests, num_threads=num_threads)
    stats = StatisticSet()
    for tensor, (lo, hi) in (histogram_edges or {}).items():
        stats.enable_histogram(tensor, lo, hi, HIST_BINS)
    for batch_id, result in run_pipelined(runner, batches):
        absorb(stats, batch_id, result)
        if on_batch is not None:
            on_batch(1)
    return stats


def absorb(stats: StatisticSet, batch_id: int, result: Callable[[], dict]) -> None:
    """Run ``result()`` (a batch's reductions, or its error) and add it to ``stats``,
    with errors named after the batch."""
    try:
        stats.update(batch_id, result())
    except DataError as exc:
        raise DataError(f"calibration batch {batch_id}: {exc}") from exc
    except RayqError:
        raise
    except ValueError as exc:
        raise CalibrationError(f"calibration batch {batch_id}: {exc}") from exc


def run_pipelined(runner: Callable, batches: Iterable[Batch]) -> Iterator[tuple[int, Callable[[], dict]]]:
    """``(batch id, result getter)`` of every batch, in batch order, ``runner`` running up
    to ``runner.streams`` batches at once (see :data:`rayq.backends.base.StatRunner`).

    The runtime releases the GIL, so while a stream computes, the next batches are read
    and earlier results are reduced on the host: one pipelined pass. At most
    ``2 * streams`` batches are held at once (calibration memory stays flat), and the
    statistics are the same as one batch at a time: every reduction is exact and
    order-independent, and results are absorbed in batch order anyway.
    """
    streams = max(1, int(getattr(runner, "streams", 1)))
    if streams == 1:
        for batch_id, feeds in batches:
            yield batch_id, functools.partial(runner, feeds)
        return
    with ThreadPoolExecutor(streams, thread_name_prefix="rayq-calibration") as pool:
        pending: deque = deque()
        try:
            for batch_id, feeds in batches:
                pending.append((batch_id, pool.submit(runner, feeds)))
                if len(pending) >= 2 * streams:
                    done_id, future = pending.popleft()
                    yield done_id, future.result
            while pending:
                done_id, future = pending.popleft()
                yield done_id, future.result
        finally:
            for _, future in pending:  # an error or an abandoned iteration: drop the rest
                future.cancel()


def pass_requests(spec: StatSpec, histogram_edges: dict | None = None) -> list[StatRequest]:
    """The requests of one pass: the spec's, or ``raw`` values of the histogram tensors."""
    if histogram_edges is None:
        return list(spec.requests)
    return [StatRequest(t, ("raw",)) for t in histogram_edges]


def histogram_edges(stats: StatisticSet, spec: StatSpec) -> dict[str, tuple[float, float]]:
    """Fixed histogram edges from the first pass's global min/max."""
    edges = {}
    for tensor in spec.histogram_tensors:
        s = stats[tensor]
        lo, hi = float(s.min), float(s.max)
        if hi <= lo:
            hi = lo + max(1e-6, abs(lo) * 1e-6)
        edges[tensor] = (lo, hi)
    return edges


def attach_histograms(stats: StatisticSet, hist: StatisticSet) -> StatisticSet:
    """Put the histogram pass's histograms into the first pass's statistics."""
    for name in hist.names():
        stats[name].hist = hist[name].hist
    return stats


def collect_local(
    backend: Backend,
    model,
    batches: Sequence[Batch],
    spec: StatSpec,
    *,
    num_threads: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> StatisticSet:
    """Both passes in this process (used for ``num_workers=1`` and inside actors)."""
    stats = collect(backend, model, batches, spec, num_threads=num_threads, on_batch=on_batch)
    if spec.histogram_tensors:
        edges = histogram_edges(stats, spec)
        hist = collect(backend, model, batches, spec, num_threads=num_threads, on_batch=on_batch, histogram_edges=edges)
        attach_histograms(stats, hist)
    return stats
