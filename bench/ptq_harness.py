"""Tool-neutral measurement harness for ``bench_ptq.py``: one latency and output-error
protocol, applied identically to the FP32 model, NNCF's INT8 model and rayq's.

* ONNX Runtime: ``SessionOptions`` with ``intra_op_num_threads=threads``,
  ``inter_op_num_threads=1``, sequential execution, all graph optimisations.
* OpenVINO: ``{"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
  "INFERENCE_PRECISION_HINT": "f32"}`` on ``CPU`` (reads FP32 ONNX, QDQ ONNX, or IR).
* Latency: batch 1, ``warmup`` untimed runs per model, then ``runs`` rounds; each
  round times one inference of every model, in an order rotated every round, so the
  models share the same drift in machine load. Median, quartiles, min and the raw
  times are kept (the report also gives the median of per-round ratios, which is
  less sensitive to load drift than the ratio of medians).
* Output error of INT8 vs FP32 on held-out inputs (batch 1 each):
  ``nmse = mean_i ||q_i - f_i||^2 / ||f_i||^2`` and, for embeddings, the mean row
  cosine similarity.

No rayq or nncf import here: the harness is the same for both tools.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


def ort_runner(path: str, threads: int) -> Runner:
    """An ONNX Runtime session for ``path``, returning the first output."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    first = sess.get_outputs()[0].name

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return sess.run([first], feeds)[0]

    return run


def ov_runner(path: str, threads: int) -> Runner:
    """An OpenVINO CPU compiled model for ``path`` (.onnx or .xml), first output."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()
    out = compiled.outputs[0]

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.array(request.infer(feeds)[out])

    return run


RUNTIMES: dict[str, Callable[[str, int], Runner]] = {"ort": ort_runner, "ov": ov_runner}


def outputs(run: Runner, inputs: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """First output for every held-out input, stacked along axis 0 (as float64)."""
    return np.concatenate([np.asarray(run(x), dtype=np.float64) for x in inputs], axis=0)


def nmse(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean over samples of ``||got - ref||^2 / ||ref||^2``."""
    ref = ref.reshape(len(ref), -1)
    got = got.reshape(len(got), -1)
    num = ((got - ref) ** 2).sum(1)
    den = np.maximum((ref ** 2).sum(1), 1e-30)
    return float((num / den).mean())


def mean_cosine(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean row cosine similarity (rows = samples, flattened)."""
    ref = ref.reshape(len(ref), -1)
    got = got.reshape(len(got), -1)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-30)
    return float(cos.mean())


def interleaved_latency(runners: Mapping[str, Runner], feeds: dict[str, np.ndarray], *,
                        runs: int, warmup: int) -> dict[str, dict]:
    """Time every runner on ``feeds``, round-robin with a rotating order (ms)."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name](feeds)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            runners[name](feeds)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {n: dict(summarize(t), times_ms=t) for n, t in times.items()}


def summarize(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4)
    return {"median_ms": statistics.median(times), "q1_ms": q[0], "q3_ms": q[2],
            "min_ms": min(times), "runs": len(times)}
