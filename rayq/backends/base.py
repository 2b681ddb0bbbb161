"""The backend protocol: the few operations the pipeline needs from a format."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rayq.core.graph import GraphView
from rayq.core.recipe import Recipe

#: Reductions a backend can compute inside the graph, per sample (first axis kept):
#: ``min``/``max`` -> [B]; ``ch_mean``/``ch_min``/``ch_max``/``ch_absmax`` -> [B, C];
#: ``raw`` -> the tensor itself.
REDUCTIONS = ("min", "max", "ch_mean", "ch_min", "ch_max", "ch_absmax", "raw")

RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, static shape (None for dynamic dims) and numpy dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@dataclass(frozen=True)
class StatRequest:
    """Ask for ``reductions`` of ``tensor``; ``channel_axis`` for the ``ch_*`` ones
    (negative axes count from the end)."""

    tensor: str
    reductions: tuple[str, ...]
    channel_axis: int | None = None


#: Runs one batch (input name -> array) and returns tensor -> reduction -> array.
#: A runner may carry an int attribute ``streams`` (see :class:`StreamedStatRunner`):
#: how many batches it runs well at once, from as many threads (it is then thread-safe);
#: the calibration loop keeps that many in flight
#: (:func:`rayq.pipeline.calibrate.run_pipelined`). Without it: 1.
StatRunner = Callable[[dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]]]


class StreamedStatRunner:
    """A thread-safe :data:`StatRunner` that runs ``streams`` batches at once well.

    Example:
        >>> run = StreamedStatRunner(lambda feeds: {}, streams=4)
        >>> run.streams, run({})
        (4, {})
    """

    __slots__ = ("_run", "streams")

    def __init__(self, run: StatRunner, streams: int) -> None:
        self._run = run
        self.streams = streams

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        return self._run(feeds)


#: Runs one batch and returns the model outputs in order.
Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@runtime_checkable
class Backend(Protocol):
    """What a model format must provide. Errors are raised as ``BackendError``."""

    name: str
    #: Runtimes that can execute this backend's models.
    runtimes: tuple[str, ...]
    #: File suffix of a saved model (``".onnx"``, ``".xml"``).
    suffix: str

    def accepts(self, model: Any) -> bool:
        """True if ``model`` (object or path) is in this backend's format."""

    def load(self, model: Any) -> Any:
        """Return the in-memory model (validated) for an object or a path."""

    def fingerprint(self, model: Any) -> str:
        """A stable content hash of the model (graph and weights)."""

    def graph(self, model: Any) -> GraphView:
        """The read-only graph view with metatypes."""

    def inputs(self, model: Any) -> list[InputSpec]:
        """The model's non-constant inputs."""

    def stat_runner(self, model: Any, requests: Sequence[StatRequest], *, num_threads: int = 0) -> StatRunner:
        """Instrument ``model`` with in-graph reductions, compile once, return a runner."""

    def apply(self, model: Any, recipe: Recipe) -> Any:
        """A new model with ``recipe`` written into it (``model`` is left untouched)."""

    def runner(self, model: Any, *, runtime: str | None = None, device: str = "CPU", num_threads: int = 0) -> Runner:
        """Compile ``model`` on ``runtime`` (default: the backend's first) and return a runner."""

    def save(self, model: Any, path: str) -> list[str]:
        """Write ``model`` to ``path``; returns every file written."""

    def to_bytes(self, model: Any) -> bytes:
        """Serialise ``model`` (for shipping to Ray workers; never pickle)."""

    def size_bytes(self, model: Any) -> int:
        """About the serialised size of ``model`` (weights included), without serialising it."""

    def from_bytes(self, data: bytes) -> Any:
        """Inverse of :meth:`to_bytes`."""

    def warm(self) -> None:
        """Import the runtimes' modules, so a worker process started early has them."""

    def gpu_device(self, runtime: str) -> str | None:
        """The device ``runtime`` validates this backend's models on in a worker holding a
        CUDA GPU (``"GPU"``), or None when it cannot use one there (validation stays on CPU)."""

    def describe(self, runtime: str, device: str) -> dict:
        """What runs the models on ``runtime`` and ``device``, for worker reports (e.g.
        ONNX Runtime's execution providers); ``{}`` when nothing is worth saying."""
