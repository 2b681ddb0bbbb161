"""Speed-up statistics: confidence intervals on latency ratios, and what "faster" means.

Latencies are compared only when they were timed in the same *rounds* (interleaved
turns on one worker, :func:`rayq.pipeline.latency.time_rounds`): each round gives
every model a turn, so the round's ratio of two medians cancels the machine's drift
(load, clocks, neighbours) that separate timings only average over. The speed-up of
``b`` over ``a`` is the geometric mean of the per-round ratios ``a / b``; its interval
is a Student-t interval on their logarithms (rounds are the independent units).

``b`` counts as *faster* than ``a`` only when the whole interval lies above
``1 + margin``; two models whose interval reaches into ``[1/(1+margin), 1+margin]``
*tie*. A comparison is *decided* when more rounds cannot change its verdict: one is
faster, or the interval lies inside the tie band (a clear tie).

Example:
    >>> iv = ratio_interval([2.0, 2.1, 1.9, 2.0], [1.0, 1.05, 0.95, 1.0])
    >>> round(iv.estimate, 3), iv.faster(0.03), iv.decided(0.03)
    (2.0, True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Relative margin a speed-up's interval must clear to count (3 %).
SPEEDUP_MARGIN = 0.03
#: Two-sided confidence level of the intervals.
CONFIDENCE = 0.95

# Student t quantiles (two-sided 95 %) by degrees of freedom; 1.96 beyond the table.
_T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_quantile(df: int) -> float:
    """The two-sided 95 % Student t quantile for ``df`` degrees of freedom.

    Example:
        >>> t_quantile(4), t_quantile(1000)
        (2.776, 1.96)
    """
    if df < 1:
        return math.inf
    return _T95[df - 1] if df <= len(_T95) else 1.96


@dataclass(frozen=True)
class Interval:
    """A speed-up (ratio of latencies, > 1: faster) with its 95 % confidence interval.

    Attributes:
        estimate: Geometric mean of the per-round ratios.
        low / high: Interval bounds (``low == high == estimate`` with one round
            is never produced: one round gives ``(0, inf)``).
        rounds: Rounds the interval rests on.
    """

    estimate: float
    low: float
    high: float
    rounds: int

    def faster(self, margin: float = SPEEDUP_MARGIN) -> bool:
        """The interval lies above ``1 + margin``: significantly faster."""
        return self.low > 1.0 + margin

    def slower(self, margin: float = SPEEDUP_MARGIN) -> bool:
        """The inverse ratio is significantly faster."""
        return self.high < 1.0 / (1.0 + margin)

    def tied(self, margin: float = SPEEDUP_MARGIN) -> bool:
        """Clearly a tie: the whole interval lies inside ``[1/(1+margin), 1+margin]``."""
        return self.low >= 1.0 / (1.0 + margin) and self.high <= 1.0 + margin

    def decided(self, margin: float = SPEEDUP_MARGIN) -> bool:
        """More rounds cannot change the verdict (faster, slower or clearly tied)."""
        return self.faster(margin) or self.slower(margin) or self.tied(margin)

    def inverse(self) -> Interval:
        return Interval(
            1.0 / self.estimate,
            1.0 / self.high if self.high else math.inf,
            1.0 / self.low if self.low else math.inf,
            self.rounds,
        )

    def text(self) -> str:
        """``1.23x [1.18, 1.29]``."""
        return f"{self.estimate:.2f}x [{self.low:.2f}, {self.high:.2f}]"

    def to_dict(self) -> dict:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "rounds": self.rounds,
            "confidence": CONFIDENCE,
        }


def ratio_interval(slow: Sequence[float], fast: Sequence[float]) -> Interval:
    """Speed-up of ``fast`` over ``slow`` from per-round latencies timed together.

    Args:
        slow: The reference's per-round latencies (e.g. FP32).
        fast: The candidate's latencies of the same rounds (same length).

    Returns:
        The geometric-mean ratio ``slow / fast`` and its t-interval on the log ratios.

    Example:
        >>> ratio_interval([1.0, 1.0], [1.0, 1.0]).estimate
        1.0
    """
    a, b = np.asarray(slow, np.float64), np.asarray(fast, np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a) or np.any(a <= 0) or np.any(b <= 0):
        raise ValueError(f"need equally many positive per-round latencies, got {list(a)} and {list(b)}")
    logs = np.log(a) - np.log(b)
    mean, n = float(logs.mean()), len(logs)
    if n < 2:
        return Interval(math.exp(mean), 0.0, math.inf, n)
    half = t_quantile(n - 1) * float(logs.std(ddof=1)) / math.sqrt(n)
    return Interval(math.exp(mean), math.exp(mean - half), math.exp(mean + half), n)


__all__ = ["SPEEDUP_MARGIN", "CONFIDENCE", "Interval", "ratio_interval", "t_quantile"]
