"""Tests of rayq.core.estimators: range estimation from merged statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rayq.core.estimators import ESTIMATORS, MIN_WIDTH_REL, estimate_range, needs_histogram
from rayq.core.stats import TensorStatistics
from rayq.errors import ConfigError, DataError

MODES = [(False, False), (True, False), (True, True), (False, True)]  # (symmetric, unsigned)


def _stats(values, batches=100, bins=2048, lo=None, hi=None, name="t"):
    """Statistics of ``values`` split into ``batches`` batches of one sample each."""
    x = np.asarray(values, dtype=np.float32).reshape(batches, -1)
    s = TensorStatistics(name)
    bound = float(np.abs(x).max()) or 1.0
    s.enable_histogram(-bound if lo is None else lo, bound if hi is None else hi, bins)
    for row in x:
        s.update({"min": row.min(keepdims=True), "max": row.max(keepdims=True), "raw": row[None]})
    return s


def _fake_quant_mse(x, lo, hi, levels=256):
    scale = (hi - lo) / (levels - 1)
    q = np.clip(np.round((x - lo) / scale), 0, levels - 1)
    return float(np.mean((q * scale + lo - x) ** 2))


def test_needs_histogram_and_unknown_names():
    assert [needs_histogram(e) for e in ESTIMATORS] == [False, False, True, True]
    with pytest.raises(ConfigError, match="minmax, mean_minmax, quantile, histogram_mse"):
        needs_histogram("entropy")
    with pytest.raises(ConfigError, match="valid"):
        estimate_range(_stats(np.ones(100)), "kl", symmetric=True, unsigned=False)


def test_bad_arguments_and_missing_statistics():
    s = _stats(np.linspace(-1, 1, 100))
    with pytest.raises(ConfigError):
        estimate_range(s, "minmax", symmetric=True, unsigned=False, num_levels=1)
    with pytest.raises(ConfigError):
        estimate_range(s, "quantile", symmetric=True, unsigned=False, quantile=0.5)
    with pytest.raises(DataError, match="no calibration samples"):
        estimate_range(TensorStatistics("e"), "minmax", symmetric=True, unsigned=False)
    no_hist = TensorStatistics("n")
    no_hist.update({"min": np.array([-1.0]), "max": np.array([1.0])})
    for estimator in ("quantile", "histogram_mse"):
        with pytest.raises(ValueError, match="histogram pass"):
            estimate_range(no_hist, estimator, symmetric=True, unsigned=False)
    hist_only = TensorStatistics("h")
    hist_only.enable_histogram(-1, 1, 8)
    hist_only.update({"raw": np.zeros((1, 4))})
    with pytest.raises(ValueError, match="'min' and 'max'"):
        estimate_range(hist_only, "minmax", symmetric=True, unsigned=False)


def test_minmax_and_mean_minmax_known_values():
    s = TensorStatistics("x")
    s.update({"min": np.array([-1.0, -3.0]), "max": np.array([2.0, 6.0])})
    assert estimate_range(s, "minmax", symmetric=False, unsigned=False) == (-3.0, 6.0)
    assert estimate_range(s, "minmax", symmetric=True, unsigned=False) == (-6.0, 6.0)
    assert estimate_range(s, "minmax", symmetric=True, unsigned=True) == (0.0, 6.0)
    assert estimate_range(s, "mean_minmax", symmetric=False, unsigned=False) == (-2.0, 4.0)
    positive = TensorStatistics("relu")
    positive.update({"min": np.array([1.0, 3.0]), "max": np.array([2.0, 6.0])})
    assert estimate_range(positive, "mean_minmax", symmetric=False, unsigned=False) == (0.0, 4.0)


def test_uniform_distribution_ranges():
    x = np.random.default_rng(0).uniform(-2.0, 2.0, 100_000)
    s = _stats(x)
    lo, hi = estimate_range(s, "minmax", symmetric=False, unsigned=False)
    assert (lo, hi) == (float(np.float32(x).min()), float(np.float32(x).max()))
    lo, hi = estimate_range(s, "mean_minmax", symmetric=False, unsigned=False)
    assert -2.0 < lo < -1.99 and 1.99 < hi < 2.0  # 1000 samples per row: extremes near +-2
    lo, hi = estimate_range(s, "quantile", symmetric=False, unsigned=False, quantile=0.1)
    assert lo == pytest.approx(-1.6, abs=0.02) and hi == pytest.approx(1.6, abs=0.02)
    for symmetric in (False, True):  # uniform: nothing worth clipping
        lo, hi = estimate_range(s, "histogram_mse", symmetric=symmetric, unsigned=False)
        assert -2.0 <= lo < -1.96 and 1.96 < hi <= 2.0


def test_quantile_of_gaussian():
    x = np.random.default_rng(1).standard_normal(200_000)
    s = _stats(x, lo=-6.0, hi=6.0)
    lo, hi = estimate_range(s, "quantile", symmetric=False, unsigned=False, quantile=0.025)
    assert lo == pytest.approx(-1.96, abs=0.03) and hi == pytest.approx(1.96, abs=0.03)
    lo0, hi0 = estimate_range(s, "quantile", symmetric=False, unsigned=False, quantile=0.0)
    assert (lo0, hi0) == estimate_range(s, "minmax", symmetric=False, unsigned=False)


def test_histogram_mse_clips_heavy_tails_and_beats_minmax():
    rng = np.random.default_rng(2)
    x = rng.standard_t(3, 100_000).astype(np.float32)
    s = _stats(x)
    _, t = estimate_range(s, "histogram_mse", symmetric=True, unsigned=False)
    top = float(np.abs(x).max())
    assert 0.3 * top < t < 0.8 * top
    mse = _fake_quant_mse(x, -t, t)
    assert mse < 0.8 * _fake_quant_mse(x, -top, top)
    brute = min(_fake_quant_mse(x, -c, c) for c in np.linspace(top / 50, top, 400))
    assert mse < 1.1 * brute
    _, t16 = estimate_range(s, "histogram_mse", symmetric=True, unsigned=False, num_levels=16)
    assert t16 < 0.5 * t  # fewer levels: rounding costs more, so clip harder


def test_histogram_mse_clips_gaussian_outliers_asymmetric():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(99_000), rng.uniform(6.0, 12.0, 1_000)])
    s = _stats(rng.permutation(x))
    lo, hi = estimate_range(s, "histogram_mse", symmetric=False, unsigned=False, num_levels=16)
    assert -4.5 < lo < -1.5 and hi < 11.0
    assert _fake_quant_mse(x, lo, hi, 16) < _fake_quant_mse(x, x.min(), x.max(), 16)


def test_unsigned_relu_output():
    x = np.maximum(np.random.default_rng(4).standard_normal(100_000), 0.0)
    s = _stats(x, lo=0.0)
    for estimator in ESTIMATORS:
        lo, hi = estimate_range(s, estimator, symmetric=True, unsigned=True)
        assert lo == 0.0 and 2.0 < hi <= x.max() + 1e-6


@pytest.mark.parametrize("value", [0.0, 3.5, -2.0, 1e-12])
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("symmetric, unsigned", MODES)
def test_constant_tensors_give_positive_width(value, estimator, symmetric, unsigned):
    s = _stats(np.full(400, value), batches=4, bins=16, lo=-4.0, hi=4.0)
    lo, hi = estimate_range(s, estimator, symmetric=symmetric, unsigned=unsigned)
    assert lo <= 0.0 <= hi and hi - lo >= MIN_WIDTH_REL
    if not unsigned and value != 0.0 and estimator != "histogram_mse":
        assert lo <= value <= hi


@settings(max_examples=40, deadline=None, database=None)
@given(
    st.data(),
    hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 30)), elements=st.floats(-1e6, 1e6, width=32)),
)
def test_every_range_contains_zero_and_has_the_mode_shape(data, x):
    s = TensorStatistics("t")
    s.enable_histogram(-1e6, 1e6, 64)
    for row in x:
        s.update({"min": row.min(keepdims=True), "max": row.max(keepdims=True), "raw": row[None]})
    estimator = data.draw(st.sampled_from(ESTIMATORS))
    symmetric, unsigned = data.draw(st.sampled_from(MODES))
    lo, hi = estimate_range(s, estimator, symmetric=symmetric, unsigned=unsigned, num_levels=256)
    assert np.isfinite([lo, hi]).all() and lo <= 0.0 <= hi and hi - lo >= MIN_WIDTH_REL
    if symmetric:
        assert lo == (0.0 if unsigned else -hi)
    if unsigned:
        assert lo == 0.0


def test_estimates_do_not_depend_on_sharding():
    rng = np.random.default_rng(5)
    x = rng.standard_t(4, (64, 50)).astype(np.float32)
    whole = _stats(x, batches=64, lo=-40.0, hi=40.0)
    halves = [_stats(part, batches=32, lo=-40.0, hi=40.0) for part in (x[32:], x[:32])]
    merged = halves[0].merge(halves[1])
    for estimator in ESTIMATORS:
        for symmetric, unsigned in MODES:
            kwargs = {"symmetric": symmetric, "unsigned": unsigned}
            assert estimate_range(merged, estimator, **kwargs) == estimate_range(whole, estimator, **kwargs)
