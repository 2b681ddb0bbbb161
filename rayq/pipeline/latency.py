"""Latency measurement: warm-up, then the median of timed repeats, with spread; and
the gate that keeps a process's measurements alone."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

from rayq.backends.base import Backend


@dataclass(frozen=True)
class Latency:
    """Measured latency in milliseconds.

    Attributes:
        median_ms: Median over repeats.
        iqr_ms: Inter-quartile range (the spread).
        min_ms: Fastest repeat.
        repeats: Number of timed runs.
        runtime: ``onnxruntime`` or ``openvino``.
        threads: Threads the runtime was pinned to (0: runtime default).
    """

    median_ms: float
    iqr_ms: float
    min_ms: float
    repeats: int
    runtime: str
    threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def time_runner(run, feeds: dict[str, np.ndarray], *, warmup: int = 10, repeats: int = 50,
                min_seconds: float = 0.0) -> list[float]:
    """Call ``run(feeds)`` ``warmup`` times, then time at least ``repeats`` calls (ms)."""
    for _ in range(warmup):
        run(feeds)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start) < min_seconds:
        t0 = time.perf_counter()
        run(feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def time_interleaved(runs: list, feeds: dict[str, np.ndarray], *, warmup: int = 5, rounds: int = 3,
                     block: int = 10, min_seconds: float = 0.0) -> list[list[float]]:
    """Time several runners against each other: each round gives every runner a turn of
    ``warmup`` untimed then ``block`` timed calls, in an order that rotates by round, so
    drift of the machine (load, clocks, neighbours) falls on all of them alike. Turns,
    not single calls: after another model ran, a model needs several calls to be back
    at its steady latency (MiniLM FP32 on 2 vCPUs: 6-8 calls). A turn lasts at least
    ``min_seconds`` (more calls of a fast model). Returns each runner's times (ms), at
    least ``rounds * block`` each."""
    times: list[list[float]] = [[] for _ in runs]
    for r in range(rounds):
        for k in range(len(runs)):
            i = (r + k) % len(runs)
            times[i] += time_runner(runs[i], feeds, warmup=warmup, repeats=block, min_seconds=min_seconds)
    return times


def summarize(times: list[float], runtime: str, threads: int) -> Latency:
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return Latency(statistics.median(times), q[2] - q[0], min(times), len(times), runtime, threads)


def measure_latency(backend: Backend, model, feeds: dict[str, np.ndarray], *, runtime: str | None = None,
                    device: str = "CPU", threads: int = 0, warmup: int = 10, repeats: int = 50) -> Latency:
    """Compile ``model`` on ``runtime`` and measure one batch's latency.

    Example:
        >>> lat = measure_latency(get_backend("onnx"), model, feeds, threads=2)   # doctest: +SKIP
        >>> lat.median_ms                                                          # doctest: +SKIP
        1.92
    """
    runtime = runtime or backend.runtimes[0]
    run = backend.runner(model, runtime=runtime, device=device, num_threads=threads)
    return summarize(time_runner(run, feeds, warmup=warmup, repeats=repeats), runtime, threads)


class MeasurementGate:
    """Keeps latency measurements apart from evaluations started by the same process.

    A sweep runs its searches in threads of one driver, sharing the cluster's cores
    task by task; one search's timing must not run while another validates on those
    cores. Evaluations (validation, output error) enter :meth:`evaluating` together;
    a measurement in :meth:`measuring` waits for the running ones to finish and holds
    new ones back until it is done (a waiting measurement goes first, so a stream of
    evaluations cannot starve it). One per process: :data:`GATE`. Work started by
    other processes (another job on the cluster) is outside its reach.

    Example:
        >>> gate = MeasurementGate()
        >>> with gate.measuring():
        ...     pass                      # time here; no evaluation of this process runs
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._evaluating = 0
        self._measuring = False
        self._waiting = 0

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._measuring and not self._waiting)
            self._evaluating += 1
        try:
            yield
        finally:
            with self._cond:
                self._evaluating -= 1
                self._cond.notify_all()

    @contextmanager
    def measuring(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._measuring and not self._evaluating)
            self._waiting -= 1
            self._measuring = True
        try:
            yield
        finally:
            with self._cond:
                self._measuring = False
                self._cond.notify_all()


GATE = MeasurementGate()
