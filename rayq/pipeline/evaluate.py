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


class CompiledModel:
    """What a validation function receives: a callable compiled model.

    ``model(feeds)`` (or ``model(array)`` for single-input models) returns the list
    of outputs, like OpenVINO's ``CompiledModel``; ``model.model`` is the model
    object itself (``onnx.ModelProto`` / ``openvino.Model``), ``model.runtime``
    the runtime it was compiled for.
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
        DataError: the per-item values are not numbers, or not one per item of ``data``.
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
        raise DataError(f"validation function {_name(fn)} returned per-item values that are not numbers: "
                        f"{exc}") from exc
    if hasattr(data, "__len__") and len(per_item) != len(data):
        raise DataError(f"validation function {_name(fn)} returned {len(per_item)} per-item values for "
                        f"{len(data)} items; return (metric, per_item_values) with one value per item, "
                        "or the metric alone")
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
