"""The per-layer sensitivity report and the stored ranking (JSON with scores)."""

from __future__ import annotations

import json
import math

from rayq.tuning.sensitivity import decode_ranking, encode_ranking, plot_sensitivity, sensitivity_frame


def test_ranking_is_json_with_scores_and_failures_as_null():
    text = encode_ranking(["fc", "conv1", "conv2"], {"fc": 0.5, "conv1": 0.1, "conv2": -math.inf}, "metric")
    assert json.loads(text) == {
        "basis": "metric",
        "groups": [{"name": "fc", "score": 0.5}, {"name": "conv1", "score": 0.1}, {"name": "conv2", "score": None}],
    }
    ranking, scores, basis = decode_ranking(text)
    assert ranking == ["fc", "conv1", "conv2"] and basis == "metric" and math.isnan(scores["conv2"])
    assert decode_ranking(["b", "a"]) == (["b", "a"], {}, None)  # a study of an older rayq


def test_sensitivity_plot_bars_follow_the_ranking():
    frame = sensitivity_frame(
        ["fc", "conv1", "conv2"], {"fc": 0.5, "conv1": 0.1, "conv2": -0.01}, "output_error", fallback=["fc"]
    )
    assert frame["rank"].tolist() == [1, 2, 3] and frame["fallback"].tolist() == [True, False, False]
    ax = plot_sensitivity(frame).axes[0]
    bars = ax.patches
    assert [b.get_width() for b in bars] == [0.5, 0.1, -0.01]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["fc", "conv1", "conv2"]
    assert bars[0].get_facecolor() != bars[1].get_facecolor()  # the chosen plan's FP32 layer stands out
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # most harmful on top
    assert "output error" in ax.get_xlabel()
