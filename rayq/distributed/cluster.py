"""Connecting to (or starting) a Ray cluster."""

from __future__ import annotations

import logging
import os
import socket

from rayq.errors import ClusterError, RayqError

log = logging.getLogger(__name__)


def init(address: str | None = None, *, num_cpus: int | None = None, **kwargs) -> dict:
    """Connect to the Ray cluster at ``address`` (or ``RAY_ADDRESS``), or start a local one.

    A local cluster is started without the dashboard; an existing connection is
    reused. Returns the cluster's resources.

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
    opts = dict(logging_level=logging.WARNING, log_to_driver=True, configure_logging=False)
    opts.update(kwargs)
    try:
        if address:
            ray.init(address=address, **opts)
        else:
            # "local": always a fresh private cluster, never an unrelated one found on this machine
            opts.setdefault("include_dashboard", False)
            ray.init(address="local", num_cpus=num_cpus, **opts)
    except Exception as exc:  # ConnectionError, RuntimeError, grpc errors...
        where = f"at {address!r}" if address else "locally"
        raise ClusterError(f"cannot start or reach a Ray cluster {where}: {exc}") from exc
    return ray.cluster_resources()


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
        raise ClusterError(f"cannot reach the Ray cluster at {address!r}: {exc}; is it running and is the "
                           "address right? (RAY_ADDRESS, rayq.init(address=...), --address)") from exc


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def task_error(exc: BaseException, what: str) -> BaseException:
    """The error to raise for a failed Ray task: the rayq error it carries (a bad input
    seen on a worker keeps its type and message), else a :class:`ClusterError`."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, RayqError):
        return cause
    return ClusterError(f"{what} failed: {exc}")
