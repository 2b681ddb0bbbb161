"""Accuracy-drop math."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rayq.core.accuracy import DROP_TYPES, check_drop_type, compute_drop, within_budget
from rayq.errors import ConfigError


def test_absolute_and_relative_drop():
    assert compute_drop(0.8, 0.75, "absolute") == pytest.approx(0.05)
    assert compute_drop(0.8, 0.76, "relative") == pytest.approx(0.05)
    assert compute_drop(0.8, 0.85, "absolute") == pytest.approx(-0.05)  # better than FP32
    assert compute_drop(-2.0, -2.2, "relative") == pytest.approx(0.1)  # negative metric: worse is positive


def test_relative_drop_with_zero_fp32_is_a_config_error():
    with pytest.raises(ConfigError, match="relative"):
        compute_drop(0.0, 0.1, "relative")
    assert compute_drop(0.0, -0.1, "absolute") == pytest.approx(0.1)


def test_bad_inputs():
    with pytest.raises(ConfigError):
        check_drop_type("percent")
    with pytest.raises(ConfigError):
        compute_drop(0.8, 0.7, "percent")
    with pytest.raises(ConfigError):
        compute_drop(math.nan, 0.7, "absolute")
    with pytest.raises(ConfigError):
        within_budget(0.0, -0.01)
    assert DROP_TYPES == ("absolute", "relative")
    assert math.isnan(compute_drop(0.8, math.nan, "absolute"))


def test_within_budget_tolerance_and_failures():
    assert within_budget(0.01, 0.01)
    assert within_budget(0.01 + 5e-13, 0.01)
    assert not within_budget(0.01 + 1e-9, 0.01)
    assert within_budget(-0.2, 0.0)
    assert not within_budget(None, 0.01)
    assert not within_budget(math.nan, 0.01)


@given(st.floats(0.01, 1e3), st.floats(-1e3, 1e3))
def test_relative_is_absolute_over_fp32(fp32, value):
    rel = compute_drop(fp32, value, "relative")
    assert rel == pytest.approx(compute_drop(fp32, value, "absolute") / fp32, rel=1e-9, abs=1e-12)
