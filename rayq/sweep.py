"""Sweeps: many accuracy-controlled searches in one job.

Each model's search runs with its own output folder (model, trials, result.json,
study journal); at most ``max_concurrent`` run at once, each with an equal share of
the cluster's CPUs. One model's failure is recorded and the others go on. A rerun
skips models whose ``result.json`` exists and resumes unfinished studies.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import fields, replace

import pandas as pd

from rayq.config import SearchConfig, SweepConfig, _build
from rayq.errors import ConfigError, RayqError
from rayq.progress import Progress
from rayq.storage import copy_dir_to, filesystem

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["name", "status", "fp32_metric", "int8_metric", "drop", "max_drop", "fp32_latency_ms",
                   "int8_latency_ms", "speedup", "speedup_low", "speedup_high", "fp32_layers", "n_trials",
                   "search_seconds", "error", "output"]


def expand(config: SweepConfig) -> list[tuple[str, SearchConfig]]:
    """The (name, SearchConfig) of every model in the sweep, globs expanded, names unique."""
    search_fields = {f.name for f in fields(SearchConfig)}
    out: list[tuple[str, SearchConfig]] = []
    for i, entry in enumerate(config.models):
        entry = dict(entry)
        pattern = entry.pop("glob", None)
        name = entry.pop("name", None)
        paths = sorted(glob.glob(pattern)) if pattern else [entry.pop("model")]
        if pattern and not paths:
            raise ConfigError(f"models[{i}].glob {pattern!r} matches no file")
        unknown = set(entry) - search_fields
        if unknown:
            raise ConfigError(f"models[{i}] has unknown field(s) {sorted(unknown)}")
        for path in paths:
            base = name if name and len(paths) == 1 else os.path.splitext(os.path.basename(path))[0]
            data = {**config.defaults, **entry, "model": path}
            out.append((base, _build(SearchConfig, data)))
    names = [n for n, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"sweep model names must be unique; repeated: {dupes} (set 'name')")
    return out


def _row(name: str, out: str, result=None, error: str | None = None, seconds: float = 0.0) -> dict:
    if result is None:
        return {**{c: None for c in SUMMARY_COLUMNS}, "name": name, "status": "error", "error": error,
                "search_seconds": seconds, "output": out}
    return {"name": name, "status": result["status"], "fp32_metric": result["fp32_metric"],
            "int8_metric": result["metric"], "drop": result["drop"], "max_drop": result["max_drop"],
            "fp32_latency_ms": result["fp32_latency_ms"], "int8_latency_ms": result["latency_ms"],
            "speedup": result["speedup"], "speedup_low": result.get("speedup_low"),
            "speedup_high": result.get("speedup_high"), "fp32_layers": len(result["fallback"]),
            "n_trials": result["n_trials"],
            "search_seconds": result["wall_seconds"], "error": None, "output": out}


def _read_result(out: str) -> dict | None:
    fs_, root = filesystem(out)
    from pyarrow import fs as pafs

    path = f"{root.rstrip('/')}/result.json"
    if fs_.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs_.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def run_sweep(config: SweepConfig, *, num_cpus: int | None = None) -> pd.DataFrame:
    """Run every search of ``config``; returns (and writes) the summary table.

    Writes ``summary.parquet`` and ``summary.md`` under ``config.output`` and one
    folder per model.

    Example:
        >>> table = run_sweep(rayq.config.load("configs/sweep.yaml"))   # doctest: +SKIP
    """
    from rayq.search_api import search_from_config

    jobs = expand(config)
    per_search = None
    if num_cpus is not None:
        per_search = max(1, num_cpus // min(config.max_concurrent, len(jobs)))
    rows: dict[str, dict] = {}

    def one(name: str, cfg: SearchConfig) -> dict:
        out = f"{config.output.rstrip('/')}/{name}"
        done = _read_result(out)
        if done is not None:
            log.info("sweep: %s already finished; skipping", name)
            return _row(name, out, done)
        start = time.perf_counter()
        try:
            result = search_from_config(replace(cfg, output=out), num_workers=cfg.num_workers or per_search)
        except RayqError as exc:
            log.error("sweep: %s failed: %s", name, exc)
            return _row(name, out, error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)
        except Exception as exc:  # one model's bug must not stop the others; recorded with its type
            log.exception("sweep: %s failed unexpectedly", name)
            return _row(name, out, error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)
        return _row(name, out, result.to_dict())

    with Progress("sweep", total=len(jobs), unit="model") as bar, \
            ThreadPoolExecutor(max_workers=config.max_concurrent) as pool:
        futures = {pool.submit(one, name, cfg): name for name, cfg in jobs}
        for fut in as_completed(futures):
            row = fut.result()
            rows[row["name"]] = row
            bar.update(1)
            bar.set_postfix(f"{row['name']}: {row['status']}")
    table = pd.DataFrame([rows[n] for n, _ in jobs], columns=SUMMARY_COLUMNS)
    _write_summary(table, config.output)
    return table


def _write_summary(table: pd.DataFrame, output: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        table.to_parquet(os.path.join(tmp, "summary.parquet"), index=False)
        with open(os.path.join(tmp, "summary.md"), "w", encoding="utf-8") as f:
            f.write(_markdown(table))
        copy_dir_to(tmp, output)


def _markdown(table: pd.DataFrame) -> str:
    cols = [c for c in SUMMARY_COLUMNS if c != "output"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            cells.append("" if v is None or (isinstance(v, float) and v != v) else
                         f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
