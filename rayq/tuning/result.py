"""The answer of a search: the chosen model, its numbers, every trial, the front."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from rayq.core.plan import QuantPlan

#: Latencies within this relative band of the fastest are treated as ties
#: (measurement noise); ties go to the plan with fewer FP32 ops, then the lower trial.
LATENCY_TIE_BAND = 0.03


@dataclass
class SearchResult:
    """What :func:`rayq.search` returns.

    Attributes:
        model: The chosen quantized model (``onnx.ModelProto`` / ``openvino.Model``).
        plan: Its :class:`~rayq.QuantPlan` (``plan.fallback`` = layers kept FP32).
        status: ``"met"`` or ``"budget not met"`` (then ``model`` is the trial with
            the smallest drop, never silently the last one).
        fp32_metric: Metric of the FP32 model.
        metric: Metric of the chosen model; ``drop`` its drop (``drop_type``).
        latency_ms / latency_spread_ms: Measured median latency and IQR. The fastest
            feasible trials (up to 4) are re-measured at the end against each other and
            FP32, interleaved on one worker; the choice and these numbers use that runoff
            (``trials`` shows it for those trials too, marked ``remeasured``).
        fp32_latency_ms: FP32 latency on the same runtime and worker (same runoff).
        trials: Every trial as a DataFrame (also ``trials.parquet``). Each trial's
            latency was timed together with FP32 (``fp32_latency_ms``; ``speedup``
            is their ratio, comparable across trials timed at different moments);
            ``remeasured`` rows hold the final runoff's timings.
        pareto: Non-dominated trials on (latency, metric).
        wall_seconds / cpu_seconds: Search wall time and CPU time (driver + workers).
        model_path: Where the model was saved (when ``output`` was given).
    """

    model: Any
    plan: QuantPlan
    status: str
    fp32_metric: float
    metric: float | None
    drop: float | None
    max_drop: float
    drop_type: str
    latency_ms: float | None
    latency_spread_ms: float | None
    fp32_latency_ms: float | None
    target: str
    trials: pd.DataFrame
    pareto: pd.DataFrame
    wall_seconds: float
    cpu_seconds: float
    ranking: list[str] = field(default_factory=list)
    model_path: str | None = None
    study_name: str = ""
    worker_nodes: dict = field(default_factory=dict)

    @property
    def speedup(self) -> float | None:
        if self.latency_ms and self.fp32_latency_ms:
            return self.fp32_latency_ms / self.latency_ms
        return None

    def to_dict(self) -> dict:
        """The scalar results (what ``result.json`` holds)."""
        return {
            "status": self.status, "plan": self.plan.to_dict(), "plan_key": self.plan.key(),
            "fp32_metric": self.fp32_metric, "metric": self.metric, "drop": self.drop,
            "max_drop": self.max_drop, "drop_type": self.drop_type, "latency_ms": self.latency_ms,
            "latency_spread_ms": self.latency_spread_ms, "fp32_latency_ms": self.fp32_latency_ms,
            "speedup": self.speedup, "target": self.target, "fallback": list(self.plan.fallback),
            "n_trials": int(len(self.trials)), "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds, "ranking": self.ranking, "model_path": self.model_path,
            "study_name": self.study_name, "worker_nodes": self.worker_nodes,
        }

    def plot(self, path: str | None = None):
        """Latency vs metric of every trial, with the Pareto front and the budget."""
        from rayq.tuning.plot import plot_pareto

        _register_notebook_png()
        return plot_pareto(self.trials, self.pareto, max_drop=self.max_drop, fp32_metric=self.fp32_metric,
                           drop_type=self.drop_type, path=path)

    def save(self, uri: str) -> dict[str, str]:
        """Write model, ``trials.parquet``, ``pareto.parquet``, ``result.json`` and
        ``pareto.png`` under ``uri`` (a local path or any ``pyarrow.fs`` URI)."""
        from rayq.backends import detect
        from rayq.storage import copy_dir_to

        backend = detect(self.model)
        with tempfile.TemporaryDirectory() as tmp:
            model_files = backend.save(self.model, os.path.join(tmp, f"model{backend.suffix}"))
            self.trials.to_parquet(os.path.join(tmp, "trials.parquet"), index=False)
            self.pareto.to_parquet(os.path.join(tmp, "pareto.parquet"), index=False)
            self.plot(os.path.join(tmp, "pareto.png"))
            written = copy_dir_to(tmp, uri)
        self.model_path = written[os.path.basename(model_files[0])]
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "result.json"), "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, indent=2, default=str)
            written.update(copy_dir_to(tmp, uri))
        return written

    def __repr__(self) -> str:
        lat = f"{self.latency_ms:.3f} ms" if self.latency_ms else "n/a"
        return (f"SearchResult(status={self.status!r}, metric={self.metric}, drop={self.drop}, "
                f"latency={lat}, fallback={list(self.plan.fallback)}, trials={len(self.trials)})")


def _register_notebook_png() -> None:
    """In a Jupyter kernel, render returned Figures as PNG (they are made without pyplot)."""
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import select_figure_formats
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "display_formatter"):
        select_figure_formats(shell, {"png"})
