"""Candidate evaluation on Ray: metrics, output errors and latencies of frozen plans,
computed by the tasks of one :class:`~rayq.distributed.pool.TaskPool`.

Each worker process keeps the search's :class:`CandidateEvaluator` (the FP32 model,
statistics, validation data and a few built candidates) resident between tasks
(:mod:`rayq.distributed.resident`): it is loaded by the process's first task of the
search and dropped ``IDLE_RELEASE_S`` after its last.

Tasks rather than actors: task worker processes return to Ray's pool, so calibration
and evaluation share warm processes, and the concurrent searches of a sweep share the
cluster's CPUs task by task. GPU evaluation is the exception: CUDA binds a process to
its first GPUs, so with ``num_gpus`` the pool holds W actors (:class:`BoundWorker`) for
the search, which run the same task body.

Metrics run W at a time (a free slot takes the next plan); latency is measured one
candidate at a time per node, on that node, while no evaluation started by this
process runs (:data:`~rayq.pipeline.latency.GATE`: the concurrent searches of a
sweep wait for each other's measurements), so timings are not disturbed by
concurrent work on the same cores.

A validation that does not return within the validation timeout
(:class:`~rayq.pipeline.validation.ValidationTimeout`, plus ``TASK_START_GRACE_S``) is a
failed metric with a ``timeout`` error: its task is cancelled with ``force=True``,
which kills the worker process (Ray starts a new one for the next task), or its
bound worker is killed and replaced; the other evaluations go on.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from rayq.backends import get_backend
from rayq.core.early import EarlyStop
from rayq.core.plan import QuantPlan
from rayq.core.stats import StatisticSet
from rayq.distributed import resident, shipping
from rayq.distributed.cluster import default_resources
from rayq.distributed.pool import (
    MAX_RETRIES,
    PLACEMENT_TIMEOUT_S,
    Call,
    TaskPool,
    node_id,
    resident_state,
)
from rayq.errors import ClusterError, ConfigError
from rayq.pipeline.candidate import CandidateEvaluator, CandidateMetric, observe_fp32
from rayq.pipeline.latency import GATE, Latency
from rayq.pipeline.validation import ValidationTimeout, timeout_message

log = logging.getLogger(__name__)

IDLE_RELEASE_S = 60.0  # a worker process drops a search's evaluator unused for this long
#: On Ray, a validation's time counts from its submission: this much more is allowed for
#: starting a worker process and loading the evaluator before the worker is killed.
TASK_START_GRACE_S = 10.0


# -- worker side ------------------------------------------------------------------------


def _plan(plan_json: str | None) -> QuantPlan | None:
    return None if plan_json is None else QuantPlan.from_json(plan_json)


def _describe(ev: CandidateEvaluator) -> dict:
    import ray

    return {
        "node_id": node_id(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "device": ev.device,
        "threads": ev.threads,
        **ev.backend.describe(ev.runtime, ev.device),
    }


_VERBS: dict[str, Callable] = {
    "metric": lambda ev, plan, indices, stop=None: (
        ev.fp32_metric(indices) if plan is None else ev.metric(_plan(plan), indices, stop)
    ),
    "latency": lambda ev, plan: ev.latency(_plan(plan)),
    "output_error": lambda ev, plan: ev.output_error(_plan(plan)),
    "compare_latency": lambda ev, plans: ev.compare_latency([_plan(p) for p in plans]),
    "describe": _describe,
}


def _load(call: Call) -> CandidateEvaluator:
    import ray

    stats_arrays, items, fn, kwargs = ray.get(call.state)
    return CandidateEvaluator(
        call.backend, shipping.receive(call.model), StatisticSet.from_arrays(stats_arrays), items, fn, **kwargs
    )


def evaluate(call: Call, verb: str, args: tuple) -> tuple[Any, str]:
    """Task body: ``verb(*args)`` on this process's evaluator for ``call`` (loaded on
    first use from the model's shipment and the ref of ``(statistics arrays, validation
    items, validation_fn, evaluator kwargs)``), and the node that ran it. Evaluators of
    the ended searches ``call`` names are dropped first (the next search of a sweep or
    notebook frees the last one's memory without waiting for the idle release).
    """
    ev = resident_state(call, _load, IDLE_RELEASE_S)
    ev.threads = call.threads or ev.threads  # the CPUs this task reserved
    out = _VERBS[verb](ev, *args)
    resident.touch(call.token)
    return out, node_id()


class BoundWorker:
    """A worker process held for a whole search: the form GPU evaluation takes.

    CUDA binds a process to the GPUs visible when it starts, while Ray hands each task
    its own ``CUDA_VISIBLE_DEVICES``; a pooled process reused by a task with another
    GPU would run on the first one. An actor keeps its GPU for its lifetime, and runs
    the same task body (:func:`evaluate`) with the same resident evaluator.
    """

    def evaluate(self, call: Call, verb: str, args: tuple) -> tuple[Any, str]:
        return evaluate(call, verb, args)

    def node_id(self) -> str:
        return node_id()


# -- driver side ------------------------------------------------------------------------


def _put_state(stats_arrays: dict, items: list, fn: Callable, kwargs: dict):
    """The evaluator's state (all but the model) in the object store; a part Ray cannot
    serialise (a validation function holding a lock or an open session) is named in a
    ConfigError."""
    import ray

    try:
        return ray.put((stats_arrays, items, fn, kwargs))
    except Exception as exc:  # TypeError / PicklingError from cloudpickle, wrapped by Ray
        for what, value in (("validation_fn", fn), ("the validation items", items)):
            try:
                ray.cloudpickle.dumps(value)
            except Exception as inner:
                raise ConfigError(
                    f"{what} cannot be sent to Ray workers ({type(inner).__name__}: {inner}); "
                    "define it at module level without open handles or locks, or evaluate "
                    "in-process with num_workers=1"
                ) from exc
        raise ClusterError(f"cannot put the evaluator state into Ray's object store: {exc}") from exc


def _validation_kwargs(kwargs: dict, resources: dict, backend_name: str) -> dict:
    """The evaluator's kwargs on workers with ``resources``: as many validation threads as
    CPUs reserved (W workers of a runtime's default, every core, would oversubscribe the
    node), and the GPU device when the workers hold one and the runtime can use it."""
    if not kwargs.get("threads"):
        kwargs = {**kwargs, "threads": max(1, int(resources.get("num_cpus", 1)))}
    if resources.get("num_gpus"):
        runtime = kwargs.get("runtime") or get_backend(backend_name).runtimes[0]
        device = get_backend(backend_name).gpu_device(runtime)
        if device is not None:
            kwargs = {**kwargs, "device": device}  # accuracy on the GPU; latency stays on the target
        else:
            log.warning(
                "GPU workers validate %s models on %s on CPU (it cannot use the CUDA GPUs Ray assigns)",
                backend_name,
                runtime,
            )
    return kwargs


class RayEvaluatorPool:
    """Evaluation of plans on Ray worker tasks; the same verbs as
    :class:`~rayq.pipeline.candidate.LocalEvaluatorPool`.

    Args:
        num_workers: W, the most evaluations running at once.
        resources: Ray resources per task (default: one CPU, or a share of the
            cluster's when W exceeds it); with ``num_gpus`` the workers validate on the
            GPU when the runtime can (ONNX Runtime's CUDA provider). Validation runs
            with as many threads as ``num_cpus`` (at least 1) unless ``kwargs`` sets
            ``threads``.
        backend_name, model, stats, items, validation_fn, kwargs: the evaluator each
            worker process holds (see :class:`~rayq.pipeline.candidate.CandidateEvaluator`);
            ``model`` is the backend's model (or its ``to_bytes()``), shipped once
            (:mod:`rayq.distributed.shipping`).
        task: the remote function that runs an evaluation (tests inject failures here).
        bind_processes: run on W actors (:class:`BoundWorker`) held for the pool's
            lifetime instead of pooled tasks; default: when ``resources`` ask for GPUs.
        timeout: How long a validation may take (default: automatic).

    Raises:
        ClusterError: no node of the cluster can run a worker with ``resources``, or
            the bound workers cannot be placed within ``PLACEMENT_TIMEOUT_S``.
    """

    def __init__(
        self,
        *,
        num_workers: int,
        resources: dict | None,
        backend_name: str,
        model: Any,
        stats: StatisticSet,
        items: list,
        validation_fn: Callable,
        kwargs: dict,
        task: Callable | None = None,
        bind_processes: bool | None = None,
        timeout: ValidationTimeout | None = None,
    ) -> None:
        import ray

        self.workers = max(1, num_workers)
        self.timeout = timeout or ValidationTimeout()
        self._fn_name = f"{getattr(validation_fn, '__module__', '?')}:{getattr(validation_fn, '__qualname__', '?')}"
        resources = dict(resources or default_resources(self.workers))
        kwargs = _validation_kwargs(kwargs, resources, backend_name)
        self.pool = TaskPool(task or evaluate, workers=self.workers, resources=resources, what="an evaluator worker")
        self.nodes = self.pool.nodes
        self._node_cpus = max(n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] in self.nodes)
        state = _put_state(stats.to_arrays(), items, validation_fn, kwargs)
        self.call = Call.start(backend_name, model, state, threads=kwargs["threads"])
        self._bound: list[tuple[Any, str]] = []  # (actor, node) when processes are bound
        if bool(resources.get("num_gpus")) if bind_processes is None else bind_processes:
            try:
                self._bind()
            except BaseException:
                self.call.end()
                raise
        self._free = list(range(len(self._bound)))
        self._busy: dict = {}  # ref -> bound worker index

    @property
    def node_ids(self) -> list[str]:
        """Nodes that ran this pool's evaluations, in first-seen order."""
        return self.pool.node_ids

    def _bind(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cls = ray.remote(BoundWorker)
        opts = dict(self.pool.resources, max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)
        pin = [{"scheduling_strategy": NodeAffinitySchedulingStrategy(n, soft=True)} for n in self.nodes]
        # Any: Ray's stubs type an actor's methods as plain functions (no ``.remote``)
        actors: list[Any] = [
            cls.options(**opts, **(pin[i] if i < len(pin) else {})).remote() for i in range(self.workers)
        ]
        self._new_bound = lambda node: cls.options(  # a replacement for a killed worker, on its node
            **opts, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)
        ).remote()
        try:
            nodes = ray.get([a.node_id.remote() for a in actors], timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as exc:
            for a in actors:
                ray.kill(a)
            raise ClusterError(
                f"could not place {self.workers} evaluator workers with {self.pool.resources} "
                f"within {PLACEMENT_TIMEOUT_S}s; free resources: {ray.available_resources()}"
            ) from exc
        self._bound = list(zip(actors, nodes))
        self.nodes = [n for n in self.nodes if n in nodes] + sorted(set(nodes) - set(self.nodes))

    def close(self) -> None:
        """End the call (pooled processes drop their evaluator with their next task, or
        when it idles out) and release the bound workers."""
        import ray

        self.call.end()
        for actor, _ in self._bound:
            ray.kill(actor)
        self._bound, self._free = [], []

    def _submit(self, verb: str, args: tuple, node: str | None = None, share: int = 1):
        """One evaluation task; ``share`` > 1: it takes the CPUs (and threads) of that many
        workers, for maps with fewer plans than workers (a lone FP32 validation would
        otherwise run on one thread while the others idle)."""
        if self._bound:  # a free bound worker (on ``node`` when given)
            k = next(k for k in self._free if node is None or self._bound[k][1] == node)
            self._free.remove(k)
            ref = self._bound[k][0].evaluate.remote(self.call.for_task(), verb, args)
            self._busy[ref] = k
            return ref
        if share == 1:
            return self.pool.submit(self.call.for_task(), verb, args, node=node)
        cpus = min(self._node_cpus, self.pool.resources.get("num_cpus", 1) * share)
        return self.pool.submit(
            self.call.for_task(max(self.call.threads, int(cpus))), verb, args, node=node, num_cpus=cpus
        )

    def _result(self, ref, what: str) -> Any:
        if ref in self._busy:
            self._free.append(self._busy.pop(ref))
        return self.pool.result(ref, f"an evaluator worker ({what})")

    def _map(self, verb: str, args: Sequence[tuple], limit: float | None = None) -> list:
        """``verb(*a)`` for each ``a``, at most W at a time; results in order. With
        ``limit``, a call running longer (plus the start grace) is killed and gives a
        ``timeout`` :class:`CandidateMetric`."""
        results: list[Any] = [None] * len(args)
        share = max(1, self.workers // max(1, len(args)))  # fewer plans than workers: more CPUs each
        deadline = None if limit is None else limit + TASK_START_GRACE_S
        with GATE.evaluating():
            for i, ref, late in self.pool.imap(
                range(len(args)), lambda i: self._submit(verb, args[i], share=share), deadline_s=deadline
            ):
                if late is None:
                    results[i] = self._result(ref, verb)
                else:
                    assert limit is not None, "a task is late only against a deadline, set only with a limit"
                    results[i] = self._timed_out(ref, args[i][0], limit, late)
        return results

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
        return CandidateMetric(
            key, None, None, seconds, timeout_message(self._fn_name, limit, "on a Ray worker, which was replaced")
        )

    def map_metric(
        self, plans: Sequence[QuantPlan | None], indices: list[int] | None = None, stop: EarlyStop | None = None
    ) -> list[CandidateMetric]:
        """Metric of each plan (None: FP32) on all items or ``indices``; with ``stop``,
        candidates are validated in chunks and stopped early (:mod:`rayq.core.early`)."""
        out = self._map(
            "metric", [(None if p is None else p.to_json(), indices, stop) for p in plans], limit=self.timeout.limit()
        )
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
                        plan = plans[i]
                        wave[i] = self._submit("latency", (None if plan is None else plan.to_json(),), node)
                for i, ref in wave.items():
                    results[i] = self._result(ref, "latency")
        return results

    def compare_latency(self, plans: Sequence[QuantPlan | None]) -> list[Latency]:
        """Latencies of ``plans`` measured against each other (interleaved) on the first
        node (the driver's, when it can run a worker)."""
        with GATE.measuring():
            ref = self._submit("compare_latency", ([None if p is None else p.to_json() for p in plans],), self.nodes[0])
            return self._result(ref, "latency runoff")

    def describe(self) -> list[dict]:
        """For W tasks: node id, assigned GPU ids, validation device and threads, and what
        the backend says of its runtime there (ONNX Runtime: its execution providers)."""
        refs = [self._submit("describe", ()) for _ in range(self.workers)]
        return [self._result(r, "describe") for r in refs]
