"""Small, realistic FP32 ONNX models built with ``onnx.helper`` and numpy only.

Every builder is deterministic for a given ``seed`` (seeded numpy generator,
He-style initialisation, per-channel scale spread as left behind by folded
BatchNorm), emits opset 17 with IR version 8 (loadable by onnxruntime >= 1.18
and OpenVINO), passes ``onnx.checker.check_model(model, full_check=True)`` and
has a dynamic batch dimension named ``"batch"``.

Example:
    >>> from rayq.testing.models import resnet_like, random_inputs
    >>> model = resnet_like(widths=(8, 16))
    >>> feeds = random_inputs(model, 2, batch=4)
    >>> feeds[0]["input"].shape
    (4, 3, 32, 32)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rayq.errors import DataError

OPSET = 17
IR_VERSION = 8
BATCH = "batch"

__all__ = [
    "labeled_inputs",
    "mlp",
    "random_inputs",
    "resnet50_like",
    "resnet_like",
    "sensitive_mlp",
    "transformer_block",
    "with_outlier_channel",
]


class _Graph:
    """Accumulates nodes and initializers with unique names and a seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count: dict[str, int] = {}

    def name(self, prefix: str) -> str:
        n = self._count.get(prefix, 0)
        self._count[prefix] = n + 1
        return f"{prefix}_{n}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs) -> str:
        out = output or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self.name(op_type), **attrs))
        return out

    def rename_output(self, old: str, new: str) -> None:
        """Give the value ``old`` (produced by the last node) the graph-output name ``new``."""
        last = self.nodes[-1]
        if last.output[0] != old:
            raise ValueError(f"{old!r} is not produced by the last node")
        last.output[0] = new

    def weight(self, shape: Sequence[int], fan_in: int, gain: float = 2.0) -> np.ndarray:
        """He-style normal weights with a log-normal per-output-channel spread."""
        w = self.rng.standard_normal(shape) * math.sqrt(gain / fan_in)
        spread = np.exp(0.25 * self.rng.standard_normal(shape[0]))
        return (w * spread.reshape((-1,) + (1,) * (len(shape) - 1))).astype(np.float32)

    def bias(self, n: int, scale: float = 0.05) -> np.ndarray:
        return (scale * self.rng.standard_normal(n)).astype(np.float32)

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int,
        *,
        stride: int = 1,
        relu: bool = True,
        gain: float = 2.0,
        output: str | None = None,
    ) -> str:
        """Conv with bias (BatchNorm folded), optional Relu."""
        w = self.const("conv_w", self.weight((cout, cin, k, k), cin * k * k, gain))
        b = self.const("conv_b", self.bias(cout))
        pad = k // 2
        y = self.op("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        return self.op("Relu", [y], output) if relu else y

    def linear(self, x: str, fin: int, fout: int, *, gain: float = 1.0) -> str:
        """PyTorch-export style ``MatMul`` (weight ``[fin, fout]``) followed by ``Add``."""
        w = self.weight((fout, fin), fin, gain).T.copy()
        y = self.op("MatMul", [x, self.const("linear_w", w)])
        return self.op("Add", [y, self.const("linear_b", self.bias(fout))])

    def gemm(self, x: str, fin: int, fout: int, *, output: str | None = None, gain: float = 2.0) -> str:
        w = self.const("fc_w", self.weight((fout, fin), fin, gain))
        b = self.const("fc_b", self.bias(fout))
        return self.op("Gemm", [x, w, b], output, transB=1)

    def model(
        self, inputs: Sequence[onnx.ValueInfoProto], outputs: Sequence[onnx.ValueInfoProto], name: str
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, list(inputs), list(outputs), self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rayq.testing")
        model.ir_version = IR_VERSION
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
        return model


def _image_io(input_shape: Sequence[int], num_classes: int):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [BATCH, *input_shape])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, num_classes])
    return x, y


def _head(g: _Graph, x: str, channels: int, num_classes: int) -> None:
    pooled = g.op("GlobalAveragePool", [x])
    flat = g.op("Flatten", [pooled], axis=1)
    g.gemm(flat, channels, num_classes, output="logits", gain=1.0)


def _basic_block(g: _Graph, x: str, cin: int, cout: int, stride: int) -> str:
    h = g.conv(x, cin, cout, 3, stride=stride)
    # Small gain on the last conv of the branch keeps the residual sum in range.
    h = g.conv(h, cout, cout, 3, relu=False, gain=0.5)
    short = x if (stride == 1 and cin == cout) else g.conv(x, cin, cout, 1, stride=stride, relu=False, gain=1.0)
    return g.op("Relu", [g.op("Add", [h, short])])


def _inception(g: _Graph, x: str, channels: int) -> str:
    half = channels // 2
    a = g.conv(x, channels, half, 1)
    b = g.conv(x, channels, channels - half, 3)
    return g.op("Concat", [a, b], axis=1)


def resnet_like(
    *,
    input_shape: Sequence[int] = (3, 32, 32),
    widths: Sequence[int] = (16, 32),
    blocks_per_stage: int = 1,
    num_classes: int = 10,
    with_concat: bool = True,
    seed: int = 0,
) -> onnx.ModelProto:
    """A small ResNet: stem, residual stages, an inception-style Concat, GAP and Gemm.

    Stem ``Conv3x3+Relu+MaxPool2``; each stage has ``blocks_per_stage`` basic blocks
    (``Conv-Relu-Conv`` plus identity or 1x1 projection shortcut, ``Add``, ``Relu``),
    stages after the first start with stride 2. With ``with_concat`` the first stage
    ends in a 1x1 and a 3x3 branch concatenated on channels.

    Args:
        input_shape: ``(C, H, W)`` of one sample; H and W divisible by ``2 ** len(widths)``.
        widths: Channels per stage.
        blocks_per_stage: Residual blocks per stage.
        num_classes: Classifier outputs.
        with_concat: Add the Concat of two branches.
        seed: Weight seed.

    Returns:
        Input ``"input"`` ``[batch, C, H, W]``, output ``"logits"`` ``[batch, num_classes]``.

    Example:
        >>> m = resnet_like(widths=(8, 16), num_classes=4)
        >>> [o.name for o in m.graph.output]
        ['logits']
    """
    g = _Graph(seed)
    x_info, y_info = _image_io(input_shape, num_classes)
    x = g.conv("input", input_shape[0], widths[0], 3)
    x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    cin = widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks_per_stage):
            stride = 2 if (stage > 0 and block == 0) else 1
            x = _basic_block(g, x, cin, width, stride)
            cin = width
        if with_concat and stage == 0:
            x = _inception(g, x, cin)
    _head(g, x, cin, num_classes)
    return g.model([x_info], [y_info], "resnet_like")


def _bottleneck(g: _Graph, x: str, cin: int, mid: int, stride: int) -> str:
    cout = 4 * mid
    h = g.conv(x, cin, mid, 1)
    h = g.conv(h, mid, mid, 3, stride=stride)
    h = g.conv(h, mid, cout, 1, relu=False, gain=0.25)
    short = x if (stride == 1 and cin == cout) else g.conv(x, cin, cout, 1, stride=stride, relu=False, gain=1.0)
    return g.op("Relu", [g.op("Add", [h, short])])


def resnet50_like(
    *, input_shape: Sequence[int] = (3, 224, 224), num_classes: int = 1000, seed: int = 0
) -> onnx.ModelProto:
    """A ResNet-50-shaped graph (v1.5 bottlenecks ``[3, 4, 6, 3]``, 64..2048 channels).

    Random weights (about 25.5 M parameters, ~100 MB); meant for latency benchmarks,
    not accuracy.

    Args:
        input_shape: ``(C, H, W)``; H and W should be multiples of 32.
        num_classes: Classifier outputs.
        seed: Weight seed.

    Returns:
        Input ``"input"`` ``[batch, C, H, W]``, output ``"logits"``.

    Example (not run as a doctest: 25 M random weights take seconds; tests/testing/test_models.py checks it):
        >>> m = resnet50_like(input_shape=(3, 64, 64))                     # doctest: +SKIP
        >>> sum(n.op_type == "Conv" for n in m.graph.node)                # doctest: +SKIP
        53
    """
    g = _Graph(seed)
    x_info, y_info = _image_io(input_shape, num_classes)
    w = g.const("conv_w", g.weight((64, input_shape[0], 7, 7), input_shape[0] * 49))
    x = g.op(
        "Conv", ["input", w, g.const("conv_b", g.bias(64))], kernel_shape=[7, 7], strides=[2, 2], pads=[3, 3, 3, 3]
    )
    x = g.op("Relu", [x])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, (mid, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        for block in range(blocks):
            stride = 2 if (stage > 0 and block == 0) else 1
            x = _bottleneck(g, x, cin, mid, stride)
            cin = 4 * mid
    _head(g, x, cin, num_classes)
    return g.model([x_info], [y_info], "resnet50_like")


def _layer_norm(g: _Graph, x: str, hidden: int, outlier_channels: int) -> str:
    scale = 1.0 + 0.1 * g.rng.standard_normal(hidden)
    if outlier_channels:
        idx = g.rng.choice(hidden, size=outlier_channels, replace=False)
        scale[idx] *= 20.0
    bias = 0.05 * g.rng.standard_normal(hidden)
    return g.op(
        "LayerNormalization",
        [x, g.const("ln_scale", scale.astype(np.float32)), g.const("ln_bias", bias.astype(np.float32))],
        axis=-1,
        epsilon=1e-5,
    )


def _attention(g: _Graph, x: str, seq: int, hidden: int, heads: int, mask: str | None) -> str:
    d = hidden // heads
    split = g.const("shape", np.array([0, 0, heads, d], dtype=np.int64))
    q, k, v = (g.op("Reshape", [g.linear(x, hidden, hidden), split]) for _ in range(3))
    q = g.op("Transpose", [q], perm=[0, 2, 1, 3])
    k = g.op("Transpose", [k], perm=[0, 2, 3, 1])
    v = g.op("Transpose", [v], perm=[0, 2, 1, 3])
    scores = g.op("Div", [g.op("MatMul", [q, k]), g.const("sqrt_d", np.array(math.sqrt(d), dtype=np.float32))])
    if mask is not None:
        scores = g.op("Add", [scores, mask])
    ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    ctx = g.op("Transpose", [ctx], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.const("shape", np.array([0, 0, hidden], dtype=np.int64))])
    return g.linear(ctx, hidden, hidden)


def _gelu(g: _Graph, x: str) -> str:
    """GELU as exported by PyTorch for opset < 20: ``x * (1 + erf(x / sqrt 2)) * 0.5``."""
    f = np.float32
    e = g.op("Erf", [g.op("Div", [x, g.const("sqrt2", np.array(math.sqrt(2.0), dtype=f))])])
    e = g.op("Add", [e, g.const("one", np.array(1.0, dtype=f))])
    return g.op("Mul", [g.op("Mul", [x, e]), g.const("half", np.array(0.5, dtype=f))])


def _encoder_layer(
    g: _Graph, x: str, seq: int, hidden: int, heads: int, ffn: int, mask: str | None, outliers: int
) -> str:
    x = _layer_norm(g, g.op("Add", [_attention(g, x, seq, hidden, heads, mask), x]), hidden, outliers)
    h = g.linear(_gelu(g, g.linear(x, hidden, ffn, gain=2.0)), ffn, hidden)
    return _layer_norm(g, g.op("Add", [h, x]), hidden, outliers)


def _additive_mask(g: _Graph) -> str:
    """int64 ``attention_mask [batch, seq]`` -> float ``[batch, 1, 1, seq]`` additive bias."""
    m = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    m = g.op("Sub", [g.const("one", np.array(1.0, dtype=np.float32)), m])
    m = g.op("Mul", [m, g.const("neg", np.array(-10000.0, dtype=np.float32))])
    return g.op("Unsqueeze", [m, g.const("axes", np.array([1, 2], dtype=np.int64))])


def transformer_block(
    *,
    seq_len: int = 16,
    hidden: int = 64,
    heads: int = 4,
    ffn: int = 128,
    layers: int = 1,
    vocab: int | None = None,
    with_attention_mask: bool = False,
    outlier_channels: int = 0,
    seed: int = 0,
) -> onnx.ModelProto:
    """Post-LN encoder layer(s) in the shape ``torch.onnx.export`` gives a BERT layer.

    Q/K/V ``MatMul+Add``, ``Reshape/Transpose`` to heads, ``MatMul`` QK^T, ``Div`` by
    sqrt(d), ``Softmax``, ``MatMul`` with V, back-transpose, output projection, residual
    ``Add``, ``LayerNormalization``, FFN with erf-GELU, residual ``Add``, LayerNorm.

    Args:
        seq_len: Static sequence length.
        hidden: Model width; divisible by ``heads``.
        heads: Attention heads.
        ffn: FFN inner width.
        layers: Encoder layers stacked.
        vocab: When set, the input is ``"input_ids"`` int64 ``[batch, seq]`` looked up in
            a ``[vocab, hidden]`` embedding (plus position embedding and LayerNorm)
            instead of the float ``"input"`` ``[batch, seq, hidden]``.
        with_attention_mask: Add an int64 ``"attention_mask"`` ``[batch, seq]`` input
            (1 = token, 0 = padding) applied as an additive bias before Softmax.
        outlier_channels: LayerNorm channels whose scale is multiplied by 20, mimicking
            the activation outliers of real transformers (what SmoothQuant targets).
        seed: Weight seed.

    Returns:
        Output ``"output"`` ``[batch, seq, hidden]``.

    Example:
        >>> m = transformer_block(layers=2, with_attention_mask=True)
        >>> [i.name for i in m.graph.input]
        ['input', 'attention_mask']
    """
    if hidden % heads:
        raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
    g = _Graph(seed)
    inputs = []
    if vocab is None:
        x = "input"
        inputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, [BATCH, seq_len, hidden]))
    else:
        inputs.append(helper.make_tensor_value_info("input_ids", TensorProto.INT64, [BATCH, seq_len]))
        table = (0.5 * g.rng.standard_normal((vocab, hidden))).astype(np.float32)
        x = g.op("Gather", [g.const("embedding", table), "input_ids"])
        pos = (0.1 * g.rng.standard_normal((seq_len, hidden))).astype(np.float32)
        x = _layer_norm(g, g.op("Add", [x, g.const("position", pos)]), hidden, 0)
    mask = None
    if with_attention_mask:
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [BATCH, seq_len]))
        mask = _additive_mask(g)
    for _ in range(layers):
        x = _encoder_layer(g, x, seq_len, hidden, heads, ffn, mask, outlier_channels)
    g.rename_output(x, "output")
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [BATCH, seq_len, hidden])
    return g.model(inputs, [out], "transformer_block")


def mlp(
    *, in_features: int = 64, hidden: Sequence[int] = (128,), num_classes: int = 10, op: str = "Gemm", seed: int = 0
) -> onnx.ModelProto:
    """A tiny MLP: ``(Gemm|MatMul+Add) + Relu`` per hidden layer, then a linear classifier.

    Args:
        in_features: Input width.
        hidden: Hidden layer widths.
        num_classes: Outputs.
        op: ``"Gemm"`` or ``"MatMul"`` (MatMul followed by Add).
        seed: Weight seed.

    Returns:
        Input ``"input"`` ``[batch, in_features]``, output ``"logits"``.

    Example:
        >>> m = mlp(in_features=8, hidden=(16, 16), num_classes=3, op="MatMul")
        >>> sorted({n.op_type for n in m.graph.node})
        ['Add', 'MatMul', 'Relu']
    """
    if op not in ("Gemm", "MatMul"):
        raise ValueError(f"op must be 'Gemm' or 'MatMul', got {op!r}")
    g = _Graph(seed)
    x, fin = "input", in_features
    widths = [*hidden, num_classes]
    for i, fout in enumerate(widths):
        last = i == len(widths) - 1
        gain = 1.0 if last else 2.0
        x = g.gemm(x, fin, fout, gain=gain) if op == "Gemm" else g.linear(x, fin, fout, gain=gain)
        if not last:
            x = g.op("Relu", [x])
        fin = fout
    g.rename_output(x, "logits")
    x_info = helper.make_tensor_value_info("input", TensorProto.FLOAT, [BATCH, in_features])
    y_info = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, num_classes])
    return g.model([x_info], [y_info], "mlp")


def _vocab_for(model: onnx.ModelProto, name: str) -> int | None:
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name and node.input[0] in inits:
            return int(inits[node.input[0]].dims[0])
    return None


def _shape(vi: onnx.ValueInfoProto, batch: int, dims: Mapping[str, int]) -> tuple[int, ...]:
    shape = []
    for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            shape.append(dim.dim_value)
        elif dim.dim_param in dims:
            shape.append(dims[dim.dim_param])
        elif dim.dim_param == BATCH or axis == 0:
            shape.append(batch)
        else:
            raise DataError(
                f"input {vi.name!r}: no size for dimension {dim.dim_param!r} "
                f"(axis {axis}); pass dims={{{dim.dim_param!r}: ...}}"
            )
    return tuple(shape)


def _feed(model, vi, shape, rng) -> np.ndarray:
    dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if not np.issubdtype(dtype, np.integer):
        raise DataError(f"input {vi.name!r}: unsupported dtype {dtype}")
    if "mask" in vi.name and len(shape) == 2:
        lengths = rng.integers(max(1, shape[1] // 2), shape[1] + 1, size=shape[0])
        return (np.arange(shape[1])[None, :] < lengths[:, None]).astype(dtype)
    high = _vocab_for(model, vi.name) or 100
    return rng.integers(0, high, size=shape).astype(dtype)


def random_inputs(
    model: onnx.ModelProto, n: int, *, batch: int = 1, seed: int = 0, dims: Mapping[str, int] | None = None
) -> list[dict[str, np.ndarray]]:
    """Make ``n`` seeded feeds that match the model's graph inputs.

    Float inputs are standard normal; ``*mask*`` integer inputs are right-padded 0/1
    masks; other integer inputs are token ids below the size of the embedding they
    index (or below 100). Symbolic dims take ``dims[name]``, else ``batch`` for
    ``"batch"`` or axis 0.

    Args:
        model: The model whose inputs to match (initializers listed as inputs skipped).
        n: Number of feeds.
        batch: Size of the batch dimension.
        seed: Seed of the generator.
        dims: Sizes for other symbolic dimensions.

    Returns:
        A list of ``n`` dicts, input name -> array.

    Example:
        >>> feeds = random_inputs(transformer_block(with_attention_mask=True), 3, batch=2)
        >>> len(feeds), feeds[0]["input"].shape, feeds[0]["attention_mask"].dtype
        (3, (2, 16, 64), dtype('int64'))
    """
    if n < 0 or batch < 1:
        raise DataError(f"need n >= 0 and batch >= 1, got n={n}, batch={batch}")
    rng = np.random.default_rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    infos = [vi for vi in model.graph.input if vi.name not in init_names]
    shapes = {vi.name: _shape(vi, batch, dims or {}) for vi in infos}
    return [{vi.name: _feed(model, vi, shapes[vi.name], rng) for vi in infos} for _ in range(n)]


def sensitive_mlp(
    *, in_features: int = 16, hidden: int = 32, num_classes: int = 4, outlier_gain: float = 300.0, seed: int = 0
) -> onnx.ModelProto:
    """An MLP that INT8 genuinely hurts, for accuracy-control tests.

    With the default ``transB=1`` Gemms, the weights of input feature 0 are multiplied
    by ``outlier_gain`` in every hidden unit, as is hidden unit 0's bias, and class 0's
    row of the second Gemm by ``1 / outlier_gain``. This is a different function from
    :func:`mlp`'s (labels come from its own FP32 outputs, :func:`labeled_inputs`): every
    hidden activation is dominated by one input feature, so INT8 activations and weights
    lose 2-11 points of top-1, and no plan of the tests' search spaces stays within one
    point. (An earlier docstring called it a preserved-function outlier channel; that is
    :func:`with_outlier_channel`, which the tests' expectations were not built on.)

    Example:
        >>> m = sensitive_mlp()
        >>> [n.op_type for n in m.graph.node]
        ['Gemm', 'Relu', 'Gemm']
    """
    model = mlp(in_features=in_features, hidden=(hidden,), num_classes=num_classes, op="Gemm", seed=seed)
    inits = {t.name: t for t in model.graph.initializer}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]

    def scale(node: onnx.NodeProto, index: int, factor: float, row: bool) -> None:
        tensor = inits[node.input[index]]
        value = numpy_helper.to_array(tensor).copy()
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        if index == 2:
            value[0] *= factor
        elif row != trans_b:  # the output channel of the first Gemm / input channel of the second
            value[:, 0] *= factor
        else:
            value[0, :] *= factor
        tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), tensor.name))

    scale(gemms[0], 1, outlier_gain, row=False)
    scale(gemms[0], 2, outlier_gain, row=False)
    scale(gemms[1], 1, 1.0 / outlier_gain, row=True)
    onnx.checker.check_model(model, full_check=True)
    return model


#: Ops between the two layers of :func:`with_outlier_channel`: they commute with a
#: positive per-channel scale and keep the channel axis.
_SCALE_COMMUTING = ("Relu", "MaxPool", "Identity")


def with_outlier_channel(
    model: onnx.ModelProto,
    producer: str,
    consumers: str | Sequence[str],
    *,
    gain: float = 300.0,
    channel: int = 0,
) -> onnx.ModelProto:
    """A copy of ``model`` with one outlier activation channel and the same FP32 function.

    Output channel ``channel`` of the layer ``producer`` (a ``Conv`` or ``Gemm`` node
    name) is multiplied by ``gain`` (weights and bias) and the matching input channel of
    every layer in ``consumers`` by ``1 / gain``. Between them only ops that commute with
    a positive per-channel scale (:data:`_SCALE_COMMUTING`) may lie, and everything that
    reads the scaled activations must be one of those ops or a consumer. The FP32
    outputs are unchanged up to rounding, while the outlier dominates the per-tensor range
    of the consumers' inputs: quantizing them crushes the other channels, and keeping the
    consumers in FP32 repairs it. This is how real models' outlier channels hurt INT8,
    made on purpose and in a known place, for accuracy-control tests and benchmarks.

    Raises:
        ValueError: the nodes are not Conv/Gemm layers joined that way, a weight is not an
            initializer, or a consumer is a grouped Conv.

    Example:
        >>> m = with_outlier_channel(mlp(hidden=(8,), op="Gemm"), "Gemm_0", "Gemm_1", gain=100.0)
        >>> [n.op_type for n in m.graph.node]
        ['Gemm', 'Relu', 'Gemm']
    """
    if not gain > 0:
        raise ValueError(f"gain must be positive, got {gain}")
    wanted = {consumers} if isinstance(consumers, str) else set(consumers)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = {n.name: n for n in out.graph.node}
    for name in (producer, *sorted(wanted)):
        if name not in nodes or nodes[name].op_type not in ("Conv", "Gemm"):
            raise ValueError(f"{name!r} is not a Conv or Gemm node of the model")
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in out.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in out.graph.output}
    reached: set[str] = set()
    todo = [nodes[producer].output[0]]
    while todo:
        tensor = todo.pop()
        if tensor in outputs or not readers.get(tensor):
            raise ValueError(f"{tensor!r} after {producer!r} must be read only by {sorted(wanted)} (or ops between)")
        for node in readers[tensor]:
            if node.name in wanted and node.input[0] == tensor:
                reached.add(node.name)
            elif node.op_type in _SCALE_COMMUTING:
                todo.append(node.output[0])
            elif node.op_type in ("Conv", "Gemm"):
                raise ValueError(f"{node.name!r} also reads {producer!r}'s output: add it to the consumers")
            else:
                raise ValueError(f"{node.op_type} {node.name!r} after {producer!r} does not commute with scaling")
    if reached != wanted:
        raise ValueError(f"{sorted(wanted - reached)} do not read {producer!r}'s output")
    inits = {t.name: t for t in out.graph.initializer}

    def attr(node: onnx.NodeProto, key: str, default: int) -> int:
        return next((a.i for a in node.attribute if a.name == key), default)

    def scale(node: onnx.NodeProto, index: int, factor: float, axis: int) -> None:
        if index >= len(node.input) or not node.input[index]:
            return
        if node.input[index] not in inits:
            raise ValueError(f"input {index} of {node.name!r} is not an initializer")
        tensor = inits[node.input[index]]
        value = numpy_helper.to_array(tensor).copy()
        if value.ndim == 0 or value.shape[axis] <= channel:
            raise ValueError(f"input {index} of {node.name!r} has no channel {channel} on axis {axis}")
        where: list[slice | int] = [slice(None)] * value.ndim
        where[axis] = channel
        value[tuple(where)] *= factor
        tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), tensor.name))

    p = nodes[producer]
    # Output channels: Conv weight [out, in, ...]; Gemm B [K, N], or [N, K] with transB.
    scale(p, 1, gain, 0 if p.op_type == "Conv" or attr(p, "transB", 0) else 1)
    scale(p, 2, gain, 0)
    for name in sorted(wanted):
        c = nodes[name]
        if c.op_type == "Conv" and attr(c, "group", 1) != 1:
            raise ValueError(f"{name!r} is a grouped Conv: its input channels are not one weight axis")
        scale(c, 1, 1.0 / gain, 1 if c.op_type == "Conv" or attr(c, "transB", 0) else 0)
    onnx.checker.check_model(out, full_check=True)
    return out


def labeled_inputs(model: onnx.ModelProto, n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs and the FP32 model's own argmax labels (FP32 accuracy is 1.0).

    Example:
        >>> x, y = labeled_inputs(sensitive_mlp(), 8)
        >>> x.shape, y.shape
        ((8, 16), (8,))
    """
    import onnxruntime as ort

    name = model.graph.input[0].name
    width = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    x = np.random.default_rng(seed).normal(size=(n, width)).astype(np.float32)
    logits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    return x, logits.argmax(axis=1).astype(np.int64)
