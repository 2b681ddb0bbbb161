"""StatisticSet: the statistics of every tensor, with a pickle-free array form."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rayq.core.stats.tensor import TensorStatistics, _merge_optional

_META = "__rayq_meta__"  # reserved key of StatisticSet.to_arrays


class StatisticSet:
    """Tensor name -> :class:`TensorStatistics`, plus the ids of the batches absorbed.

    Example:
        >>> stats = StatisticSet()
        >>> stats.update(0, {"x": {"min": np.array([-1.0]), "max": np.array([1.0])}})
        >>> stats["x"].max, sorted(stats.batch_ids)
        (1.0, [0])
    """

    def __init__(self) -> None:
        """Creates an empty set."""
        self._tensors: dict[str, TensorStatistics] = {}
        self._batch_ids: frozenset[int] = frozenset()

    @property
    def batch_ids(self) -> frozenset[int]:
        """Ids of the batches absorbed."""
        return self._batch_ids

    def names(self) -> tuple[str, ...]:
        """Sorted tensor names."""
        return tuple(sorted(self._tensors))

    def __getitem__(self, name: str) -> TensorStatistics:
        return self._tensors[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __len__(self) -> int:
        return len(self._tensors)

    def _get(self, name: str) -> TensorStatistics:
        if name == _META:
            raise ValueError(f"tensor name {_META!r} is reserved")
        return self._tensors[name] if name in self._tensors else TensorStatistics(name)

    def enable_histogram(self, name: str, lo: float, hi: float, bins: int) -> None:
        """Enables the histogram of tensor ``name`` (see :meth:`TensorStatistics.enable_histogram`)."""
        stats = self._get(name)
        stats.enable_histogram(lo, hi, bins)
        self._tensors[name] = stats

    def update(self, batch_id: int, per_tensor: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Absorbs one batch: ``{tensor name: reductions}``; all or nothing.

        Raises:
            ValueError: ``batch_id`` was already absorbed, or a reduction is malformed.
            DataError: a reduction holds NaN or Inf.
        """
        batch_id = int(batch_id)
        if batch_id in self._batch_ids:
            raise ValueError(f"batch {batch_id} was already absorbed")
        checked = {}
        for name, reductions in per_tensor.items():
            stats = self._get(name)
            checked[name] = (stats, stats._checked(reductions))
        for name, (stats, arrays) in checked.items():
            stats._apply(arrays)
            self._tensors[name] = stats
        self._batch_ids = self._batch_ids | {batch_id}

    def merge(self, other: StatisticSet) -> StatisticSet:
        """Returns the statistics of both operands' batches; operands untouched.

        Raises:
            ValueError: a batch id is in both (it would be counted twice), or a
                tensor's statistics cannot be merged.
        """
        twice = self._batch_ids & other._batch_ids
        if twice:
            raise ValueError(f"batches counted twice when merging: {sorted(twice)[:10]}")
        result = StatisticSet()
        result._batch_ids = self._batch_ids | other._batch_ids
        for name in sorted(set(self._tensors) | set(other._tensors)):
            mine, theirs = self._tensors.get(name), other._tensors.get(name)
            result._tensors[name] = _merge_optional(mine, theirs, TensorStatistics.merge)
        return result

    def to_arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """Returns ``{tensor name: arrays}`` plus the reserved ``"__rayq_meta__"`` entry."""
        out = {name: self._tensors[name].to_arrays() for name in self.names()}
        out[_META] = {"batch_ids": np.array(sorted(self._batch_ids), dtype=np.int64)}
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Mapping[str, np.ndarray]]) -> StatisticSet:
        """Rebuilds a set written by :meth:`to_arrays` (exact round trip)."""
        result = cls()
        result._batch_ids = frozenset(int(i) for i in np.asarray(arrays[_META]["batch_ids"]))
        for name, sub in arrays.items():
            if name != _META:
                result._tensors[name] = TensorStatistics.from_arrays(name, sub)
        return result

    def equals(self, other: StatisticSet) -> bool:
        """Bit-exact comparison of batch ids and every tensor's statistics."""
        if self._batch_ids != other._batch_ids or self.names() != other.names():
            return False
        return all(self._tensors[n].equals(other._tensors[n]) for n in self.names())
