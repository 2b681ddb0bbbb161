"""The ONNX backend: QDQ models that run on ONNX Runtime and on OpenVINO."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from rayq.backends.base import InputSpec, Runner, StatRequest, StatRunner
from rayq.backends.onnx import files, instrument, reader, runtime, writer
from rayq.core.graph import GraphView
from rayq.core.recipe import Recipe
from rayq.errors import BackendError


class OnnxBackend:
    """ONNX models (``onnx.ModelProto`` or ``.onnx`` paths, external data included).

    Example:
        >>> from rayq.backends import get_backend
        >>> get_backend("onnx").runtimes
        ('onnxruntime', 'openvino')
    """

    name = "onnx"
    runtimes = ("onnxruntime", "openvino")
    suffix = ".onnx"

    def accepts(self, model: Any) -> bool:
        if isinstance(model, onnx.ModelProto):
            return True
        if isinstance(model, (str, os.PathLike)):
            return str(model).lower().endswith(".onnx")
        return False

    def load(self, model: Any) -> onnx.ModelProto:
        return reader.load_model(model)

    def fingerprint(self, model: onnx.ModelProto) -> str:
        return reader.fingerprint(model)

    def graph(self, model: onnx.ModelProto) -> GraphView:
        return reader.build_view(model)[0]

    def inputs(self, model: onnx.ModelProto) -> list[InputSpec]:
        return reader.input_specs(model)

    def stat_runner(
        self, model: onnx.ModelProto, requests: Sequence[StatRequest], *, num_threads: int = 0
    ) -> StatRunner:
        return instrument.make_stat_runner(model, requests, num_threads=num_threads)

    def apply(self, model: onnx.ModelProto, recipe: Recipe) -> onnx.ModelProto:
        return writer.apply_recipe(model, recipe)

    def runner(
        self, model: onnx.ModelProto, *, runtime: str | None = None, device: str = "CPU", num_threads: int = 0
    ) -> Runner:
        return runtime_module.make_runner(
            model, reader.input_specs(model), runtime=runtime or "onnxruntime", device=device, num_threads=num_threads
        )

    def save(self, model: onnx.ModelProto, path: str) -> list[str]:
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if reader.fits_in_memory_proto(model):
                onnx.save(model, str(target))
                return [str(target)]
            return files.save_external(model, str(target), target.name + ".data")  # leaves ``model`` whole
        except OSError as exc:
            raise BackendError(f"cannot write the model to {path!r}: {exc}") from exc

    def to_bytes(self, model: onnx.ModelProto) -> bytes:
        if not reader.fits_in_memory_proto(model):
            raise BackendError(
                "an ONNX model over 2 GB cannot be serialised in memory; save() it (weights as external data) instead"
            )
        return model.SerializeToString()

    def size_bytes(self, model: onnx.ModelProto) -> int:
        return reader.size_bytes(model)

    def from_bytes(self, data: bytes) -> onnx.ModelProto:
        proto = onnx.ModelProto()
        proto.ParseFromString(data)
        return proto

    def warm(self) -> None:
        import onnxruntime  # noqa: F401

    def gpu_device(self, runtime: str) -> str | None:
        return "GPU" if runtime == "onnxruntime" else None  # ONNX Runtime's CUDA provider

    def describe(self, runtime: str, device: str) -> dict:
        return {"providers": runtime_module.ort_providers(device)} if runtime == "onnxruntime" else {}


runtime_module = runtime
__all__ = ["OnnxBackend"]
