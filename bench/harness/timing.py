"""Timing: rayq's interleaved timing for several models, A/B pairs in alternating
order, and the runners and output errors the model benchmarks share."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def interleaved_latency(
    runners: Mapping[str, Callable[[Any], Any]], feeds: Any, *, runs: int = 30, warmup: int = 5, block: int = 10
) -> dict[str, dict]:
    """Batch latency of every runner, timed against each other with the library's
    :func:`rayq.pipeline.latency.time_rounds`: ``ceil(runs / block)`` rounds, each giving
    every runner a turn of ``warmup`` untimed then ``block`` timed calls, in an order
    rotating by round. Per runner (ms): ``median_ms``, ``q1_ms``, ``q3_ms``, ``min_ms``,
    ``runs``, ``times_ms`` and ``rounds_ms`` (each round's median, aligned across runners:
    :func:`paired_ratio`)."""
    from rayq.pipeline.latency import time_rounds

    names = list(runners)
    block = max(1, min(block, runs))
    rounds = time_rounds([runners[n] for n in names], feeds, warmup=warmup, rounds=math.ceil(runs / block), block=block)
    out = {}
    for name, per_round in zip(names, rounds):
        times = [t for r in per_round for t in r]
        out[name] = dict(summarize(times), times_ms=times, rounds_ms=[statistics.median(r) for r in per_round])
    return out


def summarize(times: Sequence[float]) -> dict:
    """Median, quartiles, minimum and count of ``times``."""
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {
        "median_ms": statistics.median(times),
        "q1_ms": q[0],
        "q3_ms": q[2],
        "min_ms": min(times),
        "runs": len(times),
    }


def paired_ratio(a: Sequence[float] | None, b: Sequence[float] | None) -> float | None:
    """Median over aligned samples of ``a[i] / b[i]`` (``None`` when either is missing)."""
    if not a or not b:
        return None
    return statistics.median(x / y for x, y in zip(a, b))


@dataclass
class Pairs:
    """Two sides run as alternating A/B pairs (:func:`alternate`)."""

    a: str
    b: str
    values: dict[str, list[float]]
    order: list[str]
    results: dict[str, list[Any]] = field(default_factory=dict)

    def median(self, side: str) -> float:
        return statistics.median(self.values[side])

    @property
    def ratios(self) -> list[float]:
        """``b / a`` of each pair."""
        return [y / x for x, y in zip(self.values[self.a], self.values[self.b])]

    @property
    def ratio_median(self) -> float:
        return statistics.median(self.ratios)

    def summary(self, value: Callable[[Any], float]) -> dict:
        """Each side's median of ``value(result)`` and the median of the per-pair ratios b/a."""
        va, vb = ([float(value(r)) for r in self.results[s]] for s in (self.a, self.b))
        return {self.a: statistics.median(va), self.b: statistics.median(vb), "ratio_median": paired_ratio(vb, va)}

    def to_dict(self) -> dict:
        return {
            "sides": [self.a, self.b],
            "order": self.order,
            "values": self.values,
            "median": {s: self.median(s) for s in (self.a, self.b)},
            "ratios": self.ratios,
            "ratio_median": self.ratio_median,
            "ratio": f"{self.b} / {self.a}",
        }


def alternate(
    sides: Mapping[str, Callable[[], Any]],
    pairs: int,
    *,
    value: Callable[[Any], float] = float,
    on_result: Callable[[str, int, Any], None] | None = None,
) -> Pairs:
    """Run the two callables of ``sides`` ``pairs`` times each, alternating the order
    (pair 0: A then B, pair 1: B then A, ...) so neither always runs second. ``value``
    turns a call's return into the measured number; ``on_result(side, pair, result)`` is
    called after each call (progress output)."""
    (a, run_a), (b, run_b) = sides.items()
    out = Pairs(a, b, {a: [], b: []}, [], {a: [], b: []})
    for i in range(pairs):
        for side, run in ((a, run_a), (b, run_b)) if i % 2 == 0 else ((b, run_b), (a, run_a)):
            result = run()
            out.order.append(side)
            out.results[side].append(result)
            out.values[side].append(float(value(result)))
            if on_result:
                on_result(side, i, result)
    return out


Runner = Callable[[Any], Any]


def ort_runner(path: str, threads: int) -> Runner:
    """An ONNX Runtime session for ``path``, returning the first output: the settings of
    rayq's own runner (sequential, all graph optimisations, ``threads`` intra-op, 1 inter-op)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    first = sess.get_outputs()[0].name
    return lambda feeds: sess.run([first], feeds)[0]


def ov_runner(path: str, threads: int) -> Runner:
    """An OpenVINO CPU compiled model for ``path`` (.onnx or .xml), first output (f32 precision hint)."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()
    out = compiled.outputs[0]
    return lambda feeds: np.array(request.infer(feeds)[out])


RUNTIMES: dict[str, Callable[[str, int], Runner]] = {"ort": ort_runner, "ov": ov_runner}


def outputs(run: Runner, inputs: Sequence[Any]) -> Any:
    """First output for every held-out input, stacked along axis 0 (as float64)."""
    import numpy as np

    return np.concatenate([np.asarray(run(x), dtype=np.float64) for x in inputs], axis=0)


def nmse(ref: Any, got: Any) -> float:
    """Mean over samples of ``||got - ref||^2 / ||ref||^2``."""
    import numpy as np

    ref, got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    return float((((got - ref) ** 2).sum(1) / np.maximum((ref**2).sum(1), 1e-30)).mean())


def mean_cosine(ref: Any, got: Any) -> float:
    """Mean row cosine similarity (rows = samples, flattened)."""
    import numpy as np

    ref, got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-30)
    return float(cos.mean())
