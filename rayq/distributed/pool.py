"""One Ray task pool: what calibration and evaluation both submit through.

A :class:`TaskPool` runs one plain function as Ray tasks on Ray's pooled worker
processes (the function is wrapped with ``ray.remote`` when the pool starts, as Ray
Data does with its actor classes). It holds, in one place:

- the typed :class:`Call` every task of one calibration or search carries: its token,
  backend, model :class:`~rayq.distributed.shipping.Shipment`, the object ref of its
  other state, and the threads a task may use;
- the nodes that can run a worker with the requested resources (waiting up to
  ``PLACEMENT_TIMEOUT_S`` for one), and pinning: the first task for each of them is
  soft-pinned there so the work spans the cluster, latency tasks are hard-pinned;
- retries: Ray re-runs a task whose worker process or node died (``MAX_RETRIES``);
- the bounded submit loop (:func:`TaskPool.imap`): at most W tasks in flight, a free
  slot takes the next job, with an optional per-task deadline;
- error translation (:func:`translate`): Ray's exceptions become rayq errors.

Task bodies return ``(value, node id)``; :meth:`TaskPool.result` unpacks them and
records the node.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from rayq.distributed import resident, shipping
from rayq.distributed.cluster import MISSING_MODULE_HINT, worker_nodes
from rayq.errors import ClusterError, RayqError

log = logging.getLogger(__name__)

#: How long to wait for a node that can run a worker, or for the first of the tasks in
#: flight to finish before warning that the cluster is busy.
PLACEMENT_TIMEOUT_S = 180
#: Re-runs of a task whose worker process or node died.
MAX_RETRIES = 2

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """What every task of one call (a calibration, a search) carries.

    Refs nested in it (the model's, ``state``) are not fetched by Ray when a task
    starts: a worker fetches them once, when it loads the call's resident state.
    ``ended``: tokens of the driver's recently ended calls, whose state the worker drops.
    """

    token: str
    backend: str
    model: shipping.Shipment
    state: Any
    threads: int = 1
    ended: tuple[str, ...] = ()

    @classmethod
    def start(cls, backend_name: str, model: Any, state: Any, *, threads: int = 1) -> Call:
        """A new call: ``model`` (a backend model, or its bytes) shipped to workers
        (:func:`shipping.ship`); ``state``: the object ref of the rest."""
        token = uuid.uuid4().hex
        return cls(token, backend_name, shipping.ship(backend_name, model, token), state, max(1, int(threads)))

    def for_task(self, threads: int | None = None) -> Call:
        """This call as a task sends it: the driver's ended calls, and ``threads``."""
        return dataclasses.replace(self, ended=resident.ended(), threads=threads or self.threads)

    def end(self) -> None:
        """Driver side: no task of this call will run again; workers drop its state."""
        resident.end(self.token)
        shipping.discard(self.model)


def resident_state(call: Call, load: Callable[[Call], T], idle_s: float) -> T:
    """Worker side: this process's state for ``call`` (``load(call)`` on first use), after
    dropping the state (and the node's model copy) of ended calls."""
    for token in call.ended:
        shipping.drop_node_copy(token)
    resident.release(call.ended)
    return resident.resident(call.token, lambda: load(call), idle_s=idle_s)


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def translate(exc: BaseException, what: str) -> RayqError:
    """The rayq error for a failed Ray task or actor call.

    A rayq error raised on the worker keeps its type and message; a worker that could
    not import the user's module gets the fix; a process or node that died more than
    ``MAX_RETRIES`` times, and anything else, is a :class:`ClusterError` naming ``what``.
    """
    cause = getattr(exc, "cause", None)
    if isinstance(cause, RayqError):
        return cause
    missing = re.search(r"No module named '([\w.]+)'", str(exc))
    if missing:  # e.g. a RaySystemError: the worker could not unpickle the validation function
        return ClusterError(
            f"{what} failed: a Ray worker cannot import module {missing.group(1)!r}. {MISSING_MODULE_HINT}"
        )
    if cause is None and _is_death(exc):  # WorkerCrashedError, NodeDiedError, RayActorError, ObjectLostError...
        return ClusterError(f"{what} failed: its worker died {MAX_RETRIES + 1} times: {exc}")
    return ClusterError(f"{what} failed: {exc}")


def _is_death(exc: BaseException) -> bool:
    try:
        import ray.exceptions as rex
    except ImportError:
        return False
    return isinstance(exc, rex.RayError) and not isinstance(exc, rex.RayTaskError)


class TaskPool:
    """W tasks of one function at a time on the nodes that can run them.

    Args:
        fn: the task body (a plain function, or one already wrapped with ``ray.remote``:
            tests inject failures that way). It returns ``(value, node id)``.
        workers: W, the most tasks in flight.
        resources: Ray resources per task (``num_cpus``, ``num_gpus``, ``memory``, ``resources``).
        what: the worker's role in messages, e.g. ``"a calibration worker"``.

    Raises:
        ClusterError: no node can run a worker with ``resources`` within ``PLACEMENT_TIMEOUT_S``.
    """

    def __init__(self, fn: Callable, *, workers: int, resources: dict, what: str) -> None:
        import ray

        self.what = what
        self.workers = max(1, workers)
        self.resources = dict(resources)
        self.nodes = worker_nodes(self.resources, what, PLACEMENT_TIMEOUT_S)[: self.workers]
        self.remote = fn if hasattr(fn, "options") else ray.remote(fn)
        self.node_ids: list[str] = []  # nodes that ran this pool's tasks, in first-seen order
        self._unvisited = list(self.nodes)

    def spread(self) -> None:
        """Pin the next task for each node there again (a new pass over the work)."""
        self._unvisited = list(self.nodes)

    def submit(self, *args: Any, node: str | None = None, **options: Any):
        """One task of ``fn(*args)``; ``node``: on that node only; else, while some node has
        had no task yet, soft-pinned to it. ``options`` override the task's options."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opts = {**self.resources, "max_retries": MAX_RETRIES, **options}
        if node is not None:
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        elif self._unvisited:
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(self._unvisited.pop(0), soft=True)
        return self.remote.options(**opts).remote(*args)

    def outcome(self, ref, what: str | None = None) -> tuple[Any, str]:
        """The value of a finished task and its node (recorded in ``node_ids``); Ray's
        errors translated (:func:`translate`, naming ``what``)."""
        import ray

        try:
            value, node = ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise translate(exc, what or self.what) from exc
        if node not in self.node_ids:
            self.node_ids.append(node)
        return value, node

    def result(self, ref, what: str | None = None) -> Any:
        """The value of a finished task (see :meth:`outcome`)."""
        return self.outcome(ref, what)[0]

    def imap(
        self, jobs: Iterable[T], submit: Callable[[T], Any], *, deadline_s: float | None = None
    ) -> Iterator[tuple[T, Any, float | None]]:
        """Submit ``jobs`` (read lazily) at most W at a time; yield ``(job, ref, late)`` as
        each task finishes, where ``late`` is None, or the seconds a task has run when it
        passed ``deadline_s`` (the caller decides what to do with it)."""
        it = iter(jobs)
        pending: dict = {}  # ref -> (job, submitted at)
        while True:
            while len(pending) < self.workers:
                try:
                    job = next(it)
                except StopIteration:
                    break
                pending[submit(job)] = (job, time.monotonic())
            if not pending:
                return
            ref, late = self._next(pending, deadline_s)
            job, _ = pending.pop(ref)
            yield job, ref, late

    def _next(self, pending: dict, deadline_s: float | None) -> tuple[Any, float | None]:
        """The first task of ``pending`` to finish, or to pass its deadline. While none
        does for ``PLACEMENT_TIMEOUT_S`` (a busy cluster), warns with the free resources."""
        import ray

        while True:
            wait = PLACEMENT_TIMEOUT_S
            if deadline_s is not None:
                now = time.monotonic()
                ages = {r: now - t for r, (_, t) in pending.items()}
                late = [r for r, age in ages.items() if age >= deadline_s]
                if late:
                    return late[0], ages[late[0]]
                wait = max(0.05, min(wait, min(deadline_s - a for a in ages.values())))
            done, _ = ray.wait(list(pending), num_returns=1, timeout=wait)
            if done:
                return done[0], None
            if wait >= PLACEMENT_TIMEOUT_S:
                log.warning(
                    "no task of %s finished in %ds; %d waiting; free resources: %s",
                    self.what,
                    PLACEMENT_TIMEOUT_S,
                    len(pending),
                    ray.available_resources(),
                )
