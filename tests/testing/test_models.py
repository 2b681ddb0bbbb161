"""The synthetic ONNX models are valid, deterministic and agree across runtimes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rayq.errors import DataError
from rayq.testing import mlp, random_inputs, resnet50_like, resnet_like, transformer_block

ov = pytest.importorskip("openvino")

BUILDERS = {
    "resnet_like": lambda: resnet_like(),
    "resnet_like_deep": lambda: resnet_like(
        widths=(8, 16, 32), blocks_per_stage=2, with_concat=False, num_classes=5, seed=3
    ),
    "resnet50_like": lambda: resnet50_like(input_shape=(3, 64, 64), num_classes=100),
    "transformer_block": lambda: transformer_block(),
    "transformer_masked": lambda: transformer_block(layers=2, with_attention_mask=True, outlier_channels=2),
    "transformer_vocab": lambda: transformer_block(vocab=50, seq_len=8, hidden=32, heads=2),
    "mlp": lambda: mlp(),
    "mlp_matmul": lambda: mlp(in_features=16, hidden=(32, 32), num_classes=3, op="MatMul"),
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def built(request, tmp_path_factory):
    model = BUILDERS[request.param]()
    path = tmp_path_factory.mktemp("models") / f"{request.param}.onnx"
    onnx.save(model, str(path))
    return model, path


def _run_ort(model, feed):
    """The first output on ONNX Runtime; ``model`` is a path or an ``onnx.ModelProto``."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def _run_ov(path, feed):
    # f32 explicitly: on CPUs with bf16/AMX OpenVINO would otherwise default to bf16.
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(feed)[compiled.output(0)]


def test_passes_full_checker(built):
    model, path = built
    onnx.checker.check_model(model, full_check=True)
    onnx.checker.check_model(str(path), full_check=True)
    assert model.opset_import[0].version == 17
    assert model.ir_version <= 9
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch"


@pytest.mark.parametrize("batch", [1, 4])
def test_runtimes_agree(built, batch):
    model, path = built
    feed = random_inputs(model, 1, batch=batch, seed=batch)[0]
    ref = _run_ort(path, feed)
    got = _run_ov(path, feed)
    assert ref.shape[0] == batch
    assert np.isfinite(ref).all()
    assert ref.std() > 0.05
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max()))


def test_batch_rows_are_independent(built):
    model, path = built
    feed4 = random_inputs(model, 1, batch=4, seed=7)[0]
    feed1 = {k: v[1:2] for k, v in feed4.items()}
    out4, out1 = _run_ort(path, feed4), _run_ort(path, feed1)
    np.testing.assert_allclose(out4[1:2], out1, rtol=1e-4, atol=1e-4 * float(np.abs(out1).max()))


def test_builders_are_deterministic():
    assert resnet_like(seed=5).SerializeToString() == resnet_like(seed=5).SerializeToString()
    assert transformer_block(seed=1) == transformer_block(seed=1)
    assert mlp(seed=1).graph.initializer[0] != mlp(seed=2).graph.initializer[0]


def test_structure_of_resnet_like():
    ops = [n.op_type for n in resnet_like().graph.node]
    for op in ("Conv", "Relu", "MaxPool", "Add", "Concat", "GlobalAveragePool", "Flatten", "Gemm"):
        assert op in ops
    assert "Concat" not in [n.op_type for n in resnet_like(with_concat=False).graph.node]


def test_structure_of_resnet50_like():
    model = resnet50_like(input_shape=(3, 64, 64))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 53 and ops.count("Add") == 16
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert 25_000_000 < params < 26_000_000


def test_structure_of_transformer_block():
    ops = [n.op_type for n in transformer_block(layers=2).graph.node]
    assert ops.count("LayerNormalization") == 4
    assert ops.count("Softmax") == 2 and ops.count("Erf") == 2
    assert ops.count("MatMul") == 2 * 8


def test_random_inputs_shapes_and_dtypes():
    model = transformer_block(vocab=30, with_attention_mask=True, seq_len=8)
    feeds = random_inputs(model, 3, batch=5, seed=0)
    assert len(feeds) == 3
    ids, mask = feeds[0]["input_ids"], feeds[0]["attention_mask"]
    assert ids.shape == (5, 8) and ids.dtype == np.int64 and ids.max() < 30
    assert mask.dtype == np.int64 and set(np.unique(mask)) <= {0, 1} and (mask[:, 0] == 1).all()
    again = random_inputs(model, 3, batch=5, seed=0)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(feeds, again) for k in a)


def test_random_inputs_rejects_bad_arguments():
    with pytest.raises(DataError):
        random_inputs(mlp(), 1, batch=0)


def _conv_pair(model):
    """The first Conv -> Relu -> Conv chain of ``model`` (names of the two Convs)."""
    readers = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        (relu,) = readers[n.output[0]] if len(readers.get(n.output[0], [])) == 1 else (None,)
        if relu is not None and relu.op_type == "Relu" and len(readers.get(relu.output[0], [])) == 1:
            (nxt,) = readers[relu.output[0]]
            if nxt.op_type == "Conv":
                return n.name, nxt.name
    raise AssertionError("no Conv -> Relu -> Conv chain")


@pytest.mark.parametrize("kind", ["gemm", "conv", "branches"])
def test_outlier_channel_keeps_the_fp32_function_and_makes_an_outlier(kind):
    from rayq.testing import with_outlier_channel

    if kind == "gemm":
        base = mlp(hidden=(32,), op="Gemm")
        producer, consumer = "Gemm_0", "Gemm_1"
    elif kind == "branches":  # the digits CNN's stem feeds a conv and the residual projection
        base = onnx.load(str(Path(__file__).resolve().parents[2] / "examples/digits/digits_cnn.onnx"))
        consumers = ["/conv2/conv2.0/Conv", "/skip2/Conv"]
        model = with_outlier_channel(base, "/stem/stem.0/Conv", consumers, gain=300.0, channel=1)
        feed = {"input": np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)}
        np.testing.assert_allclose(_run_ort(model, feed), _run_ort(base, feed), rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match="add it to the consumers"):  # the projection left out
            with_outlier_channel(base, "/stem/stem.0/Conv", consumers[:1])
        return
    else:
        base = resnet_like(widths=(8, 16), with_concat=False)
        producer, consumer = _conv_pair(base)
    model = with_outlier_channel(base, producer, consumer, gain=300.0, channel=1)
    feed = random_inputs(base, 1, batch=8)[0]
    np.testing.assert_allclose(_run_ort(model, feed), _run_ort(base, feed), rtol=1e-4, atol=1e-4)

    # The consumer's input: channel 1 now dominates the per-tensor range.
    reader = next(n for n in model.graph.node if n.name == consumer)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(reader.input[0]))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    act = np.abs(sess.run([reader.input[0]], feed)[0])
    per_channel = act.max(axis=tuple(i for i in range(act.ndim) if i != 1))
    assert per_channel.argmax() == 1
    assert per_channel[1] > 20 * np.delete(per_channel, 1).max()


def test_outlier_channel_rejects_what_it_cannot_scale():
    from rayq.testing import with_outlier_channel

    base = mlp(hidden=(16, 16), op="Gemm")
    with pytest.raises(ValueError, match="not a Conv or Gemm"):
        with_outlier_channel(base, "Relu_0", "Gemm_1")
    with pytest.raises(ValueError, match="add it to the consumers"):
        with_outlier_channel(base, "Gemm_0", "Gemm_2")  # Gemm_1 is on the way
    with pytest.raises(ValueError, match="gain must be positive"):
        with_outlier_channel(base, "Gemm_0", "Gemm_1", gain=-1.0)
    with pytest.raises(ValueError, match="do not read"):
        with_outlier_channel(base, "Gemm_1", ["Gemm_2", "Gemm_0"])
    with pytest.raises(ValueError, match="no channel 99"):
        with_outlier_channel(base, "Gemm_0", "Gemm_1", channel=99)
