"""Helpers of the end-to-end tests: run ONNX models on ONNX Runtime and OpenVINO, and
look inside QDQ graphs. Plain onnx / onnxruntime / openvino calls, independent of
rayq's own runners, so the tests check rayq's output with the runtimes themselves."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def run_ort(model: onnx.ModelProto, feeds: dict, *, optimized_path: str | None = None) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 2
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def run_ov(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """OpenVINO reads QDQ ONNX directly (Q/DQ pairs become INT8 FakeQuantize); skips the
    calling test where OpenVINO is not installed. Compiled with the ``f32`` precision
    hint, as rayq's own runner does: on AMX CPUs the default (bf16) would blur the
    comparison with FP32."""
    import pytest

    ov = pytest.importorskip("openvino")

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(model=model.SerializeToString(), weights=b""),
        "CPU",
        {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"},
    )
    result = compiled(feeds)
    return [np.asarray(result[o]) for o in compiled.outputs]


def nmse(reference, candidate) -> float:
    num = sum(float(np.sum((np.float64(a) - np.float64(b)) ** 2)) for a, b in zip(reference, candidate))
    den = sum(float(np.sum(np.float64(a) ** 2)) for a in reference)
    return num / den


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def dequantized(model: onnx.ModelProto, tensor: str, *, through=("MaxPool", "Flatten", "Reshape", "Transpose")) -> bool:
    """True if ``tensor`` is the output of a DequantizeLinear, possibly through
    data-movement ops (where rayq moves quantizers up)."""
    prods = producers(model)
    while tensor in prods:
        node = prods[tensor]
        if node.op_type == "DequantizeLinear":
            return True
        if node.op_type not in through:
            return False
        tensor = node.input[0]
    return False


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def activation_quantizers(model: onnx.ModelProto) -> list[tuple[str, np.ndarray]]:
    """(input tensor, zero point) of every QuantizeLinear in the model."""
    inits = initializers(model)
    return [(n.input[0], inits[n.input[2]]) for n in model.graph.node if n.op_type == "QuantizeLinear"]


def weight_of(model: onnx.ModelProto, node_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(int values, scale, zero point) of the weight of ``node_name`` if it is an int8
    initializer behind a DequantizeLinear, else None."""
    inits = initializers(model)
    prods = producers(model)
    dq = prods.get(node(model, node_name).input[1])
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
        return None
    return inits[dq.input[0]], inits[dq.input[1]], inits[dq.input[2]]


REPO_ROOT = Path(__file__).resolve().parents[2]
DIGITS_DIR = REPO_ROOT / "examples" / "digits"


def digits_data():
    """``examples/digits/data.py``, loaded by path (a ``tests/examples`` package may
    shadow the top-level ``examples`` package on ``sys.path``)."""
    spec = importlib.util.spec_from_file_location("_rayq_tests_digits_data", DIGITS_DIR / "data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
