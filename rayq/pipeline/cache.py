"""Calibration statistics cache: Parquet files keyed by (model, data, statistic set).

Arrays are stored as raw little-endian bytes with dtype and shape columns -- plain
Parquet, never pickle. Files go through ``pyarrow.fs``, so the cache directory may
be a local path or an object-store URI.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid

import numpy as np

from rayq.core.stats import StatisticSet

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"


def default_dir() -> str:
    """``RAYQ_CACHE_DIR`` when set, else ``stats`` in the platform's user cache folder
    (``platformdirs``: ``~/.cache/rayq`` on Linux, ``~/Library/Caches/rayq`` on macOS,
    ``%LOCALAPPDATA%\\rayq\\Cache`` on Windows; ``XDG_CACHE_HOME`` is honoured)."""
    override = os.environ.get("RAYQ_CACHE_DIR")
    if override:
        return override
    import platformdirs  # noqa: PLC0415

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
    rows = {"tensor": [], "field": [], "dtype": [], "shape": [], "data": []}
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
    table = pa.table(rows)
    path = f"{root}/{key}.parquet"
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"  # unique per writer: sweeps save from threads
    with filesystem.open_output_stream(tmp) as out:
        pq.write_table(table, out)
    filesystem.move(tmp, path)
    return path


def load(key: str, directory: str | None = None) -> StatisticSet | None:
    """The cached statistics for ``key``, or None (a corrupt file is ignored and logged)."""
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    filesystem, root = _fs(directory or default_dir())
    path = f"{root}/{key}.parquet"
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    try:
        with filesystem.open_input_file(path) as f:
            table = pq.read_table(f)
        arrays: dict[str, dict[str, np.ndarray]] = {}
        for row in table.to_pylist():
            value = np.frombuffer(row["data"], dtype=np.dtype(row["dtype"])).reshape(row["shape"])
            arrays.setdefault(row["tensor"], {})[row["field"]] = value.copy()
        return StatisticSet.from_arrays(arrays)
    except Exception as exc:  # a damaged cache entry must never break a run
        log.warning("ignoring unreadable statistics cache %s: %s", path, exc)
        return None
