"""Latency measurement: warm-up, then the median of timed repeats, with spread; and
the gate that keeps a process's measurements alone."""

from __future__ import annotations

import os
import platform
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
        rounds_ms: Median of each interleaved round (:func:`time_rounds`), aligned
            with the other models timed in the same call; empty for a single timing.
        settings: The runtime settings it ran with (:func:`runtime_settings`).
    """

    median_ms: float
    iqr_ms: float
    min_ms: float
    repeats: int
    runtime: str
    threads: int
    rounds_ms: tuple[float, ...] = ()
    settings: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def time_runner(
    run, feeds: dict[str, np.ndarray], *, warmup: int = 10, repeats: int = 50, min_seconds: float = 0.0
) -> list[float]:
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


def time_rounds(
    runs: list,
    feeds: dict[str, np.ndarray],
    *,
    warmup: int = 5,
    rounds: int = 3,
    block: int = 10,
    min_seconds: float = 0.0,
) -> list[list[list[float]]]:
    """:func:`time_interleaved`, keeping the rounds apart: ``[runner][round] -> times (ms)``.

    A round's medians of two runners form one independent ratio sample
    (:func:`rayq.core.speed.ratio_interval`)."""
    times: list[list[list[float]]] = [[] for _ in runs]
    for r in range(rounds):
        for k in range(len(runs)):
            i = (r + k) % len(runs)
            times[i].append(time_runner(runs[i], feeds, warmup=warmup, repeats=block, min_seconds=min_seconds))
    return times


def time_interleaved(
    runs: list,
    feeds: dict[str, np.ndarray],
    *,
    warmup: int = 5,
    rounds: int = 3,
    block: int = 10,
    min_seconds: float = 0.0,
) -> list[list[float]]:
    """Time several runners against each other: each round gives every runner a turn of
    ``warmup`` untimed then ``block`` timed calls, in an order that rotates by round, so
    drift of the machine (load, clocks, neighbours) falls on all of them alike. Turns,
    not single calls: after another model ran, a model needs several calls to be back
    at its steady latency (MiniLM FP32 on 2 vCPUs: 6-8 calls). A turn lasts at least
    ``min_seconds`` (more calls of a fast model). Returns each runner's times (ms), at
    least ``rounds * block`` each."""
    per_round = time_rounds(runs, feeds, warmup=warmup, rounds=rounds, block=block, min_seconds=min_seconds)
    return [[t for block_times in r for t in block_times] for r in per_round]


def summarize(
    times: list[float],
    runtime: str,
    threads: int,
    rounds: list[list[float]] | None = None,
    settings: dict | None = None,
) -> Latency:
    """Median, IQR and minimum of ``times``; with ``rounds``, each round's median too."""
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    medians = tuple(statistics.median(r) for r in rounds or ())
    return Latency(statistics.median(times), q[2] - q[0], min(times), len(times), runtime, threads, medians, settings)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_settings(runtime: str, threads: int, device: str = "CPU") -> dict:
    """The settings latency is measured with, as a user deploys them (recorded in
    ``result.json``): runtime and version, threads, precision and performance hints,
    device and CPU model.

    ONNX Runtime: CPU execution provider, all graph optimizations, sequential
    execution, ``intra_op_num_threads=threads`` (0: one per core), one inter-op
    thread. OpenVINO: ``PERFORMANCE_HINT=LATENCY``, ``INFERENCE_PRECISION_HINT=f32``
    (OpenVINO's own default on CPUs with AMX or AVX512-BF16 is bf16 for the layers
    left in floating point: faster, but not the accuracy rayq validated),
    ``INFERENCE_NUM_THREADS=threads``.

    Example:
        >>> runtime_settings("openvino", 2)["precision_hint"]
        'f32'
    """
    out = {
        "runtime": runtime,
        "device": device,
        "threads": int(threads) or "runtime default",
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
    }
    if runtime == "onnxruntime":
        import onnxruntime

        out.update(
            version=onnxruntime.__version__,
            execution_provider="CPUExecutionProvider",
            graph_optimization_level="ORT_ENABLE_ALL",
            execution_mode="ORT_SEQUENTIAL",
            inter_op_threads=1 if threads else "runtime default",
            precision_hint="fp32 (model's types)",
        )
    elif runtime == "openvino":
        import openvino

        out.update(version=openvino.get_version(), performance_hint="LATENCY", precision_hint="f32")
    return out


def measure_latency(
    backend: Backend,
    model,
    feeds: dict[str, np.ndarray],
    *,
    runtime: str | None = None,
    device: str = "CPU",
    threads: int = 0,
    warmup: int = 10,
    repeats: int = 50,
) -> Latency:
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
