"""A validation function of the digits example that INT8 noise moves (for search tests).

Top-1 accuracy of the digits CNN does not move under INT8 (0.98 either way), so a
search on it never ranks fallback groups. The mean probability of the true class
does (0.9634 FP32, 0.9618 fully INT8 on a 2-core AVX2 EPYC): with
``max_drop=0.0002`` the search must rank the layers and keep some in FP32 (the
margin leaves room for more exact VNNI kernels).
"""

from __future__ import annotations

import numpy as np


def true_class_probability(model, data) -> float:
    """Mean softmax probability of each item's label, NNCF's ``fn(model, items)`` contract."""
    images = np.stack([np.asarray(item["input"], np.float32) for item in data])
    labels = np.array([int(item["label"]) for item in data])
    logits = np.asarray(model(images)[0], np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return float(probs[np.arange(len(labels)), labels].mean())
