"""Sharded calibration on Ray: chunks of batches run as Ray tasks, at most W at a time;
each returns exact partial statistics and the driver merges them as they arrive (any
order gives the same result).

Why tasks and not actors: a killed actor's process dies with it, so every calibration
paid W fresh process starts (0.45-0.6 s on a 2-core machine, 1.1-2.5 s on a 16-vCPU
gVisor node). Task workers go back to Ray's pool, so the next calibration in the same
job (the next model of a sweep, the second pass) reuses them warm, and a free worker
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
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from rayq.backends import get_backend
from rayq.core.stats import StatisticSet
from rayq.distributed.cluster import default_resources, next_done, task_error, worker_nodes
from rayq.distributed.resident import call_with_ended, end, release, resident, touch
from rayq.pipeline import calibrate
from rayq.pipeline.calibrate import Batch, StatSpec

log = logging.getLogger(__name__)

CHUNK = 4  # most batches per task: the granularity of dispatch, progress and retries
PLACEMENT_TIMEOUT_S = 120
MAX_RETRIES = 2  # re-runs of a chunk whose worker process or node died
IDLE_RELEASE_S = 10.0  # a worker process drops a resident model unused for this long


# -- worker side ------------------------------------------------------------------------

@dataclass
class _Resident:
    """One calibration call's state inside a worker process."""

    backend: object
    model: object
    spec: StatSpec
    runners: dict = field(default_factory=dict)  # pass kind -> instrumented session
    edges: dict = field(default_factory=dict)  # edges ref id -> histogram edges


def _load(call: dict) -> _Resident:
    import ray

    model_bytes, spec = ray.get(call["payload"][0])
    backend = get_backend(call["backend"])
    return _Resident(backend, backend.from_bytes(model_bytes), spec)


def calibrate_chunk(call: dict, batches: Sequence[Batch], edges_box: list | None) -> tuple[dict, str]:
    """Task body: partial statistics of ``batches`` (as arrays) and the node that computed them.

    ``call`` carries the call's token, backend name, worker threads and the object ref of
    ``(model bytes, StatSpec)`` (boxed in a list so Ray does not fetch it for every chunk);
    ``edges_box`` boxes the ref of the histogram edges for the second pass.
    """
    import ray

    release(call.get("ended", ()))
    res = resident(call["token"], lambda: _load(call), idle_s=IDLE_RELEASE_S)
    edges = None
    if edges_box is not None:
        key = edges_box[0].hex()
        if key not in res.edges:
            res.edges[key] = ray.get(edges_box[0])
        edges = res.edges[key]
    kind = None if edges is None else tuple(edges)
    if kind not in res.runners:
        requests = calibrate.pass_requests(res.spec, edges)
        res.runners[kind] = (res.backend.stat_runner(res.model, requests, num_threads=call["threads"])
                             if requests else None)
    stats = calibrate.collect(res.backend, res.model, batches, res.spec, num_threads=call["threads"],
                              histogram_edges=edges, runner=res.runners[kind])
    touch(call["token"])
    return stats.to_arrays(), ray.get_runtime_context().get_node_id()


def _warm() -> int:
    """Import what a chunk needs, so a process started early skips it on its first chunk."""
    import onnxruntime  # noqa: F401

    return os.getpid()


# -- driver side ------------------------------------------------------------------------

def start_workers(num_workers: int, resources: dict | None = None) -> list:
    """Have Ray start ``num_workers`` worker processes for this job now (a tiny task
    each), so they are up when calibration begins; returns the tasks' refs (their pids).
    A new job's processes otherwise start inside its first calibration."""
    import ray

    res = dict(resources or default_resources(num_workers))
    task = ray.remote(_warm)
    return [task.options(**res).remote() for _ in range(num_workers)]


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
    """The Ray side of one calibration call: the model in the object store, and at most
    W chunk tasks in flight. Each pass reads the batches again, chunk by chunk as tasks
    are submitted, and a chunk's object is freed when its task is done: the driver holds
    at most W chunks, whatever the calibration-set size.

    Args:
        backend_name, model_bytes, spec: what to calibrate.
        batches: the calibration batches (``(batch id, feeds)``): a re-iterable sequence
            such as :class:`rayq.pipeline.stream.BatchStream`.
        num_workers: W, the most chunks computed at once (never more than chunks).
        resources: Ray resources per task, e.g. ``{"num_cpus": 1}``.
        task: the remote function that runs a chunk (tests inject failures here).
    """

    def __init__(self, backend_name: str, model_bytes: bytes, spec: StatSpec, batches: Sequence[Batch], *,
                 num_workers: int, resources: dict, task: Callable | None = None) -> None:
        import ray

        self.batches = batches
        self.chunk_size = _chunk_size(len(batches), num_workers)
        self.workers = min(num_workers, -(-len(batches) // self.chunk_size))
        self.resources = dict(resources)
        self.nodes = worker_nodes(self.resources, "a calibration worker", PLACEMENT_TIMEOUT_S)[:self.workers]
        self.task = task or ray.remote(calibrate_chunk)
        self.call = {"token": uuid.uuid4().hex, "backend": backend_name, "payload": [ray.put((model_bytes, spec))],
                     "threads": max(1, int(self.resources.get("num_cpus", 1)))}

    def _submit(self, i: int, chunk: list[Batch], edges_box: list | None):
        """Submit chunk ``i`` of a pass; its object lives while the task needs it (retries included)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opts = dict(self.resources, max_retries=MAX_RETRIES)
        if i < len(self.nodes):  # one chunk per node that can take one, so the shards span the cluster
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(self.nodes[i], soft=True)
        return self.task.options(**opts).remote(call_with_ended(self.call), ray.put(chunk), edges_box)

    def run_pass(self, edges: dict | None = None,
                 on_batch: Callable[[int], None] | None = None) -> tuple[StatisticSet, set[str]]:
        """One pass over every chunk, W at a time: merged statistics and the nodes that
        computed them.

        Ray re-runs a chunk whose worker process or node dies (``MAX_RETRIES`` times);
        statistics already merged are kept. When no chunk finishes for
        ``PLACEMENT_TIMEOUT_S`` (a busy cluster), a warning names the free resources.
        """
        import ray

        edges_box = None if edges is None else [ray.put(edges)]
        chunks = enumerate(_chunks(self.batches, size=self.chunk_size))
        pending: dict = {}  # task ref -> the chunk's batch ids
        merged, nodes = StatisticSet(), set()
        while True:
            while len(pending) < self.workers and (nxt := next(chunks, None)) is not None:
                i, chunk = nxt
                pending[self._submit(i, chunk, edges_box)] = [b for b, _ in chunk]
                del chunk, nxt  # the object store holds it now
            if not pending:
                break
            ref = next_done(pending, "calibration chunk", PLACEMENT_TIMEOUT_S)
            ids = pending.pop(ref)
            try:
                arrays, node = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                raise task_error(exc, "a calibration worker") from exc
            except ray.exceptions.RayError as exc:  # worker or node died more than MAX_RETRIES times
                raise task_error(exc, f"calibration of batches {ids}, tried {MAX_RETRIES + 1} times,") from exc
            merged = merged.merge(StatisticSet.from_arrays(arrays))
            nodes.add(node)
            if on_batch is not None:
                on_batch(len(ids))
        return merged, nodes


def collect_distributed(backend_name: str, model_bytes: bytes, batches: Sequence[Batch], spec: StatSpec, *,
                        num_workers: int, resources: dict | None = None,
                        on_batch: Callable[[int], None] | None = None) -> tuple[StatisticSet, list[str]]:
    """Calibrate on ``num_workers`` Ray workers; returns merged statistics and the ids of
    the nodes that computed them.

    Batches go to the object store in chunks of up to ``CHUNK``, read lazily as tasks
    are submitted (at most ``num_workers`` chunks in flight); a free worker
    takes the next chunk, so a slow node (or one whose process is still starting) takes
    fewer. Partial statistics merge exactly in any order, so the result does not depend
    on who ran what.

    Raises:
        ClusterError: the workers cannot be placed, or a chunk kept failing.
    """
    res = dict(resources or default_resources(num_workers))
    shards = ShardedCalibration(backend_name, model_bytes, spec, batches, num_workers=num_workers, resources=res)
    try:
        stats, nodes = shards.run_pass(None, on_batch)
        if spec.histogram_tensors:
            hist, more = shards.run_pass(calibrate.histogram_edges(stats, spec), on_batch)
            calibrate.attach_histograms(stats, hist)
            nodes |= more
    finally:
        end(shards.call["token"])  # the workers drop the model with their next task (the search's evaluation)
    return stats, sorted(nodes)
