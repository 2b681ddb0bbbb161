"""ExactSum: order-independent, correctly rounded sums of float arrays (see the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

_COMPACT_ROWS = 6  # compact an ExactSum expansion once it holds more rows


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knuth's error-free transformation: ``a + b == s + err`` exactly."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    return s, err


def _grow(partials: list[np.ndarray], x: np.ndarray) -> list[np.ndarray]:
    """Adds ``x`` into an expansion; returns the new list of partial rows."""
    out = []
    q = x
    for p in partials:
        q, err = _two_sum(q, p)
        if err.any():
            out.append(err)
    if not np.isfinite(q).all():
        raise OverflowError("ExactSum overflowed the float64 range")
    if q.any():
        out.append(q)
    return out


def _tree_sum(rows: np.ndarray, passes: int = 4) -> list[np.ndarray]:
    """Error-free pairwise reduction of ``rows`` [m, size] into a few rows.

    Each pass sums the rows pairwise with two-sum and keeps the non-zero
    rounding errors, which the next pass sums again. The returned rows add up
    exactly to the rows given.
    """
    out: list[np.ndarray] = []
    for _ in range(passes):
        errors = []
        while len(rows) > 1:
            if len(rows) % 2:
                rows = np.concatenate([rows, np.zeros_like(rows[:1])])
            rows, err = _two_sum(rows[0::2], rows[1::2])
            errors.append(err[err.any(axis=1)])
        out.append(rows[0])
        rows = np.concatenate(errors) if errors else rows[:0]
        if not len(rows):
            return out
    return out + list(rows)


def _compact(partials: list[np.ndarray]) -> list[np.ndarray]:
    """Moves the zeros of every column to the front and drops all-zero rows.

    Non-zero components of one column are non-overlapping, hence strictly
    increasing in magnitude, so sorting by magnitude keeps their order.
    """
    if len(partials) <= _COMPACT_ROWS:
        return partials
    stacked = np.stack(partials)
    order = np.argsort(np.abs(stacked), axis=0, kind="stable")
    stacked = np.take_along_axis(stacked, order, axis=0)
    keep = stacked.any(axis=1)
    return list(stacked[keep])


class ExactSum:
    """Exact, order-independent float sum of equally shaped arrays.

    Example:
        >>> s = ExactSum()
        >>> for v in (1e16, 1.0, -1e16):
        ...     s.update(np.float64(v))
        >>> float(s.value())
        1.0
    """

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        """Creates an empty sum of arrays of ``shape``."""
        self.shape = tuple(int(d) for d in shape)
        self._size = math.prod(self.shape)
        self._partials: list[np.ndarray] = []

    def update(self, x: np.ndarray) -> None:
        """Adds ``x`` (same shape, finite; converted to float64) exactly."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.shape != self.shape:
            raise ValueError(f"ExactSum of shape {self.shape} cannot add shape {arr.shape}")
        self.update_rows(arr[np.newaxis])

    def update_rows(self, rows: np.ndarray) -> None:
        """Adds every ``rows[i]`` (shape ``[m, *shape]``, m >= 0) exactly, vectorised.

        Raises:
            ValueError: ``rows`` has another shape or holds NaN/Inf.
            OverflowError: the sum leaves the float64 range.
        """
        arr = np.array(rows, dtype=np.float64)  # a copy: partials may keep its rows
        if arr.shape[1:] != self.shape or arr.ndim != len(self.shape) + 1:
            raise ValueError(f"ExactSum of shape {self.shape} cannot add rows {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("ExactSum cannot add NaN or Inf")
        if len(arr) == 0:
            return
        partials = self._partials
        with np.errstate(over="ignore", invalid="ignore"):  # overflow raises below
            for row in _tree_sum(arr.reshape(len(arr), self._size)):
                partials = _compact(_grow(partials, row))
        self._partials = partials

    def merge(self, other: ExactSum) -> ExactSum:
        """Returns a new sum of both operands; the operands are untouched."""
        if other.shape != self.shape:
            raise ValueError(f"cannot merge ExactSum shapes {self.shape} and {other.shape}")
        result = ExactSum(self.shape)
        partials = list(self._partials)
        with np.errstate(over="ignore", invalid="ignore"):
            for row in other._partials:
                partials = _compact(_grow(partials, row))
        result._partials = partials
        return result

    def value(self) -> np.ndarray:
        """Returns the correctly rounded exact sum (float64, ``shape``; 0 is +0.0)."""
        if not self._partials:
            return np.zeros(self.shape)
        if len(self._partials) == 1:
            flat = self._partials[0] + 0.0
        else:
            columns = np.stack(self._partials).T.tolist()
            flat = np.array([math.fsum(col) for col in columns]) + 0.0
        return flat.reshape(self.shape)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Returns ``{"partials": float64 [k, size], "shape": int64 [ndim]}``."""
        partials = np.stack(self._partials) if self._partials else np.zeros((0, self._size))
        return {"partials": partials, "shape": np.array(self.shape, dtype=np.int64)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ExactSum:
        """Rebuilds a sum written by :meth:`to_arrays` (exact round trip)."""
        shape = tuple(int(d) for d in np.asarray(arrays["shape"]).reshape(-1))
        result = cls(shape)
        partials = np.asarray(arrays["partials"], dtype=np.float64)
        if partials.ndim != 2 or partials.shape[1] != result._size:
            raise ValueError(f"partials of shape {partials.shape} do not fit ExactSum{shape}")
        if not np.isfinite(partials).all():
            raise ValueError("ExactSum partials hold NaN or Inf")
        result._partials = [row.copy() for row in partials if row.any()]
        return result

    def copy(self) -> ExactSum:
        """Returns an independent copy (partial rows are never mutated in place)."""
        return self.merge(ExactSum(self.shape))

    def equals(self, other: ExactSum) -> bool:
        """True when both sums have the same shape and bit-identical values."""
        return self.shape == other.shape and _same_bits(self.value(), other.value())


def _same_bits(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
