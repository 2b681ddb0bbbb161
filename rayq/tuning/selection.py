"""The one choice of a search's answer: which trial wins, and whether it beats FP32.

Every place that names a winner (the driver's outcome, the accuracy control, the
API result, ``result.json``, the ``chosen`` column of the trials table, the marked
point on ``pareto.png``, the study's ``rayq.chosen_trial`` attribute) takes it from
:func:`provisional` (no timing: during the search) or :func:`choose` (the answer).

Rules, in order:

1. **An INT8 answer quantizes something.** A plan keeping every quantizable layer in
   FP32 is never an answer (:func:`is_int8`).
2. **Feasible first.** Only ok trials within the budget compete. Without one, the
   answer is the most accurate INT8 trial, ``status="budget not met"``.
3. **Finalists by a deterministic cost.** Feasible plans are grouped by what changes
   the executed graph (preset, FP32 layers, SmoothQuant alpha); each group is one
   finalist (its simplest plan), ordered by the share of compute left in FP32
   (:mod:`rayq.core.cost`), and the first :data:`FINALISTS` are timed. No measured
   latency enters this order, so the finalists are the same on every run. Trials
   running a finalist's graph take its runoff timing (marked ``remeasured``).
4. **Faster means significantly faster.** The finalists and FP32 are timed in
   interleaved rounds on one worker; rounds are added (whole calls of
   ``measure``) until the decision is clear, until no open comparison can be
   decided within what is left of the caps (:func:`futile`: an interval narrows as
   1/sqrt(rounds), so the rounds it needs are projected from its width), or until
   :data:`RUNOFF_SECONDS` / :data:`RUNOFF_CALLS` are spent. A
   finalist qualifies only when its speed-up over FP32 is significant
   (:class:`rayq.core.speed.Interval`: the 95 % interval lies above ``1 + margin``).
   Among the qualified, one is beaten only by a significantly faster one.
5. **Ties break deterministically:** fewer FP32 layers, then the simpler plan (fewer
   settings differing from the base plan), then the lowest plan hash (:func:`tie_key`).
6. **Never slower than FP32.** When no finalist qualifies, ``status="no_speedup"``
   and the answer is the most accurate feasible INT8 trial, labelled as such.

Example:
    >>> from rayq.core.plan import QuantPlan
    >>> from rayq.tuning.records import TrialRecord
    >>> recs = [TrialRecord(i, QuantPlan(fallback=fb), 0.9, 0.0, 1.0, None, "ok", None, True, "seed")
    ...         for i, fb in enumerate([("a", "b"), ("a",), ()])]
    >>> provisional(recs, ops=("a", "b"), base=QuantPlan())[0].number
    2
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rayq.core.cost import fp32_fraction
from rayq.core.plan import QuantPlan
from rayq.core.speed import SPEEDUP_MARGIN, Interval, ratio_interval
from rayq.tuning.records import TrialRecord

log = logging.getLogger(__name__)

#: Finalists timed against each other and FP32.
FINALISTS = 4
#: Time cap of the adaptive runoff (seconds of measuring); at least one call runs.
RUNOFF_SECONDS = 20.0
#: Calls of ``measure`` at most (each call is several interleaved rounds).
RUNOFF_CALLS = 12
STATUSES = ("met", "no_speedup", "budget not met")
_SETTINGS = ("preset", "activation_estimator", "bias_correction", "smooth_quant_alpha")

Measure = Callable[[list[QuantPlan | None]], list[Any]]  # [None=FP32, plans...] -> Latency-likes


def is_int8(plan: QuantPlan, ops: Sequence[str]) -> bool:
    """False when ``plan`` keeps every one of ``ops`` (the quantizable layers) in FP32."""
    return not ops or not set(ops) <= set(plan.fallback)


def tie_key(plan: QuantPlan, base: QuantPlan) -> tuple[int, int, str]:
    """(FP32 layers, settings differing from ``base``, plan hash): lower wins a tie."""
    simpler = sum(getattr(plan, f) != getattr(base, f) for f in _SETTINGS)
    return len(plan.fallback), simpler, plan.key()


def speed_key(plan: QuantPlan) -> tuple:
    """What changes the graph that runs (range estimator and bias correction only
    change numbers): plans with equal keys run equally fast."""
    return plan.preset, tuple(sorted(plan.fallback)), plan.smooth_quant_alpha


def _cost(r: TrialRecord, ops: Sequence[str], shares: Mapping[str, float] | None) -> float:
    if r.cost is not None:
        return r.cost
    return fp32_fraction(r.plan.fallback, shares or {op: 1.0 for op in ops})


def _feasible(records: Sequence[TrialRecord], ops: Sequence[str]) -> list[TrialRecord]:
    return [r for r in records if r.status == "ok" and r.feasible and is_int8(r.plan, ops)]


def most_accurate(records: Sequence[TrialRecord], ops: Sequence[str], base: QuantPlan) -> TrialRecord | None:
    """The ok INT8 trial with the smallest drop (ties: :func:`tie_key`, then trial
    number); any ok trial when none is INT8."""
    ok = [r for r in records if r.status == "ok" and r.drop is not None]
    pool = [r for r in ok if is_int8(r.plan, ops)] or ok
    return min(pool, key=lambda r: (r.drop, tie_key(r.plan, base), r.number), default=None)


def finalists(
    records: Sequence[TrialRecord],
    *,
    ops: Sequence[str],
    base: QuantPlan,
    shares: Mapping[str, float] | None = None,
    size: int = FINALISTS,
) -> list[TrialRecord]:
    """The feasible INT8 trials to time, one per :func:`speed_key`, cheapest first."""
    groups: dict[tuple, TrialRecord] = {}
    for r in sorted(_feasible(records, ops), key=lambda r: (tie_key(r.plan, base), r.number)):
        groups.setdefault(speed_key(r.plan), r)
    ordered = sorted(groups.values(), key=lambda r: (_cost(r, ops, shares), tie_key(r.plan, base)))
    return ordered[:size]


def provisional(
    records: Sequence[TrialRecord], *, ops: Sequence[str], base: QuantPlan, shares: Mapping[str, float] | None = None
) -> tuple[TrialRecord | None, str]:
    """The choice before any runoff: the cheapest feasible INT8 trial (``"met"``),
    else the most accurate (``"budget not met"``)."""
    top = finalists(records, ops=ops, base=base, shares=shares, size=1)
    if top:
        return top[0], "met"
    return most_accurate(records, ops, base), "budget not met"


@dataclass
class Rounds:
    """Per-round latencies of FP32 (key None) and finalists (trial number), aligned."""

    rows: list[dict[Any, float]] = field(default_factory=list)

    def add(self, keys: Sequence[Any], latencies: Sequence[Any]) -> None:
        per = [tuple(getattr(lat, "rounds_ms", ()) or (lat.median_ms,)) for lat in latencies]
        for i in range(min(len(p) for p in per)):
            self.rows.append({k: p[i] for k, p in zip(keys, per)})

    def interval(self, slow: Any, fast: Any) -> Interval:
        """Speed-up of ``fast`` over ``slow`` on the rounds holding both."""
        both = [row for row in self.rows if slow in row and fast in row]
        return ratio_interval([row[slow] for row in both], [row[fast] for row in both])

    def median(self, key: Any) -> float:
        return statistics.median(row[key] for row in self.rows if key in row)

    def spread(self, key: Any) -> float:
        """Inter-quartile range of ``key``'s per-round medians."""
        values = [row[key] for row in self.rows if key in row]
        if len(values) < 2:
            return 0.0
        q = statistics.quantiles(values, n=4)
        return q[2] - q[0]


@dataclass(frozen=True)
class Verdict:
    """One reading of the rounds: the winner (None: no finalist beats FP32), each
    finalist's speed-up over FP32, and whether more rounds could change it."""

    winner: TrialRecord | None
    vs_fp32: dict[int, Interval]
    clear: bool


def decide(rounds: Rounds, entrants: Sequence[TrialRecord], base: QuantPlan, margin: float = SPEEDUP_MARGIN) -> Verdict:
    """Apply rules 4 and 5 of the module docstring to ``rounds``."""
    vs = {r.number: rounds.interval(None, r.number) for r in entrants}
    qualified = [r for r in entrants if vs[r.number].faster(margin)]
    if not qualified:  # clear once no finalist could still reach 1 + margin
        return Verdict(None, vs, all(vs[r.number].high <= 1.0 + margin for r in entrants))
    unbeaten = [
        r
        for r in qualified
        if not any(rounds.interval(r.number, d.number).faster(margin) for d in qualified if d is not r)
    ]
    winner = min(unbeaten or qualified, key=lambda r: (tie_key(r.plan, base), r.number))
    clear = all(
        rounds.interval(winner.number, d.number).decided(margin) or vs[d.number].high <= 1.0 + margin
        for d in entrants
        if d is not winner
    )
    return Verdict(winner, vs, clear)


def rounds_needed(iv: Interval, margin: float = SPEEDUP_MARGIN) -> float:
    """Rounds after which ``iv`` would be decided (:meth:`Interval.decided`) if its
    estimate and spread stayed as they are: the half-width of the log interval shrinks
    as ``1/sqrt(rounds)`` and has to fall below the distance from the estimate to the
    nearest edge of the tie band. ``inf`` on the edge itself or with one round.

    Example:
        >>> rounds_needed(Interval(1.2, 1.0, 1.44, 4))  # half-width 0.18 in logs, distance 0.15
        6.0
    """
    if iv.rounds < 2 or not (iv.low > 0 and math.isfinite(iv.high)):
        return math.inf
    mu, half, edge = math.log(iv.estimate), (math.log(iv.high) - math.log(iv.low)) / 2, math.log1p(margin)
    distance = abs(abs(mu) - edge)
    if half <= distance:
        return float(iv.rounds)
    return math.inf if distance <= 1e-9 else float(math.ceil(iv.rounds * (half / distance) ** 2 - 1e-9))


def open_pairs(
    rounds: Rounds, verdict: Verdict, entrants: Sequence[TrialRecord], margin: float = SPEEDUP_MARGIN
) -> list[list[Interval]]:
    """The comparisons that keep ``verdict`` from being clear: for each, the intervals of
    which any one, once decided, settles it (see :func:`decide`)."""
    edge = 1.0 + margin
    vs = verdict.vs_fp32
    if verdict.winner is None:
        return [[vs[r.number]] for r in entrants if vs[r.number].high > edge]
    w = verdict.winner.number
    return [
        [rounds.interval(w, d.number), vs[d.number]]
        for d in entrants
        if d.number != w and not rounds.interval(w, d.number).decided(margin) and vs[d.number].high > edge
    ]


def futile(
    rounds: Rounds, verdict: Verdict, entrants: Sequence[TrialRecord], margin: float, rounds_left: float
) -> bool:
    """True when no open comparison (:func:`open_pairs`) is projected to be decided
    within ``rounds_left`` more rounds (:func:`rounds_needed`): more rounds would be
    spent for a verdict that the tie-break gives anyway."""
    pairs = open_pairs(rounds, verdict, entrants, margin)
    return bool(pairs) and all(
        min(rounds_needed(iv, margin) - iv.rounds for iv in pair) > rounds_left for pair in pairs
    )


def _pruned(rounds: Rounds, active: list[TrialRecord], margin: float) -> list[TrialRecord]:
    """Drop finalists significantly slower than another one still timed."""
    return [
        r for r in active if not any(rounds.interval(r.number, d.number).faster(margin) for d in active if d is not r)
    ]


@dataclass(frozen=True)
class Choice:
    """The answer of a search.

    Attributes:
        record: The chosen trial (None when no trial succeeded).
        status: ``"met"``, ``"no_speedup"`` or ``"budget not met"``.
        speedup: Its speed-up over FP32 with the 95 % interval (from the runoff).
        finalists: The timed finalists, with their runoff latencies (``remeasured``).
        records: All records, the finalists' replaced by their re-timed versions.
        rounds / seconds / clear: Runoff rounds, measuring time, and whether the
            decision was clear when it stopped (else: the time cap; unclear is a tie).
        fp32_latency_ms: FP32's median over the runoff rounds.
        settings: The runtime settings the runoff measured with.
        margin: The margin a speed-up had to clear.
    """

    record: TrialRecord | None
    status: str
    speedup: Interval | None = None
    finalists: tuple[TrialRecord, ...] = ()
    records: tuple[TrialRecord, ...] = ()
    rounds: int = 0
    seconds: float = 0.0
    clear: bool = True
    fp32_latency_ms: float | None = None
    settings: dict | None = None
    margin: float = SPEEDUP_MARGIN

    def message(self, target: str = "the target") -> str:
        """One plain sentence saying what was chosen and why."""
        if self.record is None:
            return "no trial succeeded"
        sp = f" (speed-up {self.speedup.text()} over FP32, 95% interval)" if self.speedup else ""
        if self.status == "met":
            return f"trial {self.record.number} is significantly faster than FP32 on {target}{sp}"
        if self.status == "no_speedup":
            return (
                f"no candidate within the budget is significantly faster (by > {self.margin:.0%}) than FP32 "
                f"on {target}; returning the most accurate quantized model, trial {self.record.number}{sp}"
            )
        return f"no INT8 trial met the accuracy budget; returning the most accurate, trial {self.record.number}"


def choose(
    records: Sequence[TrialRecord],
    measure: Measure,
    *,
    ops: Sequence[str],
    base: QuantPlan,
    shares: Mapping[str, float] | None = None,
    margin: float = SPEEDUP_MARGIN,
    max_seconds: float = RUNOFF_SECONDS,
    max_calls: int = RUNOFF_CALLS,
    size: int = FINALISTS,
) -> Choice:
    """The search's answer among ``records`` (see the module docstring).

    Args:
        records: Every finished trial.
        measure: Times ``[None (FP32), *plans]`` against each other in interleaved
            rounds on one worker (``pool.compare_latency``); returns one latency per
            entry with ``rounds_ms`` (per-round medians) or at least ``median_ms``.
        ops: The quantizable layers (fallback groups).
        base: The base plan (defaults, for the simplicity tie-break).
        shares: Compute share per op (:func:`rayq.core.cost.compute_shares`).
        margin: A speed-up must clear ``1 + margin`` with its whole interval.
        max_seconds / max_calls: Caps of the adaptive runoff.
        size: Finalists timed.

    Returns:
        The :class:`Choice`.
    """
    entrants = finalists(records, ops=ops, base=base, shares=shares, size=size)
    if not entrants:
        return Choice(most_accurate(records, ops, base), "budget not met", records=tuple(records), margin=margin)
    rounds, active, started, calls = Rounds(), list(entrants), time.monotonic(), 0
    settings = None
    while True:
        lats = measure([None, *(r.plan for r in active)])
        settings = getattr(lats[0], "settings", None) or settings
        rounds.add([None, *(r.number for r in active)], lats)
        calls += 1
        verdict = decide(rounds, entrants, base, margin)
        elapsed = time.monotonic() - started
        if verdict.clear or calls >= max_calls or elapsed >= max_seconds:
            break
        per_round = elapsed / len(rounds.rows)
        left = min(
            (max_calls - calls) * len(rounds.rows) / calls,
            (max_seconds - elapsed) / per_round if per_round > 0 else math.inf,
        )
        if futile(rounds, verdict, entrants, margin, left):
            break
        active = _pruned(rounds, active, margin)
    retimed = {r.number: _retimed(r, rounds, verdict.vs_fp32[r.number]) for r in entrants}
    by_graph = {speed_key(r.plan): retimed[r.number] for r in entrants}
    all_records = tuple(retimed.get(r.number) or _same_graph(r, by_graph.get(speed_key(r.plan))) for r in records)
    chosen, status = verdict.winner, "met"
    if chosen is None:
        fallback = most_accurate(_feasible(all_records, ops), ops, base)
        assert fallback is not None, "the finalists are feasible trials, so one is the most accurate"
        chosen, status = fallback, "no_speedup"
    chosen = retimed.get(chosen.number, chosen)
    speedup = verdict.vs_fp32.get(chosen.number) or _interval_of(chosen)
    out = Choice(
        chosen,
        status,
        speedup,
        tuple(retimed.values()),
        all_records,
        len(rounds.rows),
        time.monotonic() - started,
        verdict.clear,
        rounds.median(None),
        settings,
        margin,
    )
    log.info(
        "runoff: %d rounds in %.1f s (%s): %s",
        out.rounds,
        out.seconds,
        "clear" if out.clear else "undecided within the caps: those pairs tie",
        "; ".join(f"trial {n} {iv.text()}" for n, iv in verdict.vs_fp32.items()),
    )
    return out


def _retimed(r: TrialRecord, rounds: Rounds, iv: Interval) -> TrialRecord:
    return replace(
        r,
        latency_ms=rounds.median(r.number),
        fp32_latency_ms=rounds.median(None),
        remeasured=True,
        latency_spread_ms=rounds.spread(r.number),
        speedup_est=iv.estimate,
        speedup_low=iv.low,
        speedup_high=iv.high,
    )


def _same_graph(r: TrialRecord, timed: TrialRecord | None) -> TrialRecord:
    """A trial running a finalist's graph takes the finalist's runoff timing."""
    if timed is None:
        return r
    return replace(
        r,
        latency_ms=timed.latency_ms,
        fp32_latency_ms=timed.fp32_latency_ms,
        remeasured=True,
        latency_spread_ms=timed.latency_spread_ms,
        speedup_est=timed.speedup_est,
        speedup_low=timed.speedup_low,
        speedup_high=timed.speedup_high,
    )


def _interval_of(r: TrialRecord) -> Interval | None:
    if r.speedup is None:
        return None
    low = r.speedup_low if r.speedup_low is not None else math.nan
    high = r.speedup_high if r.speedup_high is not None else math.nan
    return Interval(r.speedup, low, high, 0)


__all__ = [
    "FINALISTS",
    "RUNOFF_SECONDS",
    "STATUSES",
    "Choice",
    "Rounds",
    "Verdict",
    "choose",
    "decide",
    "finalists",
    "futile",
    "is_int8",
    "most_accurate",
    "open_pairs",
    "provisional",
    "rounds_needed",
    "speed_key",
    "tie_key",
]
