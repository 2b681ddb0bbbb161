"""Mergeable statistics of one tensor over calibration samples."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from rayq.core.stats.exact import ExactSum, _same_bits
from rayq.core.stats.histogram import Histogram
from rayq.errors import DataError

#: Keys a backend may return per tensor and batch (first axis = samples).
REDUCTIONS = ("min", "max", "ch_mean", "ch_absmax", "raw", "ch_min", "ch_max")


def _merge_optional(a, b, merge):
    """Merges two optional statistics (ExactSum, ndarray, Histogram); a lone one is copied."""
    if a is None or b is None:
        lone = b if a is None else a
        return None if lone is None else lone.copy()
    return merge(a, b)


class TensorStatistics:
    """Mergeable statistics of one tensor (activation) over calibration samples.

    The set of reductions fed (``kinds``) is fixed by the first update: a later
    batch, or a merged shard, with another set raises ``ValueError``, since the
    per-sample means would otherwise be over different samples.

    Example:
        >>> s = TensorStatistics("relu_1")
        >>> s.update({"min": np.array([-1.0, 0.0]), "max": np.array([2.0, 4.0])})
        >>> (s.n, s.min, s.max, s.mean_max)
        (2, -1.0, 4.0, 3.0)
    """

    def __init__(self, name: str) -> None:
        """Creates empty statistics for the tensor ``name``."""
        self.name, self.n = name, 0
        self.kinds: frozenset[str] = frozenset()
        self.min, self.max = math.inf, -math.inf
        self.sum_min, self.sum_max = ExactSum(), ExactSum()
        self.channel_sum: ExactSum | None = None
        self.channel_absmax: np.ndarray | None = None
        self.channel_min: np.ndarray | None = None
        self.channel_max: np.ndarray | None = None
        self.hist: Histogram | None = None

    @property
    def channels(self) -> int | None:
        """Number of channels of the channel statistics, or None."""
        if self.channel_sum is not None:
            return self.channel_sum.shape[0]
        for arr in (self.channel_absmax, self.channel_min, self.channel_max):
            if arr is not None:
                return len(arr)
        return None

    @property
    def mean_min(self) -> float | None:
        """Mean over samples of the per-sample minimum, or None when not fed."""
        return float(self.sum_min.value()) / self.n if "min" in self.kinds else None

    @property
    def mean_max(self) -> float | None:
        """Mean over samples of the per-sample maximum, or None when not fed."""
        return float(self.sum_max.value()) / self.n if "max" in self.kinds else None

    @property
    def channel_mean(self) -> np.ndarray | None:
        """Per-channel mean over samples (float64 [C]), or None when not fed."""
        return None if self.channel_sum is None else self.channel_sum.value() / self.n

    def enable_histogram(self, lo: float, hi: float, bins: int) -> None:
        """Makes ``"raw"`` reductions count into a histogram on shared edges.

        Idempotent for the same edges; ValueError for other edges or after the
        first update.
        """
        hist = Histogram(lo, hi, bins)
        if self.hist is not None:
            self.hist.merge(hist)  # raises when the edges differ
            return
        if self.n:
            raise ValueError(f"tensor {self.name!r}: enable the histogram before the first update")
        self.hist = hist

    def update(self, reductions: Mapping[str, np.ndarray]) -> None:
        """Absorbs one batch of reductions (keys of :data:`REDUCTIONS`).

        Raises:
            DataError: a reduction holds NaN or Inf.
            ValueError: unknown keys, inconsistent shapes, another set of keys
                than earlier batches, or ``"raw"`` without a histogram.
        """
        self._apply(self._checked(reductions))

    def _checked(self, reductions: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        where = f"tensor {self.name!r}"
        unknown = set(reductions) - set(REDUCTIONS)
        if unknown or not reductions:
            raise ValueError(f"{where}: reductions must be among {REDUCTIONS}, got {sorted(reductions)}")
        if self.n and set(reductions) != self.kinds:
            raise ValueError(f"{where}: got reductions {sorted(reductions)}, earlier {sorted(self.kinds)}")
        if "raw" in reductions and self.hist is None:
            raise ValueError(f"{where}: 'raw' given but no histogram enabled")
        arrays = {key: np.asarray(value) for key, value in reductions.items()}
        for key, arr in arrays.items():
            if not np.isfinite(arr).all():
                raise DataError(f"{where}: reduction {key!r} holds NaN or Inf")
            ndim = {"min": 1, "max": 1, "ch_mean": 2, "ch_absmax": 2, "ch_min": 2, "ch_max": 2}.get(key, arr.ndim)
            if arr.ndim != ndim or arr.ndim == 0 or arr.shape[0] == 0:
                raise ValueError(f"{where}: reduction {key!r} has bad shape {arr.shape}")
        if len({arr.shape[0] for arr in arrays.values()}) != 1:
            raise ValueError(f"{where}: reductions disagree on the batch size")
        widths = {arrays[k].shape[1] for k in ("ch_mean", "ch_absmax", "ch_min", "ch_max") if k in arrays}
        if self.channels is not None:
            widths.add(self.channels)
        if len(widths) > 1:
            raise ValueError(f"{where}: channel counts disagree: {sorted(widths)}")
        if "ch_absmax" in arrays and (arrays["ch_absmax"] < 0).any():
            raise DataError(f"{where}: reduction 'ch_absmax' holds negative values")
        return arrays

    def _apply(self, arrays: dict[str, np.ndarray]) -> None:
        if "min" in arrays:
            self.min = min(self.min, float(arrays["min"].min()) + 0.0)  # +0.0: no -0.0
            self.sum_min.update_rows(arrays["min"])
        if "max" in arrays:
            self.max = max(self.max, float(arrays["max"].max()) + 0.0)
            self.sum_max.update_rows(arrays["max"])
        if "ch_mean" in arrays:
            if self.channel_sum is None:
                self.channel_sum = ExactSum((arrays["ch_mean"].shape[1],))
            self.channel_sum.update_rows(arrays["ch_mean"])
        if "ch_absmax" in arrays:
            absmax = arrays["ch_absmax"].max(axis=0).astype(np.float64) + 0.0
            if self.channel_absmax is not None:
                absmax = np.maximum(self.channel_absmax, absmax)
            self.channel_absmax = absmax
        for key, attr, reduce in (("ch_min", "channel_min", np.minimum), ("ch_max", "channel_max", np.maximum)):
            if key in arrays:
                value = reduce.reduce(arrays[key].astype(np.float64), axis=0) + 0.0  # +0.0: no -0.0
                old = getattr(self, attr)
                setattr(self, attr, value if old is None else reduce(old, value))
        if "raw" in arrays:
            self.hist.update(arrays["raw"])  # type: ignore[union-attr]  # "raw" is requested after enable_histogram
        self.n += next(iter(arrays.values())).shape[0]
        self.kinds = frozenset(arrays)

    def merge(self, other: TensorStatistics) -> TensorStatistics:
        """Returns the statistics of both operands' samples; operands untouched.

        Raises:
            ValueError: names, reduction sets, channel counts or edges differ.
        """
        if other.name != self.name:
            raise ValueError(f"cannot merge statistics of {self.name!r} and {other.name!r}")
        if self.n and other.n and self.kinds != other.kinds:
            raise ValueError(
                f"tensor {self.name!r}: cannot merge reductions {sorted(self.kinds)} with {sorted(other.kinds)}"
            )
        if None not in (self.channels, other.channels) and self.channels != other.channels:
            raise ValueError(f"tensor {self.name!r}: channel counts {self.channels} != {other.channels}")
        result = TensorStatistics(self.name)
        result.n, result.kinds = self.n + other.n, self.kinds | other.kinds
        result.min, result.max = min(self.min, other.min), max(self.max, other.max)
        result.sum_min = self.sum_min.merge(other.sum_min)
        result.sum_max = self.sum_max.merge(other.sum_max)
        result.channel_sum = _merge_optional(self.channel_sum, other.channel_sum, ExactSum.merge)
        result.channel_absmax = _merge_optional(self.channel_absmax, other.channel_absmax, np.maximum)
        result.channel_min = _merge_optional(self.channel_min, other.channel_min, np.minimum)
        result.channel_max = _merge_optional(self.channel_max, other.channel_max, np.maximum)
        result.hist = _merge_optional(self.hist, other.hist, Histogram.merge)
        return result

    def copy(self) -> TensorStatistics:
        return self.merge(TensorStatistics(self.name))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Returns plain numeric arrays (at most 2-D) that :meth:`from_arrays` reads back."""
        out: dict[str, np.ndarray] = {
            "n": np.array([self.n], dtype=np.int64),
            "kinds": np.array([k in self.kinds for k in REDUCTIONS], dtype=np.int8),
            "min_max": np.array([self.min, self.max]),
        }
        sums = {"sum_min": self.sum_min, "sum_max": self.sum_max, "channel_sum": self.channel_sum}
        for key, exact in sums.items():
            if exact is not None:
                out.update({f"{key}.{k}": v for k, v in exact.to_arrays().items()})
        for attr in ("channel_absmax", "channel_min", "channel_max"):
            if getattr(self, attr) is not None:
                out[attr] = getattr(self, attr).copy()
        if self.hist is not None:
            out["hist.range"] = np.array([self.hist.lo, self.hist.hi])
            out["hist.counts"] = self.hist.counts.copy()
        return out

    @classmethod
    def from_arrays(cls, name: str, arrays: Mapping[str, np.ndarray]) -> TensorStatistics:
        """Rebuilds statistics written by :meth:`to_arrays` (exact round trip)."""
        result = cls(name)
        result.n = int(np.asarray(arrays["n"]).reshape(-1)[0])
        flags = np.asarray(arrays["kinds"]).reshape(-1)
        result.kinds = frozenset(k for k, flag in zip(REDUCTIONS, flags, strict=True) if flag)
        result.min, result.max = (float(v) for v in np.asarray(arrays["min_max"], dtype=np.float64))
        for key in ("sum_min", "sum_max", "channel_sum"):
            if f"{key}.partials" in arrays:
                sub = {k: arrays[f"{key}.{k}"] for k in ("partials", "shape")}
                setattr(result, key, ExactSum.from_arrays(sub))
        for attr in ("channel_absmax", "channel_min", "channel_max"):
            if attr in arrays:
                setattr(result, attr, np.array(arrays[attr], dtype=np.float64))
        if "hist.counts" in arrays:
            lo, hi = np.asarray(arrays["hist.range"], dtype=np.float64)
            counts = np.asarray(arrays["hist.counts"])
            result.hist = Histogram(float(lo), float(hi), len(counts), counts)
        return result

    def equals(self, other: TensorStatistics) -> bool:
        """Bit-exact comparison of every finalized statistic."""
        scalars = (self.name, self.n, self.kinds) == (other.name, other.n, other.kinds)
        bounds = _same_bits(np.array([self.min, self.max]), np.array([other.min, other.max]))
        sums = self.sum_min.equals(other.sum_min) and self.sum_max.equals(other.sum_max)
        channel = _same_bits(self.channel_mean, other.channel_mean) and all(
            _same_bits(getattr(self, a), getattr(other, a)) for a in ("channel_absmax", "channel_min", "channel_max")
        )
        if (self.hist is None) != (other.hist is None):
            return False
        hist = self.hist is None or (other.hist is not None and self.hist.equals(other.hist))
        return scalars and bounds and sums and channel and hist
