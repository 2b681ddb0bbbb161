"""PyTorch in: an ``nn.Module`` or a TorchScript file, converted by OpenVINO (or exported
to ONNX on request), quantized, and run on the real runtimes against torch's FP32 output.

Skips where torch is not installed: ``rayq[dev]`` leaves it out (PyPI's default torch
wheel for Linux is the CUDA build, about 2.7 GB with its dependencies); install the CPU
wheel to run these (see README.md, "Models from PyTorch, TensorFlow, PaddlePaddle").
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ov = pytest.importorskip("openvino")

import onnx  # noqa: E402

import rayq  # noqa: E402
from rayq.cli.main import main  # noqa: E402

from .runtimes import run_ort  # noqa: E402

FAST = dict(num_workers=1, subset_size=32)


class Net(torch.nn.Module):
    """conv + batch norm + relu + linear, random weights and non-trivial BN statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


@pytest.fixture(scope="module")
def net() -> Net:
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32)


def _reference(net: Net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def _close_to_fp32(out: np.ndarray, ref: np.ndarray) -> None:
    """INT8 of a random 2-layer net: within 15 % of the output range, and the top-1 mostly kept."""
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 0.15 * np.abs(ref).max()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.75


def _run_ov(model, x: np.ndarray) -> np.ndarray:
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2})
    return compiled(x)[0]


def test_module_quantizes_to_openvino_close_to_torch(net, calib):
    net.train()  # converted in eval mode (BN running statistics), and left as it was
    q = rayq.quantize(net, rayq.Dataset(calib, lambda row: torch.from_numpy(row)[None]), **FAST)
    assert net.training
    net.eval()
    assert isinstance(q, ov.Model)
    assert [p.get_any_name() for p in q.inputs] == ["x"]
    types = [op.get_type_name() for op in q.get_ops()]
    assert types.count("FakeQuantize") >= 2 and "Convolution" in types
    _close_to_fp32(_run_ov(q, calib[:16]), _reference(net, calib[:16]))


def test_module_quantizes_to_onnx_on_request_and_runs_on_onnxruntime(net, calib):
    q = rayq.quantize(net, calib, convert_to="onnx", **FAST)  # array rows: rayq adds the batch axis
    assert isinstance(q, onnx.ModelProto)
    onnx.checker.check_model(q)
    assert [i.name for i in q.graph.input] == ["x"]
    assert q.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    assert max(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 17
    _close_to_fp32(run_ort(q, {"x": calib[:16]})[0], _reference(net, calib[:16]))


@pytest.fixture(scope="module")
def torchscript(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("ts") / "net.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 8, 8)), str(path))
    return path


def test_torchscript_file_quantizes(net, calib, torchscript):
    q = rayq.quantize(str(torchscript), calib, **FAST)
    assert isinstance(q, ov.Model)
    assert [p.get_any_name() for p in q.inputs] == ["x"]  # forward's name, not TorchScript's "x.1"
    _close_to_fp32(_run_ov(q, calib[:16]), _reference(net, calib[:16]))


def test_pickled_torch_file_is_refused(net, calib, tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(net, str(path))
    with pytest.raises(rayq.BackendError, match="not a TorchScript file.*does not unpickle"):
        rayq.quantize(str(path), calib, **FAST)


def test_cli_quantizes_a_torchscript_file_to_onnx(net, calib, torchscript, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYQ_PROGRESS", "off")
    data = tmp_path / "calib.npz"
    np.savez(data, x=calib, label=np.arange(len(calib)))  # rows are dicts: "x" feeds forward(x)
    out = tmp_path / "out" / "net_int8.onnx"
    assert (
        main(
            [
                "quantize",
                str(torchscript),
                "--data",
                str(data),
                "--output",
                str(out),
                "--num-workers",
                "1",
                "--subset-size",
                "32",
                "-q",
            ]
        )
        == 0
    )
    q = onnx.load(str(out))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in q.graph.node}
    _close_to_fp32(run_ort(q, {"x": calib[:16]})[0], _reference(net, calib[:16]))
    assert (out.parent / "config.yaml").is_file()


@pytest.mark.parametrize("target, kind", [("openvino", ov.Model), ("onnxruntime", onnx.ModelProto)])
def test_accuracy_control_takes_a_module_and_validates_the_converted_model(net, calib, target, kind):
    seen = set()

    def accuracy(model, items):
        seen.add(type(model).__name__)
        x = np.stack(items)
        out = model(x)[0]  # an OVDict or a list: output 0 either way
        return float((np.asarray(out).argmax(1) == _reference(net, x).argmax(1)).mean())

    q = rayq.quantize_with_accuracy_control(net, calib, list(calib[:16]), accuracy, max_drop=0.5, target=target, **FAST)
    assert isinstance(q, kind)  # target onnxruntime: converted to ONNX without convert_to
    assert seen == {"CompiledModel"}  # openvino's, or rayq's wrapper of the ModelProto


def test_exported_program_quantizes_to_openvino_and_refuses_onnx(net, calib):
    program = torch.export.export(net, (torch.from_numpy(calib[:1]),))
    q = rayq.quantize(program, calib, **FAST)
    assert [p.get_any_name() for p in q.inputs] == ["x"]
    _close_to_fp32(_run_ov(q, calib[:1]), _reference(net, calib[:1]))
    with pytest.raises(rayq.ConfigError, match="ExportedProgram"):
        rayq.quantize(program, calib, convert_to="onnx", **FAST)


@pytest.mark.parametrize("to", ["openvino", "onnx"])
def test_converting_twice_gives_the_same_model(net, calib, to):
    """OpenVINO names unnamed ops by a process-wide counter; rayq renames them by place, so
    the statistics cache and a resumed search's study name find the same model again."""
    from rayq.backends import convert, get_backend

    first, second = (convert.convert(net, calib[:1], to=to) for _ in range(2))
    backend = get_backend(to)
    assert backend.fingerprint(first) == backend.fingerprint(second)
