"""Candidate evaluation on Ray: metrics, output errors and latencies of frozen plans,
computed by Ray tasks on pooled worker processes.

Each worker process keeps the search's :class:`CandidateEvaluator` (the FP32 model,
statistics, validation data and a few built candidates) resident between tasks
(:mod:`rayq.distributed.resident`): it is loaded by the process's first task of the
search and dropped ``IDLE_RELEASE_S`` after its last.

Why tasks and not actors: actors reserve their CPUs for as long as they live and
their processes die with them, so every search paid W process starts (1.0-1.6 s of
a 5.8 s search of the digits example at W=2 on 2 cores) and a notebook or a sweep
could not hand those CPUs to the next search's calibration without killing them.
Task workers return to Ray's pool: calibration and evaluation share warm processes,
and concurrent searches of a sweep share the cluster's CPUs task by task. GPU
evaluation is the exception: CUDA binds a process to its first GPUs, so with
``num_gpus`` the pool holds W actors (:class:`BoundWorker`) for the search, which run
the same task body.

Metrics run W at a time (a free slot takes the next plan); latency is measured one
candidate at a time per node, on that node, while no evaluation started by this
process runs (:data:`~rayq.pipeline.latency.GATE`: the concurrent searches of a
sweep wait for each other's measurements), so timings are not disturbed by
concurrent work on the same cores. The first task for each node that can run a
worker is pinned there (soft affinity), so evaluation spans the cluster. Ray re-runs
a task whose worker process or node died, and restarts a dead bound worker
(``MAX_RETRIES`` times).

A validation that does not return within the validation timeout
(:class:`~rayq.pipeline.evaluate.ValidationTimeout`, plus ``TASK_START_GRACE_S``) is a
failed metric with a ``timeout`` error: its task is cancelled with ``force=True``,
which kills the worker process (Ray starts a new one for the next task), or its
bound worker is killed and replaced; the other evaluations go on.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from rayq.backends import get_backend
from rayq.core.early import EarlyStop
from rayq.core.plan import QuantPlan
from rayq.core.stats import StatisticSet
from rayq.distributed.cluster import default_resources, next_done, task_error, worker_nodes
from rayq.distributed.resident import call_with_ended, end, release, resident, touch
from rayq.errors import ClusterError, ConfigError
from rayq.pipeline.candidate import CandidateEvaluator, CandidateMetric
from rayq.pipeline.evaluate import ValidationTimeout, timeout_message
from rayq.pipeline.latency import GATE, Latency

log = logging.getLogger(__name__)

MAX_RETRIES = 2  # re-runs of a task whose worker process or node died
PLACEMENT_TIMEOUT_S = 180
IDLE_RELEASE_S = 60.0  # a worker process drops a search's evaluator unused for this long
#: On Ray, a validation's time counts from its submission: this much more is allowed for
#: starting a worker process and loading the evaluator before the worker is killed.
TASK_START_GRACE_S = 10.0


# -- worker side ------------------------------------------------------------------------

def _plan(plan_json: str | None) -> QuantPlan | None:
    return None if plan_json is None else QuantPlan.from_json(plan_json)


def _describe(ev: CandidateEvaluator) -> dict:
    import ray

    info = {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "device": ev.device, "threads": ev.threads}
    if ev.runtime == "onnxruntime":
        from rayq.backends.onnx.runtime import ort_providers

        info["providers"] = ort_providers(ev.device)
    return info


_VERBS: dict[str, Callable] = {
    "metric": lambda ev, plan, indices, stop=None: (ev.fp32_metric(indices) if plan is None
                                                    else ev.metric(_plan(plan), indices, stop)),
    "latency": lambda ev, plan: ev.latency(_plan(plan)),
    "output_error": lambda ev, plan: ev.output_error(_plan(plan)),
    "compare_latency": lambda ev, plans: ev.compare_latency([_plan(p) for p in plans]),
    "describe": _describe,
}


def _load(call: dict) -> CandidateEvaluator:
    import ray

    model_bytes, stats_arrays, items, fn, kwargs = ray.get(call["payload"][0])
    model = get_backend(call["backend"]).from_bytes(model_bytes)
    return CandidateEvaluator(call["backend"], model, StatisticSet.from_arrays(stats_arrays), items, fn, **kwargs)


def evaluate(call: dict, verb: str, args: tuple) -> tuple[Any, str]:
    """Task body: ``verb(*args)`` on this process's evaluator for ``call`` (loaded on
    first use), and the node that ran it.

    ``call`` carries the search's token, backend name and the object ref of ``(model
    bytes, statistics arrays, validation items, validation_fn, evaluator kwargs)``,
    boxed in a list so Ray does not fetch it for every task, and the tokens of ended
    searches, whose evaluators this process drops first (the next search of a sweep
    or notebook frees the last one's memory without waiting for the idle release).
    """
    import ray

    release(call.get("ended", ()))
    ev = resident(call["token"], lambda: _load(call), idle_s=IDLE_RELEASE_S)
    ev.threads = call.get("threads") or ev.threads  # the CPUs this task reserved
    out = _VERBS[verb](ev, *args)
    touch(call["token"])
    return out, ray.get_runtime_context().get_node_id()


class BoundWorker:
    """A worker process held for a whole search: the form GPU evaluation takes.

    CUDA binds a process to the GPUs visible when it starts, while Ray hands each task
    its own ``CUDA_VISIBLE_DEVICES``; a pooled process reused by a task with another
    GPU would run on the first one. An actor keeps its GPU for its lifetime, and runs
    the same task body (:func:`evaluate`) with the same resident evaluator.
    """

    def evaluate(self, call: dict, verb: str, args: tuple) -> tuple[Any, str]:
        return evaluate(call, verb, args)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


# -- driver side ------------------------------------------------------------------------

def _put_payload(model_bytes: bytes, stats_arrays: dict, items: list, fn: Callable, kwargs: dict):
    """The evaluator's state in the object store; a part Ray cannot serialise (a
    validation function holding a lock or an open session) is named in a ConfigError."""
    import ray

    try:
        return ray.put((model_bytes, stats_arrays, items, fn, kwargs))
    except Exception as exc:  # TypeError / PicklingError from cloudpickle, wrapped by Ray
        for what, value in (("validation_fn", fn), ("the validation items", items)):
            try:
                ray.cloudpickle.dumps(value)
            except Exception as inner:
                raise ConfigError(f"{what} cannot be sent to Ray workers ({type(inner).__name__}: {inner}); "
                                  "define it at module level without open handles or locks, or evaluate "
                                  "in-process with num_workers=1") from exc
        raise ClusterError(f"cannot put the evaluator state into Ray's object store: {exc}") from exc


class RayEvaluatorPool:
    """Evaluation of plans on Ray worker tasks; the same verbs as :class:`LocalEvaluatorPool`.

    Args:
        num_workers: W, the most evaluations running at once.
        resources: Ray resources per task (default: one CPU, or a share of the
            cluster's when W exceeds it); with ``num_gpus`` the workers validate on
            ONNX Runtime's CUDA provider. Validation runs with as many threads as
            ``num_cpus`` (at least 1) unless ``kwargs`` sets ``threads``.
        backend_name, model_bytes, stats, items, validation_fn, kwargs: the evaluator
            each worker process holds (see :class:`~rayq.pipeline.candidate.CandidateEvaluator`).
        task: the remote function that runs an evaluation (tests inject failures here).
        bind_processes: run on W actors (:class:`BoundWorker`) held for the pool's
            lifetime instead of pooled tasks; default: when ``resources`` ask for GPUs.
        timeout: How long a validation may take (default: automatic).

    Raises:
        ClusterError: no node of the cluster can run a worker with ``resources``, or
            the bound workers cannot be placed within ``PLACEMENT_TIMEOUT_S``.
    """

    def __init__(self, *, num_workers: int, resources: dict | None, backend_name: str, model_bytes: bytes,
                 stats: StatisticSet, items: list, validation_fn: Callable, kwargs: dict,
                 task: Callable | None = None, bind_processes: bool | None = None,
                 timeout: ValidationTimeout | None = None) -> None:
        import ray

        self.workers = max(1, num_workers)
        self.timeout = timeout or ValidationTimeout()
        self._fn_name = f"{getattr(validation_fn, '__module__', '?')}:{getattr(validation_fn, '__qualname__', '?')}"
        self.resources = dict(resources or default_resources(self.workers))
        if not kwargs.get("threads"):  # as many validation threads as CPUs reserved: W workers of a
            # runtime's default (every core) would oversubscribe the node (MiniLM ranking on 2 cores:
            # 7.05 s for 20 groups, 4.97 s with 1 thread each)
            kwargs = {**kwargs, "threads": max(1, int(self.resources.get("num_cpus", 1)))}
        self._threads = kwargs["threads"]
        if self.resources.get("num_gpus"):
            if kwargs.get("runtime") == "onnxruntime":
                kwargs = {**kwargs, "device": "GPU"}  # accuracy on CUDA; latency stays on the target
            else:
                log.warning("GPU workers validate OpenVINO targets on CPU (OpenVINO's GPU plugin is for "
                            "Intel GPUs)")
        self.nodes = worker_nodes(self.resources, "an evaluator worker", PLACEMENT_TIMEOUT_S)[:self.workers]
        self._node_cpus = max(n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] in self.nodes)
        self.task = task or ray.remote(evaluate)
        payload = _put_payload(model_bytes, stats.to_arrays(), items, validation_fn, kwargs)
        self.call = {"token": uuid.uuid4().hex, "backend": backend_name, "payload": [payload]}
        self._unvisited = list(self.nodes)  # nodes still to get their first task
        self.node_ids: list[str] = []  # nodes that ran this pool's evaluations, in first-seen order
        self._bound: list[tuple[Any, str]] = []  # (actor, node) when processes are bound
        if bool(self.resources.get("num_gpus")) if bind_processes is None else bind_processes:
            self._bind()
        self._free = list(range(len(self._bound)))
        self._busy: dict = {}  # ref -> bound worker index

    def _bind(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cls = ray.remote(BoundWorker)
        opts = dict(self.resources, max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)
        pin = [{"scheduling_strategy": NodeAffinitySchedulingStrategy(n, soft=True)} for n in self.nodes]
        actors = [cls.options(**opts, **(pin[i] if i < len(pin) else {})).remote() for i in range(self.workers)]
        self._new_bound = lambda node: cls.options(  # a replacement for a killed worker, on its node
            **opts, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)).remote()
        try:
            nodes = ray.get([a.node_id.remote() for a in actors], timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as exc:
            for a in actors:
                ray.kill(a)
            raise ClusterError(f"could not place {self.workers} evaluator workers with {self.resources} within "
                               f"{PLACEMENT_TIMEOUT_S}s; free resources: {ray.available_resources()}") from exc
        self._bound = list(zip(actors, nodes))
        self.nodes = [n for n in self.nodes if n in nodes] + sorted(set(nodes) - set(self.nodes))

    @property
    def size(self) -> int:
        return self.workers

    def close(self) -> None:
        """Release the payload (pooled processes drop their evaluator when it idles out)
        and the bound workers."""
        import ray

        self.call["payload"] = []
        end(self.call["token"])
        for actor, _ in self._bound:
            ray.kill(actor)
        self._bound, self._free = [], []

    def _submit(self, verb: str, args: tuple, node: str | None = None, share: int = 1):
        """One evaluation task; ``share`` > 1: it takes the CPUs (and threads) of that many
        workers, for maps with fewer plans than workers (a lone FP32 validation would
        otherwise run on one thread while the others idle)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self._bound:  # a free bound worker (on ``node`` when given)
            k = next(k for k in self._free if node is None or self._bound[k][1] == node)
            self._free.remove(k)
            ref = self._bound[k][0].evaluate.remote({**call_with_ended(self.call), "threads": self._threads},
                                                    verb, args)
            self._busy[ref] = k
            return ref
        opts = dict(self.resources, max_retries=MAX_RETRIES)
        threads = self._threads
        if share > 1:
            opts["num_cpus"] = min(self._node_cpus, self.resources.get("num_cpus", 1) * share)
            threads = max(threads, int(opts["num_cpus"]))
        if node is not None:  # latency: on this node, no other
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        elif self._unvisited:  # one task per node that can take one, so evaluation spans the cluster
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(self._unvisited.pop(0), soft=True)
        return self.task.options(**opts).remote({**call_with_ended(self.call), "threads": threads}, verb, args)

    def _result(self, ref, what: str) -> Any:
        import ray

        if ref in self._busy:
            self._free.append(self._busy.pop(ref))
        try:
            out, node = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            raise task_error(exc, f"an evaluator worker ({what})") from exc
        except ray.exceptions.RayError as exc:  # worker or node died more than MAX_RETRIES times
            raise task_error(exc, f"evaluation ({what}), tried {MAX_RETRIES + 1} times,") from exc
        if node not in self.node_ids:
            self.node_ids.append(node)
        return out

    def _map(self, verb: str, args: Sequence[tuple], limit: float | None = None) -> list:
        """``verb(*a)`` for each ``a``, at most W at a time; results in order. With
        ``limit``, a call running longer (plus the start grace) is killed and gives a
        ``timeout`` :class:`CandidateMetric`."""
        results: list[Any] = [None] * len(args)
        todo = list(range(len(args)))
        pending: dict = {}
        started: dict = {}
        share = max(1, self.workers // max(1, len(args)))  # fewer plans than workers: more CPUs each
        with GATE.evaluating():
            while todo or pending:
                while todo and len(pending) < self.workers:
                    i = todo.pop(0)
                    ref = self._submit(verb, args[i], share=share)
                    pending[ref], started[ref] = i, time.monotonic()
                ref, late = self._next(pending, started, limit)
                i = pending.pop(ref)
                if late:
                    results[i] = self._timed_out(ref, args[i][0], limit, time.monotonic() - started[ref])
                else:
                    results[i] = self._result(ref, verb)
        return results

    def _next(self, pending: dict, started: dict, limit: float | None) -> tuple[Any, bool]:
        """The next finished call, or one past its deadline (``True``)."""
        if limit is None:
            return next_done(pending, "evaluation", PLACEMENT_TIMEOUT_S), False
        import ray

        deadline = limit + TASK_START_GRACE_S
        while True:
            now = time.monotonic()
            late = [r for r in pending if now - started[r] >= deadline]
            if late:
                return late[0], True
            wait = min(deadline - (now - started[r]) for r in pending)
            done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.05, min(wait, PLACEMENT_TIMEOUT_S)))
            if done:
                return done[0], False

    def _timed_out(self, ref, plan_json: str | None, limit: float, seconds: float) -> CandidateMetric:
        """Kill the worker running ``ref`` (Ray starts another) and report the timeout."""
        import ray

        if ref in self._busy:  # a bound worker: replace it on its node
            k = self._busy.pop(ref)
            actor, node = self._bound[k]
            ray.kill(actor, no_restart=True)
            self._bound[k] = (self._new_bound(node), node)
            self._free.append(k)
        else:
            ray.cancel(ref, force=True, recursive=True)
        key = "fp32" if plan_json is None else QuantPlan.from_json(plan_json).key()
        log.warning("validation of %s timed out after %.1f s; its worker was killed and is replaced", key, seconds)
        return CandidateMetric(key, None, None, seconds,
                               timeout_message(self._fn_name, limit, "on a Ray worker, which was replaced"))

    def map_metric(self, plans: Sequence[QuantPlan | None], indices: list[int] | None = None,
                   stop: EarlyStop | None = None) -> list[CandidateMetric]:
        """Metric of each plan (None: FP32) on all items or ``indices``; with ``stop``,
        candidates are validated in chunks and stopped early (:mod:`rayq.core.early`)."""
        out = self._map("metric", [(None if p is None else p.to_json(), indices, stop) for p in plans],
                        limit=self.timeout.limit())
        observe_fp32(self.timeout, plans, indices, out)
        return out

    def map_output_error(self, plans: Sequence[QuantPlan | None]) -> list[float]:
        return self._map("output_error", [(None if p is None else p.to_json(),) for p in plans])

    def map_latency(self, plans: Sequence[QuantPlan | None]) -> list[Latency]:
        """Latency of each plan; one measurement at a time per node, nodes in parallel."""
        queues: dict[str, list[int]] = defaultdict(list)
        for i in range(len(plans)):
            queues[self.nodes[i % len(self.nodes)]].append(i)
        results: list[Any] = [None] * len(plans)
        with GATE.measuring():
            while any(queues.values()):
                wave = {}
                for node, queue in queues.items():
                    if queue:
                        i = queue.pop(0)
                        wave[i] = self._submit("latency", (None if plans[i] is None else plans[i].to_json(),), node)
                for i, ref in wave.items():
                    results[i] = self._result(ref, "latency")
        return results

    def compare_latency(self, plans: Sequence[QuantPlan | None]) -> list[Latency]:
        """Latencies of ``plans`` measured against each other (interleaved) on the first
        node (the driver's, when it can run a worker)."""
        with GATE.measuring():
            ref = self._submit("compare_latency", ([None if p is None else p.to_json() for p in plans],),
                               self.nodes[0])
            return self._result(ref, "latency runoff")

    def describe(self) -> list[dict]:
        """For W tasks: node id, assigned GPU ids, validation device and ONNX Runtime providers."""
        refs = [self._submit("describe", ()) for _ in range(self.workers)]
        return [self._result(r, "describe") for r in refs]


def observe_fp32(timeout: ValidationTimeout, plans: Sequence[QuantPlan | None], indices, out) -> None:
    """Record the first full FP32 validation's duration (the automatic timeout's base)."""
    if timeout.fp32_seconds is None and indices is None:
        for plan, m in zip(plans, out):
            if plan is None and getattr(m, "error", "no metric") is None:
                timeout.fp32_seconds = m.seconds
                return


class LocalEvaluatorPool:
    """The in-process pool (``num_workers=1``): same verbs, no Ray.

    A validation call past the timeout is abandoned in its thread (a thread cannot be
    killed) and gives a ``timeout`` metric; the search goes on.
    """

    def __init__(self, evaluator: CandidateEvaluator, timeout: ValidationTimeout | None = None) -> None:
        self.ev = evaluator
        self.timeout = timeout or ValidationTimeout()
        self.node_ids = ["local"]

    size = 1

    def close(self) -> None:
        pass

    def map_metric(self, plans, indices=None, stop: EarlyStop | None = None) -> list[CandidateMetric]:
        out = []
        with GATE.evaluating():
            for p in plans:
                self.ev.validation_timeout = self.timeout.limit()
                out.append(self.ev.fp32_metric(indices) if p is None else self.ev.metric(p, indices, stop))
        observe_fp32(self.timeout, plans, indices, out)
        return out

    def map_output_error(self, plans) -> list[float]:
        with GATE.evaluating():
            return [self.ev.output_error(p) for p in plans]

    def map_latency(self, plans) -> list[Latency]:
        with GATE.measuring():
            return [self.ev.latency(p) for p in plans]

    def compare_latency(self, plans) -> list[Latency]:
        with GATE.measuring():
            return self.ev.compare_latency(plans)
