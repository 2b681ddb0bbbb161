"""How many inference streams a statistics pass runs at once, and threads per stream.

One pass over calibration data is a throughput job: several batches in flight, each on
fewer threads, keep the cores busier than one batch on every thread (small layers
parallelise poorly, and the host-side work of one batch overlaps the runtime's work
on another). OpenVINO decides this itself (``PERFORMANCE_HINT=THROUGHPUT``); ONNX
Runtime, which has no such hint, uses :func:`plan`.
"""

from __future__ import annotations

import os

#: At most this many streams (beyond it, activation memory grows for little gain).
MAX_STREAMS = 4
#: Models whose weights reach this size run one stream on every thread (a large
#: model's batches are few and its activations big).
ONE_STREAM_BYTES = 1 << 30


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def plan(num_threads: int, weights_bytes: int = 0) -> tuple[int, int]:
    """``(streams, threads per stream)`` for ``num_threads`` threads in all (0: every CPU).

    Example:
        >>> plan(2), plan(1), plan(16), plan(8, weights_bytes=2 << 30)
        ((2, 1), (1, 1), (4, 4), (1, 8))
    """
    cpus = num_threads if num_threads > 0 else available_cpus()
    if cpus <= 1 or weights_bytes >= ONE_STREAM_BYTES:
        return 1, cpus
    streams = min(cpus, MAX_STREAMS)
    return streams, max(1, cpus // streams)
