"""The final latency runoff: finalists re-measured against each other and FP32."""

from __future__ import annotations

import time
from dataclasses import replace

from rayq.core.plan import QuantPlan
from rayq.pipeline.latency import Latency, time_interleaved
from rayq.tuning import control
from rayq.tuning.control import runoff, select_best
from rayq.tuning.evaluator import TrialRecord


def _rec(n: int, latency: float, feasible: bool = True, fallback=("a",)) -> TrialRecord:
    return TrialRecord(n, QuantPlan(fallback=tuple(f"{x}{n}" for x in fallback)), 0.9, 0.0, latency, 0.01,
                       "ok", None, feasible, "seed")


class Pool:
    """Re-measures by a fixed table: plan fallback name -> latency."""

    def __init__(self, table: dict) -> None:
        self.table, self.calls = table, []

    def compare_latency(self, plans):
        self.calls.append(plans)
        return [Latency(self.table[None if p is None else p.fallback[0]], 0.0, 0.0, 30, "onnxruntime", 1)
                for p in plans]


def test_runoff_remeasures_the_fastest_feasible_and_can_change_the_choice():
    records = [_rec(0, 1.0), _rec(1, 1.1), _rec(2, 1.2), _rec(3, 1.3), _rec(4, 1.4),  # 5 feasible within 2x
               _rec(5, 0.5, feasible=False), _rec(6, 2.5)]                          # infeasible; > 2x fastest
    assert select_best(records)[0].number == 0
    pool = Pool({None: 5.0, "a0": 1.5, "a1": 1.4, "a2": 1.0, "a3": 1.6})
    out, finalists, fp32 = runoff(pool, records)
    assert [r.number for r in finalists] == [0, 1, 2, 3]
    assert [p for p in pool.calls[0]][0] is None and len(pool.calls[0]) == 1 + control.RUNOFF_SIZE
    assert fp32.median_ms == 5.0
    assert [r.latency_ms for r in out] == [1.5, 1.4, 1.0, 1.6, 1.4, 0.5, 2.5]  # trials 4-6 untouched
    assert [r.remeasured for r in out] == [True] * 4 + [False] * 3
    from rayq.tuning.evaluator import DriverOutcome

    frame = DriverOutcome(None, "met", out).trials_frame()  # the column users filter on
    assert frame["remeasured"].tolist() == [True] * 4 + [False] * 3
    best, status = select_best(finalists)
    assert (best.number, status) == (2, "met")
    # a non-finalist timed at another moment (trial 4, 1.4 ms) must not beat the re-timed ones
    pool.table.update({"a0": 1.9, "a1": 1.8, "a2": 1.7, "a3": 2.0})
    out, finalists, _ = runoff(pool, records)
    assert select_best(out)[0].number == 4 and select_best(finalists)[0].number == 2


def test_runoff_without_feasible_trials_measures_nothing():
    records = [_rec(0, 1.0, feasible=False)]
    pool = Pool({})
    out, finalists, fp32 = runoff(pool, records)
    assert out == records and finalists == [] and fp32 is None and pool.calls == []


def test_interleaved_timing_orders_runners_and_gives_each_a_turn_every_round():
    def sleeper(seconds):
        return lambda feeds: time.sleep(seconds)

    times = time_interleaved([sleeper(0.004), sleeper(0.001), sleeper(0.002)], {}, warmup=1, rounds=3, block=3)
    assert [len(t) for t in times] == [9, 9, 9]
    medians = [sorted(t)[4] for t in times]
    assert medians[1] < medians[2] < medians[0]
    # a turn lasts at least min_seconds: the fast runner gets more calls than block
    times = time_interleaved([sleeper(0.004), sleeper(0.001)], {}, warmup=1, rounds=2, block=3, min_seconds=0.03)
    assert all(sum(t) >= 2 * 30 for t in times) and len(times[1]) > len(times[0]) >= 6


def test_finalists_are_chosen_on_latencies_rescaled_by_their_own_fp32_timing():
    """Trial 5 was timed during a slow spell (FP32 timed with it: 2x): raw it ranks last
    and would miss the 4-finalist runoff; rescaled it is the fastest."""
    records = [replace(_rec(n, lat), fp32_latency_ms=fp32)
               for n, lat, fp32 in [(0, 1.0, 5.0), (1, 1.05, 5.0), (2, 1.1, 5.0), (3, 1.15, 5.0), (4, 1.2, 5.0),
                                    (5, 1.8, 10.0)]]
    scale = control.comparable_latencies(records)
    assert scale[5] == 0.9 and scale[0] == 1.0
    pool = Pool({None: 5.0, "a5": 0.9, "a0": 1.0, "a1": 1.05, "a2": 1.1})
    _, finalists, _ = runoff(pool, records)
    assert [r.number for r in finalists] == [5, 0, 1, 2]
    assert select_best(finalists)[0].number == 5


def test_pool_evaluator_times_each_generation_with_fp32():
    from rayq.pipeline.candidate import CandidateMetric

    class GenerationPool(Pool):
        def map_metric(self, plans, indices=None):
            return [CandidateMetric(p.key(), 0.9, None, 0.1, None if p.fallback[0] != "a9" else "boom")
                    for p in plans]

    pool = GenerationPool({None: 4.0, "a1": 2.0, "a2": 1.0})
    plans = [QuantPlan(fallback=(f"a{n}",)) for n in (1, 9, 2)]
    results = control.PoolEvaluator(pool, 0.9, "absolute").evaluate(plans)
    assert pool.calls == [[None, plans[0], plans[2]]]  # FP32 and the ok plans, timed in one run
    assert [(r.status, r.latency_ms, r.fp32_latency_ms) for r in results] == [
        ("ok", 2.0, 4.0), ("failed", None, None), ("ok", 1.0, 4.0)]
    rec = replace(_rec(0, 2.0), fp32_latency_ms=4.0)
    assert rec.speedup == 2.0
    from rayq.tuning.evaluator import DriverOutcome

    row = DriverOutcome(None, "met", [rec]).trials_frame().iloc[0]
    assert (row["fp32_latency_ms"], row["speedup"]) == (4.0, 2.0)
