"""The answer of a search: the chosen model, its numbers, every trial, the front."""

from __future__ import annotations

import json
import logging
import os
import posixpath
import tempfile
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from rayq.core.plan import QuantPlan
from rayq.tuning import tables
from rayq.tuning.sensitivity import plot_sensitivity, sensitivity_frame

log = logging.getLogger(__name__)

#: Written last when a search run is saved: its presence marks the run complete.
RESULT_FILE = "result.json"

#: Fields of ``result.json`` that older runs may lack (their defaults apply).
_OPTIONAL_FIELDS = (
    "speedup",
    "speedup_low",
    "speedup_high",
    "speedup_margin",
    "chosen_trial",
    "n_quantizable",
    "message",
    "latency_settings",
    "decision",
)


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
        sensitivity: Per-layer sensitivity: the fallback ranking with its scores
            (:mod:`rayq.tuning.sensitivity`; empty when no ranking was needed), saved as
            ``sensitivity.parquet`` and ``sensitivity.png``.
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
    sensitivity: pd.DataFrame = field(default_factory=lambda: sensitivity_frame([], {}, None))

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
            "status": self.status,
            "plan": self.plan.to_dict(),
            "plan_key": self.plan.key(),
            "fp32_metric": self.fp32_metric,
            "metric": self.metric,
            "drop": self.drop,
            "max_drop": self.max_drop,
            "drop_type": self.drop_type,
            "latency_ms": self.latency_ms,
            "latency_spread_ms": self.latency_spread_ms,
            "fp32_latency_ms": self.fp32_latency_ms,
            "speedup": self.speedup,
            "speedup_low": self.speedup_low,
            "speedup_high": self.speedup_high,
            "speedup_confidence": 0.95,
            "speedup_margin": self.speedup_margin,
            "chosen_trial": self.chosen_trial,
            "n_quantizable": self.n_quantizable,
            "message": self.message,
            "decision": self.decision,
            "latency_settings": self.latency_settings,
            "target": self.target,
            "fallback": list(self.plan.fallback),
            "n_trials": len(self.trials),
            "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds,
            "ranking": self.ranking,
            "model_path": self.model_path,
            "study_name": self.study_name,
            "worker_nodes": self.worker_nodes,
        }

    def plot(self, path: str | None = None):
        """Latency vs metric of every trial, with the Pareto front and the budget."""
        from rayq.tuning.plot import plot_pareto

        _register_notebook_png()
        return plot_pareto(
            self.trials,
            self.pareto,
            max_drop=self.max_drop,
            fp32_metric=self.fp32_metric,
            drop_type=self.drop_type,
            path=path,
            chosen=self.chosen_trial,
        )

    def save(self, uri: str, files: dict[str, str] | None = None) -> dict[str, str]:
        """Publish model, ``trials.parquet``, ``pareto.parquet``, ``pareto.png``,
        ``sensitivity.parquet`` and ``sensitivity.png`` (when a ranking was made), the
        text ``files`` (name -> content, e.g. ``config.yaml``) and ``result.json`` under
        ``uri`` (a local path, ``file://`` or any ``pyarrow.fs`` URI).

        Files are staged and renamed into place with ``result.json`` last, the marker of a
        complete run (see :class:`rayq.storage.Publication`); a failure leaves no marker.
        Returns name -> written URI (the final locations, never the staging folder).
        """
        from rayq.backends import detect
        from rayq.storage import Publication

        backend = detect(self.model)
        with Publication.open(uri, marker=RESULT_FILE) as out:
            saved = backend.save(self.model, str(out.staging / f"model{backend.suffix}"))
            staged = [os.path.basename(p) for p in saved]
            tables.write_parquet(self.trials, out.staging / "trials.parquet")
            tables.write_parquet(self.pareto, out.staging / "pareto.parquet")
            self.plot(str(out.staging / "pareto.png"))
            names = [*staged, "trials.parquet", "pareto.parquet", "pareto.png"]
            if len(self.sensitivity):
                self.sensitivity.to_parquet(out.staging / "sensitivity.parquet", index=False)
                plot_sensitivity(self.sensitivity, out.staging / "sensitivity.png")
                names += ["sensitivity.parquet", "sensitivity.png"]
            for name, text in (files or {}).items():
                (out.staging / name).write_text(text, encoding="utf-8")
            model = out.location.child(staged[0])
            self.model_path = model.local if out.location.local else model.uri
            (out.staging / RESULT_FILE).write_text(json.dumps(self.to_dict(), indent=2, default=str), encoding="utf-8")
            written = out.publish([*names, *(files or {}), RESULT_FILE])
        log.info(
            "saved %s to %s", ", ".join(n for n in written if n != RESULT_FILE), out.location.local or out.location.uri
        )
        return written

    @classmethod
    def load(cls, uri: str) -> SearchResult:
        """The result of a finished search saved under ``uri`` (local path or ``pyarrow.fs`` URI).

        Raises:
            OutputError: Nothing is there, or the run is incomplete (no ``result.json``:
                still running, interrupted, or failed while saving).

        Example:
            >>> result = SearchResult.load("runs/search")            # doctest: +SKIP
            >>> result.status, result.plan.fallback                  # doctest: +SKIP
        """
        from rayq.storage import read_marker, resolve

        location = resolve(uri)
        data = json.loads(read_marker(location, RESULT_FILE).decode())
        frames = {
            name: tables.read_parquet(location.child(f"{name}.parquet").read_bytes()) for name in ("trials", "pareto")
        }
        sensitivity = location.child("sensitivity.parquet")
        if sensitivity.kind() == "file":
            frames["sensitivity"] = tables.read_parquet(sensitivity.read_bytes())
        return cls(
            model=_load_model(location, data["model_path"]),
            plan=QuantPlan.from_dict(data["plan"]),
            status=data["status"],
            fp32_metric=data["fp32_metric"],
            metric=data["metric"],
            drop=data["drop"],
            max_drop=data["max_drop"],
            drop_type=data["drop_type"],
            latency_ms=data["latency_ms"],
            latency_spread_ms=data["latency_spread_ms"],
            fp32_latency_ms=data["fp32_latency_ms"],
            target=data["target"],
            trials=frames["trials"],
            pareto=frames["pareto"],
            wall_seconds=data["wall_seconds"],
            cpu_seconds=data["cpu_seconds"],
            ranking=list(data["ranking"]),
            model_path=data["model_path"],
            study_name=data.get("study_name", ""),
            worker_nodes=data.get("worker_nodes", {}),
            **({"sensitivity": frames["sensitivity"]} if "sensitivity" in frames else {}),
            **{k: data[k] for k in _OPTIONAL_FIELDS if k in data},
        )

    def __repr__(self) -> str:
        lat = f"{self.latency_ms:.3f} ms" if self.latency_ms else "n/a"
        return (
            f"SearchResult(status={self.status!r}, metric={self.metric}, drop={self.drop}, "
            f"latency={lat}, speedup={self.speedup_text}, fallback={list(self.plan.fallback)}, "
            f"trials={len(self.trials)})"
        )


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


def _load_model(location, model_path: str):
    """The saved model next to ``result.json`` (its files copied locally first from a store)."""
    from rayq.backends import detect
    from rayq.storage import download

    name = posixpath.basename(str(model_path))
    if location.local:
        return detect(os.path.join(location.local, name)).load(os.path.join(location.local, name))
    from pyarrow import fs as pafs

    stem = os.path.splitext(name)[0]
    infos = location.fs.get_file_info(pafs.FileSelector(location.path))
    with tempfile.TemporaryDirectory(prefix="rayq-load-") as tmp:
        for info in infos:  # the model and its weights (.bin, external data)
            if info.type == pafs.FileType.File and info.base_name.startswith(stem + "."):
                download(location.child(info.base_name), os.path.join(tmp, info.base_name))
        backend = detect(os.path.join(tmp, name))
        model = backend.load(os.path.join(tmp, name))
        # OpenVINO may map the weights file: detach the model from the temporary folder
        return backend.from_bytes(backend.to_bytes(model)) if backend.name == "openvino" else model
