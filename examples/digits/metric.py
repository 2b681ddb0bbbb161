"""Validation function of the digits example, for ``validation_fn: examples.digits.metric:accuracy``.

It has NNCF's signature: ``fn(compiled_model, validation_data) -> float``, where
``compiled_model`` is callable on an input array and returns outputs indexable by
position (a list for ONNX models; OpenVINO's result for an ``openvino.CompiledModel``),
and ``validation_data`` is the list of validation items as loaded from
``validation.npz`` (dicts ``{"input": float32 [1, 8, 8], "label": int}``).

Example:
    >>> import onnxruntime as ort
    >>> from examples.digits.data import MODEL, VALIDATION
    >>> from rayq.pipeline.data import as_dataset
    >>> items = list(as_dataset(str(VALIDATION)).get_inference_data())
    >>> sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    >>> accuracy(lambda x: sess.run(None, {"input": x}), items)
    0.98
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from examples.digits.data import top1

BATCH = 100


def _split(item: Any) -> tuple[np.ndarray, int]:
    if isinstance(item, dict):
        return np.asarray(item["input"], np.float32), int(item["label"])
    image, label = item
    return np.asarray(image, np.float32), int(label)


def accuracy(model: Callable[[np.ndarray], Sequence[np.ndarray]], data: Sequence[Any]) -> float:
    """Top-1 accuracy of ``model`` over validation ``data``, run in batches of 100.

    Args:
        model: Callable on a float32 ``[N, 1, 8, 8]`` batch, returning outputs whose
            first element is the logits ``[N, 10]``.
        data: Items ``{"input": [1, 8, 8], "label": int}`` (or ``(image, label)`` pairs).

    Returns:
        The fraction of items whose arg-max logit is the label.
    """
    return top1(*_logits(model, data, "accuracy"))


def _logits(
    model: Callable[[np.ndarray], Sequence[np.ndarray]], data: Sequence[Any], name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[N, 10]`` of ``model`` on ``data`` (batches of :data:`BATCH`) and the labels."""
    pairs = [_split(item) for item in data]
    if not pairs:
        raise ValueError(f"{name}() needs at least one validation item")
    images = np.stack([p[0] for p in pairs])
    labels = np.array([p[1] for p in pairs], np.int64)
    logits = np.concatenate([np.asarray(model(images[i : i + BATCH])[0]) for i in range(0, len(images), BATCH)])
    return logits, labels


def accuracy_per_item(
    model: Callable[[np.ndarray], Sequence[np.ndarray]], data: Sequence[Any]
) -> tuple[float, np.ndarray]:
    """:func:`accuracy` with per-item values: ``(accuracy, correct)``, ``correct[i]`` 1.0
    when item ``i`` is classified right. The accuracy is their mean, so a search can
    validate candidates in chunks and stop hopeless ones early (``early_stop``).
    """
    logits, labels = _logits(model, data, "accuracy_per_item")
    correct = (np.asarray(logits).argmax(1) == labels).astype(np.float64)
    return float(correct.mean()), correct
