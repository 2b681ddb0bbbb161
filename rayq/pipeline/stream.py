"""Calibration batches read lazily, so memory stays flat in the calibration-set size.

A :class:`BatchStream` makes one scan over the first ``subset_size`` items of a
dataset: it counts them, fingerprints them (sha256 in item order, the same value as
:func:`rayq.pipeline.data.fingerprint`), and decides the batch size, without keeping
them. Each later iteration rebuilds the batches (batch k = items [k*bs, (k+1)*bs)):

- from the source itself when re-reading it is free and deterministic (an array, a
  ``.npy`` file -- its rows read from disk --, ``.npz``/Parquet columns, or a list,
  with no ``transform_fn``);
- otherwise (generators, ``ray.data``, a ``transform_fn`` that may be costly) from a
  spool the scan wrote: the model feeds as raw bytes in an anonymous temporary file
  (``tempfile.TemporaryFile``, removed when closed or at exit), with a small index in
  memory.

So the user's transform runs once per item, as before, and the batches -- hence the
statistics -- are bit-identical to those of a fully materialised list.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
import threading
from array import array
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from rayq.backends.base import InputSpec
from rayq.errors import DataError
from rayq.pipeline import data

Batch = tuple[int, dict[str, np.ndarray]]


class _Scan:
    """Streaming fingerprint and batchability check (see :func:`data.batch_size_for`)."""

    def __init__(self, specs: list[InputSpec]) -> None:
        self.specs = specs
        self.hash = hashlib.sha256()
        self.count = 0
        self.batchable = any(s.shape for s in specs) and all(not s.shape or s.shape[0] is None for s in specs)
        self._first: dict[str, Any] = {}

    def add(self, feeds: dict[str, np.ndarray]) -> None:
        for name in sorted(feeds):
            v = np.ascontiguousarray(feeds[name])
            self.hash.update(f"{name}|{v.dtype}|{v.shape}|".encode())
            self.hash.update(v.data if v.nbytes and v.dtype.kind != "O" else v.tobytes())
        if self.batchable:
            for s in self.specs:
                v = feeds[s.name]
                key = v if not s.shape else v.shape[1:]
                if s.name not in self._first:
                    self._first[s.name] = v.copy() if not s.shape else key
                elif (not np.array_equal(v, self._first[s.name])) if not s.shape else key != self._first[s.name]:
                    self.batchable = False
        self.count += 1


class _Spool:
    """Model feeds appended to an anonymous temporary file and read back in order."""

    def __init__(self, specs: list[InputSpec]) -> None:
        self._names = [s.name for s in specs]
        self._file = tempfile.TemporaryFile(prefix="rayq-calibration-")  # noqa: SIM115 (kept open; closed by close())
        self._offsets = array("q")
        self._layout_ids = array("i")
        self._layouts: list[tuple] = []
        self._layout_index: dict[tuple, int] = {}
        self._objects: dict[int, dict[str, np.ndarray]] = {}  # items of object dtype stay in memory
        self._end = 0
        self._lock = threading.Lock()

    def append(self, feeds: dict[str, np.ndarray]) -> None:
        arrays = [np.ascontiguousarray(feeds[n]) for n in self._names]
        if any(a.dtype.kind == "O" for a in arrays):
            self._objects[len(self._offsets)] = dict(feeds)
            layout: tuple = ()
        else:
            layout = tuple((a.dtype.str, a.shape) for a in arrays)
            with self._lock:
                self._file.seek(self._end)
                for a in arrays:
                    if a.nbytes:
                        self._file.write(a.data)
                self._file.flush()
        layout_id = self._layout_index.setdefault(layout, len(self._layouts))
        if layout_id == len(self._layouts):
            self._layouts.append(layout)
        self._offsets.append(self._end)
        self._layout_ids.append(layout_id)
        self._end += sum(a.nbytes for a in arrays) if layout else 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        fd = self._file.fileno()
        for i, (offset, layout_id) in enumerate(zip(self._offsets, self._layout_ids)):
            if i in self._objects:
                yield self._objects[i]
                continue
            feeds = {}
            for name, (dtype, shape) in zip(self._names, self._layouts[layout_id]):
                arr = np.empty(shape, np.dtype(dtype))
                if arr.nbytes and self._read(fd, arr, offset) != arr.nbytes:
                    raise DataError("the calibration spool file was truncated")
                offset += arr.nbytes
                feeds[name] = arr
            yield feeds

    def _read(self, fd: int, arr: np.ndarray, offset: int) -> int:
        view = memoryview(arr.reshape(-1)).cast("B")  # type: ignore[arg-type]  # an ndarray is a buffer
        if hasattr(os, "preadv"):
            return os.preadv(fd, [view], offset)
        with self._lock:  # no positional reads on this platform
            self._file.seek(offset)
            return self._file.readinto(view)

    def close(self) -> None:
        self._file.close()


def _replayable(dataset: Any) -> bool:
    """True when reading the dataset again is free and gives the same items."""
    return (
        isinstance(dataset, data.Dataset)
        and dataset._transform is None
        and isinstance(dataset._source, (np.ndarray, data.NpyRows, data.ColumnRows, list, tuple))
    )


class BatchStream(Sequence):
    """The calibration batches ``(batch id, feeds)`` of a dataset, rebuilt on each iteration.

    Args:
        dataset: A :class:`rayq.Dataset` (or duck-typed ``nncf.Dataset``).
        specs: The model's inputs.
        subset_size: Number of items used (the first ones; None: all).
        batch_size: Requested batch size (None: automatic, see :func:`data.batch_size_for`).

    Raises:
        DataError: an item cannot be read or does not fit the model, the dataset is
            empty, or ``batch_size > 1`` is requested for items that cannot be batched.

    Example:
        >>> import numpy as np
        >>> from rayq.backends.base import InputSpec
        >>> s = BatchStream(data.as_dataset(np.zeros((10, 1, 4), np.float32)),
        ...                 [InputSpec("x", (None, 4), "float32")], subset_size=None, batch_size=None)
        >>> len(s), s.num_items, [f["x"].shape[0] for _, f in s]
        (2, 10, [8, 2])
    """

    def __init__(
        self, dataset: Any, specs: list[InputSpec], *, subset_size: int | None, batch_size: int | None
    ) -> None:
        self.specs = specs
        self._dataset, self._subset = dataset, subset_size
        self._spool = None if _replayable(dataset) else _Spool(specs)
        scan = _Scan(specs)
        for feeds in self._read_source():
            scan.add(feeds)
            if self._spool is not None:
                self._spool.append(feeds)
        self.num_items = scan.count
        self.fingerprint = scan.hash.hexdigest()
        if batch_size is not None and batch_size > 1 and not scan.batchable:
            raise DataError(
                "batch_size > 1 needs a dynamic batch dimension, equally shaped items "
                "and the same value of every scalar input in all items"
            )
        self.batch_size = batch_size if batch_size is not None else (data.AUTO_BATCH if scan.batchable else 1)
        self._len = -(-self.num_items // max(1, self.batch_size))

    def _read_source(self) -> Iterator[dict[str, np.ndarray]]:
        return (data.to_feeds(item, self.specs) for item in data.iter_items(self._dataset, self._subset))

    def feeds(self) -> Iterator[dict[str, np.ndarray]]:
        """Every item's model feeds, in order."""
        if self._spool is not None:
            return iter(self._spool)
        return itertools.islice(self._read_source(), self.num_items)

    def __iter__(self) -> Iterator[Batch]:
        items = self.feeds()
        size = max(1, self.batch_size)
        for batch_id in range(self._len):
            chunk = list(itertools.islice(items, size))
            yield batch_id, data.batches(chunk, self.specs, self.batch_size)[0]

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index):
        if isinstance(index, slice):
            wanted = range(*index.indices(self._len))
            head = list(itertools.islice(self, max(wanted) + 1)) if wanted else []
            return [head[i] for i in wanted]
        i = index + self._len if index < 0 else index
        if not 0 <= i < self._len:
            raise IndexError(f"batch {index} of {self._len}")
        return next(itertools.islice(self, i, None))

    def __reduce__(self):
        """Pickled (e.g. sent to Ray evaluator workers) as a plain list of batches."""
        return list, (list(self),)

    def close(self) -> None:
        """Remove the spool file now (it is removed at exit otherwise)."""
        if self._spool is not None:
            self._spool.close()
