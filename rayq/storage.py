"""Writing run artifacts through ``pyarrow.fs``: local paths and object stores alike."""

from __future__ import annotations

import os

from rayq.errors import ConfigError


def filesystem(uri: str):
    """``(FileSystem, path)`` for a local path or a URI (``s3://``, ``gs://``, ``file://``...)."""
    from pyarrow import fs

    if "://" in uri:
        try:
            return fs.FileSystem.from_uri(uri)
        except Exception as exc:  # ArrowInvalid: unknown scheme, missing credentials...
            raise ConfigError(f"cannot open output location {uri!r}: {exc}") from exc
    return fs.LocalFileSystem(), os.path.abspath(uri)


def copy_dir_to(local_dir: str, uri: str) -> dict[str, str]:
    """Copy every file of ``local_dir`` (flat) to ``uri``; returns name -> destination."""
    fs_, root = filesystem(uri)
    fs_.create_dir(root, recursive=True)
    out = {}
    for name in sorted(os.listdir(local_dir)):
        src = os.path.join(local_dir, name)
        if not os.path.isfile(src):
            continue
        dest = f"{root.rstrip('/')}/{name}"
        with open(src, "rb") as f, fs_.open_output_stream(dest) as g:
            while chunk := f.read(1 << 22):
                g.write(chunk)
        out[name] = dest if "://" not in uri else f"{uri.rstrip('/')}/{name}"
    return out


def local_dir_for(uri: str) -> str | None:
    """The local directory of ``uri`` when it is on this machine's file system, else None."""
    if "://" not in uri:
        return os.path.abspath(uri)
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return None
