"""Where a search's Optuna study lives: memory, a journal file or an RDB.

:func:`open_storage` turns the ``storage`` argument into an Optuna storage. A
journal file is first made fit for a rerun after ``kill -9`` of the driver that
wrote it: a lock it left is removed and a partial last line is cut off.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import optuna

from rayq.errors import ConfigError, SearchError

logger = logging.getLogger(__name__)


def open_storage(storage: str | os.PathLike | optuna.storages.BaseStorage | None) -> optuna.storages.BaseStorage:
    """Turn the ``storage`` argument into an Optuna storage.

    Args:
        storage: None (in memory), a ``.log``/``.journal`` path (journal file),
            a URL with ``://`` (RDB), or an Optuna storage object.

    Returns:
        The storage.

    Raises:
        ConfigError: A string that is neither a journal path nor a URL.

    Example:
        >>> type(open_storage(None)).__name__
        'InMemoryStorage'
    """
    if storage is None:
        return optuna.storages.InMemoryStorage()
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    text = os.fspath(storage)
    if text.endswith((".log", ".journal")):
        from optuna.storages.journal import JournalFileBackend

        _release_stale_lock(text)
        _drop_torn_line(text)
        return optuna.storages.JournalStorage(JournalFileBackend(text))
    if "://" in text:
        return _open_rdb(text)
    raise ConfigError(f"storage={text!r} must be a path ending .log/.journal or a database URL (with '://')")


_RDB_OPEN = threading.Lock()


def _open_rdb(url: str, attempts: int = 3) -> optuna.storages.BaseStorage:
    """An RDB storage; searches that open a new database at once race to create its tables
    (the loser sees "table ... already exists"), so creation is serialised in this process
    and retried across processes."""
    for attempt in range(attempts):
        try:
            with _RDB_OPEN:
                return optuna.storages.RDBStorage(url)
        except Exception as exc:  # sqlalchemy/driver errors: translate at the boundary
            if attempt + 1 < attempts and "already exists" in str(exc):
                time.sleep(0.2 * (attempt + 1))
                continue
            scheme = url.split("://", 1)[0]
            import sqlalchemy.exc  # only RDB storages need it (~0.3 s to import)

            if isinstance(exc, (ModuleNotFoundError, sqlalchemy.exc.ArgumentError)):  # unknown dialect or driver
                raise ConfigError(
                    f"storage: cannot open the {scheme}:// RDB storage (unknown database or its "
                    f"driver is not installed): {exc}"
                ) from exc
            raise SearchError(f"cannot open the {scheme}:// RDB storage: {exc}") from exc
    raise SearchError(f"cannot open the RDB storage {url!r}")


def _release_stale_lock(path: str, wait: float = 2.0) -> None:
    """Remove the lock a driver killed while appending left next to a journal file.

    Appends hold Optuna's lock (``<journal>.lock``) for milliseconds, and only one
    driver runs a study at a time: a lock still there after ``wait`` seconds is
    stale. Left alone, Optuna would stall the next driver's first write for 30 s.
    """
    lock, deadline = path + ".lock", time.monotonic() + wait
    while os.path.lexists(lock):
        if time.monotonic() >= deadline:
            try:
                os.unlink(lock)
            except FileNotFoundError:
                return
            logger.warning("removed the stale lock %s (left by a driver killed while writing)", lock)
            return
        time.sleep(0.05)


def _drop_torn_line(path: str) -> None:
    """Cut a partial last line off a journal file: what a driver killed while appending
    leaves. Optuna skips it when reading but would glue the next operation onto it."""
    try:
        with open(path, "rb+") as f:
            end = f.seek(0, os.SEEK_END)
            start = max(0, end - (1 << 20))
            f.seek(start)
            tail = f.read()
            if not tail or tail.endswith(b"\n"):
                return
            keep = start + tail.rfind(b"\n") + 1 if b"\n" in tail else start
            f.truncate(keep)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SearchError(f"cannot repair the journal file {path!r}: {exc}") from exc
    logger.warning("journal %s ended with a partial operation (a driver killed while writing); dropped it", path)


__all__ = ["open_storage"]
