"""Validation functions for tests and benchmarks (importable on every Ray worker)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def pair_accuracy(model: Any, items: Sequence[tuple[np.ndarray, int]]) -> tuple[float, np.ndarray]:
    """Top-1 accuracy over ``(input, label)`` items of a single-input model named ``input``.

    Returns NNCF's ``(metric, per_item_values)``.

    Example:
        >>> m = lambda feeds: [np.eye(2)[[0, 1]]]
        >>> pair_accuracy(m, [(np.zeros(2), 0), (np.zeros(2), 0)])[0]
        0.5
    """
    x = np.stack([np.asarray(it[0], np.float32) for it in items])
    y = np.array([int(it[1]) for it in items])
    out = model({"input": x})[0]
    per = (np.asarray(out).argmax(1) == y).astype(np.float64)
    return float(per.mean()), per


def pair_accuracy_hanging_on_gemm1(model: Any, items: Sequence[tuple[np.ndarray, int]]) -> tuple[float, np.ndarray]:
    """:func:`pair_accuracy`, except that it never returns for an ONNX model whose
    ``Gemm_1`` is quantized (the sensitive layer of :func:`rayq.testing.models.sensitive_mlp`):
    a validation function that hangs on some candidates, for timeout tests."""
    import time

    graph = getattr(getattr(model, "model", model), "graph", None)
    if graph is not None and any(n.name.startswith("Gemm_1/") for n in graph.node):
        while True:
            time.sleep(3600)
    return pair_accuracy(model, items)
