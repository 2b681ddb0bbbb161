"""The answer of a search: the chosen model, its numbers, every trial, the front."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from rayq.core.plan import QuantPlan


@dataclass
class SearchResult:
    """What :func:`rayq.search` returns.

    Attributes:
        model: The chosen quantized model (``onnx.ModelProto`` / ``openvino.Model``).
        plan: Its :class:`~rayq.QuantPlan` (``plan.fallback`` = layers kept FP32).
        status: ``"met"`` (within the budget and significantly faster than FP32),
            ``"no_speedup"`` (within the budget, but no candidate is significantly
            faster than FP32 on the target: ``model`` is the most accurate quantized
            one) or ``"budget not met"`` (``model`` is the INT8 trial with the
            smallest drop). A plan keeping every quantizable layer in FP32 is never
            returned as an INT8 answer. See :mod:`rayq.tuning.selection`.
        fp32_metric: Metric of the FP32 model.
        metric: Metric of the chosen model; ``drop`` its drop (``drop_type``).
        latency_ms / latency_spread_ms: Measured median latency and the IQR of its
            per-round medians. Up to ``finalists`` feasible plans (cheapest first by
            compute left in FP32) are re-timed at the end against each other and FP32,
            in interleaved rounds on one worker, adding rounds until the decision is
            clear or a time cap passes; the choice and these numbers use that runoff
            (``trials`` marks them ``remeasured``).
        fp32_latency_ms: FP32 latency on the same runtime and worker (same runoff).
        speedup / speedup_low / speedup_high: Speed-up over FP32 (geometric mean of
            the per-round ratios) and its 95 % confidence interval.
        speedup_margin: A speed-up counts only when its interval clears ``1 + margin``.
        chosen_trial: The chosen trial's number (``chosen`` in ``trials``, the study's
            ``rayq.chosen_trial``, the star on ``pareto.png``).
        n_quantizable: Quantizable layers of the model (``plan.fallback`` of them FP32).
        message: One sentence saying what was chosen and why.
        latency_settings: Runtime, version, threads, precision hint and CPU model
            the latencies were measured with.
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
    speedup: float | None = None
    speedup_low: float | None = None
    speedup_high: float | None = None
    speedup_margin: float | None = None
    chosen_trial: int | None = None
    n_quantizable: int = 0
    message: str = ""
    latency_settings: dict = field(default_factory=dict)
    decision: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.speedup is None and self.latency_ms and self.fp32_latency_ms:
            self.speedup = self.fp32_latency_ms / self.latency_ms

    @property
    def speedup_text(self) -> str:
        """``1.23x FP32 (95% CI 1.18-1.29)`` or ``n/a``."""
        if self.speedup is None:
            return "n/a"
        if self.speedup_low is None or self.speedup_high is None:
            return f"{self.speedup:.2f}x FP32"
        return f"{self.speedup:.2f}x FP32 (95% CI {self.speedup_low:.2f}-{self.speedup_high:.2f})"

    def to_dict(self) -> dict:
        """The scalar results (what ``result.json`` holds)."""
        return {
            "status": self.status, "plan": self.plan.to_dict(), "plan_key": self.plan.key(),
            "fp32_metric": self.fp32_metric, "metric": self.metric, "drop": self.drop,
            "max_drop": self.max_drop, "drop_type": self.drop_type, "latency_ms": self.latency_ms,
            "latency_spread_ms": self.latency_spread_ms, "fp32_latency_ms": self.fp32_latency_ms,
            "speedup": self.speedup, "speedup_low": self.speedup_low, "speedup_high": self.speedup_high,
            "speedup_confidence": 0.95, "speedup_margin": self.speedup_margin, "chosen_trial": self.chosen_trial,
            "n_quantizable": self.n_quantizable,
            "message": self.message, "decision": self.decision, "latency_settings": self.latency_settings,
            "target": self.target, "fallback": list(self.plan.fallback),
            "n_trials": int(len(self.trials)), "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds, "ranking": self.ranking, "model_path": self.model_path,
            "study_name": self.study_name, "worker_nodes": self.worker_nodes,
        }

    def plot(self, path: str | None = None):
        """Latency vs metric of every trial, with the Pareto front and the budget."""
        from rayq.tuning.plot import plot_pareto

        _register_notebook_png()
        return plot_pareto(self.trials, self.pareto, max_drop=self.max_drop, fp32_metric=self.fp32_metric,
                           drop_type=self.drop_type, path=path, chosen=self.chosen_trial)

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
                f"latency={lat}, speedup={self.speedup_text}, fallback={list(self.plan.fallback)}, "
                f"trials={len(self.trials)})")


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
