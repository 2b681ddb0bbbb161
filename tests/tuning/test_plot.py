"""pareto.png shows what happened: its artists, not just that the file exists."""

from __future__ import annotations

import pandas as pd
import pytest

from rayq.tuning.plot import plot_pareto
from rayq.tuning.records import pareto_front


def _frame(rows):
    return pd.DataFrame(
        [
            {
                "number": i,
                "status": "ok",
                "feasible": f,
                "speedup": s,
                "speedup_low": s - 0.1,
                "speedup_high": s + 0.1,
                "metric": m,
                "drop": 0.98 - m,
            }
            for i, (s, m, f) in enumerate(rows)
        ]
    )


def _legend(fig):
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_one_point_front_all_within_budget():
    frame = _frame([(1.2, 0.98, True)])
    fig = plot_pareto(frame, pareto_front(frame), max_drop=0.01, fp32_metric=0.98, chosen=0)
    ax = fig.axes[0]
    legend = _legend(fig)
    assert "over budget" not in legend  # no trial was
    assert "within budget" in legend and "chosen (trial 0)" in legend
    front = [ln for ln in ax.lines if ln.get_label() == "Pareto front (1 trial)"]
    assert len(front) == 1 and list(front[0].get_xdata()) == [1.2] and front[0].get_marker() == "o"
    assert front[0].get_zorder() > max(c.get_zorder() for c in ax.collections)  # drawn over the star
    assert ax.get_ylim()[1] <= 1.0


def test_accuracy_axis_stops_at_one_and_fp32_is_drawn():
    frame = _frame([(1.5, 0.90, False), (1.3, 0.975, True), (1.1, 1.0, True)])
    fig = plot_pareto(frame, pareto_front(frame), max_drop=0.01, fp32_metric=0.98, chosen=1)
    ax = fig.axes[0]
    legend = _legend(fig)
    assert {"over budget", "within budget", "Pareto front", "chosen (trial 1)", "FP32 (0.98)", "FP32 model"} <= set(
        legend
    )
    bottom, top = ax.get_ylim()
    assert top == pytest.approx(1.0) and 0.85 < bottom < 0.90
    fp32_lines = [ln for ln in ax.lines if ln.get_label().startswith("FP32")]
    assert list(fp32_lines[0].get_ydata()) == [0.98, 0.98]
    star = next(c for c in ax.collections if c.get_label() == "chosen (trial 1)")
    assert star.get_offsets().tolist() == [[1.3, 0.975]]
    fp32_point = next(c for c in ax.collections if c.get_label() == "FP32 model")
    assert fp32_point.get_offsets().tolist() == [[1.0, 0.98]]
    front = next(ln for ln in ax.lines if ln.get_label() == "Pareto front")
    assert sorted(front.get_xdata()) == [1.1, 1.3, 1.5]


def test_metric_outside_unit_range_is_not_clamped():
    frame = _frame([(1.2, 35.0, True), (1.4, 30.0, False)])
    fig = plot_pareto(frame, pareto_front(frame), max_drop=1.0, fp32_metric=35.5, chosen=0)
    bottom, top = fig.axes[0].get_ylim()
    assert bottom < 30.0 and top > 35.5
