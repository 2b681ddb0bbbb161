"""Publishing a run's files all-or-nothing: staged, then renamed into place, a marker last.

A run writes its files into :attr:`Publication.staging` (a local folder) and calls
:meth:`Publication.publish`. On the local file system the staging folder lives inside
the output folder, so each file is moved into place by an atomic ``rename``; on an
object store each file is uploaded under a hidden ``.rayq-staging-*`` prefix first and
then moved, so a half-uploaded object never appears under its final name.

The completion marker (``result.json`` for a search) is deleted before anything is
published and written last, so a folder whose marker is there holds a complete run,
and a run that fails while publishing (even at the marker) leaves no marker and none
of its files: readers (:func:`read_marker`) refuse it with a clear message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from rayq.errors import OutputError
from rayq.storage.location import Location, _first_line, check_output, resolve, upload

STAGING_PREFIX = ".rayq-staging-"


class Publication:
    """The files of one run, staged locally and published under a folder :class:`Location`.

    Use :meth:`open` (validates and creates the folder before any work), write files
    into :attr:`staging`, then :meth:`publish` them. Leaving the ``with`` block on an
    exception removes the staging files, the files this run published and the folders
    it created.

    Example:
        >>> with Publication.open("runs/a", marker="result.json") as out:    # doctest: +SKIP
        ...     (out.staging / "trials.parquet").write_bytes(data)
        ...     (out.staging / "result.json").write_text("{}")
        ...     out.publish(["trials.parquet", "result.json"])
    """

    def __init__(self, location: Location, staging: Path, created: list[str], marker: str | None) -> None:
        self.location = location
        self.staging = staging
        self.marker = marker
        self._created = created
        self._published: list[Location] = []

    @classmethod
    def open(cls, output: str | Location, *, marker: str | None = None) -> Publication:
        """Check and create the output folder and a staging folder; :class:`OutputError` if impossible."""
        location = resolve(output)
        check_output(location, folder=True)
        created = _missing_parents(location.local) if location.local else []
        try:
            location.fs.create_dir(location.path, recursive=True)
            parent = location.local
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX if parent else "rayq-staging-", dir=parent))
        except OSError as exc:
            _remove_empty(created)
            raise OutputError(f"cannot write to the output folder {location.uri!r}: {_first_line(exc)}") from exc
        return cls(location, staging, created, marker)

    def publish(self, names: list[str]) -> dict[str, str]:
        """Move the staged files ``names`` into the folder, the marker last; returns name -> URI."""
        order = [n for n in names if n != self.marker] + [n for n in names if n == self.marker]
        if self.marker in names:
            self._unmark()
        remote_staging = None if self.location.local else self.location.child(f"{STAGING_PREFIX}{uuid.uuid4().hex}")
        name = "the staging folder"
        try:
            if remote_staging is not None:
                self.location.fs.create_dir(remote_staging.path, recursive=True)
            for name in order:
                self._move(name, remote_staging)
        except OSError as exc:
            raise OutputError(
                f"cannot publish {name!r} to {self.location.uri!r}: {_first_line(exc)}; the run there is incomplete"
            ) from exc
        finally:
            if remote_staging is not None:
                with contextlib.suppress(OSError):
                    self.location.fs.delete_dir(remote_staging.path)
        return {n: self.location.child(n).uri for n in names}

    def _unmark(self) -> None:
        assert self.marker is not None  # called only when the marker is among the published names
        marker = self.location.child(self.marker)
        try:
            if marker.kind() == "file":
                marker.fs.delete_file(marker.path)
        except OSError as exc:
            raise OutputError(f"cannot replace {marker.uri!r}: {_first_line(exc)}") from exc

    def _move(self, name: str, remote_staging: Location | None) -> None:
        target = self.location.child(name)
        if target.kind() == "folder":
            raise OutputError(f"cannot write {target.uri!r}: a folder of that name exists")
        if remote_staging is None:
            os.replace(self.staging / name, target.path)
        else:
            staged = remote_staging.child(name)
            upload(str(self.staging / name), staged)
            target.fs.move(staged.path, target.path)
        self._published.append(target)

    def close(self, ok: bool) -> None:
        """Remove the staging folder; after a failure also what this run published or created."""
        shutil.rmtree(self.staging, ignore_errors=True)
        if ok:
            return
        for target in reversed(self._published):
            with contextlib.suppress(OSError):
                target.fs.delete_file(target.path)
        _remove_empty(self._created)

    def __enter__(self) -> Publication:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


def read_marker(output: str | Location, marker: str = "result.json", *, what: str = "search run") -> bytes:
    """The bytes of ``marker`` in a finished run's folder.

    Raises:
        OutputError: The folder does not exist, or holds an incomplete run (the marker
            is missing: still running, interrupted, or failed while publishing).
    """
    from rayq.storage.lock import holder_of

    location = resolve(output)
    kind = location.kind()
    if kind != "folder":
        reason = "it is a file" if kind == "file" else "it does not exist"
        raise OutputError(f"no {what} at {location.uri!r}: {reason}")
    if location.child(marker).kind() == "file":
        return location.child(marker).read_bytes()
    holder = holder_of(location)
    why = (
        f"it is still running ({holder.describe()})"
        if holder is not None
        else "it was interrupted or failed while saving; rerun the same command to resume and finish it"
    )
    raise OutputError(f"the {what} at {location.uri!r} is incomplete ({marker} is missing): {why}")


def _missing_parents(path: str) -> list[str]:
    missing = []
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing[::-1]


def _remove_empty(created: list[str]) -> None:
    for path in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(path)
