"""Reports: the FP32 vs INT8 table of ``rayq quantize --validation`` (measured by
:mod:`rayq.api.compare`), and the ``rayq report`` command (read through
:meth:`rayq.SearchResult.load`)."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from rayq.api.compare import Row

log = logging.getLogger("rayq.cli")


def format_table(rows: Sequence[Row], metric_name: str, batch: int = 1) -> str:
    """A plain-text table; INT8 rows also show the metric change and the speed-up vs FP32."""
    width = max(12, len(metric_name))
    lines = [
        f"{'runtime':<12} {'model':<5} {metric_name:>{width}} {'change':>8} "
        f"{'latency ms':>10} {'IQR ms':>8} {'speed-up':>8}"
    ]
    base: dict[str, Row] = {}
    for row in rows:
        ref = base.setdefault(row.runtime, row)
        change = speed = ""
        if row is not ref:
            change = f"{row.metric - ref.metric:+.4f}"
            speed = f"{ref.latency.median_ms / max(row.latency.median_ms, 1e-9):.2f}x"
        lines.append(
            f"{row.runtime:<12} {row.label:<5} {row.metric:>{width}.4f} {change:>8} "
            f"{row.latency.median_ms:>10.3f} {row.latency.iqr_ms:>8.3f} {speed:>8}"
        )
    if rows:
        lat = rows[0].latency
        lines.append(
            f"(latency: median of {lat.repeats} runs after warm-up, batch {batch}, {lat.threads or 'default'} threads)"
        )
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
    import pandas as pd

    from rayq.storage import resolve
    from rayq.tuning.result import SearchResult

    location = resolve(args.output)
    summary = location.child("summary.parquet")
    if location.kind() == "folder" and summary.kind() == "file":
        table = pd.read_parquet(io.BytesIO(summary.read_bytes()))
        print(
            f"rayq sweep at {location.uri}: {len(table)} models, {int((table.status == 'met').sum())} met the "
            f"budget, {int((table.status == 'error').sum())} failed"
        )
        print(table.drop(columns=["output"], errors="ignore").to_string(index=False), flush=True)
        return 0
    result = SearchResult.load(args.output)
    print(format_result(result.to_dict(), location.uri))
    front = result.pareto.copy()
    if len(front.columns):
        if "fallback" in front:  # list<string>: the names, comma-separated
            front["fallback"] = [", ".join(v) if isinstance(v, (list, tuple)) else v for v in front["fallback"]]
        shown = [c for c in ("number", "speedup", "latency_ms", "metric", "drop", "feasible", "fallback") if c in front]
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
    return (
        f"rayq search at {where}: {result['status']}, {result['n_trials']} trials\n"
        f"  metric {metric} (FP32 {result['fp32_metric']:.4f}, drop {drop}, max {result['max_drop']} "
        f"{result['drop_type']}); latency {latency}{speed} on {result['target']}\n"
        f"  FP32 layers: {fallback}\n  model: {result.get('model_path')}"
    )
