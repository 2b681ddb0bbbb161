"""Manual benchmark (not a test): FP32 vs rayq-INT8 latency of a ResNet-50-shaped model.

Run: ``python -m tests.backends.openvino.bench_int8 [threads]``. Prints the median latency
of both models on CPU and the runtime precision of every convolution.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
import openvino as ov

from rayq.backends import get_backend
from rayq.backends.base import StatRequest
from rayq.core.params import activation_params, quantize, weight_params
from rayq.core.recipe import ActivationQuant, Recipe, WeightQuant
from rayq.core.rules import place
from rayq.testing.models import resnet50_like


def _recipe(backend, model, feeds):
    view = backend.graph(model)
    placement = place(view, model_type=None)
    acts = [p for p in placement.points if p.kind == "activation"]
    stats = backend.stat_runner(model, [StatRequest(p.tensor, ("min", "max")) for p in acts])(feeds)
    aqs, wqs = [], []
    for point, edges in placement.active():
        if point.kind == "activation":
            s = stats[point.tensor]
            aqs.append(
                ActivationQuant(
                    point.tensor, edges, activation_params(float(s["min"].min()), float(s["max"].max()), symmetric=True)
                )
            )
        else:
            w = view.constant(point.tensor)
            p = weight_params(w, point.axis)
            wqs.append(WeightQuant(point.serves[0], point.tensor, edges[0], quantize(w, p), p))
    return Recipe(tuple(aqs), tuple(wqs))


def _latency(compiled, x, repeats=30):
    request = compiled.create_infer_request()
    for _ in range(5):
        request.infer({0: x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        request.infer({0: x})
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3, (max(times) - min(times)) * 1e3


def main(threads: int = 0) -> None:
    backend = get_backend("openvino")
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(resnet50_like(input_shape=(3, 224, 224)), f"{tmp}/r50.onnx")
        model = ov.convert_model(f"{tmp}/r50.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    quantized = backend.apply(model, _recipe(backend, model, {"input": x}))
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    core = ov.Core()
    for name, m in (("fp32", model), ("int8", quantized)):
        compiled = core.compile_model(m, "CPU", config)
        precisions = sorted(
            {
                op.get_rt_info()["runtimePrecision"].astype(str)
                for op in compiled.get_runtime_model().get_ordered_ops()
                if op.get_rt_info()["layerType"].astype(str) == "Convolution"
            }
        )
        median, spread = _latency(compiled, x)
        print(f"{name}: median {median:.2f} ms (spread {spread:.2f} ms), conv precisions {precisions}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
