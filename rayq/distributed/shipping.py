"""How a model reaches Ray workers: by value, by a shared path, or copied to each node once.

A small model goes to the object store as its backend's bytes (:meth:`Backend.to_bytes`).
A large one never does: an ONNX model over 2 GB cannot be one protobuf message, and W
copies of a multi-GB bytes object would multiply the memory. The driver writes it
once to a temporary folder (:meth:`Backend.save`, weights as external data); then

- when every worker node runs on the driver's host (a local cluster, or several
  raylets on one machine), the workers load that folder in place;
- otherwise its files go to the object store in chunks of raw bytes
  (``CHUNK_BYTES``), and the first worker process of each node that needs the model
  writes them to the node's temporary folder (once per node, under a file lock), from
  where every worker of that node loads it.

Workers load with :meth:`Backend.load`, so nothing is unpickled from file data.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from rayq.backends import get_backend
from rayq.errors import ClusterError

log = logging.getLogger(__name__)

#: Models whose serialised size (:meth:`Backend.size_bytes`) reaches this are shipped as
#: files, not as one bytes object.
BY_VALUE_MAX_BYTES = 1 << 30
#: Size of the raw-bytes pieces a model's files travel in to other hosts.
CHUNK_BYTES = 64 << 20
_DONE = ".rayq-complete"  # written last into a folder whose files are all there


@dataclass(frozen=True)
class Shipment:
    """A model on its way to workers (picklable; the refs inside are not fetched until used).

    Exactly one of ``data`` (the object ref of the model's bytes) or ``files`` is set.
    ``files``: ``(file name, size)`` of the saved model, the model file first;
    ``folder``: the driver's folder, readable where it is (shared host), or None;
    ``chunks``: per file, the refs of its raw-bytes pieces (other hosts), or None.
    """

    backend: str
    token: str
    data: Any = None
    files: tuple[tuple[str, int], ...] = ()
    folder: str | None = None
    chunks: tuple[tuple[Any, ...], ...] | None = None


def ship(
    backend_name: str, model: Any, token: str, *, copy: bool | None = None, by_value_max: int | None = None
) -> Shipment:
    """Put ``model`` (a backend model, or its ``to_bytes()``) where workers can load it.

    Args:
        copy: send the files through the object store (True) or share the driver's
            folder (False); default: share when every node is on this host.
        by_value_max: size from which the model ships as files (default
            ``BY_VALUE_MAX_BYTES``).
    """
    import ray

    backend = get_backend(backend_name)
    limit = BY_VALUE_MAX_BYTES if by_value_max is None else by_value_max
    if isinstance(model, (bytes, bytearray)) or backend.size_bytes(model) < limit:
        data = model if isinstance(model, (bytes, bytearray)) else backend.to_bytes(model)
        return Shipment(backend_name, token, data=ray.put(data))
    folder = tempfile.mkdtemp(prefix=f"rayq-ship-{token[:12]}-")
    try:
        written = backend.save(model, os.path.join(folder, "model" + getattr(backend, "suffix", "")))
        files = tuple((os.path.basename(p), os.path.getsize(p)) for p in written)
        if copy is None:
            copy = not _single_host()
        if not copy:
            _mark_done(folder, token)
            log.info("shipping the model to workers by path (%s, %.2f GB)", folder, _total(files) / 1e9)
            return Shipment(backend_name, token, files=files, folder=folder)
        chunks = tuple(_put_file(os.path.join(folder, name)) for name, _ in files)
        log.info("shipping the model to workers in %d chunks (%.2f GB)", sum(map(len, chunks)), _total(files) / 1e9)
    finally:
        if copy is not False:  # the object store has the chunks (or writing failed)
            shutil.rmtree(folder, ignore_errors=True)
    return Shipment(backend_name, token, files=files, chunks=chunks)


def discard(shipment: Shipment) -> None:
    """Driver side: remove a shared folder once no task will read it."""
    if shipment.folder:
        shutil.rmtree(shipment.folder, ignore_errors=True)


def receive(shipment: Shipment) -> Any:
    """Worker side: the model of ``shipment``, loaded by its backend."""
    import ray

    backend = get_backend(shipment.backend)
    if shipment.data is not None:
        return backend.from_bytes(ray.get(shipment.data))
    folder = shipment.folder if shipment.folder and _is_done(shipment.folder, shipment.token) else None
    if folder is None:
        if shipment.chunks is None:
            raise ClusterError(
                f"the model folder {shipment.folder!r} written by the driver is not readable on "
                f"node {ray.get_runtime_context().get_node_id()[:12]} (not the driver's host?)"
            )
        folder = _materialise(shipment)
    return backend.load(os.path.join(folder, shipment.files[0][0]))


def node_copy(token: str) -> str:
    """The folder a node keeps its copy of call ``token``'s model in."""
    return os.path.join(tempfile.gettempdir(), f"rayq-model-{token}")


def drop_node_copy(token: str) -> None:
    """Remove this node's copy of an ended call's model (loaded models stay in memory)."""
    path = node_copy(token)
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


def _materialise(shipment: Shipment) -> str:
    """Write the shipment's files into this node's folder once; every process of the node
    waits on the same lock and then finds them complete."""
    import ray

    folder = node_copy(shipment.token)
    os.makedirs(folder, exist_ok=True)
    with open(folder + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_done(folder, shipment.token):
            for (name, size), refs in zip(shipment.files, shipment.chunks or ()):
                with open(os.path.join(folder, name), "wb") as f:
                    f.writelines(ray.get(ref) for ref in refs)  # one chunk in memory at a time
                if os.path.getsize(os.path.join(folder, name)) != size:
                    raise ClusterError(f"the model file {name} arrived incomplete on this node")
            _mark_done(folder, shipment.token)
    with contextlib.suppress(OSError):
        os.remove(folder + ".lock")
    return folder


def _put_file(path: str) -> tuple:
    import ray

    refs = []
    with open(path, "rb") as f:
        while piece := f.read(CHUNK_BYTES):
            refs.append(ray.put(piece))
    return tuple(refs)


def _single_host() -> bool:
    """True when every alive node has the driver's address (and the driver is not a Ray
    Client, whose files the cluster cannot see)."""
    import ray

    with contextlib.suppress(ImportError, AttributeError):
        from ray.util.client import ray as client

        if client.is_connected():
            return False
    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    mine = {n["NodeManagerAddress"] for n in nodes if n["NodeID"] == here}
    return len(mine) == 1 and all(n["NodeManagerAddress"] in mine for n in nodes)


def _mark_done(folder: str, token: str) -> None:
    with open(os.path.join(folder, _DONE), "w") as f:
        f.write(token)


def _is_done(folder: str, token: str) -> bool:
    try:
        with open(os.path.join(folder, _DONE)) as f:
            return f.read() == token
    except OSError:
        return False


def _total(files) -> int:
    return sum(size for _, size in files)
