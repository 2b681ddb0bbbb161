"""The backend-neutral result of planning: exactly what to write into a model.

A :class:`Recipe` is computed by the pipeline from (graph, statistics, plan) and
handed to a backend's ``apply``; the backend only translates it to its format
(QuantizeLinear/DequantizeLinear for ONNX, FakeQuantize for OpenVINO).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rayq.core.params import QParams
from rayq.core.rules import Edge


@dataclass(frozen=True)
class ActivationQuant:
    """Quantize ``tensor`` and feed its dequantized value to ``edges``.

    When ``smooth`` is set (SmoothQuant), the backend first multiplies ``tensor``
    by ``smooth`` (per channel, last axis) and quantizes that product: the chain is
    ``tensor -> Mul(smooth) -> Q -> DQ -> edges``; ``params`` describe the product.
    """

    tensor: str
    edges: tuple[Edge, ...]
    params: QParams
    smooth: np.ndarray | None = None


@dataclass(frozen=True)
class WeightQuant:
    """Replace the weight read by ``edge`` with int8 ``values`` and ``params``.

    ``values`` already include any SmoothQuant row scaling.
    """

    node: str
    tensor: str
    edge: Edge
    values: np.ndarray
    params: QParams


@dataclass(frozen=True)
class Recipe:
    """Everything a backend writes into the model.

    Attributes:
        activations: Activation quantizers.
        weights: Weight quantizers.
        biases: New float bias per weighted node name (bias correction).
        fp32_ops: Weighted ops left in FP32, with the reason (for the summary).
    """

    activations: tuple[ActivationQuant, ...] = ()
    weights: tuple[WeightQuant, ...] = ()
    biases: dict[str, np.ndarray] = field(default_factory=dict)
    fp32_ops: tuple[tuple[str, str], ...] = ()
