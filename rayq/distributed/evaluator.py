"""Long-lived evaluator actors: each holds the FP32 model, the statistics and the
validation data, takes frozen plans and returns results.

Metrics are computed on every actor in parallel; latency is measured one
candidate at a time per node (all of a node's actors wait), so timings are not
disturbed by concurrent work on the same cores.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from rayq.core.plan import QuantPlan
from rayq.core.stats import StatisticSet
from rayq.distributed.cluster import task_error
from rayq.errors import ClusterError
from rayq.pipeline.candidate import CandidateEvaluator, CandidateMetric
from rayq.pipeline.latency import Latency

log = logging.getLogger(__name__)

MAX_RETRIES = 2
PLACEMENT_TIMEOUT_S = 180


class EvaluatorWorker:
    """Actor body: a :class:`CandidateEvaluator` built from serialisable parts."""

    def __init__(self, backend_name: str, model_bytes: bytes, stats_arrays: dict, items: list,
                 validation_fn: Callable, kwargs: dict) -> None:
        from rayq.backends import get_backend

        model = get_backend(backend_name).from_bytes(model_bytes)
        stats = StatisticSet.from_arrays(stats_arrays)
        self.ev = CandidateEvaluator(backend_name, model, stats, items, validation_fn, **kwargs)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def describe(self) -> dict:
        """Where this actor runs: node id, GPU ids Ray assigned, and the validation providers."""
        import ray

        info = {"node_id": ray.get_runtime_context().get_node_id(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "device": self.ev.device}
        if self.ev.runtime == "onnxruntime":
            from rayq.backends.onnx.runtime import ort_providers

            info["providers"] = ort_providers(self.ev.device)
        return info

    def metric(self, plan_json: str | None, indices: list[int] | None) -> CandidateMetric:
        if plan_json is None:
            return self.ev.fp32_metric(indices)
        return self.ev.metric(QuantPlan.from_json(plan_json), indices)

    def latency(self, plan_json: str | None) -> Latency:
        return self.ev.latency(None if plan_json is None else QuantPlan.from_json(plan_json))

    def output_error(self, plan_json: str | None) -> float:
        return self.ev.output_error(None if plan_json is None else QuantPlan.from_json(plan_json))

    def compare_latency(self, plan_jsons: list[str | None]) -> list[Latency]:
        return self.ev.compare_latency([None if j is None else QuantPlan.from_json(j) for j in plan_jsons])


class RayEvaluatorPool:
    """A pool of evaluator actors; the same verbs as :class:`LocalEvaluatorPool`.

    Args:
        num_workers: Number of actors.
        resources: Ray resources per actor (default ``{"num_cpus": 1}``); with
            ``num_gpus`` the actors validate on ONNX Runtime's CUDA provider.
        backend_name, model_bytes, stats, items, validation_fn, kwargs: the state of
            each actor (see :class:`~rayq.pipeline.candidate.CandidateEvaluator`).
    """

    def __init__(self, *, num_workers: int, resources: dict | None, backend_name: str, model_bytes: bytes,
                 stats: StatisticSet, items: list, validation_fn: Callable, kwargs: dict) -> None:
        import ray

        from rayq.distributed.cluster import cluster_cpus

        self.resources = dict(resources or {"num_cpus": min(1.0, cluster_cpus() / num_workers)})
        if self.resources.get("num_gpus"):
            if kwargs.get("runtime") == "onnxruntime":
                kwargs = {**kwargs, "device": "GPU"}  # accuracy on CUDA; latency stays on the target
            else:
                log.warning("GPU workers validate OpenVINO targets on CPU (OpenVINO's GPU plugin is for "
                            "Intel GPUs)")
        cls = ray.remote(**self.resources)(EvaluatorWorker)
        refs = [ray.put(x) for x in (model_bytes, stats.to_arrays(), items)]
        self._factory = lambda: cls.remote(backend_name, *refs, validation_fn, kwargs)
        self.actors = [self._factory() for _ in range(num_workers)]
        try:
            self.node_ids = ray.get([a.node_id.remote() for a in self.actors], timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as exc:
            self.close()
            raise ClusterError(f"could not place {num_workers} evaluator actors with {self.resources} within "
                               f"{PLACEMENT_TIMEOUT_S}s; cluster resources: {ray.cluster_resources()}") from exc

    @property
    def size(self) -> int:
        return len(self.actors)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []

    def describe(self) -> list[dict]:
        """Per actor: node id, assigned GPU ids, validation device and ONNX Runtime providers."""
        import ray

        return ray.get([a.describe.remote() for a in self.actors])

    def _call(self, idx: int, method: str, *args):
        return getattr(self.actors[idx], method).remote(*args)

    def _map(self, method: str, args: Sequence[tuple]) -> list:
        """Run ``method(*a)`` for each ``a`` over all actors; dead actors are replaced."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        results: list[Any] = [None] * len(args)
        queue = list(range(len(args)))
        pending: dict = {}
        tries = defaultdict(int)
        free = list(range(self.size))
        while queue or pending:
            while queue and free:
                i, idx = queue.pop(0), free.pop(0)
                pending[self._call(idx, method, *args[i])] = (i, idx)
            done, _ = ray.wait(list(pending), num_returns=1)
            i, idx = pending.pop(done[0])
            try:
                results[i] = ray.get(done[0])
                free.append(idx)
            except RayTaskError as exc:
                raise task_error(exc, "an evaluator") from exc
            except RayActorError as exc:
                tries[i] += 1
                if tries[i] > MAX_RETRIES:
                    raise ClusterError(f"evaluator workers died {tries[i]} times on one candidate: {exc}") from exc
                log.warning("an evaluator worker died; replacing it and re-running its candidate")
                self.actors[idx] = self._factory()
                free.append(idx)
                queue.insert(0, i)
        return results

    def map_metric(self, plans: Sequence[QuantPlan | None], indices: list[int] | None = None) -> list[CandidateMetric]:
        return self._map("metric", [(None if p is None else p.to_json(), indices) for p in plans])

    def map_output_error(self, plans: Sequence[QuantPlan | None]) -> list[float]:
        return self._map("output_error", [(None if p is None else p.to_json(),) for p in plans])

    def map_latency(self, plans: Sequence[QuantPlan | None]) -> list[Latency]:
        """Latency of each plan; one measurement at a time per node, nodes in parallel."""
        import ray

        by_node: dict[str, list[int]] = defaultdict(list)
        for idx, node in enumerate(self.node_ids):
            by_node[node].append(idx)
        nodes = sorted(by_node)
        queues = {n: [i for i in range(len(plans)) if nodes[i % len(nodes)] == n] for n in nodes}
        results: list[Any] = [None] * len(plans)
        while any(queues.values()):
            wave = {}
            for n in nodes:
                if queues[n]:
                    i = queues[n].pop(0)
                    p = plans[i]
                    wave[i] = self._call(by_node[n][0], "latency", None if p is None else p.to_json())
            for i, ref in wave.items():
                try:
                    results[i] = ray.get(ref)
                except Exception as exc:
                    raise ClusterError(f"latency measurement failed: {exc}") from exc
        return results

    def compare_latency(self, plans: Sequence[QuantPlan | None]) -> list[Latency]:
        """Latencies of ``plans`` measured against each other on one actor (interleaved)."""
        import ray

        ref = self._call(0, "compare_latency", [None if p is None else p.to_json() for p in plans])
        try:
            return ray.get(ref)
        except Exception as exc:
            raise ClusterError(f"latency measurement failed: {exc}") from exc


class LocalEvaluatorPool:
    """The in-process pool (``num_workers=1``): same verbs, no Ray."""

    def __init__(self, evaluator: CandidateEvaluator) -> None:
        self.ev = evaluator
        self.node_ids = ["local"]

    size = 1

    def close(self) -> None:
        pass

    def map_metric(self, plans, indices=None) -> list[CandidateMetric]:
        return [self.ev.fp32_metric(indices) if p is None else self.ev.metric(p, indices) for p in plans]

    def map_output_error(self, plans) -> list[float]:
        return [self.ev.output_error(p) for p in plans]

    def map_latency(self, plans) -> list[Latency]:
        return [self.ev.latency(p) for p in plans]

    def compare_latency(self, plans) -> list[Latency]:
        return self.ev.compare_latency(plans)
