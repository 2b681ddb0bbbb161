"""Running ONNX models on ONNX Runtime or OpenVINO (which reads QDQ ONNX natively)."""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
import onnx

from rayq.backends.base import InputSpec, Runner
from rayq.backends.onnx import reader
from rayq.backends.feeds import check_feeds
from rayq.errors import BackendError, DataError

log = logging.getLogger(__name__)



def ort_providers(device: str) -> list[str]:
    """ONNX Runtime providers for ``device`` (``CPU`` or ``GPU``), with CPU fallback."""
    import onnxruntime as ort

    if device.upper().startswith("GPU"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning("GPU requested but onnxruntime has no CUDA provider (install rayq[gpu]); using CPU")
    return ["CPUExecutionProvider"]


def ort_session(proto: onnx.ModelProto, *, num_threads: int = 0, device: str = "CPU"):
    """Create an ONNX Runtime session (sequential execution, full graph optimization)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if num_threads > 0:
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
    try:
        if reader.fits_in_memory_proto(proto):
            return ort.InferenceSession(proto.SerializeToString(), opts, providers=ort_providers(device))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            onnx.save(proto, path, save_as_external_data=True)
            return ort.InferenceSession(path, opts, providers=ort_providers(device))
    except Exception as exc:
        raise BackendError(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from exc


def run_session(session, specs: list[InputSpec], feeds: dict[str, np.ndarray], names: list[str] | None) -> list:
    feeds = check_feeds(specs, feeds)
    try:
        return session.run(names, feeds)
    except Exception as exc:
        raise BackendError(f"ONNX Runtime failed to run the model: {_first_line(exc)}") from exc


def ov_compiled(proto: onnx.ModelProto, *, num_threads: int = 0, device: str = "CPU"):
    """Compile an ONNX model with OpenVINO (QDQ pairs become INT8 FakeQuantize)."""
    import openvino as ov

    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if num_threads > 0:
        config["INFERENCE_NUM_THREADS"] = num_threads
    try:
        if reader.fits_in_memory_proto(proto):
            model = core.read_model(model=proto.SerializeToString(), weights=b"")
        else:
            tmp = tempfile.mkdtemp(prefix="rayq-ov-")
            path = os.path.join(tmp, "model.onnx")
            onnx.save(proto, path, save_as_external_data=True)
            model = core.read_model(path)
        return core.compile_model(model, device.upper(), config)
    except Exception as exc:
        raise BackendError(f"OpenVINO cannot compile the model: {_first_line(exc)}") from exc


def make_runner(proto: onnx.ModelProto, specs: list[InputSpec], *, runtime: str, device: str,
                num_threads: int) -> Runner:
    """A callable running one batch on ``runtime``, returning outputs in graph order."""
    if runtime == "onnxruntime":
        session = ort_session(proto, num_threads=num_threads, device=device)

        def run_ort(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return list(run_session(session, specs, feeds, None))

        return run_ort
    if runtime == "openvino":
        compiled = ov_compiled(proto, num_threads=num_threads, device=device)
        request = compiled.create_infer_request()
        outputs = list(compiled.outputs)

        def run_ov(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            feeds = check_feeds(specs, feeds)
            try:
                result = request.infer(feeds)
            except Exception as exc:
                raise BackendError(f"OpenVINO failed to run the model: {_first_line(exc)}") from exc
            return [np.array(result[o]) for o in outputs]

        return run_ov
    raise BackendError(f"unknown runtime {runtime!r}; choose 'onnxruntime' or 'openvino'")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


__all__ = ["ort_session", "ov_compiled", "make_runner", "run_session", "DataError"]
