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
an RDB. Re-running with the same storage and study name resumes exactly:

- ``n_trials`` is the total number of trials of the study, enqueued seeds
  included; finished trials count toward it and are not re-evaluated, and seeds
  are enqueued only while there is room, so the study never holds more.
- Trials a stopped driver left in flight (``RUNNING``: killed, Ctrl-C, an
  evaluator error) keep their numbers: the next driver takes them over first,
  with the parameters they already hold, evaluates each once and tells it. No
  trial is failed and asked again, so the study has one trial per plan tried.
- Every draw of the sampler is seeded from (seed, trial number, parameter), see
  :mod:`rayq.tuning.sampling`, so a resumed study samples what an uninterrupted
  one would have sampled, given the same finished trials.
- :meth:`SearchDriver.run` answers with the study's first ``n_trials`` finished
  trials (by number), so a driver re-run on a study that has since grown sees
  what it saw the first time.

Only one driver may run a given study at a time.

Example:
    >>> from rayq.tuning.records import EvalResult
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
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from rayq.core.accuracy import within_budget
from rayq.core.cost import fp32_fraction
from rayq.core.plan import QuantPlan
from rayq.errors import ConfigError, SearchError
from rayq.tuning.records import DEFAULT_STUDY_NAME, DriverOutcome, EvalResult, Evaluator, TrialRecord, pareto_front
from rayq.tuning.sampling import SAMPLERS, TrialSeededSampler
from rayq.tuning.selection import provisional
from rayq.tuning.space import SearchSpace
from rayq.tuning.storage import open_storage

logger = logging.getLogger(__name__)

_RESULT_KEYS = (
    "status",
    "metric",
    "drop",
    "latency_ms",
    "latency_spread_ms",
    "error",
    "eval_seconds",
    "constraint",
    "fp32_latency_ms",
    "speedup",
    "speedup_low",
    "speedup_high",
    "early_stopped",
    "validation_items_saved",
)
_DONE = (TrialState.COMPLETE, TrialState.FAIL)
_PENDING = (TrialState.RUNNING, TrialState.WAITING)
#: Statuses of the trials that count: evaluated (or reused) plans. Older rayq versions
#: failed interrupted trials ("interrupted") and asked their plans again; a search ended
#: with trials it could not start fails them as "discarded". Neither counts nor is reported.
_COUNTED = ("ok", "failed")


class SearchDriver:
    """Minimise a deterministic cost subject to ``drop <= max_drop`` with Optuna.

    Args:
        space: What the study varies.
        base_plan: Supplies every plan field the space does not vary.
        evaluator: Builds, validates and times plans (see :class:`Evaluator`).
        max_drop: Accuracy budget (same drop type as the evaluator reports).
        n_trials: Total trials of the study: seeds, resumed and reused trials
            included. Seeds beyond it are not enqueued.
        timeout: Seconds after which no new generation is started.
        generation_size: Trials asked and evaluated together; keep it fixed
            across worker counts for reproducible results.
        seed: Sampler seed; every draw is seeded from ``(seed, trial number,
            parameter)``, so a resumed study continues deterministically.
        storage: None, a journal path, an RDB URL or an Optuna storage.
        study_name: Optuna study name (default ``"rayq-search"``).
        sampler: ``"tpe"`` (constrained TPE) or ``"nsga2"`` (NSGA-II with constraints).
        on_trial: Called with each :class:`TrialRecord` after its generation is told.
        cost: ``plan -> float``, the objective the sampler minimises (default: the
            share of ``space.ranking`` kept in FP32).
        screen: ``(plans, earlier) -> [EvalResult | None, ...]``: decides, before a
            generation is evaluated, which of its new plans need no evaluation (a
            result in their place, e.g. ``early_stopped`` because they cannot beat
            the incumbents); ``earlier`` are the study's counted trials numbered
            before the generation, so the decision is the same on resume.

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
        screen: Callable[[Sequence[QuantPlan], Sequence[TrialRecord]], Sequence[EvalResult | None]] | None = None,
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
        self.screen = screen
        self._storage = open_storage(storage)

    def run(self, seeds: Sequence[QuantPlan] = ()) -> DriverOutcome:
        """Run (or resume) the study until it holds ``n_trials`` finished trials.

        Args:
            seeds: Plans enqueued first (in order) unless already in the study
                and while the study has room for them; see
                :meth:`SearchSpace.to_params` for fallback sets that are not a
                top-k prefix.

        Returns:
            The outcome over the study's first ``n_trials`` finished trials.

        Raises:
            ConfigError: The study was started with another budget, space or base plan.
            SearchError: The evaluator broke its contract or the storage failed.

        Example:
            See the module docstring.
        """
        study = self._open_study()
        orphans = self._orphans(study)
        self._enqueue(study, [(self.space.to_params(p), "seed") for p in seeds])
        cache = self._results(study)
        started = time.monotonic()
        while (remaining := self.n_trials - self._n_done(study)) > 0:
            if self.timeout is not None and time.monotonic() - started >= self.timeout:
                logger.info("timeout of %.1f s reached with %d trial(s) to go", self.timeout, remaining)
                break
            size, tag = min(self.generation_size, remaining), None
            if orphans:
                size, tag = self._rest_of_generation(study, orphans, size)
            self._generation(study, size, cache, orphans, tag)
        return self._outcome(study)

    def discard_pending(self) -> list[int]:
        """Fail the study's trials that are waiting or left running (status ``"discarded"``).

        A search calls it once it is over, so that the study holds no stray
        trial: seeds enqueued by a run with a larger ``n_trials``, or trials in
        flight when such a run was killed. They do not count and are not reported.

        Returns:
            The numbers of the discarded trials.

        Example:
            >>> SearchDriver(SearchSpace(), QuantPlan(), None, max_drop=0.01, n_trials=1).discard_pending()
            []
        """
        study = self._open_study()
        pending = sorted(study.get_trials(deepcopy=False, states=_PENDING), key=lambda t: t.number)
        trials = [optuna.Trial(study, t._trial_id) for t in pending if t.state == TrialState.RUNNING]
        trials += [study.ask() for t in pending if t.state == TrialState.WAITING]  # tell() needs them running
        for trial in trials:
            trial.set_user_attr("status", "discarded")
            study.tell(trial, state=TrialState.FAIL)
        numbers = sorted(t.number for t in trials)
        if numbers:
            logger.warning(
                "discarded trial(s) %s of study %r: its n_trials=%d is reached", numbers, self.study_name, self.n_trials
            )
        return numbers

    # -- study setup -----------------------------------------------------------------

    def _open_study(self) -> optuna.Study:
        try:
            study = optuna.create_study(
                storage=self._storage,
                study_name=self.study_name,
                direction="minimize",
                sampler=TrialSeededSampler(self.sampler, self.seed, self.generation_size),
                load_if_exists=True,
            )
        except Exception as exc:  # optuna/storage errors: translate at the boundary
            raise SearchError(f"cannot open study {self.study_name!r}: {exc}") from exc
        expected = {
            "max_drop": self.max_drop,
            "space": self.space.choices_fingerprint(),
            "base_plan": self.base_plan.key(),
        }
        recorded = study.user_attrs
        for name, value in expected.items():
            if name not in recorded:
                study.set_user_attr(name, value)
            elif recorded[name] != value:
                raise ConfigError(
                    f"study {self.study_name!r} was run with {name}={recorded[name]!r}, "
                    f"not {value!r}; use another study name to start afresh"
                )
        return study

    def _orphans(self, study: optuna.Study) -> deque[FrozenTrial]:
        """Trials a stopped driver left running, oldest first: the next generation takes them over."""
        running = sorted(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)), key=lambda t: t.number)
        if running:
            logger.warning(
                "study %r has trial(s) %s left in flight by a stopped driver; evaluating them first",
                self.study_name,
                [t.number for t in running],
            )
        return deque(running)

    def _enqueue(self, study: optuna.Study, items: Sequence[tuple[dict, str]]) -> None:
        """Enqueue the plans not yet in the study, while the study has room for them."""
        trials = study.get_trials(deepcopy=False)
        known: set[str | None] = set(self._results(study))
        known |= {t.user_attrs.get(k) for t in trials if t.state in _PENDING for k in ("enqueued_key", "plan_key")}
        room = self.n_trials - self._n_done(study) - sum(t.state in _PENDING for t in trials)
        for params, source in items:
            key = self.space.from_params(params, self.base_plan).key()
            if key in known:
                logger.debug("plan %s is already in study %r; not enqueued", key, self.study_name)
                continue
            if room <= 0:
                logger.info("study %r is full (n_trials=%d): seed %s not enqueued", self.study_name, self.n_trials, key)
                continue
            study.enqueue_trial(params, user_attrs={"source": source, "enqueued_key": key})
            known.add(key)
            room -= 1

    # -- one generation --------------------------------------------------------------

    def _rest_of_generation(
        self, study: optuna.Study, orphans: deque[FrozenTrial], size: int
    ) -> tuple[int, list[int] | None]:
        """Size and tag of what is left of the generation a stopped driver had in flight.

        Every trial carries its generation's tag ``[first trial number, size]``. A
        driver killed while telling a generation left its first trials told and the
        rest running: the rest alone is the next generation, so that later
        generations (and what the sampler knows when it draws them) are those of an
        uninterrupted run. Without a tag (killed before writing the first one) no
        trial of the generation was told: it is asked whole.
        """
        tag = next((t.user_attrs["generation"] for t in orphans if "generation" in t.user_attrs), None)
        if tag is None:
            return size, None
        told = sum(
            t.user_attrs.get("generation") == tag and t.user_attrs.get("status") in _COUNTED
            for t in study.get_trials(deepcopy=False, states=_DONE)
        )
        return max(1, min(int(tag[1]) - told, size)), list(tag)

    def _ask(self, study: optuna.Study, orphans: deque[FrozenTrial]) -> optuna.Trial:
        if orphans:
            # Take the trial over with the parameters it holds; the missing ones are drawn
            # as the stopped driver drew them (seeded per trial and parameter).
            return optuna.Trial(study, orphans.popleft()._trial_id)
        return study.ask()

    def _generation(
        self,
        study: optuna.Study,
        size: int,
        cache: dict[str, dict],
        orphans: deque[FrozenTrial],
        tag: list[int] | None = None,
    ) -> None:
        trials: list[optuna.Trial] = []
        try:
            plans = []
            for _ in range(size):
                trials.append(self._ask(study, orphans))
                tag = tag or [trials[0].number, size]
                if trials[-1].user_attrs.get("generation") != tag:
                    trials[-1].set_user_attr("generation", tag)
                plans.append(self._suggest(trials[-1]))
            assert tag is not None, "a generation has at least one trial, which sets its tag"
            first = tag[0]
            fresh = list({p.key(): p for p in plans if p.key() not in cache}.values())
            results = self._evaluate(fresh, lambda: self._before(study, first))
        except BaseException:
            # The trials stay RUNNING: re-running the search takes them over and tells them.
            logger.warning(
                "search stopped with trial(s) %s of study %r in flight; re-run it to finish them",
                [t.number for t in trials],
                self.study_name,
            )
            raise
        records = []
        for trial, plan in zip(trials, plans):
            key = plan.key()
            reused = key not in results
            attrs = cache[key] if reused else results.pop(key)
            cache[key] = attrs
            records.append(self._tell(study, trial, attrs, reused))
        for record in records:
            logger.info(
                "trial %d (%s): %s, latency %s, drop %s",
                record.number,
                record.source,
                record.status,
                _g(record.latency_ms, " ms"),
                _g(record.drop),
            )
            if self.on_trial is not None:
                self.on_trial(record)

    def _suggest(self, trial: optuna.Trial) -> QuantPlan:
        plan = self.space.suggest(trial, self.base_plan)
        trial.set_user_attr("plan", plan.to_json())
        trial.set_user_attr("plan_key", plan.key())
        if "source" not in trial.user_attrs:
            trial.set_user_attr("source", "sampler")
        return plan

    def _before(self, study: optuna.Study, number: int) -> list[TrialRecord]:
        """The counted trials numbered below ``number``, by number."""
        trials = sorted(study.get_trials(deepcopy=False, states=_DONE), key=lambda t: t.number)
        return [r for t in trials if t.number < number and (r := self._record(t))]

    def _evaluate(self, plans: list[QuantPlan], earlier: Callable[[], list[TrialRecord]]) -> dict[str, dict]:
        if not plans:
            return {}
        screened = list(self.screen(plans, earlier())) if self.screen is not None else [None] * len(plans)
        todo = [p for p, r in zip(plans, screened) if r is None]
        evaluated = list(self.evaluator.evaluate(todo)) if todo else []
        if len(evaluated) != len(todo):
            raise SearchError(f"the evaluator returned {len(evaluated)} result(s) for {len(todo)} plan(s)")
        done = iter(evaluated)
        results = [r if r is not None else next(done) for r in screened]
        out = {}
        for plan, result in zip(plans, results):
            if result.plan_key != plan.key():
                raise SearchError(
                    f"the evaluator returned a result for plan {result.plan_key} "
                    f"in the place of plan {plan.key()}; results must keep the plans' order"
                )
            out[plan.key()] = self._result_attrs(result)
        return out

    def _result_attrs(self, r: EvalResult) -> dict[str, Any]:
        def finite(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        status, error = r.status, r.error
        if status == "ok":
            needed = (
                ()
                if r.early_stopped and r.metric is None
                # skipped: nothing measured
                else (("metric", r.metric), ("drop", r.drop))
            ) + (() if r.early_stopped else (("latency_ms", r.latency_ms),))
            bad = [n for n, v in needed if finite(v) is None]
            if bad:
                status, error = "failed", f"the evaluation returned no finite {', '.join(bad)}"
        elif status != "failed":
            status, error = "failed", f"unknown evaluation status {r.status!r}: {r.error}"
        attrs: dict[str, Any] = {
            "status": status,
            "metric": finite(r.metric),
            "drop": finite(r.drop),
            "latency_ms": finite(r.latency_ms),
            "latency_spread_ms": finite(r.latency_spread_ms),
            "error": error,
            "eval_seconds": float(r.eval_seconds),
            "constraint": None,
            "fp32_latency_ms": finite(r.fp32_latency_ms),
        }
        est, low, high = r.speedup if r.speedup is not None else (None, None, None)
        attrs.update(
            speedup=finite(est),
            speedup_low=finite(low),
            speedup_high=finite(high),
            early_stopped=bool(r.early_stopped),
            validation_items_saved=int(r.items_saved),
        )
        if status == "ok":
            drop = attrs["drop"]
            feasible = within_budget(drop, self.max_drop) and not r.early_stopped
            # a skipped trial (no drop) is told as not known to be feasible; it cannot move the
            # sampler either way (rayq.tuning.control.AccuracyControl.screen)
            attrs["constraint"] = 0.0 if feasible else 1e-12 if drop is None else max(drop - self.max_drop, 1e-12)
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
        record = self._record(frozen)
        assert record is not None, f"trial {frozen.number} was told with a plan and a counted status"
        return record

    # -- reading the study back ------------------------------------------------------

    @staticmethod
    def _plan_of_trial(trial: optuna.Trial) -> QuantPlan:
        return QuantPlan.from_json(trial.user_attrs["plan"])

    def _plan_of(self, t: FrozenTrial) -> QuantPlan | None:
        if "plan" in t.user_attrs:
            return QuantPlan.from_json(t.user_attrs["plan"])
        return self.space.from_params(t.params, self.base_plan) if t.params else None

    def _results(self, study: optuna.Study) -> dict[str, dict]:
        """Recorded results (of counted trials) by plan key, first trial wins."""
        out: dict[str, dict] = {}
        for t in study.get_trials(deepcopy=False, states=_DONE):
            if t.user_attrs.get("status") in _COUNTED and "plan_key" in t.user_attrs:
                out.setdefault(t.user_attrs["plan_key"], {k: t.user_attrs.get(k) for k in _RESULT_KEYS})
        return out

    def _n_done(self, study: optuna.Study) -> int:
        return sum(t.user_attrs.get("status") in _COUNTED for t in study.get_trials(deepcopy=False, states=_DONE))

    def _record(self, t: FrozenTrial) -> TrialRecord | None:
        plan = self._plan_of(t)
        a = t.user_attrs
        if plan is None or t.state not in _DONE or a.get("status") not in _COUNTED:
            return None
        stopped = bool(a.get("early_stopped"))
        feasible = a["status"] == "ok" and within_budget(a.get("drop"), self.max_drop) and not stopped
        return TrialRecord(
            t.number,
            plan,
            a.get("metric"),
            a.get("drop"),
            a.get("latency_ms"),
            a.get("latency_spread_ms"),
            a["status"],
            a.get("error"),
            feasible,
            a.get("source", "sampler"),
            bool(a.get("reused", False)),
            float(a.get("eval_seconds") or 0.0),
            fp32_latency_ms=a.get("fp32_latency_ms"),
            cost=a.get("cost"),
            speedup_est=a.get("speedup"),
            speedup_low=a.get("speedup_low"),
            speedup_high=a.get("speedup_high"),
            early_stopped=stopped,
            validation_items_saved=int(a.get("validation_items_saved") or 0),
        )

    def _outcome(self, study: optuna.Study) -> DriverOutcome:
        """The outcome over the first ``n_trials`` counted trials: what this driver's run produced,
        even when the study has grown since (a resumed multi-phase search re-runs earlier phases)."""
        trials = sorted(study.get_trials(deepcopy=False, states=_DONE), key=lambda t: t.number)
        records = [r for t in trials if (r := self._record(t))][: self.n_trials]
        best, status = provisional(records, ops=self.space.ranking, base=self.base_plan)
        if status == "met":
            assert best is not None, "a met budget has a cheapest feasible trial"
            logger.info("cheapest feasible: trial %d, cost %.4f, drop %.5f", best.number, best.cost, best.drop)
        else:
            logger.warning(
                "no INT8 trial of %d met max_drop=%g; the smallest drop is %s",
                len(records),
                self.max_drop,
                "n/a" if best is None else _g(best.drop),
            )
        return DriverOutcome(best, status, records, self.study_name, self.max_drop, len(self.space.ranking))


__all__ = ["SAMPLERS", "TrialRecord", "DriverOutcome", "SearchDriver", "open_storage", "pareto_front"]


def _g(value: float | None, unit: str = "") -> str:
    """A number for a log line: 4 significant digits, ``n/a`` for None."""
    return "n/a" if value is None else f"{value:.4g}{unit}"
