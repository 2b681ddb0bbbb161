"""The accuracy-controlled search: rank fallback groups, try candidate sets, explore
with Optuna, and pick the fastest *measured* plan within the budget.

It depends on an evaluator *pool* (``map_metric``, ``map_output_error``,
``map_latency``, ``compare_latency``), not on Ray: the Ray pool and the in-process
pool both fit.

Trial accounting and resume: ``n_trials`` is the study's total (preset seeds,
top-k candidates, bisection steps and Optuna trials together); each phase runs a
driver up to a cumulative target within it. The fallback ranking is persisted in
the study (user attribute ``rayq.ranking``: order, scores and what they measured)
before any trial uses it, and read back instead of being recomputed. Every phase's
decision reads the trials of the phases before it (the driver answers with the
study's first ``n`` trials), so re-running a killed search replays the same
decisions, takes over the trials left in flight and ends where an uninterrupted
search ends.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import optuna

from rayq.core.accuracy import compute_drop, within_budget
from rayq.core.cost import fp32_fraction
from rayq.core.early import EarlyStop, cannot_beat, chunkable
from rayq.core.fallback import bisect_k, rank_groups, topk_candidates
from rayq.core.plan import QuantPlan
from rayq.core.speed import Interval, ratio_interval
from rayq.errors import SearchError
from rayq.tuning import selection
from rayq.tuning.driver import SearchDriver, open_storage
from rayq.tuning.records import EvalResult, TrialRecord
from rayq.tuning.sensitivity import decode_ranking, encode_ranking
from rayq.tuning.space import SearchSpace

if TYPE_CHECKING:
    from rayq.pipeline.candidate import CandidateMetric

log = logging.getLogger(__name__)

#: Study attribute holding the fallback ranking with its scores, as JSON (rayq.tuning.sensitivity).
RANKING_ATTR = "rayq.ranking"
#: Study user attributes naming the answer (optuna-dashboard shows them).
CHOSEN_ATTR = "rayq.chosen_trial"
CHOICE_ATTR = "rayq.choice"


class Pool(Protocol):
    size: int

    def map_metric(
        self, plans: Sequence[QuantPlan | None], indices: list[int] | None = None, stop: EarlyStop | None = None
    ) -> list: ...
    def map_output_error(self, plans: Sequence[QuantPlan | None]) -> list[float]: ...
    def map_latency(self, plans: Sequence[QuantPlan | None]) -> list: ...
    def compare_latency(self, plans: Sequence[QuantPlan | None]) -> list: ...


@dataclass(frozen=True)
class SearchSettings:
    """Knobs of one search (see :func:`rayq.search` for their meaning)."""

    max_drop: float = 0.01
    drop_type: str = "absolute"
    n_trials: int | None = 32  # total trials; None: no cap (only with explore=False)
    timeout: float | None = None
    seed: int = 0
    generation_size: int = 4
    storage: Any = None
    study_name: str = "rayq-search"
    sampler: str = "tpe"
    ranking_subset: int = 300
    explore: bool = True
    runoff_seconds: float | None = None  # None: selection.RUNOFF_SECONDS
    finalists: int = selection.FINALISTS
    early_stop: bool = True  # stop hopeless candidates' validation early (rayq.core.early)


class PoolEvaluator:
    """Adapts a pool to the driver's :class:`~rayq.tuning.records.Evaluator`:
    metrics in parallel, then the successful ones' latencies timed together with FP32
    (``compare_latency``: interleaved turns on one worker), so every trial carries an
    FP32 latency from its own moment and its speedup does not depend on when it ran.

    With ``stop`` (:class:`~rayq.core.early.EarlyStop`), candidates are validated in
    chunks and a hopeless one stops early; it is not timed (it cannot be chosen)."""

    def __init__(self, pool: Pool, fp32_metric: float, drop_type: str, stop: EarlyStop | None = None) -> None:
        self.pool, self.fp32, self.drop_type, self.stop = pool, fp32_metric, drop_type, stop
        self.evaluated = 0
        self.per_item: dict[str, Any] = {}  # plan key -> per-item values of a whole validation

    def evaluate(self, plans: Sequence[QuantPlan]) -> list[EvalResult]:
        if self.stop is None:
            metrics = self.pool.map_metric(list(plans))
        else:
            metrics = self.pool.map_metric(list(plans), None, stop=self.stop)
        ok = [i for i, m in enumerate(metrics) if m.error is None and not getattr(m, "early_stopped", False)]
        self.per_item.update(
            (plans[i].key(), metrics[i].per_item) for i in ok if getattr(metrics[i], "per_item", None) is not None
        )
        fp32, latencies = None, {}
        if ok:
            fp32, *measured = self.pool.compare_latency([None, *(plans[i] for i in ok)])
            latencies = dict(zip(ok, measured))
        self.evaluated += len(plans)
        return [self._result(plan, m, latencies.get(i), fp32) for i, (plan, m) in enumerate(zip(plans, metrics))]

    def _result(self, plan: QuantPlan, m, lat, fp32) -> EvalResult:
        if m.error is not None:
            return EvalResult.failure(plan, m.error, m.seconds)
        drop = compute_drop(self.fp32, m.value, self.drop_type)
        if getattr(m, "early_stopped", False):  # infeasible, not timed
            saved = self.stop.n_items - int(m.items_seen) if self.stop is not None else 0
            return EvalResult(
                plan.key(), m.value, drop, None, None, "ok", None, m.seconds, early_stopped=True, items_saved=saved
            )
        return EvalResult(
            plan.key(),
            m.value,
            drop,
            lat.median_ms,
            lat.iqr_ms,
            "ok",
            None,
            m.seconds,
            fp32.median_ms,
            _speedup(fp32, lat),
        )


def _speedup(fp32, lat) -> tuple[float, float, float] | None:
    """Speed-up of ``lat`` over ``fp32`` with its interval, from their shared rounds."""
    a, b = getattr(fp32, "rounds_ms", ()), getattr(lat, "rounds_ms", ())
    if not a or len(a) != len(b):
        return None
    iv = ratio_interval(a, b)
    return iv.estimate, iv.low, iv.high


def ranking_subset(fp32_items: np.ndarray | None, int8_items: np.ndarray | None, size: int) -> list[int] | None:
    """Indices of the items where FP32 and INT8 disagree most (None: use all items)."""
    if fp32_items is None or int8_items is None or len(fp32_items) != len(int8_items):
        return None
    diff = np.abs(np.asarray(fp32_items, np.float64) - np.asarray(int8_items, np.float64))
    order = np.argsort(-diff, kind="stable")
    chosen = order[: max(1, min(size, int(np.count_nonzero(diff)) or size))]
    return sorted(int(i) for i in chosen)


def score_groups(
    pool: Pool, base: QuantPlan, ops: Sequence[str], subset: list[int] | None, use_metric: bool
) -> dict[str, float]:
    """Harm of each fallback group: how much reverting it alone recovers."""
    plans = [base.with_fallback([op]) for op in ops]
    if use_metric:
        ref, *results = pool.map_metric([base, *plans], subset)  # one map: no worker idles on the reference
        if ref.error is None:
            return {op: (r.value - ref.value) if r.error is None else -math.inf for op, r in zip(ops, results)}
        log.warning("ranking by output error: the base plan's validation failed (%s)", ref.error)
    ref_err = pool.map_output_error([base])[0]
    errs = pool.map_output_error(plans)
    return {op: ref_err - e for op, e in zip(ops, errs)}


def _done(records: Sequence[TrialRecord]) -> int:
    """Finished trials as the driver counts them."""
    return sum(r.status in ("ok", "failed") for r in records)


class AccuracyControl:
    """One search over a prepared pool. ``run()`` returns the chosen record and all records."""

    def __init__(
        self,
        pool: Pool,
        base: QuantPlan,
        ops: Sequence[str],
        space: SearchSpace,
        settings: SearchSettings,
        on_trial: Callable[[TrialRecord], None] | None = None,
        shares: dict[str, float] | None = None,
    ) -> None:
        if settings.n_trials is None and settings.explore:
            raise SearchError("n_trials=None (no cap) needs explore=False: exploration needs a trial budget")
        self.pool, self.base, self.ops, self.space0, self.s = pool, base, list(ops), space, settings
        self.on_trial = on_trial
        self.shares = dict(shares) if shares else dict.fromkeys(self.ops, 1.0)
        self.storage = open_storage(settings.storage)
        self.fp32: CandidateMetric | None = None  # after fp32_metric()
        self.choice: selection.Choice | None = None  # the answer, after run()
        self.ranking: list[str] = []
        self.scores: dict[str, float] = {}  # the ranking's per-group scores (rayq.tuning.sensitivity)
        self.basis: str | None = None
        self.base_items: dict[str, Any] = {}  # per-item values of whole validations (PoolEvaluator.per_item)

    def _cap(self, n_trials: int) -> int:
        return n_trials if self.s.n_trials is None else min(n_trials, self.s.n_trials)

    def _room(self, records: Sequence[TrialRecord]) -> bool:
        return self.s.n_trials is None or _done(records) < self.s.n_trials

    def _driver(self, space: SearchSpace, n_trials: int, evaluator) -> SearchDriver:
        return SearchDriver(
            space,
            self.base,
            evaluator,
            max_drop=self.s.max_drop,
            n_trials=self._cap(n_trials),
            timeout=self.s.timeout,
            generation_size=self.s.generation_size,
            seed=self.s.seed,
            storage=self.storage,
            study_name=self.s.study_name,
            sampler=self.s.sampler,
            on_trial=self.on_trial,
            cost=self._cost,
            screen=self.screen,
        )

    def _cost(self, plan: QuantPlan) -> float:
        return fp32_fraction(plan.fallback, self.shares)

    def _needed(self) -> int:
        """How many strictly cheaper feasible incumbents make a candidate unable to win
        (0: never skip). The answer is one of the ``finalists`` cheapest feasible plans,
        so that many suffice without exploration. With TPE exploring, also TPE's "below"
        share of the trials (Optuna's default gamma: 10 % of the trials, at most 25): with
        that many feasible trials cheaper than it, a trial falls in TPE's "above" set
        whatever it scored, so skipping it cannot move the sampler. NSGA-II's selection
        has no such bound: no skipping there."""
        if not self.s.early_stop:
            return 0
        if not self.s.explore:
            return self.s.finalists
        if self.s.sampler != "tpe" or self.s.n_trials is None:
            return 0
        return max(self.s.finalists, min(math.ceil(0.1 * self.s.n_trials), 25))

    def screen(self, plans: Sequence[QuantPlan], earlier: Sequence[TrialRecord]) -> list[EvalResult | None]:
        """The driver's screen (:class:`~rayq.tuning.driver.SearchDriver`): a plan that
        cannot beat the incumbents (:func:`rayq.core.early.cannot_beat` over the
        earlier trials' feasible INT8 graphs) is not validated at all: its result is
        ``early_stopped`` with every validation item saved and no metric. It can never
        be the answer (the finalists are cheaper; if no finalist is faster than FP32 the
        skipped trials are validated before the most accurate is chosen, :meth:`_final`),
        and its fate reaches neither the sampler (:meth:`_needed`) nor the bisection
        (:meth:`_bisection_safe`), so the search takes the same path without skipping."""
        needed = self._needed()
        if not needed or not plans:
            return [None] * len(plans)
        incumbents = selection.finalists(earlier, ops=self.ops, base=self.base, shares=self.shares, size=len(earlier))
        costs = [self._cost(r.plan) for r in incumbents]
        items = len(self.fp32.per_item) if self.fp32 is not None and self.fp32.per_item is not None else 0
        out: list[EvalResult | None] = []
        for p in plans:
            skip = cannot_beat(self._cost(p), costs, needed) and self._bisection_safe(p, earlier)
            out.append(
                EvalResult(p.key(), None, None, None, None, "ok", early_stopped=True, items_saved=items)
                if skip
                else None
            )
        if any(out):
            log.info(
                "%d of %d candidate(s) not validated: %d feasible trial(s) are cheaper already",
                sum(r is not None for r in out),
                len(plans),
                len(incumbents),
            )
        return out

    def _bisection_safe(self, plan: QuantPlan, earlier: Sequence[TrialRecord]) -> bool:
        """A top-k plan of the base preset may be skipped only once a smaller top-k met the
        budget: the bisection (:meth:`_feasible_by_k`) reads the smallest feasible k and
        the infeasible ones below it, never a larger k."""
        k = len(plan.fallback)
        if plan.preset != self.base.preset or not self.ranking or sorted(self.ranking[:k]) != sorted(plan.fallback):
            return True
        return any(j < k and ok for j, ok in self._feasible_by_k(earlier).items())

    def fp32_metric(self) -> CandidateMetric:
        m: CandidateMetric = self.pool.map_metric([None])[0]
        if m.error is not None:
            raise SearchError(f"the validation function fails on the FP32 model: {m.error}")
        self.fp32 = m
        return m

    def _fp32(self) -> tuple[float, np.ndarray | None]:
        """The FP32 metric and its per-item values (:meth:`fp32_metric` has run: ``run()`` calls it)."""
        assert self.fp32 is not None, "the FP32 metric is measured first (AccuracyControl.fp32_metric)"
        assert self.fp32.value is not None, "an FP32 validation without an error has a metric"
        return self.fp32.value, self.fp32.per_item

    def _stored_ranking(self) -> list[str] | None:
        try:
            study = optuna.load_study(study_name=self.s.study_name, storage=self.storage)
        except KeyError:
            return None
        value = study.user_attrs.get(RANKING_ATTR)
        if value is None:
            return None
        ranking, self.scores, self.basis = decode_ranking(value)
        return ranking

    def _store_ranking(self, ranking: list[str], basis: str) -> None:
        study = optuna.create_study(study_name=self.s.study_name, storage=self.storage, load_if_exists=True)
        study.set_user_attr(RANKING_ATTR, encode_ranking(ranking, self.scores, basis))

    def rank(self) -> list[str]:
        """The fallback groups, most harmful first: read from the study, else scored
        (in parallel) and persisted there before any trial uses them."""
        stored = self._stored_ranking()
        if stored is not None:
            log.info("using the fallback ranking stored in study %r", self.s.study_name)
            return stored
        int8_per_item = self.base_items.get(self.base.key())  # from the base trial, when this run validated it
        if int8_per_item is None:
            int8_per_item = self.pool.map_metric([self.base], None)[0].per_item
        subset = ranking_subset(self._fp32()[1], int8_per_item, self.s.ranking_subset)
        use_metric = subset is not None
        log.info(
            "ranking %d fallback groups on %s",
            len(self.ops),
            f"{len(subset)} disagreeing items" if subset is not None else "output error",
        )
        self.scores = score_groups(self.pool, self.base, self.ops, subset, use_metric)
        self.basis = basis = "metric" if use_metric else "output_error"
        ranking = rank_groups(self.scores, self.ops)
        self._store_ranking(ranking, basis)
        return ranking

    def early_stop(self) -> EarlyStop | None:
        """The stopping rule for candidates, when asked for (``early_stop``) and exact: the
        FP32 validation returned per-item values whose mean is the metric."""
        if not self.s.early_stop:
            return None
        fp32, per_item = self._fp32()
        n = 0 if per_item is None else len(per_item)
        if not chunkable(fp32, per_item, n):
            log.info(
                "early stopping off: the validation function %s",
                "returns no per-item values"
                if per_item is None
                else "returns a metric that is not the mean of its per-item values",
            )
            return None
        return EarlyStop(
            np.asarray(per_item, np.float64), float(fp32), self.s.max_drop, self.s.drop_type, seed=self.s.seed
        )

    def run(self) -> tuple[TrialRecord | None, str, list[TrialRecord]]:
        if self.fp32 is None:
            self.fp32_metric()
        evaluator = PoolEvaluator(self.pool, self._fp32()[0], self.s.drop_type)
        self.base_items = evaluator.per_item
        self.ranking = self._stored_ranking() or []
        space = replace(self.space0, ranking=tuple(self.ranking or self.ops))
        presets = [replace(self.base, preset=p) for p in (space.presets or (self.base.preset,))]
        outcome = self._driver(space, len(presets), evaluator).run(seeds=presets)
        best, met = outcome.best, outcome.status == "met"
        assert best is not None or not met, "a met budget has a best trial"
        reverts = best is not None and bool(best.plan.fallback)
        if met and not reverts and not self.s.explore:
            return self._end(space, evaluator, outcome.records)
        evaluator.stop = self.early_stop()  # the preset seeds above are validated whole
        if (not met or reverts) and self._room(outcome.records):
            self.ranking = self.rank()
            space = replace(self.space0, ranking=tuple(self.ranking))
            outcome = self._candidates(space, evaluator, outcome.records)
        if self.s.explore and self._room(outcome.records):
            assert self.s.n_trials is not None, "explore needs n_trials (checked in __init__)"
            outcome = self._driver(space, self.s.n_trials, evaluator).run()
        return self._end(space, evaluator, outcome.records)

    def _end(self, space: SearchSpace, evaluator, records: Sequence[TrialRecord]):
        """Leave no stray trial in the study, then choose."""
        self._driver(space, _done(records), evaluator).discard_pending()
        return self._final(records)

    def _final(self, records: Sequence[TrialRecord]) -> tuple[TrialRecord | None, str, list[TrialRecord]]:
        """The answer among ``records`` (:func:`rayq.tuning.selection.choose`), recorded
        in the study as ``rayq.chosen_trial`` and ``rayq.choice``."""
        choice = self._choose(records)
        if choice.status == "budget not met" and any(r.early_stopped and r.validation_items_saved for r in records):
            choice = self._choose(self._completed(records))
        elif choice.status == "no_speedup" and any(r.early_stopped and r.metric is None for r in records):
            choice = self._most_accurate_completed(choice)
        self.choice = choice
        study = optuna.load_study(study_name=self.s.study_name, storage=self.storage)
        if choice.record is not None:
            study.set_user_attr(CHOSEN_ATTR, choice.record.number)
            study.set_user_attr(
                CHOICE_ATTR,
                {
                    "status": choice.status,
                    "plan_key": choice.record.plan.key(),
                    "margin": choice.margin,
                    "speedup": None if choice.speedup is None else choice.speedup.to_dict(),
                    "finalists": [r.number for r in choice.finalists],
                    "rounds": choice.rounds,
                    "clear": choice.clear,
                },
            )
        return choice.record, choice.status, list(choice.records)

    def _choose(self, records: Sequence[TrialRecord]) -> selection.Choice:
        return selection.choose(
            records,
            self.pool.compare_latency,
            ops=self.ops,
            base=self.base,
            shares=self.shares,
            max_seconds=self.s.runoff_seconds or selection.RUNOFF_SECONDS,
            size=self.s.finalists,
        )

    def _most_accurate_completed(self, choice: selection.Choice) -> selection.Choice:
        """No finalist beats FP32, so the answer is the most accurate feasible trial: the
        trials skipped as unable to beat the incumbents (:meth:`screen`) are validated
        whole first, as a search without skipping would have."""
        assert choice.record is not None, "a no_speedup choice has a most accurate trial"
        records = self._completed(choice.records, skipped_only=True)
        best = selection.most_accurate([r for r in records if r.feasible], self.ops, self.base) or choice.record
        if best.number == choice.record.number:
            return replace(choice, records=tuple(records))
        iv = (
            None
            if best.speedup is None
            else Interval(best.speedup, best.speedup_low or math.nan, best.speedup_high or math.nan, 0)
        )
        return replace(choice, record=best, records=tuple(records), speedup=iv)

    def _completed(self, records: Sequence[TrialRecord], skipped_only: bool = False) -> list[TrialRecord]:
        """``records`` with the early-stopped trials validated whole and timed (one batch).

        Used when no trial met the budget: the answer is then the most accurate trial,
        which partial metrics cannot rank, so the stopped trials are completed and the
        answer is the one a search without early stopping gives. The study keeps their
        partial records; the returned records (and the trials table) hold the full ones,
        still marked ``early_stopped`` but with ``validation_items_saved=0``.
        ``skipped_only``: only the trials :meth:`screen` skipped (no metric).
        """
        stopped = [
            r
            for r in records
            if r.early_stopped and (r.metric is None if skipped_only else r.validation_items_saved or r.metric is None)
        ]
        results = PoolEvaluator(self.pool, self._fp32()[0], self.s.drop_type).evaluate([r.plan for r in stopped])
        done = {}
        for r, full in zip(stopped, results):
            if full.status != "ok":
                continue
            est, low, high = full.speedup or (None, None, None)
            done[r.number] = replace(
                r,
                metric=full.metric,
                drop=full.drop,
                latency_ms=full.latency_ms,
                latency_spread_ms=full.latency_spread_ms,
                fp32_latency_ms=full.fp32_latency_ms,
                speedup_est=est,
                speedup_low=low,
                speedup_high=high,
                validation_items_saved=0,
                feasible=within_budget(full.drop, self.s.max_drop),
                eval_seconds=r.eval_seconds + full.eval_seconds,
            )
        log.info("validated the %d early-stopped trial(s) whole for the answer", len(done))
        return [done.get(r.number, r) for r in records]

    def _seeded(self, space: SearchSpace, evaluator, records, plans: list[QuantPlan]):
        """Evaluate ``plans`` not yet in the study (and nothing else)."""
        known = {r.plan.key() for r in records}
        new = [p for p in plans if p.key() not in known]
        return self._driver(space, _done(records) + len(new), evaluator).run(seeds=new)

    def _candidates(self, space: SearchSpace, evaluator, records):
        plans = [self.base.with_fallback(c) for c in topk_candidates(self.ranking)]
        outcome = self._seeded(space, evaluator, records, plans)
        n = len(self.ranking)
        for _ in range(2 * max(1, n.bit_length()) + 2):
            if not self._room(outcome.records):
                break
            k = bisect_k(self._feasible_by_k(outcome.records), n)
            if k is None:
                break
            plan = self.base.with_fallback(self.ranking[:k])
            if plan.key() in {r.plan.key() for r in outcome.records}:
                break
            outcome = self._seeded(space, evaluator, outcome.records, [plan])
        return outcome

    def _feasible_by_k(self, records: Sequence[TrialRecord]) -> dict[int, bool]:
        out: dict[int, bool] = {}
        for r in records:
            fb = list(r.plan.fallback)
            if r.plan.preset != self.base.preset or r.status != "ok":
                continue
            if sorted(self.ranking[: len(fb)]) == sorted(fb):
                out[len(fb)] = out.get(len(fb), False) or within_budget(r.drop, self.s.max_drop)
        return out
