"""Where a run's outputs go: one resolution of local paths and URIs through ``pyarrow.fs``.

Every command (``quantize``, ``search``, ``sweep``, ``report``) and
:meth:`rayq.SearchResult.load` turn their ``output`` into a :class:`Location` with
:func:`resolve`, so ``out/run``, ``file:///abs/run`` and ``s3://bucket/run`` are handled
alike and nothing that looks like a URI is ever taken for a local folder name
(``./s3:/bucket/...``). :func:`check_output` validates a location before any work.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from rayq.errors import OutputError

#: ``scheme:/...``: a URI (a one-letter scheme is a Windows drive, not a URI).
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


@dataclass(frozen=True)
class Location:
    """A folder or file on a ``pyarrow.fs`` file system.

    Attributes:
        uri: As the user wrote it (joined with child names); used in messages.
        fs: The ``pyarrow.fs.FileSystem``.
        path: The path inside ``fs`` (absolute for the local file system).
    """

    uri: str
    fs: Any
    path: str

    @property
    def local(self) -> str | None:
        """The local path when the location is on this machine's file system, else None."""
        from pyarrow import fs as pafs

        return self.path if isinstance(self.fs, pafs.LocalFileSystem) else None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def child(self, name: str) -> Location:
        """The location ``name`` inside this folder."""
        return Location(f"{self.uri.rstrip('/')}/{name}", self.fs, f"{self.path.rstrip('/')}/{name}")

    def parent(self) -> Location:
        """The folder holding this location."""
        uri = self.uri.rstrip("/")
        if "/" in uri.split("://", 1)[-1]:
            head = uri.rsplit("/", 1)[0]
        else:
            head = uri if "://" in uri else "."
        return Location(head, self.fs, posixpath.dirname(self.path.rstrip("/")) or "/")

    def kind(self) -> str:
        """``"file"``, ``"folder"`` or ``"missing"``; :class:`OutputError` if unreachable."""
        from pyarrow import fs as pafs

        try:
            info = self.fs.get_file_info(self.path)
        except Exception as exc:  # OSError from a store: credentials, network...
            raise OutputError(f"cannot reach {self.uri!r}: {_first_line(exc)}") from exc
        return {pafs.FileType.File: "file", pafs.FileType.Directory: "folder"}.get(info.type, "missing")

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def __str__(self) -> str:
        return self.uri


def resolve(uri: str | os.PathLike | Location) -> Location:
    """The :class:`Location` of a local path or a URI that ``pyarrow.fs`` can open
    (a :class:`Location` is returned as is).

    Raises:
        OutputError: ``uri`` is empty, has a scheme ``pyarrow.fs`` does not know
            (``foo://``), or looks like a URI with a missing ``//`` (``s3:/bucket``).

    Example:
        >>> resolve("file:///tmp/run").local
        '/tmp/run'
        >>> resolve("foo://x")                          # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        rayq.errors.OutputError: cannot open the output location 'foo://x': ...
    """
    from pyarrow import fs as pafs

    if isinstance(uri, Location):
        return uri
    if not isinstance(uri, (str, os.PathLike)) or not os.fspath(uri).strip():
        raise OutputError(f"an output location must be a non-empty path or URI, not {uri!r}")
    text = os.fspath(uri)
    match = _URI.match(text)
    if match is None:
        return Location(text, pafs.LocalFileSystem(), os.path.abspath(text))
    if not text.startswith(f"{match.group(1)}://"):
        raise OutputError(f"{text!r} looks like a URI with a missing '/': write {match.group(1)}://...")
    try:
        fs_, path = pafs.FileSystem.from_uri(text)
    except Exception as exc:  # ArrowInvalid (unknown scheme), OSError (no JVM, no region)...
        raise OutputError(
            f"cannot open the output location {text!r}: {_first_line(exc)} (use a local path, "
            f"file:///abs/path or a URI pyarrow.fs supports: s3://, gs://, abfs://, hdfs://)"
        ) from exc
    if isinstance(fs_, pafs.LocalFileSystem):
        path = os.path.abspath(path)
    return Location(text, fs_, path)


def check_output(location: Location, *, folder: bool = True) -> None:
    """Raise :class:`OutputError` unless ``location`` can be written as a folder (or a file).

    Nothing is created. Locally, the nearest existing ancestor must be a writable
    folder; on a store, the location must be reachable and not a file (a folder
    expected) or a folder (a file expected).
    """
    what = "folder" if folder else "file"
    if location.local is None:
        kind = location.kind()
        if kind != "missing" and kind != what:
            raise OutputError(f"cannot write the output {what} {location.uri!r}: it is an existing {kind}")
        return
    path = location.local
    if os.path.exists(path):
        if os.path.isdir(path) != folder:
            kind = "folder" if os.path.isdir(path) else "file"
            raise OutputError(f"cannot write the output {what} {location.uri!r}: it is an existing {kind}")
        probe = path if folder else os.path.dirname(path)
    else:
        probe = os.path.dirname(path)
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe):
            raise OutputError(f"cannot write the output {what} {location.uri!r}: {probe!r} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the output {what} {location.uri!r}: {probe!r} is not writable")


def copy_dir_to(local_dir: str, uri: str | Location) -> dict[str, str]:
    """Copy every file of ``local_dir`` (flat) to ``uri``; returns name -> destination.

    Not atomic: runs are published with :class:`rayq.storage.Publication`.
    """
    location = resolve(uri)
    location.fs.create_dir(location.path, recursive=True)
    out = {}
    for name in sorted(os.listdir(local_dir)):
        src = os.path.join(local_dir, name)
        if os.path.isfile(src):
            upload(src, location.child(name))
            out[name] = location.child(name).uri
    return out


def upload(src: str, dest: Location) -> None:
    """Stream the local file ``src`` to ``dest``."""
    with open(src, "rb") as f, dest.fs.open_output_stream(dest.path) as g:
        while chunk := f.read(1 << 22):
            g.write(chunk)


def download(src: Location, dest: str) -> None:
    """Stream ``src`` to the local file ``dest``."""
    with src.fs.open_input_stream(src.path) as f, open(dest, "wb") as g:
        while chunk := f.read(1 << 22):
            g.write(chunk)


def local_dir_for(uri: str) -> str | None:
    """The local directory of ``uri`` when it is on this machine's file system, else None."""
    return resolve(uri).local
