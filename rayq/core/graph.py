"""A read-only, backend-agnostic view of a model graph.

Backends translate their graph (ONNX ``GraphProto``, ``openvino.Model``) into a
:class:`GraphView` whose nodes carry a *metatype* -- the role of the op for
quantization (``conv``, ``matmul``, ``add`` ...). Placement rules, fallback groups
and bias correction only ever look at a :class:`GraphView`, so they run
unchanged on every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

# Metatypes: the op roles placement rules understand.
CONV = "conv"  # Conv / Convolution / GroupConvolution
CONV_TRANSPOSE = "conv_transpose"
MATMUL = "matmul"  # MatMul / Gemm / FullyConnected
ADD = "add"
MUL = "mul"
CONCAT = "concat"
MAX_POOL = "max_pool"
AVG_POOL = "avg_pool"  # AveragePool / GlobalAveragePool / ReduceMean over space
SHAPE = "shape"  # Reshape, Transpose, Flatten, Squeeze, Unsqueeze: data movement only
SOFTMAX = "softmax"
NORM = "norm"  # LayerNorm, BatchNorm, InstanceNorm, MVN
ACTIVATION = "activation"  # Relu, Gelu, Sigmoid, Clip, ...
OTHER = "other"

METATYPES = (
    CONV,
    CONV_TRANSPOSE,
    MATMUL,
    ADD,
    MUL,
    CONCAT,
    MAX_POOL,
    AVG_POOL,
    SHAPE,
    SOFTMAX,
    NORM,
    ACTIVATION,
    OTHER,
)
WEIGHTED = frozenset({CONV, CONV_TRANSPOSE, MATMUL})


@dataclass(frozen=True)
class TensorInfo:
    """A tensor (edge) of the graph.

    Attributes:
        name: Unique tensor name.
        shape: Static shape, ``None`` entries for dynamic dims; ``None`` if unknown.
        dtype: numpy dtype name, e.g. ``"float32"``.
        is_constant: True for initializers / Constant outputs.
        producer: Name of the producing node, ``None`` for inputs and constants.
        data_independent: Computed only from constants and the *shapes* of the inputs
            (position ids and embeddings, masks built from ``Shape``): not an
            activation, since it takes the same values for every input of a shape.
    """

    name: str
    shape: tuple[int | None, ...] | None
    dtype: str
    is_constant: bool = False
    producer: str | None = None
    data_independent: bool = False

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


@dataclass(frozen=True)
class NodeInfo:
    """A node of the graph, with its quantization metatype.

    Attributes:
        name: Unique node name.
        op_type: The backend's op type (``"Conv"``, ``"Convolution"``...).
        meta: One of :data:`METATYPES`.
        inputs: Input tensor names (``""`` for an absent optional input).
        outputs: Output tensor names.
        weight_input: Index of the constant weight input of a weighted op, else None.
        weight_axis: Output-channel axis of that weight (per-channel quantization).
        weight_in_axis: Input-channel (reduction) axis of that weight.
        bias_input: Index of the constant bias input or None. For backends where bias
            is a separate Add (OpenVINO, ONNX MatMul+Add) the name of the bias-add
            node is in ``bias_node``.
        bias_node: Name of a following Add node that adds a constant bias, if any.
        attrs: Small attribute mapping (``group``, ``transB``...).
    """

    name: str
    op_type: str
    meta: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weight_input: int | None = None
    weight_axis: int | None = None
    weight_in_axis: int | None = None
    bias_input: int | None = None
    bias_node: str | None = None
    attrs: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def weight(self) -> str | None:
        return None if self.weight_input is None else self.inputs[self.weight_input]


class GraphView:
    """Topologically ordered nodes and tensors of a model, read-only.

    Args:
        nodes: Nodes in topological order.
        tensors: Every tensor by name.
        inputs: Graph input names (non-constant).
        outputs: Graph output names.
        constant_fn: Returns the numpy value of a constant tensor.
        fp32_ops: ``(op name, reason)`` for weighted ops the backend read but that stay
            FP32 whatever the plan (inside subgraphs, already quantized, float16...):
            reported in the build summary, absent from ``nodes`` or typed ``other``.
        runtime: The runtime the backend's quantized models are compiled by
            (``"onnxruntime"``, ``"openvino"``), for the few placement rules whose gain
            depends on its INT8 kernels (:mod:`rayq.core.rules`); None: rules that pay on
            every runtime only.

    Example:
        >>> g = backend.graph(model)            # doctest: +SKIP
        >>> [n.name for n in g.nodes if n.meta == "conv"]   # doctest: +SKIP
    """

    def __init__(
        self,
        nodes: list[NodeInfo],
        tensors: dict[str, TensorInfo],
        inputs: list[str],
        outputs: list[str],
        constant_fn: Callable[[str], np.ndarray],
        fp32_ops: tuple[tuple[str, str], ...] = (),
        runtime: str | None = None,
    ) -> None:
        self.fp32_ops = tuple(fp32_ops)
        self.runtime = runtime
        self.nodes: tuple[NodeInfo, ...] = tuple(nodes)
        self.tensors = MappingProxyType(dict(tensors))
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self._constant_fn = constant_fn
        self._by_name = {n.name: n for n in self.nodes}
        consumers: dict[str, list[tuple[NodeInfo, int]]] = {}
        for node in self.nodes:
            for i, t in enumerate(node.inputs):
                if t:
                    consumers.setdefault(t, []).append((node, i))
        self._consumers = consumers

    def node(self, name: str) -> NodeInfo:
        return self._by_name[name]

    def has_node(self, name: str) -> bool:
        return name in self._by_name

    def producer(self, tensor: str) -> NodeInfo | None:
        info = self.tensors.get(tensor)
        if info is None or info.producer is None:
            return None
        return self._by_name.get(info.producer)

    def consumers(self, tensor: str) -> list[tuple[NodeInfo, int]]:
        """(node, input index) pairs that read ``tensor``."""
        return list(self._consumers.get(tensor, ()))

    def is_constant(self, tensor: str) -> bool:
        info = self.tensors.get(tensor)
        return bool(info and info.is_constant)

    def constant(self, tensor: str) -> np.ndarray:
        return self._constant_fn(tensor)

    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]
