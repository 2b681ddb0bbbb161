"""The OpenVINO backend: ``openvino.Model`` / IR ``.xml`` models, FakeQuantize INT8."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import openvino as ov

from rayq.backends.base import InputSpec, Runner, StatRequest, StatRunner
from rayq.backends.openvino import instrument, reader, serialization, writer
from rayq.backends.openvino import runtime as ov_runtime
from rayq.core.graph import GraphView
from rayq.core.recipe import Recipe
from rayq.errors import BackendError


class OpenVINOBackend:
    """OpenVINO models (``openvino.Model`` objects or IR ``.xml`` paths).

    Quantized models use ``FakeQuantize`` on activations and compressed INT8 weights
    (``Constant(i8) -> Convert -> Multiply``), which OpenVINO's CPU plugin runs in INT8.
    Models are never modified in place: ``apply`` and ``stat_runner`` work on clones.

    Example:
        >>> from rayq.backends import get_backend
        >>> backend = get_backend("openvino")
        >>> backend.runtimes
        ('openvino',)
        >>> model = backend.load("model.xml")                     # doctest: +SKIP
        >>> run = backend.runner(model)                           # doctest: +SKIP
    """

    name = "openvino"
    runtimes = ("openvino",)
    suffix = ".xml"

    def accepts(self, model: Any) -> bool:
        return isinstance(model, ov.Model) or serialization.is_ir_path(model)

    def load(self, model: Any) -> ov.Model:
        return serialization.load_model(model)

    def fingerprint(self, model: ov.Model) -> str:
        return serialization.fingerprint(self.load(model))

    def graph(self, model: ov.Model) -> GraphView:
        return reader.build_view(self.load(model))

    def inputs(self, model: ov.Model) -> list[InputSpec]:
        return reader.input_specs(self.load(model))

    def stat_runner(self, model: ov.Model, requests: Sequence[StatRequest], *, num_threads: int = 0) -> StatRunner:
        return instrument.make_stat_runner(self.load(model), requests, num_threads=num_threads)

    def apply(self, model: ov.Model, recipe: Recipe) -> ov.Model:
        return writer.apply_recipe(self.load(model), recipe)

    def runner(
        self, model: ov.Model, *, runtime: str | None = None, device: str = "CPU", num_threads: int = 0
    ) -> Runner:
        model = self.load(model)
        return ov_runtime.make_runner(
            model, reader.input_specs(model), runtime=runtime, device=device, num_threads=num_threads
        )

    def compiled_model(
        self, model: ov.Model, *, runtime: str | None = None, device: str = "CPU", num_threads: int = 0
    ) -> ov.CompiledModel:
        """The ``openvino.CompiledModel`` a validation function receives, as NNCF passes it."""
        if runtime not in (None, "openvino"):
            raise BackendError(f"OpenVINO models run on OpenVINO only, not {runtime!r}; use runtime='openvino'")
        return ov_runtime.compile_model(self.load(model), device=device, num_threads=num_threads)

    def save(self, model: ov.Model, path: str) -> list[str]:
        return serialization.save_model(self.load(model), path)

    def to_bytes(self, model: ov.Model) -> bytes:
        return serialization.to_bytes(self.load(model))

    def from_bytes(self, data: bytes) -> ov.Model:
        return serialization.from_bytes(data)

    def warm(self) -> None:
        pass  # openvino is imported with this module

    def gpu_device(self, runtime: str) -> str | None:
        return None  # OpenVINO's GPU plugin is for Intel GPUs, not the CUDA GPUs Ray assigns

    def describe(self, runtime: str, device: str) -> dict:
        return {}

    def size_bytes(self, model: ov.Model) -> int:
        model = self.load(model)
        return sum(op.get_byte_size() for op in model.get_ordered_ops() if op.get_type_name() == "Constant")
