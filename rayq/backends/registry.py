"""Backends by name, and detection of a model's format."""

from __future__ import annotations

import importlib
from typing import Any

from rayq.backends.base import Backend
from rayq.errors import BackendError

_FACTORIES: dict[str, str] = {
    "onnx": "rayq.backends.onnx:OnnxBackend",
    "openvino": "rayq.backends.openvino:OpenVINOBackend",
}
_INSTANCES: dict[str, Backend] = {}


def register(name: str, factory: str) -> None:
    """Register a backend class under ``name`` as a ``module:Class`` reference."""
    if ":" not in factory:
        raise BackendError(f"backend factory {factory!r} must be 'module:Class'")
    _FACTORIES[name] = factory
    _INSTANCES.pop(name, None)


def get_backend(name: str) -> Backend:
    """Return the backend registered as ``name``.

    Example:
        >>> get_backend("onnx").name
        'onnx'
    """
    if name not in _FACTORIES:
        raise BackendError(f"unknown backend {name!r}; registered: {sorted(_FACTORIES)}")
    if name not in _INSTANCES:
        module, cls = _FACTORIES[name].split(":")
        try:
            _INSTANCES[name] = getattr(importlib.import_module(module), cls)()
        except ImportError as exc:
            raise BackendError(f"backend {name!r} is not available: {exc}") from exc
    return _INSTANCES[name]


def warm(name: str | None = None) -> None:
    """Import backend ``name`` and its runtimes (default: the first registered backend),
    so a worker process started ahead of its first task does not pay for it then."""
    get_backend(name or next(iter(_FACTORIES))).warm()


def detect(model: Any) -> Backend:
    """Find the backend that accepts ``model`` (an in-memory model or a path)."""
    for name in _FACTORIES:
        try:
            backend = get_backend(name)
        except BackendError:
            continue
        if backend.accepts(model):
            return backend
    raise BackendError(
        f"cannot tell the format of {_describe(model)}: expected an onnx.ModelProto, an "
        "openvino.Model, or a path ending in .onnx or .xml (rayq.quantize and rayq.search also "
        "convert PyTorch, TensorFlow, TFLite and PaddlePaddle models: see rayq.backends.convert)"
    )


def _describe(model: Any) -> str:
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        return repr(str(model))
    return f"an object of type {type(model).__name__}"
