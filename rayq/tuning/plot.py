"""The latency-vs-accuracy picture of a search.

Figures are built with :class:`matplotlib.figure.Figure` on the Agg canvas, so
nothing depends on a display or on pyplot's global state; notebooks still show
the returned figure.

Example:
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"number": [0, 1], "status": ["ok", "ok"], "feasible": [True, False],
    ...                       "speedup": [1.2, 1.5], "speedup_low": [1.1, 1.4], "speedup_high": [1.3, 1.6],
    ...                       "metric": [0.9, 0.7], "drop": [0.0, 0.2]})
    >>> fig = plot_pareto(frame, frame.iloc[:1], max_drop=0.01, chosen=0)
    >>> fig.axes[0].get_xlabel()
    'speed-up over FP32 (x, 95% interval)'
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING

import pandas as pd

from rayq.core.accuracy import check_drop_type

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


def _fp32_from_frame(ok: pd.DataFrame, drop_type: str) -> float | None:
    """Recover the FP32 metric from any ok row (metric and drop determine it)."""
    for metric, drop in zip(ok["metric"], ok["drop"]):
        if math.isfinite(metric) and math.isfinite(drop):
            if drop_type == "absolute":
                return float(metric + drop)
            if drop != 1.0:
                return float(metric / (1.0 - drop))
    return None


def _budget_metric(fp32: float, max_drop: float, drop_type: str) -> float:
    return fp32 - max_drop if drop_type == "absolute" else fp32 - abs(fp32) * max_drop


def plot_pareto(
    frame: pd.DataFrame,
    pareto: pd.DataFrame,
    *,
    max_drop: float,
    fp32_metric: float | None = None,
    drop_type: str = "absolute",
    path: str | os.PathLike | None = None,
    chosen: int | None = None,
) -> Figure:
    """Scatter speed-up over FP32 vs. metric, with the Pareto front (on the same
    quantity), FP32 (a dotted line at its metric and a diamond at speed-up 1), the
    accuracy budget and the chosen trial (a star). The legend lists only what is
    drawn; a metric within [0, 1] never gets an axis past 1.

    Speed-ups carry their 95 % intervals as horizontal error bars when the frame has
    ``speedup_low``/``speedup_high``. A frame without speed-ups is drawn against
    latency instead.

    Args:
        frame: A trials frame (``DriverOutcome.trials_frame()``); rows whose
            ``status`` is not ``"ok"`` are left out.
        pareto: The Pareto rows (``DriverOutcome.pareto()``), drawn as a step line.
        max_drop: The budget; drawn as a horizontal line at the lowest
            acceptable metric.
        fp32_metric: The FP32 metric; when None it is recovered from the
            frame's metric and drop columns.
        drop_type: ``"absolute"`` or ``"relative"`` (how ``drop`` was computed).
        path: Where to save a PNG (optional).
        chosen: Trial number of the answer, marked with a star.

    Returns:
        The figure.

    Example:
        See the module docstring.
    """
    check_drop_type(drop_type)
    ok = frame[frame["status"] == "ok"]
    speed = "speedup" in ok and bool(ok["speedup"].notna().any())
    x = "speedup" if speed else "latency_ms"
    feasible = ok["feasible"].astype(bool)
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported when drawing (~0.45 s)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if speed and {"speedup_low", "speedup_high"} <= set(ok):
        err = [
            (ok[x] - ok[bound]).abs().replace(math.inf, math.nan).fillna(0.0)
            for bound in ("speedup_low", "speedup_high")
        ]
        ax.errorbar(ok[x], ok["metric"], xerr=err, fmt="none", ecolor="tab:blue", alpha=0.35, lw=2, zorder=1)
    if (~feasible).any():  # the legend names only what is drawn
        ax.scatter(
            ok.loc[~feasible, x],
            ok.loc[~feasible, "metric"],
            c="lightgrey",
            edgecolors="grey",
            label="over budget",
            zorder=2,
        )
    if feasible.any():
        ax.scatter(ok.loc[feasible, x], ok.loc[feasible, "metric"], c="tab:blue", label="within budget", zorder=3)
    _draw_front(ax, pareto, x, speed)
    picked = ok[ok["number"] == chosen] if chosen is not None and "number" in ok else ok.iloc[:0]
    if len(picked):
        ax.scatter(
            picked[x],
            picked["metric"],
            marker="*",
            s=220,
            c="tab:red",
            edgecolors="black",
            label=f"chosen (trial {chosen})",
            zorder=5,
        )
    if speed:
        ax.axvline(1.0, c="black", ls=":", lw=1)
    fp32 = fp32_metric if fp32_metric is not None else _fp32_from_frame(ok, drop_type)
    levels = list(ok["metric"].dropna())
    if fp32 is not None:
        budget = _budget_metric(fp32, max_drop, drop_type)
        ax.axhline(fp32, c="black", ls=":", lw=1, label=f"FP32 ({fp32:.4g})")
        if speed:  # FP32 itself: speed-up 1 at its metric
            ax.scatter([1.0], [fp32], marker="D", s=50, c="white", edgecolors="black", label="FP32 model", zorder=4)
        ax.axhline(budget, c="tab:red", ls="--", lw=1, label=f"budget (max_drop={max_drop:g}, {drop_type})")
        levels += [fp32, budget]
    else:
        logger.info("no FP32 metric known; the budget line is not drawn")
    _metric_limits(ax, levels)
    ax.set_xlabel("speed-up over FP32 (x, 95% interval)" if speed else "latency (ms, median)")
    ax.set_ylabel("metric (higher is better)")
    ax.set_title("speed-up vs. accuracy" if speed else "latency vs. accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    if path is not None:
        fig.savefig(os.fspath(path), format="png", dpi=120)
        logger.debug("wrote the Pareto plot %s", os.fspath(path))
    return fig


def _draw_front(ax, pareto: pd.DataFrame, x: str, speed: bool) -> None:
    """The front as a step line; a front of one trial as a ring around that point."""
    front = pareto[pareto[x].notna() & pareto["metric"].notna()] if len(pareto) else pareto
    if not len(front):
        return
    front = front.sort_values(x, ascending=not speed)
    label = "Pareto front" if len(front) > 1 else "Pareto front (1 trial)"
    ax.step(
        front[x],
        front["metric"],
        where="post",
        c="tab:orange",
        marker="o",
        mfc="none",
        ms=14,
        mew=2,
        label=label,
        zorder=6,
    )


def _metric_limits(ax, levels: list[float]) -> None:
    """Metric axis around the data with a 5 % margin, never past 1 for a metric within [0, 1]."""
    levels = [v for v in levels if math.isfinite(v)]
    if not levels:
        return
    lo, hi = min(levels), max(levels)
    pad = 0.05 * (hi - lo) or 0.01 * max(abs(hi), 1e-3)
    top, bottom = hi + pad, lo - pad
    if lo >= 0.0 and hi <= 1.0:
        top, bottom = min(top, 1.0), max(bottom, 0.0)
    if top <= bottom:
        bottom, top = bottom - pad, top + pad
    ax.set_ylim(bottom, top)
    for artist in ax.collections + ax.lines:  # points on the limit (accuracy 1.0) stay whole
        artist.set_clip_on(False)


__all__ = ["plot_pareto"]
