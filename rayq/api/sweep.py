"""Sweeps: many accuracy-controlled searches in one job.

Each model's search runs with its own output folder (model, trials, result.json,
study journal); at most ``max_concurrent`` run at once, each with an equal share of
the cluster's CPUs. One model's failure is recorded and the others go on. A rerun
skips models whose ``result.json`` exists and resumes unfinished studies.

Model names become folder names under the sweep output, so they must be one safe path
component: an explicit ``name`` is rejected (:class:`~rayq.errors.ConfigError`) unless
it matches :data:`NAME_PATTERN` (no ``/``, no ``..``, no leading dot); names derived
from file names have every other character replaced by ``_``. The sweep holds the lock
of its output folder (:class:`~rayq.storage.OutputLock`), each search the lock of its
own folder. Every log line of a model's search names it (``rayq: [name] ...``).

An entry's ``preset`` restricts the study to that preset unless the entry also gives
``presets`` (a ``presets`` list in ``defaults`` does not widen it).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import fields, replace

import pandas as pd

from rayq import events
from rayq.api.config import SearchConfig, SweepConfig, build
from rayq.api.progress import Progress
from rayq.errors import ConfigError, RayqError
from rayq.logs import log_context
from rayq.storage import OutputLock, Publication, read_marker, resolve

log = logging.getLogger(__name__)

#: A model name usable as a folder name on any file system or object store.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")

SUMMARY_COLUMNS = [
    "name",
    "status",
    "fp32_metric",
    "int8_metric",
    "drop",
    "max_drop",
    "fp32_latency_ms",
    "int8_latency_ms",
    "speedup",
    "speedup_low",
    "speedup_high",
    "fp32_layers",
    "n_trials",
    "search_seconds",
    "error",
    "output",
]


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
        if name is not None:
            _check_name(name, i)
        for path in paths:
            base = name if name and len(paths) == 1 else _safe_name(os.path.splitext(os.path.basename(path))[0])
            data = {**config.defaults, **entry, "model": path}
            if "preset" in entry and "presets" not in entry:  # the entry's preset, not the defaults' list
                data.pop("presets", None)
            out.append((base, build(SearchConfig, data)))
    names = [n for n, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"sweep model names must be unique; repeated: {dupes} (set 'name')")
    return out


def _check_name(name: object, index: int) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"models[{index}].name={name!r} must be a plain folder name: letters, digits, "
            f"'_', '-' and '.', not starting with '.', without '..' (it names the model's "
            f"folder under the sweep output)"
        )


def _safe_name(stem: str) -> str:
    """A file stem as a folder name: unsafe characters become ``_``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).replace("..", "__")[:100]
    return "_" + safe[1:] if not safe or safe[0] in ".-" else safe


def _row(name: str, out: str, result=None, error: str | None = None, seconds: float = 0.0) -> dict:
    if result is None:
        return {
            **{c: None for c in SUMMARY_COLUMNS},
            "name": name,
            "status": "error",
            "error": error,
            "search_seconds": seconds,
            "output": out,
        }
    return {
        "name": name,
        "status": result["status"],
        "fp32_metric": result["fp32_metric"],
        "int8_metric": result["metric"],
        "drop": result["drop"],
        "max_drop": result["max_drop"],
        "fp32_latency_ms": result["fp32_latency_ms"],
        "int8_latency_ms": result["latency_ms"],
        "speedup": result["speedup"],
        "speedup_low": result.get("speedup_low"),
        "speedup_high": result.get("speedup_high"),
        "fp32_layers": len(result["fallback"]),
        "n_trials": result["n_trials"],
        "search_seconds": result["wall_seconds"],
        "error": None,
        "output": out,
    }


def _read_result(out: str) -> dict | None:
    """The ``result.json`` of a finished search in ``out``, else None (absent or incomplete)."""
    from rayq.errors import OutputError

    try:
        return json.loads(read_marker(out).decode())
    except OutputError:
        return None


def run_sweep(config: SweepConfig, *, num_cpus: int | None = None) -> pd.DataFrame:
    """Run every search of ``config``; returns (and writes) the summary table.

    Writes ``summary.parquet``, ``summary.md`` and ``config.yaml`` under
    ``config.output`` and one folder per model (with its own ``config.yaml``).

    Example:
        >>> table = run_sweep(rayq.api.config.load("configs/sweep.yaml"))   # doctest: +SKIP
    """
    from rayq.api.search import search_from_config

    jobs = expand(config)
    with OutputLock(config.output, command="sweep"):
        return _run_jobs(config, jobs, num_cpus, search_from_config)


def _run_jobs(config: SweepConfig, jobs, num_cpus, search_from_config) -> pd.DataFrame:
    per_search = None
    if num_cpus is not None:
        per_search = max(1, num_cpus // min(config.max_concurrent, len(jobs)))
    rows: dict[str, dict] = {}

    def one(name: str, cfg: SearchConfig) -> dict:
        with events.model(name), log_context(name):  # a job client draws each model's bars apart;
            return _one(name, cfg)  # every log line of this search names the model

    def _one(name: str, cfg: SearchConfig) -> dict:
        out = f"{config.output.rstrip('/')}/{name}"
        done = _read_result(out)
        if done is not None:
            log.info("sweep: already finished; skipping")
            return _row(name, out, done)
        start = time.perf_counter()
        try:
            result = search_from_config(replace(cfg, output=out), num_workers=cfg.num_workers or per_search)
        except RayqError as exc:
            log.error("sweep: failed: %s", exc)
            return _row(name, out, error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)
        except Exception as exc:  # one model's bug must not stop the others; recorded with its type
            log.exception("sweep: failed unexpectedly")
            return _row(name, out, error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)
        return _row(name, out, result.to_dict())

    with (
        Progress("sweep", total=len(jobs), unit="model") as bar,
        ThreadPoolExecutor(max_workers=config.max_concurrent) as pool,
    ):
        futures = {pool.submit(one, name, cfg): name for name, cfg in jobs}
        for fut in as_completed(futures):
            row = fut.result()
            rows[row["name"]] = row
            bar.set_postfix(f"{row['name']}: {row['status']}")
            bar.update(1)
    table = pd.DataFrame([rows[n] for n, _ in jobs], columns=SUMMARY_COLUMNS)
    _write_summary(table, config)
    return table


def _write_summary(table: pd.DataFrame, config: SweepConfig) -> None:
    """``summary.parquet``, ``summary.md`` and the sweep's own ``config.yaml`` (each model's
    folder holds its effective search ``config.yaml``)."""
    from rayq.api.config import dump

    with Publication.open(resolve(config.output)) as out:
        table.to_parquet(out.staging / "summary.parquet", index=False)
        (out.staging / "summary.md").write_text(_markdown(table), encoding="utf-8")
        (out.staging / "config.yaml").write_text(dump(config), encoding="utf-8")
        out.publish(["summary.parquet", "summary.md", "config.yaml"])


def _markdown(table: pd.DataFrame) -> str:
    cols = [c for c in SUMMARY_COLUMNS if c != "output"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            cells.append(
                ""
                if v is None or (isinstance(v, float) and v != v)
                else f"{v:.4g}"
                if isinstance(v, float)
                else str(v).replace("|", "/")
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
