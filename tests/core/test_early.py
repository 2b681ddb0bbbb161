"""The early-stopping bound and rule (pure numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rayq.core.early import MIN_ITEMS, EarlyStop, chunkable, mean_lower_bound, t_quantile


def _binary(n: int, rate: float, seed: int) -> np.ndarray:
    """0/1 per-item correctness with exactly ``round(rate * n)`` ones, shuffled."""
    v = np.zeros(n)
    v[: round(rate * n)] = 1.0
    return np.random.default_rng(seed).permutation(v)


def test_t_quantile_matches_tables():
    # one-sided 99.9 % Student t quantiles (tables): df 10, 29, 60, 120
    for df, exact in ((10, 4.144), (29, 3.396), (60, 3.232), (120, 3.160)):
        assert t_quantile(0.999, df) == pytest.approx(exact, rel=2e-3)
    assert t_quantile(0.999, 10**9) == pytest.approx(3.0902, abs=1e-4)


def test_lower_bound_exact_on_whole_population_and_none_on_few_items():
    d = np.random.default_rng(0).normal(0.1, 1.0, 200)
    assert mean_lower_bound(d, 200) == pytest.approx(d.mean())
    assert mean_lower_bound(d[: MIN_ITEMS - 1], 200) == -math.inf
    # finite-population correction: the more of the population seen, the tighter
    assert mean_lower_bound(d[:100], 200) > mean_lower_bound(d[:100], 10**6)


def test_lower_bound_coverage_on_binary_differences():
    """Over many seeded orders, the 99.9 % bound exceeds the true mean drop rarely."""
    fp32 = _binary(1000, 0.9, 1)
    int8 = fp32.copy()
    int8[np.flatnonzero(fp32)[:20]] = 0.0  # a 2-point drop: d = 1 on 20 items, 0 elsewhere
    true = float(np.mean(fp32 - int8))
    misses = 0
    for seed in range(2000):
        idx = np.random.default_rng(seed).permutation(1000)[:250]
        misses += mean_lower_bound(fp32[idx] - int8[idx], 1000) > true
    assert misses / 2000 <= 0.005


def test_chunkable_needs_per_item_values_whose_mean_is_the_metric():
    v = np.array([1.0, 0.0, 1.0, 1.0])
    assert chunkable(0.75, v, 4)
    assert chunkable(0.75 * (1 + 1e-12), v, 4)
    assert not chunkable(0.75 * (1 + 1e-6), v, 4)
    assert not chunkable(0.75, None, 4)
    assert not chunkable(0.75, v, 5)


def test_chunks_are_seeded_disjoint_and_cover_all_items():
    rule = EarlyStop(np.ones(401), 1.0, 0.01, seed=3)
    chunks = rule.chunks()
    assert [len(c) for c in chunks] == [101, 100, 200]
    assert sorted(np.concatenate(chunks).tolist()) == list(range(401))
    again = EarlyStop(np.ones(401), 1.0, 0.01, seed=3).chunks()
    assert all(np.array_equal(a, b) for a, b in zip(chunks, again))
    assert not np.array_equal(chunks[0], EarlyStop(np.ones(401), 1.0, 0.01, seed=4).chunks()[0])


def _first_stop(rule: EarlyStop, int8: np.ndarray) -> int | None:
    """The number of items seen when ``rule`` stops ``int8`` (None: validated whole)."""
    seen = np.zeros(0, dtype=np.int64)
    for chunk in rule.chunks():
        seen = np.concatenate([seen, chunk])
        if rule.should_stop(seen, int8[seen]):
            return len(seen)
    return None


def test_clearly_bad_candidate_stops_after_the_first_chunk():
    fp32 = _binary(1000, 0.9, 0)
    bad = fp32.copy()
    bad[np.flatnonzero(fp32)[:150]] = 0.0  # drop 0.15 at max_drop 0.01
    rule = EarlyStop(fp32, float(fp32.mean()), max_drop=0.01, seed=0)
    assert _first_stop(rule, bad) == 250


@pytest.mark.parametrize("drop_type", ["absolute", "relative"])
def test_borderline_feasible_candidates_are_never_stopped(drop_type):
    """Candidates exactly at the budget (in many item orders and item patterns) run whole."""
    fp32 = _binary(1000, 0.9, 0)
    fp32_metric = float(fp32.mean())
    budget = 0.01 if drop_type == "absolute" else 0.01 / fp32_metric  # 10 items lost either way
    for seed in range(300):
        rng = np.random.default_rng(seed)
        int8 = fp32.copy()
        lost = rng.choice(np.flatnonzero(fp32), 15, replace=False)
        gained = rng.choice(np.flatnonzero(fp32 == 0), 5, replace=False)
        int8[lost], int8[gained] = 0.0, 1.0  # net: 10 items lost, drop == max_drop
        rule = EarlyStop(fp32, fp32_metric, budget, drop_type, seed=seed)
        assert _first_stop(rule, int8) is None


def test_relative_drop_divides_by_the_fp32_metric():
    fp32 = np.full(400, 0.5)
    int8 = np.full(400, 0.4)
    seen = np.arange(100)
    absolute = EarlyStop(fp32, 0.5, 0.15).drop_lower_bound(seen, int8[seen])
    relative = EarlyStop(fp32, 0.5, 0.15, "relative").drop_lower_bound(seen, int8[seen])
    assert absolute == pytest.approx(0.1) and relative == pytest.approx(0.2)
    assert not EarlyStop(fp32, 0.5, 0.15).should_stop(seen, int8[seen])
    assert EarlyStop(fp32, 0.5, 0.15, "relative").should_stop(seen, int8[seen])


def test_never_stops_on_all_items():
    fp32, int8 = np.ones(100), np.zeros(100)
    rule = EarlyStop(fp32, 1.0, 0.01)
    assert not rule.should_stop(np.arange(100), int8)
