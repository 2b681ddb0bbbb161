"""The validation-function wrapper: what a user's function may return."""

from __future__ import annotations

import numpy as np
import pytest

import rayq
from rayq.errors import DataError
from rayq.pipeline.validation import run_validation
from rayq.testing.models import labeled_inputs, sensitive_mlp


def three_values(model, items):
    return 0.9, [1.0, 0.0, 1.0]


def one_per_item(model, items):
    return 0.5, np.ones(len(items))


def test_per_item_values_of_the_wrong_length_are_a_data_error_naming_the_function():
    items = list(range(400))
    with pytest.raises(DataError, match=r"three_values returned 3 per-item values for 400 items"):
        run_validation(three_values, None, items)
    assert len(run_validation(one_per_item, None, items).per_item) == 400


def test_per_item_values_that_are_not_numbers_are_a_data_error():
    with pytest.raises(DataError, match="not numbers"):
        run_validation(lambda m, items: (1.0, ["a", "b"]), None, [1, 2])


def test_search_stops_on_wrong_length_per_item_values():
    """The search does not rank layers on misaligned per-item values: it stops, naming the function."""
    model = sensitive_mlp()
    x, y = labeled_inputs(model, 80)
    with pytest.raises(DataError, match=r"test_validation:three_values returned 3 per-item values for 40 items"):
        rayq.quantize_with_accuracy_control(
            model, x[:40], list(zip(x[40:], y[40:])), three_values, max_drop=0.01, num_workers=1
        )
