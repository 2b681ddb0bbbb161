"""Skipping candidates that cannot beat the incumbents (issue 13 item 7, second half):
pure logic on a fake pool with real Optuna. The skip must never change the answer nor
the search's path: the same trials are tried with and without it."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from rayq.core.early import cannot_beat
from rayq.pipeline.candidate import CandidateMetric
from rayq.pipeline.latency import Latency
from rayq.tuning import SearchSpace, selection
from rayq.tuning.control import AccuracyControl, SearchSettings

from .test_driver import BASE, FP32, fake_drop, fake_latency
from .test_resume import OPS, FakePool

optuna.logging.set_verbosity(optuna.logging.ERROR)
N_ITEMS = 100


class ItemPool(FakePool):
    """FakePool with per-item values (so the search knows its item count) and a count
    of the plans it validated; ``fp32_ms`` sets how fast FP32 is."""

    def __init__(self, fp32_ms: float = 20.0) -> None:
        super().__init__()
        self.validated: list[str] = []
        self.fp32_ms = fp32_ms

    def map_metric(self, plans, indices=None, stop=None):
        out = []
        for p in plans:
            value = FP32 if p is None else FP32 - fake_drop(p)
            if p is not None and indices is None:
                self.validated.append(p.key())
            per_item = np.full(N_ITEMS, value) if indices is None else None
            out.append(CandidateMetric("fp32" if p is None else p.key(), value, per_item, 0.01))
        return out

    def compare_latency(self, plans):
        self.timed.append([p.key() for p in plans if p is not None])
        rounds = (1.0, 1.01, 0.99, 1.0, 1.02)
        return [
            Latency(ms, 0.0, ms, 5, "onnxruntime", 1, tuple(ms * r for r in rounds))
            for ms in (self.fp32_ms if p is None else fake_latency(p) for p in plans)
        ]

    map_latency = compare_latency


def run(early_stop: bool, pool=None, **settings):
    kw = {
        "max_drop": 0.03,
        "n_trials": 40,
        "seed": 3,
        "study_name": "s",
        "early_stop": early_stop,
        "runoff_seconds": 0.5,
    }
    kw.update(settings)
    pool = pool or ItemPool()
    control = AccuracyControl(pool, BASE, OPS, SearchSpace(ranking=OPS), SearchSettings(**kw))
    best, status, records = control.run()
    return best, status, records, pool


def test_cannot_beat_needs_enough_strictly_cheaper_incumbents():
    assert cannot_beat(0.5, [0.1, 0.2], 2) and not cannot_beat(0.5, [0.1, 0.2], 3)
    assert not cannot_beat(0.2, [0.1, 0.2, 0.2], 2)  # equal cost is no incumbent
    assert not cannot_beat(0.9, [0.1] * 5, 0)


@pytest.mark.parametrize(
    "settings",
    [
        {"explore": False, "finalists": 1, "n_trials": None},
        {"explore": False, "finalists": 2, "n_trials": None},
        {"explore": True, "n_trials": 40},
    ],
)
def test_skipped_candidates_leave_the_answer_and_the_path_unchanged(settings):
    best, status, records, pool = run(True, **settings)
    ref_best, ref_status, ref_records, ref_pool = run(False, **settings)
    assert (best.plan.key(), status) == (ref_best.plan.key(), ref_status) and status == "met"
    assert [r.plan.key() for r in records] == [r.plan.key() for r in ref_records]  # the same trials
    skipped = [r for r in records if r.early_stopped]
    assert skipped, "the fake task should leave candidates that cannot win"
    for r in skipped:  # not validated, not timed, counted in the table
        assert r.metric is None and r.latency_ms is None and not r.feasible
        assert r.validation_items_saved == N_ITEMS and r.plan.key() not in pool.validated
        cheaper = [q for q in records if q.number < r.number and q.feasible and q.cost < r.cost]
        assert len(cheaper) >= (settings.get("finalists") or selection.FINALISTS)
    assert len(pool.validated) == len(ref_pool.validated) - len(skipped)
    assert not any(r.early_stopped for r in ref_records)


def test_nsga2_exploration_never_skips():
    _, _, records, _ = run(True, explore=True, n_trials=16, sampler="nsga2")
    assert not any(r.early_stopped for r in records)


def test_no_speedup_validates_the_skipped_trials_before_choosing_the_most_accurate():
    settings = {"explore": False, "finalists": 1, "n_trials": None}
    slow_fp32 = 1.0  # every candidate is slower than FP32: the answer is the most accurate
    best, status, records, _ = run(True, ItemPool(slow_fp32), **settings)
    ref_best, ref_status, _, _ = run(False, ItemPool(slow_fp32), **settings)
    assert status == ref_status == "no_speedup"
    assert best.plan.key() == ref_best.plan.key() and best.metric is not None
    stopped = [r for r in records if r.early_stopped]
    assert stopped and all(r.metric is not None and r.validation_items_saved == 0 for r in stopped)
