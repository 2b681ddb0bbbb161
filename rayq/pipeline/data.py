"""Datasets: ``rayq.Dataset`` (``nncf.Dataset`` semantics) and the loaders behind it.

Accepted calibration/validation inputs: a :class:`Dataset`, any iterable of items,
a numpy array (items along axis 0), a ``.npz``/``.npy`` path, a Parquet file or
directory, or a ``ray.data.Dataset``. Items are turned into model feeds by
``transform_fn`` (identity by default): an array (single-input models), a dict
``{input name: array}``, or a tuple/list in input order.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rayq.backends.base import InputSpec
from rayq.backends.feeds import check_feeds
from rayq.errors import DataError, RayqError

log = logging.getLogger(__name__)


class Dataset:
    """A calibration/validation dataset: items plus an optional transform.

    Args:
        data_source: Any iterable of items (list, generator, torch DataLoader...).
        transform_fn: Maps one item to model input(s). Identity if None.

    Example:
        >>> import numpy as np
        >>> ds = Dataset(np.zeros((4, 1, 8, 8), np.float32), lambda x: x[None])
        >>> len(list(ds.get_inference_data()))
        4
    """

    def __init__(self, data_source: Iterable[Any], transform_fn: Callable[[Any], Any] | None = None) -> None:
        if not hasattr(data_source, "__iter__") and not hasattr(data_source, "__getitem__"):  # what iter() takes
            raise DataError(f"rayq.Dataset needs an iterable data source, got {type(data_source).__name__}")
        if transform_fn is not None and not callable(transform_fn):
            raise DataError(f"rayq.Dataset transform_fn must be callable, got {type(transform_fn).__name__}")
        self._source = data_source
        self._transform = transform_fn

    def get_data(self, indices: Iterable[int] | None = None) -> Iterator[Any]:
        """Raw items (optionally only those at sorted ``indices``)."""
        source = _ray_rows(self._source, unwrap=False) if _is_ray_dataset(self._source) else self._source
        if indices is None:
            return iter(source)
        wanted = set(indices)
        return (item for i, item in enumerate(source) if i in wanted)

    def get_inference_data(self, indices: Iterable[int] | None = None) -> Iterator[Any]:
        """Transformed items, ready to feed the model."""
        transform = self._transform or (lambda x: x)
        return (transform(item) for item in self.get_data(indices))

    def get_length(self) -> int | None:
        return len(self._source) if hasattr(self._source, "__len__") else None  # type: ignore[arg-type]

    def get_batch_size(self) -> int | None:
        return None


def as_dataset(data: Any) -> Dataset:
    """Wrap any accepted input as a :class:`Dataset`."""
    if isinstance(data, Dataset):
        return data
    if hasattr(data, "get_inference_data") and hasattr(data, "get_data"):  # nncf.Dataset duck-type
        return data
    if isinstance(data, np.ndarray):
        return Dataset(data)  # iterating an array yields views of its items: nothing is copied
    if isinstance(data, (str, os.PathLike)):
        return Dataset(load_path(Path(data)))
    if _is_ray_dataset(data):
        return Dataset(_ray_rows(data, unwrap=True))
    if isinstance(data, dict):
        return Dataset(_split_columns(data, "dict"))
    if isinstance(data, Iterable):
        return Dataset(data)
    raise DataError(
        f"unsupported dataset type {type(data).__name__}: pass a rayq.Dataset, an array, "
        "a .npz/.npy/.parquet path or a ray.data.Dataset"
    )


def load_path(path: Path) -> Sequence[Any]:
    """Items from a ``.npy`` (rows read from the file on access), ``.npz`` (one item per
    row of every array) or Parquet path."""
    if not path.exists():
        raise DataError(f"dataset path {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return NpyRows(path)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return _split_columns({k: z[k] for k in z.files}, str(path))
        if suffix == ".parquet" or path.is_dir():
            return _split_columns(_read_parquet(path), str(path))
    except DataError:
        raise
    except Exception as exc:  # zipfile/pyarrow/ValueError on corrupt files
        raise DataError(f"cannot read dataset {str(path)!r}: {exc}") from exc
    raise DataError(f"unsupported dataset file {str(path)!r}: use .npy, .npz or .parquet")


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    """Columns of a Parquet file or directory; list columns become ``[rows, *shape]``
    arrays, the shape taken from the ``rayq.shape.<column>`` schema metadata
    (``"1,8,8"``), else ``[rows, length]``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(str(path))
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    columns = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if not _is_list(pa, col.type):
            columns[name] = col.to_numpy(zero_copy_only=False)
            continue
        rows = len(col)
        while _is_list(pa, col.type):
            col = col.flatten()
        values = np.asarray(col.to_numpy(zero_copy_only=False))
        shape_note = meta.get(f"rayq.shape.{name}")
        shape = tuple(int(s) for s in shape_note.split(",")) if shape_note else (-1,)
        try:
            columns[name] = values.reshape((rows, *shape))
        except ValueError as exc:
            raise DataError(
                f"Parquet column {name!r} of {str(path)!r}: {values.size} values do not fit "
                f"{rows} rows of shape {shape} (ragged rows, or a wrong 'rayq.shape.{name}' "
                f"metadata entry)"
            ) from exc
    return columns


def _is_list(pa, dtype) -> bool:
    return pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype)


class NpyRows(Sequence):
    """Rows of a ``.npy`` file, each read from disk when accessed (``pread``, no mapping):
    a calibration set on disk is never held in memory."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        fmt = np.lib.format
        with open(self.path, "rb") as f:
            version = fmt.read_magic(f)
            header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            shape, fortran, dtype = header(f) if header else ((), False, np.dtype(np.float32))
            self._offset = f.tell()
        if dtype.hasobject:
            raise DataError(f"{self.path!r} holds Python objects: only numeric arrays are read (no pickle)")
        if header is None or fortran or not shape:
            arr = np.load(self.path, allow_pickle=False)  # rare layouts: read whole
            self._whole = np.ascontiguousarray(arr) if arr.ndim else arr.reshape(1)
            shape = self._whole.shape
        else:
            self._whole = None
        self.shape, self.dtype = tuple(shape), dtype
        self._row = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if self._whole is not None:
            return self._whole[i]
        i = range(len(self))[i]  # IndexError out of range
        row = np.empty(self.shape[1:], self.dtype)
        with open(self.path, "rb") as f:
            f.seek(self._offset + i * self._row)
            if f.readinto(memoryview(row.reshape(-1)).cast("B")) != self._row:  # type: ignore[arg-type]  # ndarray: buffer
                raise DataError(f"{self.path!r} is truncated")
        return row

    def __iter__(self):
        if self._whole is not None:
            yield from self._whole
            return
        with open(self.path, "rb") as f:  # one open file, sequential reads
            f.seek(self._offset)
            for _ in range(len(self)):
                row = np.empty(self.shape[1:], self.dtype)
                if f.readinto(memoryview(row.reshape(-1)).cast("B")) != self._row:  # type: ignore[arg-type]
                    raise DataError(f"{self.path!r} is truncated")
                yield row


class ColumnRows(Sequence):
    """Rows ``{column: value}`` of equally long columns, made on access (no per-row copies)."""

    def __init__(self, columns: dict[str, np.ndarray], where: str) -> None:
        if not columns:
            raise DataError(f"dataset {where} holds no arrays")
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"dataset {where}: columns have different lengths {lengths}")
        self._columns, self._len = columns, next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._len))]
        return {k: v[i] for k, v in self._columns.items()}


def _split_columns(columns: dict[str, np.ndarray], where: str) -> ColumnRows:
    return ColumnRows(columns, where)


def _is_ray_dataset(data: Any) -> bool:
    return type(data).__module__.startswith("ray.data") and hasattr(data, "iter_rows")


#: Column names Ray Data gives to bare values (``from_numpy``: "data", ``from_items``: "item").
_RAY_VALUE_COLUMNS = ("data", "item")


def _ray_rows(ds: Any, *, unwrap: bool) -> Iterator[Any]:
    """Rows of a ``ray.data.Dataset`` as dicts of arrays; with ``unwrap``, a row whose only
    column is Ray's bare-value column (``data`` / ``item``) is yielded as that value."""
    for row in ds.iter_rows():
        row = {k: np.asarray(v) for k, v in row.items()}
        if unwrap and len(row) == 1 and next(iter(row)) in _RAY_VALUE_COLUMNS:
            yield next(iter(row.values()))
        else:
            yield row


def iter_items(dataset: Dataset, subset_size: int | None) -> Iterator[Any]:
    """The first ``subset_size`` transformed items (all when None), in order, one at a time.

    Raises:
        DataError: reading an item failed, or the dataset is empty.
    """
    count = 0
    iterator = iter(dataset.get_inference_data())
    while subset_size is None or count < subset_size:
        try:
            item = next(iterator)
        except StopIteration:
            break
        except RayqError:
            raise
        except Exception as exc:  # the user's transform_fn or data source failed
            raise DataError(f"reading dataset item {count} failed: {type(exc).__name__}: {exc}") from exc
        count += 1
        yield item
    if not count:
        raise DataError("the dataset is empty")
    if subset_size is not None and count < subset_size:
        log.warning("subset_size=%d but the dataset has %d items: using all of them", subset_size, count)


def take(dataset: Dataset, subset_size: int | None) -> list[Any]:
    """The first ``subset_size`` transformed items (all when None), as a list."""
    return list(iter_items(dataset, subset_size))


def to_feeds(item: Any, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """One transformed item as ``{input name: array}`` with a batch axis."""
    names = [s.name for s in specs]
    if isinstance(item, dict):
        feeds = {k: np.asarray(v) for k, v in item.items() if k in names}
        if len(feeds) < len(names):
            if len(names) == 1 and len(item) >= 1 and names[0] not in item:
                raise DataError(f"data item keys {sorted(item)} do not include the model input {names[0]!r}")
            missing = sorted(set(names) - set(feeds))
            raise DataError(f"data item is missing model input(s) {missing}; it has keys {sorted(item)}")
    elif isinstance(item, (tuple, list)):
        if len(item) != len(names):
            raise DataError(f"data item has {len(item)} parts but the model has {len(names)} inputs {names}")
        feeds = {n: np.asarray(v) for n, v in zip(names, item)}
    else:
        if len(names) != 1:
            raise DataError(f"the model has inputs {names}: items must be dicts or tuples, not arrays")
        feeds = {names[0]: np.asarray(item)}
    for spec in specs:
        value = feeds[spec.name]
        if value.ndim == len(spec.shape) - 1:
            feeds[spec.name] = value = value[None]
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise DataError(f"input {spec.name!r} contains NaN or Inf values")
        if value.dtype == np.float64 and spec.dtype == "float32":
            feeds[spec.name] = value.astype(np.float32)
    return check_feeds(specs, feeds)  # names, ranks, static dims, dtypes: before batching


def batches(feeds: list[dict[str, np.ndarray]], specs: list[InputSpec], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Group consecutive feeds into batches along axis 0 (batch k = items [k*bs, (k+1)*bs)).

    Scalar (0-d) inputs have no batch axis: a batch takes their value, equal in every
    item (see :func:`batch_size_for`)."""
    if batch_size <= 1:
        return feeds
    out = []
    for start in range(0, len(feeds), batch_size):
        chunk = feeds[start : start + batch_size]
        out.append(
            {s.name: np.concatenate([f[s.name] for f in chunk], axis=0) if s.shape else chunk[0][s.name] for s in specs}
        )
    return out


#: Automatic calibration batch size. 8 rather than 16: the instrumented model's reductions
#: read each activation again, and smaller batches keep it in cache (ResNet-50, 300 items,
#: 2 threads: 15.3 s at 8, 16.4 s at 16, 16.1 s at 4; MiniLM: equal at 8 and 16).
AUTO_BATCH = 8


def batch_size_for(feeds: list[dict[str, np.ndarray]], specs: list[InputSpec], requested: int | None) -> int:
    """Largest safe batch size: 1 unless every input has a dynamic first dim and equal
    item shapes, or is a scalar (0-d) input with the same value in every item."""
    if requested is not None:
        if requested > 1 and not _batchable(feeds, specs):
            raise DataError(
                "batch_size > 1 needs a dynamic batch dimension, equally shaped items "
                "and the same value of every scalar input in all items"
            )
        return requested
    return AUTO_BATCH if _batchable(feeds, specs) else 1


def _batchable(feeds: list[dict[str, np.ndarray]], specs: list[InputSpec]) -> bool:
    if all(not s.shape for s in specs):
        return False  # nothing to batch along
    for s in specs:
        if not s.shape:
            if any(not np.array_equal(f[s.name], feeds[0][s.name]) for f in feeds):
                return False
            continue
        if s.shape[0] is not None:
            return False
        shapes = {f[s.name].shape[1:] for f in feeds}
        if len(shapes) != 1:
            return False
    return True


def fingerprint(feeds: list[dict[str, np.ndarray]]) -> str:
    """sha256 over every item's input names, dtypes, shapes and bytes, in order."""
    h = hashlib.sha256()
    for f in feeds:
        for name in sorted(f):
            v = np.ascontiguousarray(f[name])
            h.update(f"{name}|{v.dtype}|{v.shape}|".encode())
            h.update(v.tobytes())
    return h.hexdigest()
