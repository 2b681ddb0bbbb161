"""Calibration statistics cache: Parquet files keyed by (model, data, statistic set).

Arrays are stored as raw little-endian bytes with dtype and shape columns -- plain
Parquet, never pickle. Files go through ``pyarrow.fs``, so the cache directory may
be a local path or an object-store URI.

Cache content is never trusted blindly: each file carries a SHA-256 digest of its
rows in the Parquet metadata (``rayq.digest``), checked on load, and the caller
names the tensors it needs. A damaged, edited or incomplete entry is logged as a
warning and recalibrated, never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Iterable

import numpy as np

from rayq.core.stats import StatisticSet

log = logging.getLogger(__name__)

FORMAT_VERSION = "2"  # 2: rows digest in the Parquet metadata
DIGEST_KEY = b"rayq.digest"


def default_dir() -> str:
    """``RAYQ_CACHE_DIR`` when set, else ``stats`` in the platform's user cache folder
    (``platformdirs``: ``~/.cache/rayq`` on Linux, ``~/Library/Caches/rayq`` on macOS,
    ``%LOCALAPPDATA%\\rayq\\Cache`` on Windows; ``XDG_CACHE_HOME`` is honoured)."""
    override = os.environ.get("RAYQ_CACHE_DIR")
    if override:
        return override
    import platformdirs

    return os.path.join(platformdirs.user_cache_dir("rayq", appauthor=False), "stats")


def cache_key(model_fp: str, data_fp: str, spec_material: str, batch_size: int) -> str:
    text = f"v{FORMAT_VERSION}|{model_fp}|{data_fp}|{spec_material}|bs={batch_size}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _fs(uri: str):
    from pyarrow import fs

    if "://" in uri:
        return fs.FileSystem.from_uri(uri)
    return fs.LocalFileSystem(), os.path.abspath(uri)


def save(stats: StatisticSet, key: str, directory: str | None = None) -> str:
    """Write ``stats`` as ``<directory>/<key>.parquet``; returns the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    filesystem, root = _fs(directory or default_dir())
    filesystem.create_dir(root, recursive=True)
    rows: dict[str, list] = {"tensor": [], "field": [], "dtype": [], "shape": [], "data": []}
    for tensor, fields in stats.to_arrays().items():
        for field, value in fields.items():
            arr = np.ascontiguousarray(value)
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"statistic {tensor}.{field} is not numeric ({arr.dtype})")
            arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
            rows["tensor"].append(tensor)
            rows["field"].append(field)
            rows["dtype"].append(arr.dtype.str)
            rows["shape"].append(list(arr.shape))
            rows["data"].append(arr.tobytes())
    table = pa.table(rows).replace_schema_metadata({DIGEST_KEY: digest(rows).encode()})
    path = f"{root}/{key}.parquet"
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"  # unique per writer: sweeps save from threads
    with filesystem.open_output_stream(tmp) as out:
        pq.write_table(table, out)
    filesystem.move(tmp, path)
    return path


def digest(rows: dict[str, list]) -> str:
    """SHA-256 of the cache rows (tensor, field, dtype, shape, bytes), in a fixed order."""
    h = hashlib.sha256()
    order = sorted(range(len(rows["tensor"])), key=lambda i: (rows["tensor"][i], rows["field"][i]))
    for i in order:
        for part in (rows["tensor"][i], rows["field"][i], rows["dtype"][i], repr(list(rows["shape"][i]))):
            h.update(part.encode() + b"\0")
        data = rows["data"][i]
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


class _Stale(Exception):
    """A readable cache entry whose content cannot be trusted."""


def load(key: str, directory: str | None = None, *, tensors: Iterable[str] = ()) -> StatisticSet | None:
    """The cached statistics for ``key``, or None.

    An unreadable file, one whose rows do not match the digest stored with them, or
    one missing any of ``tensors`` is ignored with a warning (the caller recalibrates).
    """
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    filesystem, root = _fs(directory or default_dir())
    path = f"{root}/{key}.parquet"
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    try:
        with filesystem.open_input_file(path) as f:
            table = pq.read_table(f)
        rows = table.to_pydict()
        stored = (table.schema.metadata or {}).get(DIGEST_KEY)
        if stored is None:
            raise _Stale("it has no digest (written by another tool or an older rayq)")
        if stored.decode() != digest(rows):
            raise _Stale("its content does not match the digest stored with it (edited or damaged)")
        arrays: dict[str, dict[str, np.ndarray]] = {}
        for name, field, dtype, shape, data in zip(
            rows["tensor"], rows["field"], rows["dtype"], rows["shape"], rows["data"]
        ):
            arrays.setdefault(name, {})[field] = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()
        missing = sorted(set(tensors) - set(arrays))
        if missing:
            raise _Stale(f"it lacks the statistics of {len(missing)} tensor(s), e.g. {missing[:3]}")
        return StatisticSet.from_arrays(arrays)
    except _Stale as exc:
        log.warning("ignoring untrusted statistics cache %s: %s; recalibrating", path, exc)
        return None
    except Exception as exc:  # a damaged cache entry must never break a run
        log.warning("ignoring unreadable statistics cache %s: %s; recalibrating", path, exc)
        return None
