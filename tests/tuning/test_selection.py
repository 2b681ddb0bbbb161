"""The one selection of a search's answer: pure logic with fake timings."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from rayq.core.plan import QuantPlan
from rayq.core.speed import Interval, ratio_interval
from rayq.pipeline.latency import Latency, time_interleaved, time_rounds
from rayq.tuning import control, selection
from rayq.tuning.records import DriverOutcome, TrialRecord

OPS = ("a", "b", "c", "d")
BASE = QuantPlan()


def rec(n: int, fallback=(), *, drop=0.0, feasible=True, status="ok", **plan) -> TrialRecord:
    p = QuantPlan(fallback=tuple(fallback), **plan)
    return TrialRecord(n, p, 0.9 - drop, drop, 1.0, 0.01, status, None, feasible, "seed", fp32_latency_ms=2.0)


class FakeTimer:
    """``measure`` for :func:`selection.choose`: true latencies by fallback tuple (None:
    FP32), each round scaled by a shared drift and a small private noise (seeded)."""

    def __init__(self, table: dict, noise: float = 0.01, seed: int = 0, rounds: int = 5) -> None:
        self.table, self.noise, self.rounds = table, noise, rounds
        self.rng = np.random.default_rng(seed)
        self.calls: list[list] = []

    def __call__(self, plans):
        self.calls.append(plans)
        drift = 1.0 + self.rng.uniform(0.0, 0.5, self.rounds)  # the machine: up to 50 % slower
        out = []
        for p in plans:
            true = self.table[None if p is None else p.fallback]
            per = true * drift * (1.0 + self.noise * self.rng.standard_normal(self.rounds))
            out.append(
                Latency(
                    float(np.median(per)),
                    0.0,
                    float(per.min()),
                    30,
                    "onnxruntime",
                    1,
                    tuple(float(x) for x in per),
                    {"runtime": "onnxruntime"},
                )
            )
        return out


def test_ratio_interval_and_what_faster_means():
    iv = ratio_interval([2.0, 2.2, 1.8, 2.0, 2.1], [1.0, 1.0, 0.95, 1.05, 1.0])
    assert iv.estimate == pytest.approx(2.0, rel=0.01) and iv.low < iv.estimate < iv.high and iv.rounds == 5
    assert iv.faster() and iv.decided() and not iv.tied()
    assert Interval(1.02, 0.99, 1.05, 5).decided() is False  # could still be > 3 % faster
    assert Interval(1.01, 0.99, 1.02, 5).tied() and Interval(1.01, 0.99, 1.02, 5).decided()
    assert Interval(0.8, 0.7, 0.9, 5).slower() and not Interval(0.8, 0.7, 0.9, 5).faster()
    assert ratio_interval([1.0], [0.5]).low == 0.0  # one round proves nothing
    with pytest.raises(ValueError):
        ratio_interval([1.0, 2.0], [1.0])


def test_finalists_exclude_all_fp32_plans_and_group_equal_graphs():
    records = [
        rec(0, OPS),
        rec(1, ("a",)),
        rec(2, ("a",), activation_estimator="minmax"),
        rec(3, ()),
        rec(4, (), drop=0.5, feasible=False),
        rec(5, ("a", "b"), preset="mixed"),
    ]
    got = selection.finalists(records, ops=OPS, base=BASE)
    assert [r.number for r in got] == [3, 1, 5]  # cheapest first; 2 runs the graph of 1; 0 is all FP32
    assert not selection.is_int8(records[0].plan, OPS) and selection.is_int8(records[1].plan, OPS)
    shares = {"a": 10.0, "b": 1.0, "c": 1.0, "d": 1.0}  # compute shares reorder by cost
    records = [rec(0, ("a",)), rec(1, ("b", "c"))]
    assert [r.number for r in selection.finalists(records, ops=OPS, base=BASE, shares=shares)] == [1, 0]


def test_significantly_faster_candidate_wins_over_a_simpler_one():
    records = [rec(0, ("a",)), rec(1, ())]
    timer = FakeTimer({None: 2.0, ("a",): 1.0, (): 1.5})
    choice = selection.choose(records, timer, ops=OPS, base=BASE)
    assert (choice.status, choice.record.number, choice.clear) == ("met", 0, True)
    assert choice.speedup.faster() and 1.8 < choice.speedup.estimate < 2.2
    assert choice.record.remeasured and choice.record.speedup_low == choice.speedup.low
    assert timer.calls[0][0] is None and len(timer.calls[0]) == 3
    assert choice.settings == {"runtime": "onnxruntime"}


def test_ties_break_on_fewer_fp32_layers_then_simpler_plan_then_hash():
    # trial 0 is 1 % faster (noise-sized): a tie, so the plan with fewer FP32 layers wins
    records = [rec(0, ("a",)), rec(1, ())]
    timer = FakeTimer({None: 2.0, ("a",): 0.99, (): 1.0}, noise=0.02)
    choice = selection.choose(records, timer, ops=OPS, base=BASE, max_seconds=60, max_calls=6)
    assert (choice.status, choice.record.number) == ("met", 1)
    # same graph speed, different settings: the one closer to the base plan wins
    records = [rec(0, (), preset="mixed"), rec(1, ())]
    choice = selection.choose(records, FakeTimer({None: 2.0, (): 1.0}), ops=OPS, base=BASE)
    assert choice.record.number == 1
    a, b = QuantPlan(activation_estimator="minmax"), QuantPlan(activation_estimator="quantile")
    assert selection.tie_key(a, BASE)[:2] == selection.tie_key(b, BASE)[:2]
    assert min([a, b], key=lambda p: selection.tie_key(p, BASE)).key() == min(a.key(), b.key())


def test_the_same_records_give_the_same_choice_under_any_noise():
    records = [rec(0, ("a",)), rec(1, ()), rec(2, ("a", "b")), rec(3, ("b",))]
    table = {None: 2.0, ("a",): 1.01, (): 1.0, ("a", "b"): 1.02, ("b",): 0.995}  # all within noise
    picks = {
        selection.choose(records, FakeTimer(table, noise=0.02, seed=s), ops=OPS, base=BASE, max_calls=3).record.number
        for s in range(6)
    }
    assert picks == {1}


def test_not_significantly_faster_than_fp32_is_no_speedup_with_the_most_accurate_model():
    records = [rec(0, ("a",), drop=0.002), rec(1, (), drop=0.008), rec(2, OPS, drop=0.0)]
    timer = FakeTimer({None: 1.0, ("a",): 0.995, (): 1.0})
    choice = selection.choose(records, timer, ops=OPS, base=BASE, max_calls=4)
    assert choice.status == "no_speedup" and choice.record.number == 0  # not the all-FP32 trial 2
    assert not choice.speedup.faster()
    assert "no candidate within the budget is significantly faster" in choice.message("openvino")
    # slower than FP32 is never "met"
    choice = selection.choose(records, FakeTimer({None: 1.0, ("a",): 1.1, (): 1.2}), ops=OPS, base=BASE)
    assert choice.status == "no_speedup" and choice.speedup.slower()


def test_only_all_fp32_within_budget_is_budget_not_met_and_nothing_is_timed():
    records = [rec(0, OPS, drop=0.0), rec(1, ("a",), drop=0.05, feasible=False), rec(2, (), drop=0.08, feasible=False)]
    timer = FakeTimer({})
    choice = selection.choose(records, timer, ops=OPS, base=BASE)
    assert (choice.status, choice.record.number, timer.calls) == ("budget not met", 1, [])
    assert selection.provisional(records, ops=OPS, base=BASE) == (records[1], "budget not met")


def test_runoff_adds_rounds_until_clear_and_stops_at_the_caps():
    records = [rec(0, ())]
    clear = FakeTimer({None: 2.0, (): 1.0})
    assert selection.choose(records, clear, ops=OPS, base=BASE).rounds == 5 and len(clear.calls) == 1
    borderline = FakeTimer({None: 1.0, (): 1.0}, noise=0.1)  # too noisy to call either way
    choice = selection.choose(records, borderline, ops=OPS, base=BASE, max_calls=40, max_seconds=60)
    assert len(borderline.calls) <= 40 and choice.rounds == 5 * len(borderline.calls) and not choice.clear
    # with fewer calls left than the projection needs, the runoff stops at once: a tie
    short = FakeTimer({None: 1.0, (): 1.0}, noise=0.1)
    choice = selection.choose(records, short, ops=OPS, base=BASE, max_calls=4, max_seconds=60)
    assert len(short.calls) == 1 and choice.rounds == 5 and not choice.clear
    # a comparison within reach gets its rounds and ends decided
    near = FakeTimer({None: 1.08, (): 1.0}, noise=0.05, seed=3)
    choice = selection.choose(records, near, ops=OPS, base=BASE, max_calls=12, max_seconds=60)
    assert 1 < len(near.calls) < 12 and choice.clear and choice.status == "met"
    slow = FakeTimer({None: 1.03, (): 1.0}, noise=0.03)
    start = time.monotonic()
    selection.choose(records, lambda plans: (time.sleep(0.05), slow(plans))[1], ops=OPS, base=BASE, max_seconds=0.12)
    assert len(slow.calls) <= 4 and time.monotonic() - start < 2.0


def test_rounds_needed_projects_the_narrowing_interval():
    assert selection.rounds_needed(Interval(1.5, 1.4, 1.6, 5)) == 5  # decided already
    assert selection.rounds_needed(Interval(1.2, 1.0, 1.44, 4)) == 6
    assert selection.rounds_needed(Interval(1.03, 0.9, 1.18, 9)) == math.inf  # on the band's edge
    assert selection.rounds_needed(Interval(1.0, 0.0, math.inf, 1)) == math.inf
    wide, narrow = Interval(1.1, 0.9, 1.34, 5), Interval(1.1, 1.0, 1.21, 5)
    assert selection.rounds_needed(wide) > selection.rounds_needed(narrow) > 5


def test_significantly_slower_finalists_stop_being_timed():
    records = [rec(0, ()), rec(1, ("a",)), rec(2, ("a", "b"))]
    timer = FakeTimer({None: 3.0, (): 1.0, ("a",): 1.0, ("a", "b"): 2.0}, noise=0.03)
    selection.choose(records, timer, ops=OPS, base=BASE, max_calls=3, max_seconds=60)
    assert len(timer.calls[0]) == 4 and all(len(c) == 3 for c in timer.calls[1:])


def test_trials_frame_marks_the_chosen_row_and_pareto_uses_speedup():
    # trial 1 was timed in a quiet moment: lower raw latency, but a smaller speed-up over FP32
    recs = [
        TrialRecord(0, QuantPlan(fallback=("a",)), 0.9, 0.0, 1.0, None, "ok", None, True, "seed", fp32_latency_ms=2.0),
        TrialRecord(1, QuantPlan(), 0.9, 0.0, 0.8, None, "ok", None, True, "seed", fp32_latency_ms=1.2),
    ]
    out = DriverOutcome(recs[0], "met", recs)
    frame = out.trials_frame()
    assert frame["chosen"].tolist() == [True, False]
    assert out.pareto()["number"].tolist() == [0]


def test_pool_evaluator_attaches_the_generation_interval():
    from rayq.pipeline.candidate import CandidateMetric

    class Pool:
        def map_metric(self, plans, indices=None):
            return [CandidateMetric(p.key(), 0.9, None, 0.1) for p in plans]

        compare_latency = FakeTimer({None: 2.0, ("a",): 1.0})

    results = control.PoolEvaluator(Pool(), 0.9, "absolute").evaluate([QuantPlan(fallback=("a",))])
    est, low, high = results[0].speedup
    assert low < est < high and 1.8 < est < 2.2


def test_time_rounds_keeps_rounds_apart_and_interleaves():
    def sleeper(seconds):
        return lambda feeds: time.sleep(seconds)

    per = time_rounds([sleeper(0.003), sleeper(0.001)], {}, warmup=1, rounds=3, block=3)
    assert [len(r) for r in per] == [3, 3] and all(len(t) == 3 for r in per for t in r)
    iv = ratio_interval([float(np.median(t)) for t in per[0]], [float(np.median(t)) for t in per[1]])
    assert iv.estimate > 1.5
    times = time_interleaved([sleeper(0.004), sleeper(0.001)], {}, warmup=1, rounds=2, block=3, min_seconds=0.03)
    assert all(sum(t) >= 2 * 30 for t in times) and len(times[1]) > len(times[0]) >= 6
    assert math.isfinite(iv.high)


def test_trials_running_a_finalists_graph_take_its_runoff_timing_and_all_fp32_is_off_the_front():
    records = [rec(0, ()), rec(1, (), activation_estimator="minmax"), rec(2, OPS)]
    choice = selection.choose(records, FakeTimer({None: 2.0, (): 1.0}), ops=OPS, base=BASE)
    by_number = {r.number: r for r in choice.records}
    assert by_number[1].remeasured and by_number[1].speedup == by_number[0].speedup == choice.speedup.estimate
    assert not by_number[2].remeasured
    out = DriverOutcome(choice.record, choice.status, list(choice.records), n_quantizable=len(OPS))
    frame = out.trials_frame()
    assert frame["int8"].tolist() == [True, True, False]
    assert 2 not in out.pareto()["number"].tolist()
