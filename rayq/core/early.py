"""Early stopping of hopeless candidates: validate in chunks, stop when the drop is sure
to be too large; skip a candidate that cannot beat the incumbents (:func:`cannot_beat`).

A candidate is validated on growing prefixes of one fixed, seeded permutation of the
validation items (by default 25 %, 50 %, then 100 %). After each chunk but the last,
the paired per-item differences ``d_i = fp32_i - int8_i`` of the items seen so far give
a one-sided lower confidence bound on the drop over *all* items; when that bound
already exceeds ``max_drop`` the candidate cannot meet the budget (with the bound's
confidence) and the rest of its validation is skipped.

This is exact only when the metric is the mean of its per-item values: then the drop
over all ``N`` items is exactly the mean of the ``N`` differences, and the items seen are
a simple random sample (without replacement) of them. :func:`chunkable` checks that on
the FP32 validation; otherwise candidates are validated whole, as without early stopping.

The bound (:func:`drop_lower_bound`): with ``n`` of ``N`` items seen, sample mean
``m`` and sample standard deviation ``s`` of the differences,

    ``lower = m - t(1 - alpha, n - 1) * s / sqrt(n) * sqrt((N - n) / (N - 1))``

a one-sided Student-t bound at confidence ``1 - alpha`` (99.9 % by default) with the
finite-population correction of sampling without replacement; for a relative drop it is
divided by ``|fp32 metric|``. It rests on the sample mean being close to normal, so no
bound is taken on fewer than :data:`MIN_ITEMS` items. Distribution-free bounds
(Hoeffding-Serfling, empirical Bernstein-Serfling) were rejected: on 0/1 accuracies
(differences in [-1, 1]) their margin at 250 of 1000 items is 0.2-0.3, so they would
never stop a candidate at a budget of 0.01. At 99.9 % a candidate that would meet the
budget is stopped with probability about 0.1 % or less (the bound is one-sided, and a
candidate whose true drop is below ``max_drop`` is further still from the threshold);
when all ``N`` items are seen the bound is the exact drop.

Example:
    >>> import numpy as np
    >>> fp32 = np.ones(1000)
    >>> bad = np.r_[np.zeros(300), np.ones(700)]          # 30 % of the items lost
    >>> rule = EarlyStop(fp32, 1.0, max_drop=0.01)
    >>> first = rule.chunks()[0]
    >>> len(first), rule.should_stop(first, bad[first])
    (250, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Share of the items validated before each check (cumulative; the last is all items).
CHUNKS = (0.25, 0.5, 1.0)
#: One-sided confidence of the lower bound on the drop.
CONFIDENCE = 0.999
#: No bound is taken on fewer items (the t-bound needs a near-normal sample mean).
MIN_ITEMS = 30
#: ``metric == mean(per_item)`` within this relative tolerance makes chunks exact.
MEAN_RTOL = 1e-9
#: One-sided standard-normal quantiles by confidence.
_Z = {0.95: 1.6448536269514722, 0.99: 2.3263478740408408, 0.999: 3.090232306167813}


def chunkable(metric: float, per_item: np.ndarray | None, n_items: int) -> bool:
    """Whether chunked validation is exact: one per-item value per item, and the
    metric is their mean (relative tolerance :data:`MEAN_RTOL`).

    Example:
        >>> chunkable(0.5, np.array([0.0, 1.0]), 2), chunkable(0.6, np.array([0.0, 1.0]), 2)
        (True, False)
    """
    if per_item is None or len(per_item) != n_items or n_items == 0:
        return False
    mean = float(np.mean(np.asarray(per_item, np.float64)))
    return math.isfinite(mean) and math.isclose(float(metric), mean, rel_tol=MEAN_RTOL, abs_tol=1e-12)


def t_quantile(confidence: float, df: int) -> float:
    """One-sided Student-t quantile (Cornish-Fisher expansion about the normal one;
    within 0.1 % of the exact value for ``df >= 10``).

    Example:
        >>> round(t_quantile(0.999, 29), 2), round(t_quantile(0.999, 10**6), 3)
        (3.4, 3.09)
    """
    if confidence not in _Z:
        raise ValueError(f"confidence {confidence} not in {sorted(_Z)}")
    if df < 1:
        return math.inf
    z, v = _Z[confidence], float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


def mean_lower_bound(diffs: np.ndarray, population: int, confidence: float = CONFIDENCE) -> float:
    """One-sided lower confidence bound on the mean of ``population`` values from a
    simple random sample ``diffs`` of them (t-bound with finite-population correction).

    Returns ``-inf`` for fewer than :data:`MIN_ITEMS` values, the exact mean when the
    sample is the whole population.

    Example:
        >>> mean_lower_bound(np.ones(40), 100)
        1.0
        >>> mean_lower_bound(np.ones(10), 100)
        -inf
    """
    d = np.asarray(diffs, np.float64)
    n = len(d)
    if n >= population:
        return float(np.mean(d))
    if n < MIN_ITEMS:
        return -math.inf
    fpc = math.sqrt((population - n) / (population - 1))
    return float(np.mean(d) - t_quantile(confidence, n - 1) * np.std(d, ddof=1) / math.sqrt(n) * fpc)


@dataclass(frozen=True, eq=False)
class EarlyStop:
    """The stopping rule of one search: the FP32 per-item values, the budget and the chunks.

    Args:
        fp32_items: FP32 per-item values, one per validation item (in item order).
        fp32_metric: The FP32 metric (their mean).
        max_drop: The budget; a candidate stops when the drop's lower bound exceeds it.
        drop_type: ``"absolute"`` or ``"relative"`` (divided by ``|fp32_metric|``).
        seed: Seeds the item order (fixed per search, so results are deterministic).
        fractions: Cumulative shares of the items validated before each check.
        confidence: One-sided confidence of the bound.
    """

    fp32_items: np.ndarray
    fp32_metric: float
    max_drop: float
    drop_type: str = "absolute"
    seed: int = 0
    fractions: Sequence[float] = CHUNKS
    confidence: float = CONFIDENCE

    @property
    def n_items(self) -> int:
        return len(self.fp32_items)

    def chunks(self) -> list[np.ndarray]:
        """The item indices of each chunk (disjoint, in validation order; together all items)."""
        n = self.n_items
        order = np.random.default_rng(self.seed).permutation(n)
        ends = sorted({min(n, max(1, math.ceil(f * n))) for f in self.fractions} | {n})
        starts = [0, *ends[:-1]]
        return [order[a:b] for a, b in zip(starts, ends)]

    def drop_lower_bound(self, seen: np.ndarray, int8_values: np.ndarray) -> float:
        """Lower bound on the candidate's drop over all items from the items ``seen``
        (indices) and its per-item values there."""
        diffs = np.asarray(self.fp32_items, np.float64)[seen] - np.asarray(int8_values, np.float64)
        bound = mean_lower_bound(diffs, self.n_items, self.confidence)
        if self.drop_type == "relative":
            return bound / abs(self.fp32_metric) if self.fp32_metric else -math.inf
        return bound

    def should_stop(self, seen: np.ndarray, int8_values: np.ndarray) -> bool:
        """Whether the drop's lower bound already exceeds ``max_drop`` (never on all items:
        the full validation is the exact answer, judged by the search itself)."""
        if len(seen) >= self.n_items:
            return False
        return self.drop_lower_bound(seen, int8_values) > self.max_drop + 1e-12


#: Costs closer than this count as equal (an incumbent must be strictly cheaper).
COST_TOL = 1e-12


def cannot_beat(cost: float, incumbent_costs: Sequence[float], needed: int) -> bool:
    """Whether a candidate of deterministic ``cost`` (:mod:`rayq.core.cost`) is beaten
    before it is validated: at least ``needed`` feasible incumbents are strictly cheaper.

    A search that chooses among its ``needed`` cheapest feasible plans (its finalists)
    can never choose such a candidate, whatever its accuracy, so validating it is
    wasted work. ``needed < 1`` never stops anything.

    Example:
        >>> cannot_beat(0.3, [0.1, 0.2, 0.3], 2), cannot_beat(0.3, [0.1, 0.3], 2)
        (True, False)
    """
    if needed < 1:
        return False
    return sum(c < cost - COST_TOL for c in incumbent_costs) >= needed


__all__ = [
    "CHUNKS",
    "CONFIDENCE",
    "COST_TOL",
    "MIN_ITEMS",
    "EarlyStop",
    "cannot_beat",
    "chunkable",
    "mean_lower_bound",
    "t_quantile",
]
