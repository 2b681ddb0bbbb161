"""Connecting to (or starting) a Ray cluster, and finding the nodes that can run a worker."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

from rayq.errors import ClusterError, ConfigError

log = logging.getLogger(__name__)

#: What to do when a Ray worker cannot import the user's code (``validation_fn``).
MISSING_MODULE_HINT = (
    "The module holding validation_fn must be importable on every Ray node: with rayq.submit(...) put it "
    "under working_dir (that folder is uploaded; references like 'examples.digits.metric:accuracy' are "
    "relative to it); with rayq.init('ray://...') run from the project folder (rayq uploads the current "
    "directory) or pass runtime_env={'working_dir': '<project folder>'}; or install it on the nodes."
)
#: Ray Client's head sometimes loses the per-client server it just started (a gRPC
#: "epoll_wait: Bad file descriptor" in its child, about 1 connection in 10 on Ray 2.60);
#: the connection is then simply tried again, at most this many times in all.
CLIENT_CONNECT_ATTEMPTS = 4
_CLIENT_TRANSIENT = ("Starting Ray client server failed", "Proxy failed to Connect to backend")
#: Never uploaded with a working_dir (Ray also honours .gitignore and .rayignore files in it).
DEFAULT_EXCLUDES = (".git", ".venv", "__pycache__", ".pytest_cache", ".rayq_cache")


def init(address: str | None = None, *, num_cpus: int | None = None, **kwargs) -> dict:
    """Connect to the Ray cluster at ``address`` (or ``RAY_ADDRESS``), or start a local one.

    A local cluster is started without the dashboard and on loopback only: its GCS,
    raylet, workers and agents listen on 127.0.0.1 (Ray's token authentication stays
    on), so nothing on the network can reach it; pass ``_node_ip_address=...`` to
    start it on another interface. An existing connection is reused. Returns the
    cluster's resources.

    With a Ray Client address (``ray://host:10001``) and no ``runtime_env``, the
    current directory is uploaded as the job's ``working_dir`` (minus
    :data:`DEFAULT_EXCLUDES`, ``.gitignore`` and ``.rayignore`` entries; Ray's limit is
    512 MiB zipped), so workers can import ``validation_fn`` modules of the project.

    Example:
        >>> import rayq
        >>> rayq.init(num_cpus=2)            # doctest: +SKIP
        {'CPU': 2.0, ...}

    Raises:
        ClusterError: the address cannot be reached.
    """
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
    opts: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=True, configure_logging=False)
    opts.update(kwargs)
    if address and address.startswith("ray://") and "runtime_env" not in kwargs:
        # Ray Client workers do not see this machine's files: ship the project folder
        opts["runtime_env"] = {"working_dir": os.getcwd(), "excludes": list(DEFAULT_EXCLUDES)}
        log.info(
            "uploading the working directory %s to the cluster (runtime_env working_dir; pass "
            "runtime_env=... to rayq.init to choose)",
            os.getcwd(),
        )
    try:
        with _quiet_like_rayq():
            if address and address.startswith("ray://"):
                _client_connect(ray, address, opts)
            elif address:
                ray.init(address=address, **opts)
            else:
                # "local": always a fresh private cluster, never an unrelated one found on this machine
                opts.setdefault("include_dashboard", False)
                with _loopback_only(opts):
                    ray.init(address="local", num_cpus=num_cpus, **opts)
    except Exception as exc:  # ConnectionError, RuntimeError, grpc errors...
        where = f"at {address!r}" if address else "locally"
        hint = (
            " (the working_dir upload is limited to 512 MiB zipped: pass runtime_env={'working_dir': ..., "
            "'excludes': [...]})"
            if "runtime_env" in opts and "size" in str(exc).lower()
            else ""
        )
        raise ClusterError(f"cannot start or reach a Ray cluster {where}: {exc}{hint}") from exc
    if opts.get("log_to_driver"):
        _worker_logs_to_stderr()
    return ray.cluster_resources()


def _client_connect(ray, address: str, opts: dict) -> None:
    """``ray.init`` with a Ray Client address, tried again (with a short pause) when the
    head failed to start this client's server: a transient fault of the head, not of
    the address or the job, so the next attempt usually succeeds."""
    for attempt in range(1, CLIENT_CONNECT_ATTEMPTS + 1):
        try:
            ray.init(address=address, **opts)
            return
        except Exception as exc:
            if attempt == CLIENT_CONNECT_ATTEMPTS or not any(m in str(exc) for m in _CLIENT_TRANSIENT):
                raise
            log.info(
                "the Ray Client server at %s failed to start (attempt %d of %d); connecting again",
                address,
                attempt,
                CLIENT_CONNECT_ATTEMPTS,
            )
            with contextlib.suppress(Exception):
                ray.shutdown()
            time.sleep(1.0 * attempt)


@contextlib.contextmanager
def _quiet_like_rayq() -> Iterator[None]:
    """While Ray starts, its warnings (the token-auth banner) are hidden when rayq's own
    logger was explicitly set above INFO (``rayq -q`` silences both)."""
    ray_logger = logging.getLogger("ray")
    saved = ray_logger.level
    if logging.getLogger("rayq").level > logging.INFO:
        ray_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ray_logger.setLevel(saved)


def _worker_logs_to_stderr() -> None:
    """Print what Ray forwards to the driver (worker output, and raylet lines such as
    "a worker died" and "the task will be retried") on stderr: the driver's stdout is
    the caller's, and ``rayq`` keeps it machine-readable. Ray prints these through one
    private function of ``ray._private.worker``; a Ray without it keeps its default."""
    import functools

    try:
        from ray._private import worker as ray_worker

        original = ray_worker.print_to_stdstream
        if not getattr(original, "_rayq_stderr", False):

            def to_stderr(data: dict, ignore_prefix: bool) -> None:
                original({**data, "is_err": True}, ignore_prefix)

            to_stderr._rayq_stderr = True  # type: ignore[attr-defined]
            ray_worker.print_to_stdstream = to_stderr  # the raylet's error lines look it up here
        ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)
        dispatcher = ray_worker.global_worker_stdstream_dispatcher  # worker output: a bound handler
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler(
            "ray_print_logs", functools.partial(ray_worker.print_to_stdstream, ignore_prefix=ignore_prefix)
        )
    except (ImportError, AttributeError) as exc:  # a Ray without these internals
        log.debug("Ray worker logs stay on stdout: %s", exc)


LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def _loopback_only(opts: dict) -> Iterator[None]:
    """Start a local Ray whose processes bind 127.0.0.1 only.

    Ray 2.x binds its gRPC servers and agents to the node IP address, but maps a
    loopback ``_node_ip_address`` to the machine's external address unless clusters
    are disabled on this platform (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read at
    import time into ``ray._private.ray_constants``). Both are set for the start only.
    """
    if "_node_ip_address" in opts:  # the caller chose an interface
        yield
        return
    from ray._private import ray_constants

    opts["_node_ip_address"] = LOOPBACK
    saved = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved[0]
        if saved[1] is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved[1]


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a closed ``host:port`` instead of waiting out Ray's connection retries."""
    target = address.split("://", 1)[-1]
    if target in ("auto", "local") or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    if not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address!r}: {exc}; is it running and is the "
            "address right? (RAY_ADDRESS, rayq.init(address=...), --address)"
        ) from exc


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def default_resources(num_workers: int) -> dict:
    """Ray resources of one of ``num_workers`` workers: one CPU each, or an equal share
    of the cluster's CPUs when W exceeds them."""
    return {"num_cpus": min(1.0, cluster_cpus() / num_workers)}


def is_connected() -> bool:
    """True when this process is connected to a Ray cluster. Does not import Ray (a
    process that never imported it is not connected), so it costs nothing to ask.

    Example:
        >>> from rayq.distributed import cluster
        >>> cluster.is_connected()       # doctest: +SKIP
        False
    """
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def resource_bundle(resources: dict) -> dict:
    """Ray task options (``num_cpus``, ``num_gpus``, ``memory``, ``resources``) as a
    resource dict, the way nodes report theirs."""
    unknown = set(resources) - {"num_cpus", "num_gpus", "memory", "resources"}
    if unknown:
        raise ConfigError(
            f"unsupported worker resources {sorted(unknown)}; use num_cpus, num_gpus, memory and resources={{...}}"
        )
    bundle = {
        key: resources[opt]
        for opt, key in (("num_cpus", "CPU"), ("num_gpus", "GPU"), ("memory", "memory"))
        if resources.get(opt)
    }
    bundle.update({k: v for k, v in (resources.get("resources") or {}).items() if v})
    return bundle


def worker_nodes(resources: dict, what: str, timeout_s: float) -> list[str]:
    """Ids of the alive nodes that can run ``what`` with ``resources``, this node first;
    waits up to ``timeout_s`` for one to appear (an autoscaler adding it).

    Raises:
        ClusterError: no node has the resources after ``timeout_s``.
    """
    import ray

    need = resource_bundle(resources)
    here = ray.get_runtime_context().get_node_id()
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = [
            n["NodeID"]
            for n in ray.nodes()
            if n.get("Alive") and all(n.get("Resources", {}).get(k, 0) >= v for k, v in need.items())
        ]
        if nodes:
            return sorted(nodes, key=lambda n: n != here)
        if time.monotonic() > deadline:
            raise ClusterError(
                f"no node of the cluster can run {what} with {resources} (waited "
                f"{timeout_s}s); cluster resources: {ray.cluster_resources()}"
            )
        time.sleep(1.0)
