"""Range estimators: pure functions from :class:`TensorStatistics` to a quantization range.

- ``minmax``: global (min, max) over all calibration samples.
- ``mean_minmax``: mean over samples of the per-sample min and max.
- ``quantile``: the ``quantile`` and ``1 - quantile`` quantiles of the histogram
  (linear interpolation inside a bin), clamped to the global min/max when known.
- ``histogram_mse``: the clipping range that minimises the expected quantization
  error (clipping error + uniform rounding error ``step**2 / 12``) over the
  histogram, searched over :data:`MSE_CANDIDATES` thresholds per bound.

Every result is then shaped for the quantizer: it is widened to contain 0;
``symmetric`` gives ``(-t, t)``; ``unsigned`` pins the lower bound to 0
(negative values are clipped: the caller declares the tensor non-negative, as
after a ReLU); and the width is at least ``MIN_WIDTH_REL * max(1, |lo|, |hi|)``
so constant (e.g. all-zero) tensors still give a positive scale.

The estimators only read finalized, bit-exact statistics, so their results do
not depend on how calibration was sharded.
"""

from __future__ import annotations

import numpy as np

from rayq.core.stats import Histogram, TensorStatistics
from rayq.errors import ConfigError, DataError

ESTIMATORS = ("minmax", "mean_minmax", "quantile", "histogram_mse")
#: Relative minimum width of a range (absolute 1e-8 for ranges within [-1, 1]).
MIN_WIDTH_REL = 1e-8
#: Number of candidate thresholds per bound searched by ``histogram_mse``.
MSE_CANDIDATES = 160

_NEEDS_HISTOGRAM = frozenset({"quantile", "histogram_mse"})


def _check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ConfigError(f"unknown range estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")


def needs_histogram(estimator: str) -> bool:
    """Tells whether ``estimator`` needs a histogram pass over the raw tensors.

    Example:
        >>> needs_histogram("minmax"), needs_histogram("histogram_mse")
        (False, True)

    Raises:
        ConfigError: unknown estimator.
    """
    _check_estimator(estimator)
    return estimator in _NEEDS_HISTOGRAM


def estimate_range(
    stats: TensorStatistics,
    estimator: str,
    *,
    symmetric: bool,
    unsigned: bool,
    num_levels: int = 256,
    quantile: float = 1e-4,
) -> tuple[float, float]:
    """Estimates the quantization range ``(lo, hi)`` of one tensor.

    Args:
        stats: Finalized statistics of the tensor.
        estimator: One of :data:`ESTIMATORS`.
        symmetric: Return ``(-t, t)`` (or ``(0, t)`` when ``unsigned``).
        unsigned: Pin the lower bound to 0.
        num_levels: Number of quantization levels (used by ``histogram_mse``).
        quantile: Tail mass cut on each side by ``quantile``, in ``[0, 0.5)``.

    Returns:
        ``(lo, hi)`` with ``lo <= 0 <= hi`` and ``hi - lo > 0``.

    Raises:
        ConfigError: unknown estimator, ``num_levels < 2`` or bad ``quantile``.
        DataError: the statistics hold no sample.
        ValueError: the reductions the estimator needs were not collected
            (``quantile`` and ``histogram_mse`` need a histogram pass).

    Example:
        >>> s = TensorStatistics("x")
        >>> s.update({"min": np.array([-1.0, -3.0]), "max": np.array([2.0, 4.0])})
        >>> estimate_range(s, "minmax", symmetric=False, unsigned=False)
        (-3.0, 4.0)
        >>> estimate_range(s, "mean_minmax", symmetric=True, unsigned=False)
        (-3.0, 3.0)
    """
    _check_estimator(estimator)
    if int(num_levels) != num_levels or num_levels < 2:
        raise ConfigError(f"num_levels must be an integer >= 2, got {num_levels!r}")
    if not 0.0 <= quantile < 0.5:
        raise ConfigError(f"quantile must be in [0, 0.5), got {quantile!r}")
    if stats.n == 0:
        raise DataError(f"tensor {stats.name!r}: no calibration samples were collected")
    if estimator == "minmax":
        lo, hi = _require_minmax(stats, estimator)
    elif estimator == "mean_minmax":
        _require_minmax(stats, estimator)
        lo, hi = stats.mean_min, stats.mean_max  # type: ignore[assignment]  # fed: _require_minmax checked
    elif estimator == "quantile":
        lo, hi = _quantile_range(stats, quantile)
    else:
        lo, hi = _mse_range(stats, symmetric, unsigned, int(num_levels))
    return _shape_range(lo, hi, symmetric=symmetric, unsigned=unsigned)


def _require_minmax(stats: TensorStatistics, estimator: str) -> tuple[float, float]:
    if not {"min", "max"} <= stats.kinds:
        raise ValueError(f"tensor {stats.name!r}: estimator {estimator!r} needs the 'min' and 'max' reductions")
    return stats.min, stats.max


def _require_histogram(stats: TensorStatistics, estimator: str) -> Histogram:
    if stats.hist is None or stats.hist.total == 0:
        raise ValueError(
            f"tensor {stats.name!r}: estimator {estimator!r} needs a histogram; "
            "run a histogram pass (enable_histogram + 'raw' reductions) first"
        )
    return stats.hist


def _shape_range(lo: float, hi: float, *, symmetric: bool, unsigned: bool) -> tuple[float, float]:
    """Makes ``(lo, hi)`` contain 0, applies the mode and the minimum width."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if unsigned:
        lo = 0.0
    eps = MIN_WIDTH_REL * max(1.0, -lo, hi)
    if symmetric:
        t = max(-lo, hi, eps)
        return (0.0, t) if unsigned else (-t, t)
    if hi - lo < eps:
        hi = lo + eps
    return lo + 0.0, hi


def _data_extent(stats: TensorStatistics, hist: Histogram) -> tuple[float, float]:
    """Outer edges of the non-empty bins, tightened by the global min/max if known."""
    edges = hist.edges()
    nonzero = np.flatnonzero(hist.counts)
    lo, hi = float(edges[nonzero[0]]), float(edges[nonzero[-1] + 1])
    if {"min", "max"} <= stats.kinds:
        lo, hi = max(lo, stats.min), min(hi, stats.max)
    return lo, hi


def _hist_quantile(hist: Histogram, q: float) -> float:
    """The ``q`` quantile of a non-empty histogram, linear inside a bin."""
    edges = hist.edges()
    cum = np.cumsum(hist.counts)
    target = q * float(cum[-1])
    if target <= 0.0:
        return float(edges[np.flatnonzero(hist.counts)[0]])
    j = int(np.searchsorted(cum, target, side="left"))
    before = float(cum[j - 1]) if j else 0.0
    frac = (target - before) / float(hist.counts[j])
    return float(edges[j] + frac * (edges[j + 1] - edges[j]))


def _quantile_range(stats: TensorStatistics, q: float) -> tuple[float, float]:
    hist = _require_histogram(stats, "quantile")
    lo, hi = _hist_quantile(hist, q), _hist_quantile(hist, 1.0 - q)
    if {"min", "max"} <= stats.kinds:
        lo = min(max(lo, stats.min), stats.max)
        hi = min(max(hi, stats.min), stats.max)
    return lo, hi


class _Moments:
    """Prefix sums of count, value and squared value over the bin centers."""

    def __init__(self, hist: Histogram) -> None:
        edges = hist.edges()
        self.centers = (edges[:-1] + edges[1:]) / 2.0
        counts = hist.counts.astype(np.float64)
        zero = np.zeros(1)
        self.n = np.concatenate([zero, np.cumsum(counts)])
        self.s1 = np.concatenate([zero, np.cumsum(counts * self.centers)])
        self.s2 = np.concatenate([zero, np.cumsum(counts * self.centers**2)])

    def below(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Count of values below each ``a`` and their squared clipping error."""
        j = np.searchsorted(self.centers, a, side="left")
        err = a**2 * self.n[j] - 2.0 * a * self.s1[j] + self.s2[j]
        return self.n[j], np.maximum(err, 0.0)

    def above(self, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Count of values above each ``b`` and their squared clipping error."""
        k = np.searchsorted(self.centers, b, side="right")
        n, s1, s2 = self.n[-1] - self.n[k], self.s1[-1] - self.s1[k], self.s2[-1] - self.s2[k]
        return n, np.maximum(b**2 * n - 2.0 * b * s1 + s2, 0.0)


def _mse_range(stats: TensorStatistics, symmetric: bool, unsigned: bool, num_levels: int) -> tuple[float, float]:
    """Grid search of the range minimising clipping + rounding error."""
    hist = _require_histogram(stats, "histogram_mse")
    data_lo, data_hi = _data_extent(stats, hist)
    moments = _Moments(hist)
    fractions = np.arange(MSE_CANDIDATES + 1) / MSE_CANDIDATES
    top = max(data_hi, 0.0)
    if symmetric and not unsigned:
        top = max(top, -data_lo)
        lows, highs = -top * fractions, top * fractions
        errors = _range_errors(moments, lows, highs, num_levels)
        best = int(np.argmin(errors))
        return float(lows[best]), float(highs[best])
    lows = np.zeros(1) if unsigned else min(data_lo, 0.0) * fractions
    highs = top * fractions
    errors = _range_errors(moments, lows[:, None], highs[None, :], num_levels)
    i, j = np.unravel_index(int(np.argmin(errors)), errors.shape)
    return float(lows[i]), float(highs[j])


def _range_errors(moments: _Moments, lows: np.ndarray, highs: np.ndarray, num_levels: int) -> np.ndarray:
    """Total squared error of quantizing into ``[low, high]`` (broadcast); inf for zero width."""
    n_below, err_below = moments.below(lows)
    n_above, err_above = moments.above(highs)
    width = highs - lows
    inside = np.maximum(moments.n[-1] - n_below - n_above, 0.0)
    rounding = inside * (width / (num_levels - 1)) ** 2 / 12.0
    return np.where(width > 0, err_below + err_above + rounding, np.inf)
