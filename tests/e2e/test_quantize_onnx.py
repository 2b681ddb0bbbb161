"""End to end: ``rayq.quantize`` on ONNX models, checked with ONNX Runtime and OpenVINO.

Bounds were measured (2-core CPU, onnxruntime 1.2x / OpenVINO 2025+) and given a
margin of 3-10x; the measured values are in the comments next to them.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import rayq
from rayq.testing.models import mlp, random_inputs, resnet_like, transformer_block

from .runtimes import (
    activation_quantizers,
    dequantized,
    digits_data,
    initializers,
    nmse,
    node,
    op_counts,
    producers,
    run_ort,
    run_ov,
    weight_of,
)

RUNTIMES = {"onnxruntime": run_ort, "openvino": run_ov}


def _check(model: onnx.ModelProto) -> onnx.ModelProto:
    onnx.checker.check_model(model, full_check=True)
    return model


def _stack(feeds: list[dict]) -> np.ndarray:
    return np.concatenate([f["input"] for f in feeds])


# --------------------------------------------------------------------------------------
# (a) the bundled digits CNN: a real trained model, accuracy on held-out data
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    data = digits_data()
    x_val, y_val = data.load_validation()
    return str(data.MODEL), data.load_calibration(), x_val, y_val


def _top1(model, run, x, y) -> float:
    return digits_data().top1(run(model, {"input": x})[0], y)


@pytest.fixture(scope="module")
def digits_int8(digits):
    path, calib, _, _ = digits
    return _check(rayq.quantize(path, calib, num_workers=1, cache=False))


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_digits_accuracy_drop_at_most_one_point(digits, digits_int8, runtime):
    path, _, x_val, y_val = digits
    run = RUNTIMES[runtime]
    fp32 = _top1(onnx.load(path), run, x_val, y_val)
    int8 = _top1(digits_int8, run, x_val, y_val)
    assert fp32 >= 0.97  # 0.98 on both runtimes
    assert fp32 - int8 <= 0.01, f"{runtime}: FP32 {fp32:.4f} -> INT8 {int8:.4f}"  # measured 0.98 -> 0.98


def test_digits_two_ray_workers_same_model_and_accuracy(digits, digits_int8, ray_cluster):
    path, calib, x_val, y_val = digits
    q2 = _check(rayq.quantize(path, calib, num_workers=2, cache=False))
    fp32 = _top1(onnx.load(path), run_ort, x_val, y_val)
    for runtime, run in RUNTIMES.items():
        assert fp32 - _top1(q2, run, x_val, y_val) <= 0.01, runtime
    # Same answer, any worker count: exact sharded statistics give the same bytes.
    assert q2.SerializeToString() == digits_int8.SerializeToString()


# --------------------------------------------------------------------------------------
# (b) a ResNet-like CNN with residual Adds and a Concat
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn():
    model = resnet_like(with_concat=True)
    calib = _stack(random_inputs(model, 32, seed=1))
    val = random_inputs(model, 1, batch=32, seed=2)[0]
    return model, calib, val, run_ort(model, val)


@pytest.fixture(scope="module")
def cnn_int8(cnn):
    model, calib, _, _ = cnn
    return _check(rayq.quantize(model, calib, subset_size=32, num_workers=1, cache=False))


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_cnn_output_close_to_fp32(cnn, cnn_int8, runtime):
    _, _, val, ref = cnn
    error = nmse(ref, RUNTIMES[runtime](cnn_int8, val))
    assert error < 0.01, error  # measured 0.0014 on both runtimes


def test_cnn_expected_ops_are_quantized(cnn, cnn_int8):
    model, _, _, _ = cnn
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    adds = [n.name for n in model.graph.node if n.op_type == "Add"]
    assert len(convs) == 8 and len(adds) == 2
    for name in convs:
        n = node(cnn_int8, name)
        assert dequantized(cnn_int8, n.input[0]), f"{name}: activation input not quantized"
        assert weight_of(cnn_int8, name) is not None, f"{name}: weight not quantized"
    for name in adds:  # residual Adds: both inputs quantized
        assert all(dequantized(cnn_int8, t) for t in node(cnn_int8, name).input), name
    concat = next(n for n in cnn_int8.graph.node if n.op_type == "Concat")
    assert all(dequantized(cnn_int8, t) for t in concat.input)
    # one shared scale / zero point on the Concat inputs: it runs on INT8 data as is
    inits, prods = initializers(cnn_int8), producers(cnn_int8)
    params = {tuple(inits[i].tobytes() for i in prods[t].input[1:]) for t in concat.input}
    assert len(params) == 1
    gemm = next(n for n in cnn_int8.graph.node if n.op_type == "Gemm")
    assert dequantized(cnn_int8, gemm.input[0]) and weight_of(cnn_int8, gemm.name) is not None


def test_cnn_weights_are_int8_per_channel_initializers(cnn, cnn_int8):
    model, _, _, _ = cnn
    fp32 = initializers(model)
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm"):
            continue
        values, scale, zp = weight_of(cnn_int8, n.name)
        assert values.dtype == np.int8 and zp.dtype == np.int8 and not zp.any()
        w = fp32[n.input[1]]
        assert scale.shape == (w.shape[0],)  # per output channel
        assert values.shape == w.shape
        dq = values.astype(np.float32) * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        assert np.abs(dq - w).max() <= scale.max() * 0.5 + 1e-7
    # no FP32 copy of a quantized weight is left in the model
    assert not {n.input[1] for n in model.graph.node if n.op_type == "Conv"} & set(initializers(cnn_int8))


def test_cnn_onnxruntime_fuses_integer_kernels(cnn, cnn_int8, tmp_path):
    """ORT turns the QDQ groups into integer kernels: every Conv, the residual Adds,
    the Concat and the classifier Gemm (no float Conv left)."""
    _, _, val, _ = cnn
    path = str(tmp_path / "optimized.onnx")
    run_ort(cnn_int8, val, optimized_path=path)
    ops = op_counts(onnx.load(path))
    assert ops["QLinearConv"] == 8, ops
    assert ops["Conv"] == 0 and ops["FusedConv"] == 0, ops
    assert ops["QLinearAdd"] == 2, ops
    assert ops["QLinearConcat"] == 1, ops
    assert ops["QGemm"] == 1 and ops["Gemm"] == 0, ops


def test_cnn_biases_are_int32_for_fusion(cnn_int8):
    inits = initializers(cnn_int8)
    prods = producers(cnn_int8)
    for n in cnn_int8.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            dq = prods[n.input[2]]
            assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype == np.int32, n.name


# --------------------------------------------------------------------------------------
# (c) a transformer block: SmoothQuant and transformer placement
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder():
    model = transformer_block(outlier_channels=2)
    calib = _stack(random_inputs(model, 32, seed=1))
    val = random_inputs(model, 1, batch=16, seed=2)[0]
    return model, calib, val, run_ort(model, val)


@pytest.fixture(scope="module")
def encoder_int8(encoder):
    model, calib, _, _ = encoder
    return _check(rayq.quantize(model, calib, subset_size=32, model_type="transformer", num_workers=1, cache=False))


def test_transformer_has_smoothquant_muls(encoder, encoder_int8):
    model, _, _, _ = encoder
    smooth = [n for n in encoder_int8.graph.node if n.op_type == "Mul" and n.output[0].endswith("/rayq_smoothed")]
    # Q/K/V share one input; the FFN input is another: at least two smoothed tensors
    assert len(smooth) >= 2
    quantized = {n.input[0] for n in encoder_int8.graph.node if n.op_type == "QuantizeLinear"}
    inits = initializers(encoder_int8)
    for mul in smooth:
        assert mul.output[0] in quantized  # the smoothed tensor is what gets quantized
        factor = inits[mul.input[1]]
        assert factor.ndim == 1 and factor.shape[0] in (64, 128) and (factor > 0).all() and not np.allclose(factor, 1.0)
    assert op_counts(encoder_int8)["Mul"] == op_counts(model)["Mul"] + len(smooth)


def test_transformer_never_quantizes_softmax_or_layernorm_inputs(encoder_int8):
    for n in encoder_int8.graph.node:
        if n.op_type in ("Softmax", "LayerNormalization"):
            assert not any(dequantized(encoder_int8, t, through=()) for t in n.input), n.name
    # every projection and the Q.K^T MatMul are quantized; the MatMul that reads the
    # Softmax probabilities stays FP32 (as NNCF's transformer patterns do)
    producers = {o: n for n in encoder_int8.graph.node for o in n.output}

    def after_softmax(t: str) -> bool:
        n = producers.get(t)
        while n is not None and n.op_type in ("Reshape", "Transpose"):
            n = producers.get(n.input[0])
        return n is not None and n.op_type == "Softmax"

    matmuls = [n for n in encoder_int8.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 8
    probs = [n for n in matmuls if any(after_softmax(t) for t in n.input)]
    assert len(probs) == 1 and not any(dequantized(encoder_int8, t) for t in probs[0].input)
    assert all(dequantized(encoder_int8, n.input[0]) for n in matmuls if n not in probs)


def test_attention_scores_matmul_inputs_are_symmetric_int8_in_mixed_preset(encoder_int8):
    # Q x K^T reads two activations: symmetric int8 (zero point 0) even in the mixed
    # preset, so runtimes can fuse integer attention; every other quantizer stays
    # asymmetric uint8
    prods = producers(encoder_int8)
    zps = dict(activation_quantizers(encoder_int8))

    def quantizer_input(t: str) -> str:
        n = prods[t]
        while n.op_type in ("Reshape", "Transpose"):
            n = prods[n.input[0]]
        assert n.op_type == "DequantizeLinear"
        return prods[n.input[0]].input[0]

    scores = [
        n
        for n in encoder_int8.graph.node
        if n.op_type == "MatMul"
        and all(dequantized(encoder_int8, t) for t in n.input)
        and not any(
            t in initializers(encoder_int8)
            or (
                prods.get(t)
                and prods[t].op_type == "DequantizeLinear"
                and prods[t].input[0] in initializers(encoder_int8)
            )
            for t in n.input
        )
    ]
    assert len(scores) == 1
    qk = {quantizer_input(t) for t in scores[0].input}
    assert len(qk) == 2
    for t in qk:
        assert zps[t].dtype == np.int8 and not zps[t].any(), t
    others = [zp for t, zp in zps.items() if t not in qk]
    assert others and all(zp.dtype == np.uint8 for zp in others)


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_transformer_output_close_to_fp32(encoder, encoder_int8, runtime):
    _, _, val, ref = encoder
    error = nmse(ref, RUNTIMES[runtime](encoder_int8, val))
    assert error < 0.01, error  # measured 0.0022


def test_smoothquant_reduces_error_with_outlier_channels(encoder, encoder_int8):
    model, calib, val, ref = encoder
    plain = rayq.quantize(
        model,
        calib,
        subset_size=32,
        model_type="transformer",
        num_workers=1,
        cache=False,
        advanced_parameters=rayq.AdvancedQuantizationParameters(smooth_quant_alpha=-1),
    )
    assert not any(n.output[0].endswith("/rayq_smoothed") for n in plain.graph.node)
    with_sq, without = nmse(ref, run_ort(encoder_int8, val)), nmse(ref, run_ort(plain, val))
    assert with_sq < 0.9 * without, (with_sq, without)  # measured 0.0022 vs 0.0030


# --------------------------------------------------------------------------------------
# presets, ignored scope, estimators, bias correction, overflow fix
# --------------------------------------------------------------------------------------
def test_performance_preset_has_zero_activation_zero_points(cnn_int8):
    zps = activation_quantizers(cnn_int8)
    assert zps and all(not zp.any() for _, zp in zps)
    dtypes = {zp.dtype for _, zp in zps}
    assert dtypes <= {np.dtype(np.int8), np.dtype(np.uint8)}
    assert np.dtype(np.int8) in dtypes  # the signed network input
    assert np.dtype(np.uint8) in dtypes  # post-ReLU tensors


def test_mixed_preset_is_asymmetric_uint8(cnn):
    model, calib, val, ref = cnn
    q = _check(rayq.quantize(model, calib, subset_size=32, preset="mixed", num_workers=1, cache=False))
    zps = dict(activation_quantizers(q))
    assert all(zp.dtype == np.uint8 for zp in zps.values())
    assert zps["input"] != 0  # the input is N(0, 1): min < 0 needs a nonzero zero point
    assert nmse(ref, run_ort(q, val)) < 0.01


@pytest.mark.parametrize(
    "scope, expect_fp32",
    [
        (rayq.IgnoredScope(names=["Conv_0"]), ["Conv_0"]),
        (rayq.IgnoredScope(patterns=["Add_.*"]), ["Add_0", "Add_1"]),
        (rayq.IgnoredScope(types=["Gemm"]), ["Gemm_0"]),
    ],
    ids=["name", "pattern", "type"],
)
def test_ignored_scope_keeps_nodes_fp32(cnn, scope, expect_fp32):
    model, calib, val, ref = cnn
    q = _check(rayq.quantize(model, calib, subset_size=32, ignored_scope=scope, num_workers=1, cache=False))
    fp32_inits = initializers(model)
    for name in expect_fp32:
        n = node(q, name)
        assert not any(dequantized(q, t, through=()) for t in n.input), f"{name} has a quantized input"
        if n.op_type in ("Conv", "Gemm"):
            assert n.input[1] in fp32_inits  # the original FP32 weight
    others = [n.name for n in model.graph.node if n.op_type == "Conv" and n.name not in expect_fp32]
    assert all(weight_of(q, name) is not None for name in others)
    assert nmse(ref, run_ort(q, val)) < 0.01


def test_ignored_scope_matching_nothing_lists_close_names(cnn):
    model, calib, _, _ = cnn
    with pytest.raises(rayq.ConfigError, match=r"matches no node.*close names.*Conv_1"):
        rayq.quantize(
            model, calib, subset_size=8, ignored_scope=rayq.IgnoredScope(names=["conv_1"]), num_workers=1, cache=False
        )
    # validate=False accepts it
    rayq.quantize(
        model,
        calib,
        subset_size=8,
        num_workers=1,
        cache=False,
        ignored_scope=rayq.IgnoredScope(names=["conv_1"], validate=False),
    )


@pytest.mark.parametrize("estimator", ["minmax", "mean_minmax", "quantile", "histogram_mse"])
def test_range_estimators(cnn, cnn_int8, estimator):
    model, calib, val, ref = cnn
    adv = rayq.AdvancedQuantizationParameters(activation_estimator=estimator)
    q = _check(rayq.quantize(model, calib, subset_size=32, advanced_parameters=adv, num_workers=1, cache=False))
    assert nmse(ref, run_ort(q, val)) < 0.01  # measured 5e-5 .. 1.4e-3
    scales = {n.input[0]: initializers(q)[n.input[1]] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    default = {
        n.input[0]: initializers(cnn_int8)[n.input[1]] for n in cnn_int8.graph.node if n.op_type == "QuantizeLinear"
    }
    assert scales.keys() == default.keys()
    if estimator != "mean_minmax":  # the default: every other estimator gives other ranges
        assert any(scales[k] != default[k] for k in scales)


def _quantize_cnn(cnn, **kwargs):
    model, calib, val, ref = cnn
    q = _check(rayq.quantize(model, calib, subset_size=32, num_workers=1, cache=False, **kwargs))
    return nmse(ref, run_ort(q, val)), q


def test_bias_correction_variants(cnn):
    """fast / exact (False) / none (None) all run; exact beats none on held-out data."""
    adv = rayq.AdvancedQuantizationParameters(activation_estimator="minmax")
    none, q_none = _quantize_cnn(cnn, fast_bias_correction=None, advanced_parameters=adv)
    exact, q_exact = _quantize_cnn(cnn, fast_bias_correction=False, advanced_parameters=adv)
    fast, q_fast = _quantize_cnn(cnn, fast_bias_correction=True, advanced_parameters=adv)
    # measured (minmax): none 1.0e-4, exact 4.9e-5, fast 4.6e-5
    assert exact < 0.8 * none, (exact, none)
    assert fast < none, (fast, none)
    biases = [{t: v for t, v in initializers(q).items() if v.dtype == np.int32} for q in (q_none, q_exact, q_fast)]
    assert biases[0].keys() == biases[1].keys()
    assert any(not np.array_equal(biases[0][k], biases[1][k]) for k in biases[0])


def test_exact_bias_correction_with_default_estimator(cnn):
    none, _ = _quantize_cnn(cnn, fast_bias_correction=None)
    exact, _ = _quantize_cnn(cnn, fast_bias_correction=False)
    assert exact < 0.8 * none, (exact, none)  # measured 1.4e-3 -> 8.1e-4


def _weight_ranges(q, model):
    return {
        n.name: int(np.abs(weight_of(q, n.name)[0].astype(np.int32)).max())
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm")
    }


@pytest.mark.parametrize("overflow_fix", ["first_layer", "enable", "disable"])
def test_overflow_fix(cnn, overflow_fix):
    model, _, _, _ = cnn
    adv = rayq.AdvancedQuantizationParameters(overflow_fix=overflow_fix)
    error, q = _quantize_cnn(cnn, advanced_parameters=adv)
    ranges = _weight_ranges(q, model)
    first = "Conv_0"
    if overflow_fix == "enable":
        assert all(r <= 63 for r in ranges.values()), ranges
    elif overflow_fix == "disable":
        assert all(r == 127 for r in ranges.values()), ranges
    else:
        assert ranges[first] <= 63
        assert all(r == 127 for name, r in ranges.items() if name != first), ranges
    assert error < 0.01


def test_mlp_matmul_and_gemm_quantize(tmp_path):
    """MatMul+Add (PyTorch export style) and Gemm MLPs: fused by ORT, close to FP32."""
    for op in ("MatMul", "Gemm"):
        model = mlp(op=op)
        calib = _stack(random_inputs(model, 32, seed=1))
        val = random_inputs(model, 1, batch=64, seed=2)[0]
        q = _check(rayq.quantize(model, calib, subset_size=32, num_workers=1, cache=False))
        path = str(tmp_path / f"{op}.onnx")
        for run in (run_ov, lambda m, f: run_ort(m, f, optimized_path=path)):  # noqa: B023 (called in this iteration)
            assert nmse(run_ort(model, val), run(q, val)) < 0.02  # measured 0.0036
        ops = op_counts(onnx.load(path))
        # 2-D MatMul+Add is fused to Gemm by ORT: integer QGemm needs the int32 bias
        assert ops["QGemm"] == 2 and ops["Gemm"] == ops["MatMul"] == 0, (op, ops)


def _position_embedding_model():
    """x[batch, 8, 16] + position_table[Slice(arange, 0, Shape(x)[1])] -> MatMul -> Relu -> MatMul,
    the way torch exports BERT's position embeddings (ids built from the input's shape)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = lambda name, a: numpy_helper.from_array(np.asarray(a), name)  # noqa: E731
    inits = [
        c("table", rng.normal(size=(64, 16)).astype(np.float32)),
        c("arange", np.arange(64, dtype=np.int64)),
        c("one", np.array(1, np.int64)),
        c("zero1", np.array([0], np.int64)),
        c("axes0", np.array([0], np.int64)),
        c("w1", rng.normal(size=(16, 32)).astype(np.float32)),
        c("w2", rng.normal(size=(32, 4)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "one"], ["seq"], name="seq", axis=0),
        helper.make_node("Unsqueeze", ["seq", "axes0"], ["seq1"], name="unsq"),
        helper.make_node("Slice", ["arange", "zero1", "seq1"], ["pos_ids"], name="slice"),
        helper.make_node("Gather", ["table", "pos_ids"], ["pos"], name="pos_gather", axis=0),
        helper.make_node("Add", ["x", "pos"], ["h"], name="pos_add"),
        helper.make_node("MatMul", ["h", "w1"], ["a"], name="mm1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "pos",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shape_derived_position_embeddings_are_not_activations():
    """Position embeddings depend only on the input's shape: quantizing them as an
    activation put a DequantizeLinear on a path OpenVINO constant-folds, and its
    low-precision transformations then failed to compile the model."""
    model = _position_embedding_model()
    calib = np.random.default_rng(1).normal(size=(16, 8, 16)).astype(np.float32)
    q = _check(rayq.quantize(model, calib, num_workers=1, cache=False))
    add = node(q, "pos_add")
    assert not any(dequantized(q, t) for t in add.input)  # an Add with a constant-like operand: FP32
    assert all(dequantized(q, node(q, mm).input[0]) for mm in ("mm1", "mm2"))  # both MatMuls: INT8
    feeds = {"x": calib[:4]}
    assert nmse(run_ort(model, feeds), run_ov(q, feeds)) < 0.01


def test_token_matmul_add_biases_are_int32_so_ort_fuses_qgemm(tmp_path):
    """x[1, 8, 16] -> MatMul+Add -> Relu -> MatMul+Add (a transformer's Linear layers, rank 3):
    ORT reshapes N-D MatMul+Add to Gemm; without an int32 bias it stays an FP32 Gemm."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=s).astype(np.float32) * 0.3, n)
        for n, s in (("w1", (16, 32)), ("b1", (32,)), ("w2", (32, 8)), ("b2", (8,)))
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
            helper.make_node("Add", ["m1", "b1"], ["a1"], name="fc1_bias"),
            helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
            helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="fc2"),
            helper.make_node("Add", ["m2", "b2"], ["y"], name="fc2_bias"),
        ],
        "tokens",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = [{"x": rng.normal(size=(1, 8, 16)).astype(np.float32)} for _ in range(16)]
    q = _check(rayq.quantize(model, rayq.Dataset(calib), subset_size=16, num_workers=1, cache=False))
    assert sorted(n for n, v in initializers(q).items() if v.dtype == np.int32 and n.endswith("bias32_q")) == [
        "fc1/rayq_bias32_q",
        "fc2/rayq_bias32_q",
    ]
    path = str(tmp_path / "opt.onnx")
    assert nmse(run_ort(model, calib[0]), run_ort(q, calib[0], optimized_path=path)) < 0.02
    ops = op_counts(onnx.load(path))
    assert ops["QGemm"] == 2 and ops["Gemm"] == ops["MatMul"] == 0, ops
