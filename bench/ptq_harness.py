"""Compatibility name for ``bench_qwac.py`` and ``zoo/compare.py`` (owned by other
streams) until they import :mod:`harness` directly; then delete this file. Everything
here is :mod:`harness`'s: ``interleaved_latency`` is the library's interleaved timing
(``rayq.pipeline.latency.time_rounds``)."""

from harness import (  # noqa: F401
    RUNTIMES,
    interleaved_latency,
    mean_cosine,
    nmse,
    ort_runner,
    outputs,
    ov_runner,
    summarize,
)
