"""Sharded calibration: each Ray actor owns a shard of batches and returns exact
partial statistics that the driver merges (any order gives the same result)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from rayq.backends import get_backend
from rayq.core.stats import StatisticSet
from rayq.errors import ClusterError, RayqError
from rayq.pipeline import calibrate
from rayq.pipeline.calibrate import Batch, StatSpec

log = logging.getLogger(__name__)

CHUNK = 4  # batches per task: the granularity of progress and of retries


class CalibrationWorker:
    """Holds the instrumented model of one shard; plain class, made remote by the pool."""

    def __init__(self, backend_name: str, model_bytes: bytes, spec: StatSpec, num_threads: int = 1) -> None:
        self.backend = get_backend(backend_name)
        self.model = self.backend.from_bytes(model_bytes)
        self.spec = spec
        self.num_threads = num_threads

    def run(self, batches: Sequence[Batch], edges: dict | None = None) -> dict:
        stats = calibrate.collect(self.backend, self.model, batches, self.spec, num_threads=self.num_threads,
                                  histogram_edges=edges)
        return stats.to_arrays()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


def _shards(batches: Sequence[Batch], workers: int) -> list[list[Batch]]:
    """Contiguous shards by stable batch id."""
    size = -(-len(batches) // workers)
    return [list(batches[i:i + size]) for i in range(0, len(batches), size)]


def collect_distributed(backend_name: str, model_bytes: bytes, batches: Sequence[Batch], spec: StatSpec, *,
                        num_workers: int, resources: dict | None = None,
                        on_batch: Callable[[int], None] | None = None) -> tuple[StatisticSet, list[str]]:
    """Calibrate over ``num_workers`` actors; returns merged statistics and actor node ids."""
    import ray

    res = dict(resources or {"num_cpus": 1})
    threads = max(1, int(res.get("num_cpus", 1)))
    actor_cls = ray.remote(max_restarts=2, max_task_retries=2, **res)(CalibrationWorker)
    shards = _shards(batches, num_workers)
    actors = [actor_cls.remote(backend_name, model_bytes, spec, threads) for _ in shards]
    try:
        node_ids = ray.get([a.node_id.remote() for a in actors])
        stats = _run_pass(actors, shards, None, on_batch)
        if spec.histogram_tensors:
            edges = calibrate.histogram_edges(stats, spec)
            calibrate.attach_histograms(stats, _run_pass(actors, shards, edges, on_batch))
        return stats, node_ids
    finally:
        for a in actors:
            ray.kill(a)


def _run_pass(actors, shards, edges, on_batch) -> StatisticSet:
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    pending = {}
    for actor, shard in zip(actors, shards):
        for i in range(0, len(shard), CHUNK):
            chunk = shard[i:i + CHUNK]
            pending[actor.run.remote(chunk, edges)] = len(chunk)
    merged = StatisticSet()
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        ref = done[0]
        n = pending.pop(ref)
        try:
            part = StatisticSet.from_arrays(ray.get(ref))
        except RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), RayqError) else None
            if cause is not None:
                raise cause from None
            raise ClusterError(f"a calibration worker failed: {exc}") from exc
        except RayActorError as exc:
            raise ClusterError(f"a calibration worker died and could not be restarted: {exc}") from exc
        merged = merged.merge(part)
        if on_batch is not None:
            on_batch(n)
    return merged
