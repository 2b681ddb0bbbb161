"""Sharded calibration: each Ray actor owns a shard of batches and returns exact
partial statistics that the driver merges (any order gives the same result)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from rayq.backends import get_backend
from rayq.core.stats import StatisticSet
from rayq.distributed.cluster import cluster_cpus, task_error
from rayq.errors import ClusterError
from rayq.pipeline import calibrate
from rayq.pipeline.calibrate import Batch, StatSpec

log = logging.getLogger(__name__)

CHUNK = 4  # most batches per task: the granularity of dispatch, progress and retries
IN_FLIGHT = 2  # chunks queued per actor (one running, one ready)
PLACEMENT_TIMEOUT_S = 120
MAX_RETRIES = 2


class CalibrationWorker:
    """Holds the instrumented model of one shard; plain class, made remote by the pool."""

    def __init__(self, backend_name: str, model_bytes: bytes, spec: StatSpec, num_threads: int = 1) -> None:
        self.backend = get_backend(backend_name)
        self.model = self.backend.from_bytes(model_bytes)
        self.spec = spec
        self.num_threads = num_threads
        self._runners: dict = {}  # one instrumented session per pass kind, built on first use

    def run(self, batches: Sequence[Batch], edges: dict | None = None) -> dict:
        key = None if edges is None else tuple(edges)
        if key not in self._runners:
            requests = calibrate.pass_requests(self.spec, edges)
            self._runners[key] = (self.backend.stat_runner(self.model, requests, num_threads=self.num_threads)
                                  if requests else None)
        stats = calibrate.collect(self.backend, self.model, batches, self.spec, num_threads=self.num_threads,
                                  histogram_edges=edges, runner=self._runners[key])
        return stats.to_arrays()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


def _chunks(batches: Sequence[Batch], workers: int = 1) -> list[list[Batch]]:
    """Chunks of consecutive batches (by stable batch id): ``CHUNK`` batches, fewer when
    that would leave fewer than two chunks per worker."""
    size = max(1, min(CHUNK, len(batches) // (2 * max(1, workers))))
    return [list(batches[i:i + size]) for i in range(0, len(batches), size)]


def collect_distributed(backend_name: str, model_bytes: bytes, batches: Sequence[Batch], spec: StatSpec, *,
                        num_workers: int, resources: dict | None = None,
                        on_batch: Callable[[int], None] | None = None) -> tuple[StatisticSet, list[str]]:
    """Calibrate over ``num_workers`` actors; returns merged statistics and actor node ids.

    Batches go to the object store once, in chunks of ``CHUNK``; chunks are handed to
    whichever actor is free (at most two in flight per actor), so a slow node takes
    fewer. Partial statistics merge exactly in any order, so the result does not depend
    on who ran what. A chunk whose actor dies is re-run on a fresh actor (up to
    ``MAX_RETRIES`` times); partial statistics already merged are kept.
    """
    import ray

    res = dict(resources or {"num_cpus": min(1.0, cluster_cpus() / num_workers)})
    threads = max(1, int(res.get("num_cpus", 1)))
    actor_cls = ray.remote(**res)(CalibrationWorker)
    model_ref = ray.put(model_bytes)

    def new_actor():
        return actor_cls.remote(backend_name, model_ref, spec, threads)

    parts = _chunks(batches, num_workers)
    pool = _Pool([new_actor() for _ in range(min(num_workers, len(parts)))], new_actor)  # start first
    chunks = [(ray.put(c), c) for c in parts]  # ...and ship the data while they come up
    try:
        try:
            node_ids = ray.get([a.node_id.remote() for a in pool.actors], timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as exc:
            raise ClusterError(
                f"could not place {len(pool.actors)} calibration actors with {res} within {PLACEMENT_TIMEOUT_S}s; "
                f"cluster resources: {ray.cluster_resources()}") from exc
        stats = pool.run_pass(chunks, None, on_batch)
        if spec.histogram_tensors:
            edges = ray.put(calibrate.histogram_edges(stats, spec))
            calibrate.attach_histograms(stats, pool.run_pass(chunks, edges, on_batch))
        return stats, node_ids
    finally:
        pool.kill()


class _Pool:
    """Actors plus the bookkeeping to re-run a dead actor's chunk on a replacement."""

    def __init__(self, actors: list, factory: Callable) -> None:
        self.actors = actors
        self.factory = factory

    def kill(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)

    def run_pass(self, chunks, edges, on_batch) -> StatisticSet:
        """One pass over ``chunks`` (``(object ref, batches)`` pairs), dynamically dispatched."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        queue = [(ref, chunk, 0) for ref, chunk in chunks]
        in_flight = dict.fromkeys(range(len(self.actors)), 0)
        pending: dict = {}
        merged = StatisticSet()

        def submit(idx: int) -> None:
            ref, chunk, tries = queue.pop(0)
            actor = self.actors[idx]
            pending[actor.run.remote(ref, edges)] = (idx, actor, ref, chunk, tries)
            in_flight[idx] += 1

        while queue or pending:
            for idx in sorted(in_flight, key=in_flight.get):
                while queue and in_flight[idx] < IN_FLIGHT:
                    submit(idx)
            done, _ = ray.wait(list(pending), num_returns=1)
            idx, actor, ref, chunk, tries = pending.pop(done[0])
            in_flight[idx] -= 1
            try:
                part = StatisticSet.from_arrays(ray.get(done[0]))
            except RayTaskError as exc:
                raise task_error(exc, "a calibration worker") from exc
            except RayActorError as exc:
                if tries >= MAX_RETRIES:
                    raise ClusterError(f"calibration worker died {tries + 1} times on batches "
                                       f"{[b for b, _ in chunk]}: {exc}") from exc
                log.warning("calibration worker died; re-running %d batches on a new worker", len(chunk))
                if self.actors[idx] is actor:  # the dead actor's other chunk fails too: replace once
                    self.actors[idx] = self.factory()
                queue.insert(0, (ref, chunk, tries + 1))
                continue
            merged = merged.merge(part)
            if on_batch is not None:
                on_batch(len(chunk))
        return merged
