"""One run at a time per output folder: an exclusive lock naming its holder.

A run takes :class:`OutputLock` on its output folder before any work; a second run
into the same folder is refused at once with an :class:`~rayq.errors.OutputError`
naming the holder (host, pid, start time).

What it guarantees:

- **Local and network file systems** (``LOCK_NAME`` in the folder, ``flock``): the
  kernel holds the lock for the holder's open file, so exclusion is atomic and a
  holder that dies (crash, ``kill -9``) releases it at once; the next run takes it
  over, whatever the stale file says. Across hosts this relies on the file server's
  locking (NFSv4, or NFSv3 with ``lockd``; a ``nolock`` mount only excludes runs on
  the same host).
- **Object stores** (``s3://``, ``gs://``...): ``pyarrow.fs`` has no atomic
  create-if-absent, so the lock is a best-effort object: a run checks for it, writes
  its own and reads it back. Two runs starting within the same moment can both pass,
  and the lock object of a run that died on another host stays until removed by hand
  (the message says which object); one that died on this host is taken over.

Two searches may share an Optuna RDB ``storage`` (different study names): the lock is
on the output folder, not on the storage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from rayq.errors import OutputError
from rayq.storage.location import Location, _first_line, check_output, resolve

log = logging.getLogger(__name__)

LOCK_NAME = ".rayq.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds an output folder."""

    host: str
    pid: int
    started: str
    command: str = ""
    token: str = ""

    def describe(self) -> str:
        what = f"rayq {self.command}, " if self.command else ""
        return f"{what}host {self.host}, pid {self.pid}, started {self.started}"

    def is_dead_here(self) -> bool:
        """True when the holder ran on this host and its process is gone."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


def _parse(data: bytes) -> Holder | None:
    try:
        raw = json.loads(data.decode())
        return Holder(
            str(raw["host"]),
            int(raw["pid"]),
            str(raw["started"]),
            str(raw.get("command", "")),
            str(raw.get("token", "")),
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


class OutputLock:
    """The exclusive lock of one output folder (see the module docstring for guarantees).

    Example:
        >>> with OutputLock("runs/search", command="search"):        # doctest: +SKIP
        ...     ...   # a second run into runs/search now gets OutputError naming this one
    """

    def __init__(self, output: str | Location, *, command: str = "") -> None:
        self.location = resolve(output)
        self.holder = Holder(
            socket.gethostname(),
            os.getpid(),
            datetime.now(UTC).isoformat(timespec="seconds"),
            command,
            uuid.uuid4().hex,
        )
        self._fd: int | None = None
        self._held = False

    def acquire(self) -> OutputLock:
        """Take the lock (creating the folder); :class:`OutputError` if another run holds it."""
        check_output(self.location, folder=True)
        try:
            self.location.fs.create_dir(self.location.path, recursive=True)
        except OSError as exc:
            raise OutputError(f"cannot write to the output folder {self.location.uri!r}: {_first_line(exc)}") from exc
        if self.location.local:
            self._acquire_file(os.path.join(self.location.local, LOCK_NAME))
        else:
            self._acquire_object(self.location.child(LOCK_NAME))
        self._held = True
        return self

    def _busy(self, holder: Holder | None, where: str) -> OutputError:
        return busy_error(self.location, holder, where)

    def _acquire_file(self, path: str) -> None:
        import fcntl

        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # BlockingIOError: held
                os.close(fd)
                raise self._busy(_read_file_holder(path), path) from None
            try:  # a releasing holder unlinks the file: make sure we locked the current one
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        previous = _parse(os.pread(fd, 4096, 0))
        if previous is not None:
            log.info("taking over the lock of %s, which is gone", previous.describe())
        data = json.dumps(asdict(self.holder)).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        self._fd = fd

    def _acquire_object(self, lock: Location) -> None:
        if lock.kind() == "file":
            holder = _parse(lock.read_bytes())
            if holder is None or not holder.is_dead_here():
                raise self._busy(holder, f"{lock.uri}; remove it if that run is gone")
            log.info("taking over the lock of %s, which is gone", holder.describe())
        with lock.fs.open_output_stream(lock.path) as f:
            f.write(json.dumps(asdict(self.holder)).encode())
        mine = _parse(lock.read_bytes())
        if mine is None or mine.token != self.holder.token:
            raise self._busy(mine, lock.uri)

    def release(self) -> None:
        """Give the lock up (the lock file or object is removed)."""
        if not self._held:
            return
        self._held = False
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.location.local, LOCK_NAME))  # type: ignore[arg-type]  # _fd: local only
            os.close(self._fd)
            self._fd = None
            return
        lock = self.location.child(LOCK_NAME)
        with contextlib.suppress(OSError, OutputError):
            holder = _parse(lock.read_bytes())
            if holder is not None and holder.token == self.holder.token:
                lock.fs.delete_file(lock.path)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()


def busy_error(location: Location, holder: Holder | None, where: str) -> OutputError:
    who = holder.describe() if holder else "a run that is starting"
    return OutputError(
        f"the output folder {location.uri!r} is in use by another run ({who}); wait for "
        f"it to finish or choose another output (lock: {where})"
    )


def check_free(output: str | Location) -> None:
    """Raise the :class:`OutputError` a lock attempt would when a run holds ``output`` now.

    A cheap early check (the CLI makes it before importing the search); the lock itself
    is taken by :class:`OutputLock`.
    """
    location = resolve(output)
    if location.kind() == "folder":
        holder = holder_of(location)
        if holder is not None:
            raise busy_error(location, holder, location.child(LOCK_NAME).uri)


def _read_file_holder(path: str) -> Holder | None:
    """The holder written in a held lock file (it may be writing it: a few tries)."""
    for _ in range(10):
        with contextlib.suppress(OSError):
            with open(path, "rb") as f:
                holder = _parse(f.read())
            if holder is not None:
                return holder
        time.sleep(0.05)
    return None


def holder_of(output: str | Location) -> Holder | None:
    """The holder of the folder's lock when a run holds it now, else None.

    Locally this takes a shared ``flock`` for an instant: a run trying to lock the
    folder in that instant is refused as if the folder were busy.
    """
    location = resolve(output)
    if location.local is None:
        lock = location.child(LOCK_NAME)
        return _parse(lock.read_bytes()) if lock.kind() == "file" else None
    path = os.path.join(location.local, LOCK_NAME)
    if not os.path.exists(path):
        return None
    import fcntl

    with open(path, "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_file_holder(path)
    return None
