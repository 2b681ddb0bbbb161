"""Evaluation: a user's validation function, or the output error against FP32."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayq.errors import DataError, RayqError, ValidationFailed, ValidationTimedOut

#: Automatic validation timeout: ``FACTOR`` x the FP32 validation time, at least ``MIN_S``;
#: the FP32 validation itself, whose time is not known yet, gets ``FP32_LIMIT_S``.
TIMEOUT_FACTOR = 10.0
TIMEOUT_MIN_S = 60.0
TIMEOUT_FP32_LIMIT_S = 3600.0


@dataclass
class ValidationTimeout:
    """How long one call of the validation function may take.

    Args:
        seconds: The limit given by the user (``validation_timeout``); None: automatic,
            ``max(TIMEOUT_MIN_S, TIMEOUT_FACTOR * fp32_seconds)`` once the FP32 validation
            time is known, ``TIMEOUT_FP32_LIMIT_S`` for the FP32 validation itself.
        fp32_seconds: Measured duration of the FP32 validation (set by the pools).

    Example:
        >>> t = ValidationTimeout()
        >>> t.fp32_seconds = 12.0
        >>> t.limit()
        120.0
    """

    seconds: float | None = None
    fp32_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.seconds is not None and (
            isinstance(self.seconds, bool) or not isinstance(self.seconds, (int, float)) or not self.seconds > 0
        ):
            from rayq.errors import ConfigError

            raise ConfigError(
                f"validation_timeout={self.seconds!r} must be a number of seconds > 0 "
                "(or None: 10x the FP32 validation time, at least 60 s)"
            )

    def limit(self) -> float:
        """Seconds the next validation call may take."""
        if self.seconds is not None:
            return float(self.seconds)
        if self.fp32_seconds is None:
            return TIMEOUT_FP32_LIMIT_S
        return max(TIMEOUT_MIN_S, TIMEOUT_FACTOR * self.fp32_seconds)


def timeout_message(fn: Callable | str, limit: float, where: str) -> str:
    """The error of a timed-out validation call (trial tables show it; it starts with ``timeout``)."""
    name = fn if isinstance(fn, str) else _name(fn)
    return (
        f"timeout: validation function {name} did not return within {limit:g} s ({where}; "
        "set validation_timeout to allow longer)"
    )


def _call_with_timeout(fn: Callable, args: tuple, timeout: float) -> Any:
    """``fn(*args)`` in a daemon thread, waited for ``timeout`` seconds.

    A thread cannot be killed: on timeout it is abandoned (it keeps its CPU and
    memory until ``fn`` returns or the process exits) and :class:`ValidationTimedOut`
    is raised, so the caller goes on. Ray workers are killed and replaced instead.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"rayq-validation-{_name(fn)}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise ValidationTimedOut(timeout_message(fn, timeout, "in-process: its thread is abandoned"))
    if "error" in box:
        raise box["error"]
    return box["result"]


@dataclass(frozen=True)
class Metric:
    """A validation result: the metric and, when provided, per-item values."""

    value: float
    per_item: np.ndarray | None = None


def validation_model(backend: Any, model: Any, *, runtime: str | None, device: str = "CPU", threads: int = 0) -> Any:
    """What a validation function receives for ``model``, as NNCF passes it.

    A backend with a ``compiled_model`` method hands over the runtime's own object
    (OpenVINO: an ``openvino.CompiledModel``, so ``model(x)[model.output(0)]`` works);
    the others (ONNX) a :class:`CompiledModel` wrapper of the model object.

    Example:
        >>> m = validation_model(get_backend("openvino"), ov_model, runtime="openvino")  # doctest: +SKIP
        >>> m(images)[m.output(0)].shape                                                  # doctest: +SKIP
        (100, 10)
    """
    make = getattr(backend, "compiled_model", None)
    if make is not None:
        return make(model, runtime=runtime, device=device, num_threads=threads)
    run = backend.runner(model, runtime=runtime, device=device, num_threads=threads)
    return CompiledModel(model, run, [s.name for s in backend.inputs(model)], runtime)


class CompiledModel:
    """What a validation function receives for an ONNX model: the model, callable.

    ``model(feeds)`` (or ``model(array)`` for single-input models) returns the list
    of outputs; ``model.model`` is the ``onnx.ModelProto`` itself and its attributes
    are the wrapper's (NNCF passes the ``ModelProto``), ``model.runtime`` the runtime
    it was compiled for.
    """

    def __init__(self, model: Any, run: Callable, input_names: Sequence[str], runtime: str | None) -> None:
        self.model = model
        self.runtime = runtime
        self.input_names = list(input_names)
        self._run = run

    def __call__(self, inputs: Any) -> list[np.ndarray]:
        if not isinstance(inputs, dict):
            if isinstance(inputs, (list, tuple)) and len(inputs) == len(self.input_names) and len(self.input_names) > 1:
                inputs = dict(zip(self.input_names, inputs))
            else:
                inputs = {self.input_names[0]: inputs}
        return self._run({k: np.asarray(v) for k, v in inputs.items()})

    def infer(self, inputs: Any) -> list[np.ndarray]:
        return self(inputs)

    def __getattr__(self, name: str) -> Any:
        # NNCF passes the model object itself to ONNX validation functions
        # (``model.SerializeToString()``): expose its attributes too.
        if name.startswith("__") or name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)


def run_validation(fn: Callable, compiled: CompiledModel, data: Any, timeout: float | None = None) -> Metric:
    """Call ``fn(compiled, data)`` and normalise its result.

    ``fn`` returns the metric (higher is better) or ``(metric, per_item_values)``.
    With ``timeout``, ``fn`` runs in a thread that is abandoned after ``timeout``
    seconds (:class:`ValidationTimedOut`).

    Raises:
        ValidationFailed: ``fn`` raised, or returned NaN/Inf or a non-number.
        DataError: the per-item values are not numbers, or not one per item of ``data``.
    """
    try:
        result = fn(compiled, data) if timeout is None else _call_with_timeout(fn, (compiled, data), timeout)
    except RayqError:
        raise
    except Exception as exc:
        raise ValidationFailed(f"validation function {_name(fn)} raised {type(exc).__name__}: {exc}") from exc
    per_item = None
    if isinstance(result, tuple) and len(result) == 2:
        result, per_item = result
        per_item = _per_item_values(fn, per_item, data)
    try:
        value = float(result)
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(f"validation function {_name(fn)} returned {result!r}, not a number") from exc
    if not math.isfinite(value):
        raise ValidationFailed(f"validation function {_name(fn)} returned {value}")
    return Metric(value, per_item)


def _per_item_values(fn: Callable, values: Any, data: Any) -> np.ndarray:
    """``values`` as a float vector with one value per item of ``data`` (when it has a length)."""
    try:
        per_item = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"validation function {_name(fn)} returned per-item values that are not numbers: {exc}"
        ) from exc
    if hasattr(data, "__len__") and len(per_item) != len(data):
        raise DataError(
            f"validation function {_name(fn)} returned {len(per_item)} per-item values for "
            f"{len(data)} items; return (metric, per_item_values) with one value per item, "
            "or the metric alone"
        )
    return per_item


def output_nmse(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """Normalised mean squared error summed over outputs: sum ||a-b||^2 / sum ||a||^2."""
    num = den = 0.0
    for a, b in zip(reference, candidate):
        a = np.asarray(a, np.float64)
        b = np.asarray(b, np.float64)
        if a.shape != b.shape:
            raise DataError(f"output shapes differ: {a.shape} vs {b.shape}")
        num += float(np.sum((a - b) ** 2))
        den += float(np.sum(a**2))
    return num / max(den, 1e-30)


def _name(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
