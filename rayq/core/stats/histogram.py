"""Histograms on fixed edges shared by all shards (int64 counts, exact merge)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class Histogram:
    """Integer counts on fixed edges ``linspace(lo, hi, bins + 1)`` shared by all shards.

    Values below ``lo`` count in the first bin, above ``hi`` in the last one.

    Example:
        >>> h = Histogram(0.0, 1.0, 4)
        >>> h.update(np.array([0.1, 0.6, 7.0]))
        >>> h.counts.tolist()
        [1, 0, 1, 1]
    """

    lo: float
    hi: float
    bins: int
    counts: np.ndarray = field(default=None)  # type: ignore[arg-type]  # filled in by __post_init__

    def __post_init__(self) -> None:
        self.lo, self.hi, self.bins = float(self.lo), float(self.hi), int(self.bins)
        if not (math.isfinite(self.hi - self.lo) and self.lo < self.hi):
            raise ValueError(f"histogram needs finite lo < hi, got [{self.lo}, {self.hi}]")
        if self.bins < 1:
            raise ValueError(f"histogram needs bins >= 1, got {self.bins}")
        if self.counts is None:
            self.counts = np.zeros(self.bins, dtype=np.int64)
        self.counts = np.array(self.counts, dtype=np.int64).reshape(-1)
        if self.counts.shape != (self.bins,) or (self.counts < 0).any():
            raise ValueError(f"histogram counts must be {self.bins} non-negative integers")

    def update(self, values: np.ndarray) -> None:
        """Counts every element of ``values`` (any shape, finite)."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        if not np.isfinite(flat).all():
            raise ValueError("histogram cannot count NaN or Inf")
        edges = self.edges()
        with np.errstate(over="ignore"):  # huge values scale to +-inf, then clip
            scaled = np.floor((flat - self.lo) * (self.bins / (self.hi - self.lo)))
        index = np.clip(scaled, 0, self.bins - 1).astype(np.int64)
        index -= (flat < edges[index]) & (index > 0)  # as np.histogram: fix rounding
        index += (flat >= edges[index + 1]) & (index < self.bins - 1)
        self.counts += np.bincount(index, minlength=self.bins)

    def merge(self, other: Histogram) -> Histogram:
        """Returns a new histogram with summed counts; ValueError if the edges differ."""
        if (self.lo, self.hi, self.bins) != (other.lo, other.hi, other.bins):
            raise ValueError(
                f"histogram edges differ: [{self.lo}, {self.hi}]x{self.bins} vs [{other.lo}, {other.hi}]x{other.bins}"
            )
        return Histogram(self.lo, self.hi, self.bins, self.counts + other.counts)

    def edges(self) -> np.ndarray:
        """Returns the ``bins + 1`` bin edges (float64)."""
        return np.linspace(self.lo, self.hi, self.bins + 1)

    @property
    def total(self) -> int:
        """Number of values counted."""
        return int(self.counts.sum())

    def equals(self, other: Histogram) -> bool:
        """True when edges and counts are identical."""
        same_edges = (self.lo, self.hi, self.bins) == (other.lo, other.hi, other.bins)
        return same_edges and np.array_equal(self.counts, other.counts)

    def copy(self) -> Histogram:
        return Histogram(self.lo, self.hi, self.bins, self.counts.copy())
