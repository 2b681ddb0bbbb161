"""Compiling and running OpenVINO models, with errors translated to rayq's.

On CPU, models are compiled with ``INFERENCE_PRECISION_HINT=f32``: CPUs with AVX512-BF16
or AMX would otherwise run the non-quantized ops in bf16, which would blur both the
statistics and the accuracy drop attributed to INT8. ``FakeQuantize``-marked ops still
run in INT8.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import openvino as ov

from rayq.backends.base import InputSpec, Runner
from rayq.backends.feeds import check_feeds
from rayq.errors import BackendError

_CORE: ov.Core | None = None
_CORE_LOCK = threading.Lock()


def core() -> ov.Core:
    """The process-wide ``ov.Core`` (creating one per call costs plugin discovery)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = ov.Core()
        return _CORE


def describe(exc: BaseException) -> str:
    """The informative part of an OpenVINO exception message, on one line."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("Exception from")]
    text = " ".join(lines) or type(exc).__name__
    return text[:500]


def compile_model(
    model: ov.Model, *, device: str = "CPU", num_threads: int = 0, throughput: bool = False
) -> ov.CompiledModel:
    """Compile ``model`` once on ``device`` (``throughput``: with ``PERFORMANCE_HINT=THROUGHPUT``,
    for several requests in flight; see :class:`RequestPool`).

    Raises:
        BackendError: OpenVINO cannot compile the model on that device.
    """
    device = device.upper()
    config: dict[str, Any] = {}
    if device.startswith("CPU"):
        config["INFERENCE_PRECISION_HINT"] = "f32"
        if num_threads > 0:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
    if throughput:
        config["PERFORMANCE_HINT"] = "THROUGHPUT"
    try:
        return core().compile_model(model, device, config)
    except Exception as exc:  # openvino raises RuntimeError subclasses
        raise BackendError(f"OpenVINO cannot compile the model on {device}: {describe(exc)}") from exc


@functools.cache
def int8_saturates(device: str = "CPU") -> bool:
    """True when ``device``'s INT8 kernels saturate intermediate sums.

    CPUs without VNNI (AVX2 only) multiply u8 x s8 with ``vpmaddubsw``, which adds pairs
    of products into int16 with saturation: full-range 8-bit weights then lose accuracy
    wherever activations are large, and 7-bit weights (``overflow_fix="enable"``) avoid
    it. Asked of the runtime itself with a one-layer probe (255 x 127 summed over 64
    inputs), not guessed from CPU flags.

    Example:
        >>> int8_saturates()        # doctest: +SKIP
        True
    """
    import openvino.opset13 as ops

    n = 64
    x = ops.parameter([1, n], np.float32, name="x")
    lo, hi = ops.constant(np.float32(0)), ops.constant(np.float32(255))
    act = ops.fake_quantize(x, lo, hi, lo, hi, 256)
    weight = ops.multiply(
        ops.convert(ops.constant(np.full((1, n), 127, np.int8)), "f32"), ops.constant(np.ones((1, 1), np.float32))
    )
    probe = ov.Model([ops.matmul(act, weight, False, True)], [x], "rayq_int8_probe")
    out = compile_model(probe, device=device)({"x": np.full((1, n), 255, np.float32)})[0]
    return bool(abs(float(np.asarray(out).ravel()[0]) - 255 * 127 * n) > 0.5)


class Session:
    """One compiled model and its infer request; ``run`` is thread-safe."""

    def __init__(self, compiled: ov.CompiledModel, specs: Sequence[InputSpec]) -> None:
        self.compiled = compiled
        self.specs = list(specs)
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[int] | None = None) -> list[np.ndarray]:
        """Run one batch; returns copies of the outputs at ``outputs`` (default: all).

        Raises:
            DataError: a feed is missing, unexpected, or has the wrong shape or dtype.
            BackendError: OpenVINO fails at inference.
        """
        checked = check_feeds(self.specs, feeds)
        by_index = {i: checked[s.name] for i, s in enumerate(self.specs)}
        wanted = range(len(self.compiled.outputs)) if outputs is None else outputs
        with self._lock:
            try:
                self._request.infer(by_index)
            except Exception as exc:  # openvino raises RuntimeError subclasses
                raise BackendError(f"OpenVINO failed to run the model: {describe(exc)}") from exc
            return [np.array(self._request.get_output_tensor(i).data, copy=True) for i in wanted]


class RequestPool:
    """A compiled model's optimal number of infer requests; ``run`` is thread-safe and
    runs on an idle request, so ``streams`` threads calling it keep every stream busy
    (the synchronous equivalent of an ``AsyncInferQueue``)."""

    def __init__(self, compiled: ov.CompiledModel, specs: Sequence[InputSpec]) -> None:
        self.compiled = compiled
        self.specs = list(specs)
        try:
            self.streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except Exception:  # a plugin without the property: one request
            self.streams = 1
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.streams):
            self._idle.put(compiled.create_infer_request())

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[int] | None = None) -> list[np.ndarray]:
        """As :meth:`Session.run`, on whichever request is idle."""
        checked = check_feeds(self.specs, feeds)
        by_index = {i: checked[s.name] for i, s in enumerate(self.specs)}
        wanted = range(len(self.compiled.outputs)) if outputs is None else outputs
        request = self._idle.get()
        try:
            request.infer(by_index)
            return [np.array(request.get_output_tensor(i).data, copy=True) for i in wanted]
        except Exception as exc:  # openvino raises RuntimeError subclasses
            raise BackendError(f"OpenVINO failed to run the model: {describe(exc)}") from exc
        finally:
            self._idle.put(request)


def make_runner(
    model: ov.Model, specs: Sequence[InputSpec], *, runtime: str | None, device: str = "CPU", num_threads: int = 0
) -> Runner:
    """Compile ``model`` once and return ``feeds -> outputs`` (in the model's output order).

    Raises:
        BackendError: ``runtime`` is not ``"openvino"``, or the model does not compile.
    """
    if runtime == "onnxruntime":
        raise BackendError(
            "OpenVINO models run on OpenVINO only; use runtime='openvino' "
            "(or quantize the ONNX model to run it on onnxruntime)"
        )
    if runtime not in (None, "openvino"):
        raise BackendError(f"unknown runtime {runtime!r} for an OpenVINO model; use 'openvino'")
    session = Session(compile_model(model, device=device, num_threads=num_threads), specs)
    return session.run
