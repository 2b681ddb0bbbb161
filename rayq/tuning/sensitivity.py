"""Per-layer sensitivity: how much reverting each fallback group alone to FP32 recovers.

The search ranks fallback groups by this score (most harmful first) and stores the
ranking with its scores in the study attribute ``rayq.ranking`` as JSON::

    {"basis": "metric", "groups": [{"name": "conv2", "score": 0.012}, ...]}

``basis`` says what the score measures: ``metric`` (the validation metric gained on
the items FP32 and INT8 disagree on) or ``output_error`` (the output error removed,
when FP32 and INT8 agree on every item). A score of ``null`` marks a group whose
evaluation failed. A search saves the ranking as ``sensitivity.parquet`` and
``sensitivity.png``.

Example:
    >>> text = encode_ranking(["fc", "conv1"], {"fc": 0.5, "conv1": 0.1}, "metric")
    >>> decode_ranking(text)
    (['fc', 'conv1'], {'fc': 0.5, 'conv1': 0.1}, 'metric')
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

BASES = ("metric", "output_error")
#: Most groups drawn on ``sensitivity.png`` (the table has all of them).
PLOT_LIMIT = 30
COLUMNS = ["rank", "layer", "score", "basis", "fallback"]


def encode_ranking(ranking: Sequence[str], scores: Mapping[str, float], basis: str) -> str:
    """The JSON stored in the study: groups most harmful first, with their scores."""
    groups = [{"name": name, "score": _finite(scores.get(name))} for name in ranking]
    return json.dumps({"basis": basis, "groups": groups}, separators=(",", ":"))


def decode_ranking(value: Any) -> tuple[list[str], dict[str, float], str | None]:
    """(ranking, scores, basis) from the stored attribute; a plain list (older runs) has no scores."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value], {}, None
    if isinstance(value, dict) and "order" in value:  # {"order", "scores", "basis"}: stored as a mapping
        scores = {k: (math.nan if v is None else float(v)) for k, v in (value.get("scores") or {}).items()}
        return [str(v) for v in value["order"]], scores, value.get("basis")
    data = json.loads(value)
    groups = data.get("groups", [])
    scores = {g["name"]: (math.nan if g.get("score") is None else float(g["score"])) for g in groups}
    return [g["name"] for g in groups], scores, data.get("basis")


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def sensitivity_frame(
    ranking: Sequence[str], scores: Mapping[str, float], basis: str | None, fallback: Sequence[str] = ()
) -> pd.DataFrame:
    """One row per fallback group, most harmful first: ``rank`` (1 = most harmful),
    ``layer``, ``score`` (NaN: failed or unknown), ``basis`` and ``fallback`` (kept
    FP32 in the chosen plan).

    Example:
        >>> sensitivity_frame(["fc", "conv1"], {"fc": 0.5, "conv1": 0.1}, "metric", ["fc"])["fallback"].tolist()
        [True, False]
    """
    kept = set(fallback)
    rows = [
        {"rank": i + 1, "layer": name, "score": _nan(scores.get(name)), "basis": basis, "fallback": name in kept}
        for i, name in enumerate(ranking)
    ]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"rank": "int64", "layer": "string", "score": "float64", "basis": "string", "fallback": "bool"})


def _nan(value: float | None) -> float:
    return math.nan if value is None or not math.isfinite(value) else float(value)


def plot_sensitivity(frame: pd.DataFrame, path: str | os.PathLike | None = None):
    """Horizontal bars of the ranking scores (most harmful on top; FP32 layers of the
    chosen plan in red), the first :data:`PLOT_LIMIT` groups."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = frame.head(PLOT_LIMIT)
    fig = Figure(figsize=(7.0, 1.2 + 0.28 * max(len(shown), 1)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = ["tab:red" if fb else "tab:blue" for fb in shown["fallback"]]
    ax.barh(list(range(len(shown))), shown["score"].fillna(0.0), color=colors)
    ax.set_yticks(list(range(len(shown))), [str(n) for n in shown["layer"]], fontsize="small")
    ax.invert_yaxis()
    basis = shown["basis"].iloc[0] if len(shown) else None
    ax.set_xlabel(
        "metric recovered by keeping the layer FP32"
        if basis == "metric"
        else "output error removed by keeping the layer FP32"
    )
    more = f" (top {PLOT_LIMIT} of {len(frame)})" if len(frame) > PLOT_LIMIT else ""
    ax.set_title(f"per-layer sensitivity{more}; red: FP32 in the chosen model")
    ax.axvline(0.0, c="black", lw=0.8)
    ax.grid(True, axis="x", alpha=0.3)
    if path is not None:
        fig.savefig(os.fspath(path), format="png", dpi=120)
    return fig


__all__ = ["BASES", "COLUMNS", "decode_ranking", "encode_ranking", "plot_sensitivity", "sensitivity_frame"]
