"""The answer of a search: the chosen model, its numbers, every trial, the front."""

from __future__ import annotations

import io
import json
import os
import posixpath
import tempfile
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from rayq.core.plan import QuantPlan

#: Latencies within this relative band of the fastest are treated as ties
#: (measurement noise); ties go to the plan with fewer FP32 ops, then the lower trial.
LATENCY_TIE_BAND = 0.03

#: Written last when a search run is saved: its presence marks the run complete.
RESULT_FILE = "result.json"


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

    def save(self, uri: str, files: dict[str, str] | None = None) -> dict[str, str]:
        """Publish model, ``trials.parquet``, ``pareto.parquet``, ``pareto.png``, the text
        ``files`` (name -> content, e.g. ``config.yaml``) and ``result.json`` under ``uri``
        (a local path, ``file://`` or any ``pyarrow.fs`` URI).

        Files are staged and renamed into place with ``result.json`` last, the marker of a
        complete run (see :class:`rayq.storage.Publication`); a failure leaves no marker.
        Returns name -> written URI.
        """
        from rayq.backends import detect
        from rayq.storage import Publication

        backend = detect(self.model)
        with Publication.open(uri, marker=RESULT_FILE) as out:
            staged = [os.path.basename(p) for p in backend.save(self.model, str(out.staging / f"model{backend.suffix}"))]
            self.trials.to_parquet(out.staging / "trials.parquet", index=False)
            self.pareto.to_parquet(out.staging / "pareto.parquet", index=False)
            self.plot(str(out.staging / "pareto.png"))
            for name, text in (files or {}).items():
                (out.staging / name).write_text(text, encoding="utf-8")
            model = out.location.child(staged[0])
            self.model_path = model.local if out.location.local else model.uri
            (out.staging / RESULT_FILE).write_text(json.dumps(self.to_dict(), indent=2, default=str),
                                                   encoding="utf-8")
            names = [*staged, "trials.parquet", "pareto.parquet", "pareto.png", *(files or {}), RESULT_FILE]
            return out.publish(names)

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
        frames = {name: pd.read_parquet(io.BytesIO(location.child(f"{name}.parquet").read_bytes()))
                  for name in ("trials", "pareto")}
        return cls(
            model=_load_model(location, data["model_path"]), plan=QuantPlan.from_dict(data["plan"]),
            status=data["status"], fp32_metric=data["fp32_metric"], metric=data["metric"], drop=data["drop"],
            max_drop=data["max_drop"], drop_type=data["drop_type"], latency_ms=data["latency_ms"],
            latency_spread_ms=data["latency_spread_ms"], fp32_latency_ms=data["fp32_latency_ms"],
            target=data["target"], trials=frames["trials"], pareto=frames["pareto"],
            wall_seconds=data["wall_seconds"], cpu_seconds=data["cpu_seconds"], ranking=list(data["ranking"]),
            model_path=data["model_path"], study_name=data.get("study_name", ""),
            worker_nodes=data.get("worker_nodes", {}))

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
