"""Reports: FP32 vs INT8 on every runtime of a backend (the user's metric and latency of
one batch, for ``rayq quantize --validation``), and the ``rayq report`` command."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rayq.backends.base import Backend
from rayq.errors import DataError
from rayq.pipeline import data as data_mod
from rayq.pipeline.evaluate import run_validation, validation_model
from rayq.pipeline.latency import Latency, measure_latency

log = logging.getLogger("rayq.cli")


@dataclass(frozen=True)
class Row:
    """One model on one runtime."""

    runtime: str
    label: str
    metric: float
    latency: Latency


def load_items(path: str) -> list[Any]:
    """Validation items as a validation function receives them (NNCF: the dataset's items)."""
    items = list(data_mod.as_dataset(path).get_inference_data())
    if not items:
        raise DataError(f"validation data {path!r} is empty")
    return items


def latency_feeds(backend: Backend, model: Any, items: Sequence[Any], batch: int = 1) -> dict:
    """One input batch of the first ``batch`` validation items, checked against the model's inputs."""
    from rayq.backends.feeds import check_feeds

    specs = backend.inputs(model)
    try:
        feeds = [data_mod.to_feeds(item, specs) for item in items[:max(1, batch)]]
        if len(feeds) > 1:
            data_mod.batch_size_for(feeds, specs, len(feeds))  # DataError for a static batch dim
            feeds = data_mod.batches(feeds, specs, len(feeds))
        return check_feeds(specs, feeds[0])
    except DataError as exc:
        raise DataError(f"validation data does not fit the model (latency_batch={batch}): {exc}") from exc


def compare(backend: Backend, models: Mapping[str, Any], fn: Callable, items: Sequence[Any],
            feeds: dict, *, threads: int = 2, runtimes: Sequence[str] | None = None,
            repeats: int = 50) -> list[Row]:
    """Validate and time each of ``models`` (label -> model) on each runtime.

    Example:
        >>> rows = compare(get_backend("onnx"), {"FP32": fp32, "INT8": int8}, accuracy,
        ...                items, feeds, threads=2)                                  # doctest: +SKIP
        >>> rows[0].runtime, rows[0].label                                           # doctest: +SKIP
        ('onnxruntime', 'FP32')
    """
    rows = []
    for runtime in runtimes or backend.runtimes:
        for label, model in models.items():
            log.info("validating %s on %s", label, runtime)
            compiled = validation_model(backend, model, runtime=runtime, threads=threads)
            metric = run_validation(fn, compiled, items)
            latency = measure_latency(backend, model, feeds, runtime=runtime, threads=threads, repeats=repeats)
            rows.append(Row(runtime, label, metric.value, latency))
    return rows


def format_table(rows: Sequence[Row], metric_name: str, batch: int = 1) -> str:
    """A plain-text table; INT8 rows also show the metric change and the speed-up vs FP32."""
    width = max(12, len(metric_name))
    lines = [f"{'runtime':<12} {'model':<5} {metric_name:>{width}} {'change':>8} "
             f"{'latency ms':>10} {'IQR ms':>8} {'speed-up':>8}"]
    base: dict[str, Row] = {}
    for row in rows:
        ref = base.setdefault(row.runtime, row)
        change = speed = ""
        if row is not ref:
            change = f"{row.metric - ref.metric:+.4f}"
            speed = f"{ref.latency.median_ms / max(row.latency.median_ms, 1e-9):.2f}x"
        lines.append(f"{row.runtime:<12} {row.label:<5} {row.metric:>{width}.4f} {change:>8} "
                     f"{row.latency.median_ms:>10.3f} {row.latency.iqr_ms:>8.3f} {speed:>8}")
    if rows:
        lat = rows[0].latency
        lines.append(f"(latency: median of {lat.repeats} runs after warm-up, batch {batch}, "
                     f"{lat.threads or 'default'} threads)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# ``rayq report``: what a finished search or sweep found
# --------------------------------------------------------------------------------------
HELP = "summarise a finished search or sweep output (local path or pyarrow.fs URI)"
DESCRIPTION = """\
Prints the result of a finished `rayq search` (its result.json and Pareto front) or
the summary table of a `rayq sweep`. OUT is resolved like every output: a local
path, file:// or a pyarrow.fs URI. An incomplete search (no result.json: still
running, interrupted, or failed while saving) is refused with exit 2."""
EPILOG = """\
examples:
  rayq report runs/search
  rayq report s3://bucket/sweep"""


def add_arguments(p) -> None:
    p.add_argument("output", metavar="OUT", help="output folder of a search or a sweep")


def run(args) -> int:
    import json

    import pandas as pd

    from rayq.storage import read_marker, resolve

    location = resolve(args.output)
    summary = location.child("summary.parquet")
    if location.kind() == "folder" and summary.kind() == "file":
        table = pd.read_parquet(io.BytesIO(summary.read_bytes()))
        print(f"rayq sweep at {location.uri}: {len(table)} models, {int((table.status == 'met').sum())} met the "
              f"budget, {int((table.status == 'error').sum())} failed")
        print(table.drop(columns=["output"], errors="ignore").to_string(index=False), flush=True)
        return 0
    result = json.loads(read_marker(location, "result.json").decode())
    print(format_result(result, location.uri))
    pareto = location.child("pareto.parquet")
    if pareto.kind() == "file":
        from rayq.tuning.tables import read_parquet

        front = read_parquet(pareto.read_bytes())
        if "fallback" in front:  # list<string>: the names, comma-separated
            front["fallback"] = [", ".join(v) if isinstance(v, list) else v for v in front["fallback"]]
        shown = [c for c in ("number", "speedup", "latency_ms", "metric", "drop", "feasible", "fallback")
                 if c in front]
        print("Pareto front (latency vs metric):")
        print(front[shown].to_string(index=False), flush=True)
    return 0


def format_result(result: Mapping[str, Any], where: str) -> str:
    """The summary lines of a search's ``result.json``."""
    speed = f" ({result['speedup']:.2f}x FP32)" if result.get("speedup") else ""
    latency = f"{result['latency_ms']:.3f} ms" if result.get("latency_ms") is not None else "n/a"
    metric = f"{result['metric']:.4f}" if result.get("metric") is not None else "n/a"
    drop = f"{result['drop']:.4f}" if result.get("drop") is not None else "n/a"
    fallback = ", ".join(result.get("fallback") or []) or "none"
    return (f"rayq search at {where}: {result['status']}, {result['n_trials']} trials\n"
            f"  metric {metric} (FP32 {result['fp32_metric']:.4f}, drop {drop}, max {result['max_drop']} "
            f"{result['drop_type']}); latency {latency}{speed} on {result['target']}\n"
            f"  FP32 layers: {fallback}\n  model: {result.get('model_path')}")
