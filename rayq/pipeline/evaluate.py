"""Evaluation: a user's validation function, or the output error against FP32."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayq.errors import DataError, RayqError


class ValidationFailed(RayqError):
    """The user's validation function raised or returned a non-finite metric."""


@dataclass(frozen=True)
class Metric:
    """A validation result: the metric and, when provided, per-item values."""

    value: float
    per_item: np.ndarray | None = None


def validation_model(backend: Any, model: Any, *, runtime: str | None, device: str = "CPU",
                     threads: int = 0) -> Any:
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

    def __init__(self, model: Any, run: Callable, input_names: Sequence[str], runtime: str) -> None:
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


def run_validation(fn: Callable, compiled: CompiledModel, data: Any) -> Metric:
    """Call ``fn(compiled, data)`` and normalise its result.

    ``fn`` returns the metric (higher is better) or ``(metric, per_item_values)``.

    Raises:
        ValidationFailed: ``fn`` raised, or returned NaN/Inf or a non-number.
    """
    try:
        result = fn(compiled, data)
    except RayqError:
        raise
    except Exception as exc:
        raise ValidationFailed(f"validation function {_name(fn)} raised {type(exc).__name__}: {exc}") from exc
    per_item = None
    if isinstance(result, tuple) and len(result) == 2:
        result, per_item = result
        per_item = np.asarray(per_item, dtype=np.float64).reshape(-1)
    try:
        value = float(result)
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(f"validation function {_name(fn)} returned {result!r}, not a number") from exc
    if not math.isfinite(value):
        raise ValidationFailed(f"validation function {_name(fn)} returned {value}")
    return Metric(value, per_item)


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
