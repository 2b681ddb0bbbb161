"""The ask/tell search driver: generations of trials, constraints, storage, resume.

Each *generation* asks a fixed number of trials (independent of how many
workers evaluate them), evaluates their plans with ONE ``evaluator.evaluate``
call, and tells them in trial-number order, so a seeded search gives the same
answer with any worker count. Every trial is told (persisted) before the next
generation is asked. Trial user attributes hold the plan (JSON), metric, drop,
latency, spread, speed-up interval, cost, status and error; a plan already
recorded in the study is not evaluated again, its result is reused.

The sampler sees a deterministic objective, never measured latency: the plan's
*cost* (by default the share of quantizable layers kept in FP32; the search passes
the share of compute, :mod:`rayq.core.cost`), subject to the constraint
``drop - max_drop <= 0``. Timing noise therefore cannot change which plans are
tried. Constraints are written by Optuna's ``constraints_func`` (trial system
attribute ``constraints``, which optuna-dashboard shows). The outcome's ``best`` is
:func:`rayq.tuning.selection.provisional`; the latency decision among the feasible
finalists is :func:`rayq.tuning.selection.choose`.

Storage: None keeps the study in memory (for this driver's lifetime); a path
ending ``.log``/``.journal`` is an Optuna journal file; a URL with ``://`` is
an RDB. Re-running with the same storage and study name resumes: finished
trials count toward ``n_trials`` and are not re-evaluated; trials a stopped
driver left running are marked failed ("interrupted") and their plans asked
again. Only one driver may run a given study at a time.

Example:
    >>> from rayq.tuning.evaluator import EvalResult
    >>> class Fake:
    ...     def evaluate(self, plans):
    ...         return [EvalResult(p.key(), 0.9, 0.01 * (2 - len(p.fallback)), 5.0 + len(p.fallback), 0.1, "ok")
    ...                 for p in plans]
    >>> space = SearchSpace(presets=(), estimators=(), bias_corrections=(), ranking=("a", "b"))
    >>> out = SearchDriver(space, QuantPlan(), Fake(), max_drop=0.01, n_trials=4).run()
    >>> out.status, out.best.plan.fallback
    ('met', ('a',))
"""

from __future__ import annotations

import logging
import math
import os
import time
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from rayq.core.accuracy import within_budget
from rayq.core.cost import fp32_fraction
from rayq.core.plan import QuantPlan
from rayq.errors import ConfigError, SearchError
from rayq.tuning.evaluator import DEFAULT_STUDY_NAME, DriverOutcome, EvalResult, Evaluator, TrialRecord, pareto_front
from rayq.tuning.selection import provisional
from rayq.tuning.space import SearchSpace

logger = logging.getLogger(__name__)

SAMPLERS = ("tpe", "nsga2")
_RESULT_KEYS = ("status", "metric", "drop", "latency_ms", "latency_spread_ms", "error", "eval_seconds", "constraint",
                "fp32_latency_ms", "speedup", "speedup_low", "speedup_high")
_DONE = (TrialState.COMPLETE, TrialState.FAIL)
_INTERRUPTED = "interrupted: the driver stopped before the trial finished"


_RDB_OPEN = threading.Lock()


def _open_rdb(url: str, attempts: int = 3) -> optuna.storages.BaseStorage:
    """An RDB storage; searches that open a new database at once race to create its tables
    (the loser sees "table ... already exists"), so creation is serialised in this process
    and retried across processes."""
    for attempt in range(attempts):
        try:
            with _RDB_OPEN:
                return optuna.storages.RDBStorage(url)
        except Exception as exc:  # sqlalchemy/driver errors: translate at the boundary
            if attempt + 1 < attempts and "already exists" in str(exc):
                time.sleep(0.2 * (attempt + 1))
                continue
            scheme = url.split("://", 1)[0]
            raise SearchError(f"cannot open the {scheme}:// RDB storage: {exc}") from exc
    raise SearchError(f"cannot open the RDB storage {url!r}")


def open_storage(storage: str | os.PathLike | optuna.storages.BaseStorage | None) -> optuna.storages.BaseStorage:
    """Turn the ``storage`` argument into an Optuna storage.

    Args:
        storage: None (in memory), a ``.log``/``.journal`` path (journal file),
            a URL with ``://`` (RDB), or an Optuna storage object.

    Returns:
        The storage.

    Raises:
        ConfigError: A string that is neither a journal path nor a URL.

    Example:
        >>> type(open_storage(None)).__name__
        'InMemoryStorage'
    """
    if storage is None:
        return optuna.storages.InMemoryStorage()
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    text = os.fspath(storage)
    if text.endswith((".log", ".journal")):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(text))
    if "://" in text:
        return _open_rdb(text)
    raise ConfigError(f"storage={text!r} must be a path ending .log/.journal or a database URL (with '://')")


def _constraints(trial: FrozenTrial) -> list[float]:
    """Optuna's ``constraints_func``: ``drop - max_drop`` (<= 0 is feasible)."""
    return [float(trial.user_attrs.get("constraint") or 0.0)]


class SearchDriver:
    """Minimise a deterministic cost subject to ``drop <= max_drop`` with Optuna.

    Args:
        space: What the study varies.
        base_plan: Supplies every plan field the space does not vary.
        evaluator: Builds, validates and times plans (see :class:`Evaluator`).
        max_drop: Accuracy budget (same drop type as the evaluator reports).
        n_trials: Finished trials the study should hold (resumed ones count;
            interrupted ones do not).
        timeout: Seconds after which no new generation is started.
        generation_size: Trials asked and evaluated together; keep it fixed
            across worker counts for reproducible results.
        seed: Sampler seed; each generation's sampler is seeded from
            ``(seed, trials so far)``, so a resumed study continues deterministically.
        storage: None, a journal path, an RDB URL or an Optuna storage.
        study_name: Optuna study name (default ``"rayq-search"``).
        sampler: ``"tpe"`` (constrained TPE) or ``"nsga2"`` (NSGA-II with constraints).
        on_trial: Called with each :class:`TrialRecord` after its generation is told.
        cost: ``plan -> float``, the objective the sampler minimises (default: the
            share of ``space.ranking`` kept in FP32).

    Example:
        >>> SearchDriver(SearchSpace(), QuantPlan(), None, max_drop=0.01, n_trials=1).study_name
        'rayq-search'
    """

    def __init__(
        self,
        space: SearchSpace,
        base_plan: QuantPlan,
        evaluator: Evaluator,
        *,
        max_drop: float,
        n_trials: int,
        timeout: float | None = None,
        generation_size: int = 4,
        seed: int = 0,
        storage: str | os.PathLike | optuna.storages.BaseStorage | None = None,
        study_name: str | None = None,
        sampler: str = "tpe",
        on_trial: Callable[[TrialRecord], None] | None = None,
        cost: Callable[[QuantPlan], float] | None = None,
    ) -> None:
        within_budget(0.0, max_drop)  # validates max_drop
        if n_trials < 0 or generation_size < 1:
            raise ConfigError(f"n_trials={n_trials} must be >= 0 and generation_size={generation_size} >= 1")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"timeout={timeout} must be > 0 seconds or None")
        if sampler not in SAMPLERS:
            raise ConfigError(f"sampler={sampler!r} is not valid; choose one of {list(SAMPLERS)}")
        self.space, self.base_plan, self.evaluator = space, base_plan, evaluator
        self.max_drop, self.n_trials, self.timeout = float(max_drop), int(n_trials), timeout
        self.generation_size, self.seed, self.sampler = int(generation_size), int(seed), sampler
        self.study_name = study_name or DEFAULT_STUDY_NAME
        self.on_trial = on_trial
        self.cost = cost or (lambda plan: fp32_fraction(plan.fallback, dict.fromkeys(space.ranking, 1.0)))
        self._storage = open_storage(storage)

    def run(self, seeds: Sequence[QuantPlan] = ()) -> DriverOutcome:
        """Run (or resume) the study until it holds ``n_trials`` finished trials.

        Args:
            seeds: Plans enqueued first (in order) unless already in the study;
                see :meth:`SearchSpace.to_params` for fallback sets that are not
                a top-k prefix.

        Returns:
            The outcome over every finished trial of the study.

        Raises:
            ConfigError: The study was started with another budget, space or base plan.
            SearchError: The evaluator broke its contract or the storage failed.

        Example:
            See the module docstring.
        """
        study = self._open_study()
        self._recover(study)
        self._enqueue(study, [(self.space.to_params(p), "seed") for p in seeds])
        cache = self._results(study)
        started = time.monotonic()
        while (remaining := self.n_trials - self._n_done(study)) > 0:
            if self.timeout is not None and time.monotonic() - started >= self.timeout:
                logger.info("timeout of %.1f s reached with %d trial(s) to go", self.timeout, remaining)
                break
            study.sampler = self._make_sampler(len(study.get_trials(deepcopy=False)))
            self._generation(study, min(self.generation_size, remaining), cache)
        return self._outcome(study)

    # -- study setup -----------------------------------------------------------------

    def _open_study(self) -> optuna.Study:
        try:
            study = optuna.create_study(storage=self._storage, sampler=self._make_sampler(0),
                                        study_name=self.study_name, direction="minimize", load_if_exists=True)
        except Exception as exc:  # optuna/storage errors: translate at the boundary
            raise SearchError(f"cannot open study {self.study_name!r}: {exc}") from exc
        expected = {"max_drop": self.max_drop, "space": self.space.choices_fingerprint(), "base_plan": self.base_plan.key()}
        recorded = study.user_attrs
        for name, value in expected.items():
            if name not in recorded:
                study.set_user_attr(name, value)
            elif recorded[name] != value:
                raise ConfigError(f"study {self.study_name!r} was run with {name}={recorded[name]!r}, "
                                  f"not {value!r}; use another study name to start afresh")
        return study

    def _make_sampler(self, n_trials_so_far: int) -> optuna.samplers.BaseSampler:
        """A sampler seeded from ``(seed, trials so far)``. Constraints go through
        ``constraints_func`` (deprecated in Optuna 5 in favour of ``set_constraint``):
        it writes the ``constraints`` list that optuna-dashboard (0.21) displays, which
        ``set_constraint``'s per-key attributes are not."""
        seed = int(np.random.SeedSequence([self.seed, n_trials_so_far]).generate_state(1)[0])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*constraints_func.*", category=FutureWarning)
            if self.sampler == "nsga2":
                size = max(8, 2 * self.generation_size)
                return optuna.samplers.NSGAIISampler(population_size=size, seed=seed, constraints_func=_constraints)
            return optuna.samplers.TPESampler(seed=seed, constraints_func=_constraints)

    def _recover(self, study: optuna.Study) -> None:
        """Fail trials a stopped driver left running; re-enqueue interrupted plans."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            logger.warning("trial %d of study %r was left running; recording it as interrupted",
                           t.number, self.study_name)
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        redo = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            plan = self._plan_of(t)
            if t.user_attrs.get("status") != "failed" and plan is not None:
                redo.append((self.space.to_params(plan), t.user_attrs.get("source", "sampler")))
        self._enqueue(study, redo)

    def _enqueue(self, study: optuna.Study, items: Sequence[tuple[dict, str]]) -> None:
        known = set(self._results(study))
        known |= {t.user_attrs.get("enqueued_key") for t in study.get_trials(states=(TrialState.WAITING,))}
        for params, source in items:
            key = self.space.from_params(params, self.base_plan).key()
            if key in known:
                logger.debug("plan %s is already in study %r; not enqueued", key, self.study_name)
                continue
            study.enqueue_trial(params, user_attrs={"source": source, "enqueued_key": key})
            known.add(key)

    # -- one generation --------------------------------------------------------------

    def _generation(self, study: optuna.Study, size: int, cache: dict[str, dict]) -> None:
        trials: list[optuna.Trial] = []
        try:
            for _ in range(size):
                trials.append(study.ask())
            plans = [self._suggest(t) for t in trials]
            fresh = list({p.key(): p for p in plans if p.key() not in cache}.values())
            results = self._evaluate(fresh)
        except BaseException as exc:
            for t in trials:
                t.set_user_attr("status", "interrupted")
                t.set_user_attr("error", f"interrupted by {type(exc).__name__}: {exc}")
                study.tell(t, state=TrialState.FAIL)
            raise
        records = []
        for trial, plan in zip(trials, plans):
            key = plan.key()
            reused = key not in results
            attrs = cache[key] if reused else results.pop(key)
            cache[key] = attrs
            records.append(self._tell(study, trial, attrs, reused))
        for record in records:
            logger.info("trial %d (%s): %s, latency %s, drop %s", record.number, record.source,
                        record.status, _g(record.latency_ms, " ms"), _g(record.drop))
            if self.on_trial is not None:
                self.on_trial(record)

    def _suggest(self, trial: optuna.Trial) -> QuantPlan:
        plan = self.space.suggest(trial, self.base_plan)
        trial.set_user_attr("plan", plan.to_json())
        trial.set_user_attr("plan_key", plan.key())
        if "source" not in trial.user_attrs:
            trial.set_user_attr("source", "sampler")
        return plan

    def _evaluate(self, plans: list[QuantPlan]) -> dict[str, dict]:
        if not plans:
            return {}
        results = list(self.evaluator.evaluate(plans))
        if len(results) != len(plans):
            raise SearchError(f"the evaluator returned {len(results)} result(s) for {len(plans)} plan(s)")
        out = {}
        for plan, result in zip(plans, results):
            if result.plan_key != plan.key():
                raise SearchError(f"the evaluator returned a result for plan {result.plan_key} "
                                  f"in the place of plan {plan.key()}; results must keep the plans' order")
            out[plan.key()] = self._result_attrs(result)
        return out

    def _result_attrs(self, r: EvalResult) -> dict[str, Any]:
        def finite(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        status, error = r.status, r.error
        if status == "ok":
            bad = [n for n, v in (("metric", r.metric), ("drop", r.drop), ("latency_ms", r.latency_ms))
                   if finite(v) is None]
            if bad:
                status, error = "failed", f"the evaluation returned no finite {', '.join(bad)}"
        elif status != "failed":
            status, error = "failed", f"unknown evaluation status {r.status!r}: {r.error}"
        attrs = {"status": status, "metric": finite(r.metric), "drop": finite(r.drop),
                 "latency_ms": finite(r.latency_ms), "latency_spread_ms": finite(r.latency_spread_ms),
                 "error": error, "eval_seconds": float(r.eval_seconds), "constraint": None,
                 "fp32_latency_ms": finite(r.fp32_latency_ms)}
        est, low, high = r.speedup if r.speedup is not None else (None, None, None)
        attrs.update(speedup=finite(est), speedup_low=finite(low), speedup_high=finite(high))
        if status == "ok":
            drop = attrs["drop"]
            attrs["constraint"] = 0.0 if within_budget(drop, self.max_drop) else drop - self.max_drop
        return attrs

    def _tell(self, study: optuna.Study, trial: optuna.Trial, attrs: dict, reused: bool) -> TrialRecord:
        for name in _RESULT_KEYS:
            trial.set_user_attr(name, attrs.get(name))  # studies from older versions lack newer keys
        trial.set_user_attr("reused", reused)
        cost = float(self.cost(self._plan_of_trial(trial)))
        trial.set_user_attr("cost", cost)
        if attrs["status"] == "ok":
            frozen = study.tell(trial, cost)  # the sampler's constraints_func records the constraint
        else:
            frozen = study.tell(trial, state=TrialState.FAIL)
        return self._record(frozen)

    # -- reading the study back ------------------------------------------------------

    @staticmethod
    def _plan_of_trial(trial: optuna.Trial) -> QuantPlan:
        return QuantPlan.from_json(trial.user_attrs["plan"])

    def _plan_of(self, t: FrozenTrial) -> QuantPlan | None:
        if "plan" in t.user_attrs:
            return QuantPlan.from_json(t.user_attrs["plan"])
        return self.space.from_params(t.params, self.base_plan) if t.params else None

    def _results(self, study: optuna.Study) -> dict[str, dict]:
        """Recorded results (not interrupted ones) by plan key, first trial wins."""
        out: dict[str, dict] = {}
        for t in study.get_trials(deepcopy=False, states=_DONE):
            if t.user_attrs.get("status") in ("ok", "failed") and "plan_key" in t.user_attrs:
                out.setdefault(t.user_attrs["plan_key"], {k: t.user_attrs.get(k) for k in _RESULT_KEYS})
        return out

    def _n_done(self, study: optuna.Study) -> int:
        return sum(t.user_attrs.get("status") in ("ok", "failed")
                   for t in study.get_trials(deepcopy=False, states=_DONE))

    def _record(self, t: FrozenTrial) -> TrialRecord | None:
        plan = self._plan_of(t)
        if plan is None:
            return None
        a = t.user_attrs
        status = a.get("status") if a.get("status") in ("ok", "failed") else "interrupted"
        error = a.get("error") if status != "interrupted" else a.get("error") or _INTERRUPTED
        feasible = status == "ok" and within_budget(a.get("drop"), self.max_drop)
        return TrialRecord(t.number, plan, a.get("metric"), a.get("drop"), a.get("latency_ms"),
                           a.get("latency_spread_ms"), status, error, feasible, a.get("source", "sampler"),
                           bool(a.get("reused", False)), float(a.get("eval_seconds") or 0.0),
                           fp32_latency_ms=a.get("fp32_latency_ms"), cost=a.get("cost"),
                           speedup_est=a.get("speedup"), speedup_low=a.get("speedup_low"),
                           speedup_high=a.get("speedup_high"))

    def _outcome(self, study: optuna.Study) -> DriverOutcome:
        records = [r for t in study.get_trials(deepcopy=False, states=_DONE) if (r := self._record(t))]
        best, status = provisional(records, ops=self.space.ranking, base=self.base_plan)
        if status == "met":
            logger.info("cheapest feasible: trial %d, cost %.4f, drop %.5f", best.number, best.cost, best.drop)
        else:
            logger.warning("no INT8 trial of %d met max_drop=%g; the smallest drop is %s",
                           len(records), self.max_drop, "n/a" if best is None else _g(best.drop))
        return DriverOutcome(best, status, records, self.study_name, self.max_drop, len(self.space.ranking))


__all__ = ["SAMPLERS", "TrialRecord", "DriverOutcome", "SearchDriver", "open_storage", "pareto_front"]


def _g(value: float | None, unit: str = "") -> str:
    """A number for a log line: 4 significant digits, ``n/a`` for None."""
    return "n/a" if value is None else f"{value:.4g}{unit}"
