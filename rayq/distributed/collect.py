"""Sharded calibration on Ray: chunks of batches run as tasks of one
:class:`~rayq.distributed.pool.TaskPool`, at most W at a time; each returns exact
partial statistics and the driver merges them as they arrive (any order gives the
same result).

Task worker processes go back to Ray's pool, so the next calibration in the same job
(the next model of a sweep, the second pass) reuses them warm, and a free worker
takes the next chunk while another process is still starting. Within a call, the
model and its instrumented session stay resident in each worker process
(:mod:`rayq.distributed.resident`): built on that process's first chunk, dropped
after ``IDLE_RELEASE_S`` without use or when newer calls crowd it out. The first
chunk of each node that can run a worker is pinned there (soft affinity), so the
shards span the cluster.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rayq.backends import get_backend
from rayq.backends.base import Backend
from rayq.core.stats import StatisticSet
from rayq.distributed import resident, shipping
from rayq.distributed.cluster import default_resources
from rayq.distributed.pool import Call, TaskPool, node_id, resident_state
from rayq.pipeline import calibrate
from rayq.pipeline.calibrate import Batch, StatSpec

log = logging.getLogger(__name__)

CHUNK = 4  # most batches per task: the granularity of dispatch, progress and retries
IDLE_RELEASE_S = 10.0  # a worker process drops a resident model unused for this long


# -- worker side ------------------------------------------------------------------------


@dataclass
class _Resident:
    """One calibration call's state inside a worker process."""

    backend: Backend
    model: Any
    spec: StatSpec
    runners: dict = field(default_factory=dict)  # pass kind -> instrumented session
    edges: dict = field(default_factory=dict)  # edges ref id -> histogram edges


def _load(call: Call) -> _Resident:
    import ray

    return _Resident(get_backend(call.backend), shipping.receive(call.model), ray.get(call.state))


def calibrate_chunk(call: Call, batches: Sequence[Batch], edges_box: list | None) -> tuple[dict, str]:
    """Task body: partial statistics of ``batches`` (as arrays) and the node that computed them.

    ``call`` carries the model's shipment and the ref of the :class:`StatSpec`;
    ``edges_box`` boxes the ref of the histogram edges for the second pass (a ref in a
    list is not fetched by Ray for every chunk).
    """
    import ray

    res = resident_state(call, _load, IDLE_RELEASE_S)
    edges = None
    if edges_box is not None:
        key = edges_box[0].hex()
        if key not in res.edges:
            res.edges[key] = ray.get(edges_box[0])
        edges = res.edges[key]
    kind = None if edges is None else tuple(edges)
    if kind not in res.runners:
        requests = calibrate.pass_requests(res.spec, edges)
        res.runners[kind] = res.backend.stat_runner(res.model, requests, num_threads=call.threads) if requests else None
    stats = calibrate.collect(
        res.backend,
        res.model,
        batches,
        res.spec,
        num_threads=call.threads,
        histogram_edges=edges,
        runner=res.runners[kind],
    )
    resident.touch(call.token)
    return stats.to_arrays(), node_id()


def _warm(backend_name: str | None) -> int:
    """Import what a chunk needs, so a process started early skips it on its first chunk."""
    from rayq.backends import registry

    registry.warm(backend_name)
    return os.getpid()


# -- driver side ------------------------------------------------------------------------


def start_workers(num_workers: int, resources: dict | None = None, backend_name: str | None = None) -> list:
    """Have Ray start ``num_workers`` worker processes for this job now (a tiny task
    each, which imports ``backend_name``'s runtimes), so they are up when calibration
    begins; returns the tasks' refs (their pids). A new job's processes otherwise start
    inside its first calibration."""
    import ray

    res = dict(resources or default_resources(num_workers))
    task = ray.remote(_warm)
    return [task.options(**res).remote(backend_name) for _ in range(num_workers)]


def _chunk_size(num_batches: int, workers: int) -> int:
    """``CHUNK`` batches, fewer when that would leave fewer than two chunks per worker."""
    return max(1, min(CHUNK, num_batches // (2 * max(1, workers))))


def _chunks(batches: Sequence[Batch], workers: int = 1, size: int | None = None) -> Iterator[list[Batch]]:
    """Chunks of consecutive batches (by stable batch id), read from ``batches`` only as
    they are taken (``size`` batches, default :func:`_chunk_size`)."""
    size = size or _chunk_size(len(batches), workers)
    it = iter(batches)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class ShardedCalibration:
    """The Ray side of one calibration call: the model shipped to the workers once
    (:mod:`rayq.distributed.shipping`), and at most W chunk tasks in flight. Each pass
    reads the batches again, chunk by chunk as tasks are submitted, and a chunk's object
    is freed when its task is done: the driver holds at most W chunks, whatever the
    calibration-set size.

    Args:
        backend_name, model, spec: what to calibrate (``model``: the backend's model,
            or its ``to_bytes()``).
        batches: the calibration batches (``(batch id, feeds)``): a re-iterable sequence
            such as :class:`rayq.pipeline.stream.BatchStream`.
        num_workers: W, the most chunks computed at once (never more than chunks).
        resources: Ray resources per task, e.g. ``{"num_cpus": 1}``.
        task: the remote function that runs a chunk (tests inject failures here).
    """

    def __init__(
        self,
        backend_name: str,
        model: Any,
        spec: StatSpec,
        batches: Sequence[Batch],
        *,
        num_workers: int,
        resources: dict,
        task: Callable | None = None,
    ) -> None:
        import ray

        self.batches = batches
        self.chunk_size = _chunk_size(len(batches), num_workers)
        workers = min(num_workers, -(-len(batches) // self.chunk_size))
        self.pool = TaskPool(task or calibrate_chunk, workers=workers, resources=resources, what="a calibration worker")
        self.call = Call.start(backend_name, model, ray.put(spec), threads=int(self.pool.resources.get("num_cpus", 1)))

    def run_pass(
        self, edges: dict | None = None, on_batch: Callable[[int], None] | None = None
    ) -> tuple[StatisticSet, set[str]]:
        """One pass over every chunk, W at a time: merged statistics and the nodes that
        computed them. Statistics already merged are kept when a worker dies (Ray re-runs
        its chunk)."""
        import ray

        edges_box = None if edges is None else [ray.put(edges)]
        self.pool.spread()  # the pass's first chunk for each node goes there

        def submit(chunk: list[Batch]):  # the chunk's object lives while its task needs it (retries too)
            return self.pool.submit(self.call.for_task(), ray.put(chunk), edges_box)

        merged, nodes = StatisticSet(), set()
        for chunk, ref, _ in self.pool.imap(_chunks(self.batches, size=self.chunk_size), submit):
            ids = [b for b, _ in chunk]
            del chunk  # the object store holds it
            arrays, node = self.pool.outcome(ref, f"calibration of batches {ids}")
            merged = merged.merge(StatisticSet.from_arrays(arrays))
            nodes.add(node)
            if on_batch is not None:
                on_batch(len(ids))
        return merged, nodes

    def close(self) -> None:
        """The workers drop the model with their next task (the search's evaluation)."""
        self.call.end()


def collect_distributed(
    backend_name: str,
    model: Any,
    batches: Sequence[Batch],
    spec: StatSpec,
    *,
    num_workers: int,
    resources: dict | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[StatisticSet, list[str]]:
    """Calibrate on ``num_workers`` Ray workers; returns merged statistics and the ids of
    the nodes that computed them.

    ``model`` is the backend's in-memory model (or its ``to_bytes()``); a large one
    reaches the workers as files, once per node (:mod:`rayq.distributed.shipping`).
    Batches go to the object store in chunks of up to ``CHUNK``, read lazily as tasks
    are submitted (at most ``num_workers`` chunks in flight); a free worker
    takes the next chunk, so a slow node (or one whose process is still starting) takes
    fewer. Partial statistics merge exactly in any order, so the result does not depend
    on who ran what.

    Raises:
        ClusterError: the workers cannot be placed, or a chunk kept failing.
    """
    res = dict(resources or default_resources(num_workers))
    shards = ShardedCalibration(backend_name, model, spec, batches, num_workers=num_workers, resources=res)
    try:
        stats, nodes = shards.run_pass(None, on_batch)
        if spec.histogram_tensors:
            hist, more = shards.run_pass(calibrate.histogram_edges(stats, spec), on_batch)
            calibrate.attach_histograms(stats, hist)
            nodes |= more
    finally:
        shards.close()
    return stats, sorted(nodes)
