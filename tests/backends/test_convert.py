"""Telling framework models apart without importing the frameworks, and the converter's
errors (rayq/backends/convert.py). The conversions themselves: tests/e2e/test_quantize_torch.py
and test_quantize_tensorflow.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import rayq
from rayq.backends import convert

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"


def _instance(module: str):
    """An object whose class comes from ``module`` (the converter reads only that)."""
    return type("Model", (), {"__module__": module})()


@pytest.mark.parametrize(
    "model, framework",
    [
        ("m.pt", "torch"),
        ("m.PTH", "torch"),
        ("m.torchscript", "torch"),
        ("m.pb", "tensorflow"),
        ("m.keras", "tensorflow"),
        ("m.tflite", "tflite"),
        ("m.pdmodel", "paddle"),
        ("m.onnx", None),
        ("m.xml", None),
        ("m.h5", None),
        (_instance("torch.nn.modules.container"), "torch"),
        (_instance("keras.src.models.sequential"), "tensorflow"),
        (_instance("tf_keras.models"), "tensorflow"),
        (_instance("paddle.nn"), "paddle"),
        (_instance("onnx"), None),
        (42, None),
    ],
)
def test_framework_is_told_by_type_module_or_suffix(model, framework):
    assert convert.framework_of(model) == framework


def test_a_subclass_defined_by_the_user_is_told_by_its_base():
    base = type("Module", (), {"__module__": "torch.nn.modules.module"})
    user = type("Net", (base,), {"__module__": "__main__"})
    assert convert.framework_of(user()) == "torch"


def test_saved_model_folder_is_tensorflow(tmp_path):
    assert convert.framework_of(tmp_path) is None
    (tmp_path / "saved_model.pb").write_bytes(b"")
    assert convert.framework_of(tmp_path) == "tensorflow"
    assert convert.framework_of(str(tmp_path)) == "tensorflow"


def test_onnx_and_openvino_models_load_without_importing_any_framework():
    code = (
        f"import json, sys, numpy as np; from rayq.api.session import ModelSession; "
        f"s = ModelSession({str(DIGITS / 'digits_cnn.onnx')!r}, "
        f"np.load({str(DIGITS / 'calibration.npz')!r})['input'], subset_size=4); "
        "print(json.dumps([s.backend.name, sorted(sys.modules)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    backend, modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert backend == "onnx"
    assert not [m for m in modules if m.split(".")[0] in ("torch", "tensorflow", "keras", "paddle")]


def test_missing_model_path_is_named(tmp_path):
    with pytest.raises(rayq.BackendError, match="does not exist"):
        convert.convert(str(tmp_path / "nope.pt"), None)


@pytest.mark.parametrize("suffix, name", [(".tflite", "TensorFlow Lite"), (".pdmodel", "PaddlePaddle")])
def test_unreadable_file_is_a_backend_error_naming_the_framework(tmp_path, suffix, name):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"this is not a model\n")
    with pytest.raises(rayq.BackendError, match=f"OpenVINO cannot convert the {name} model"):
        convert.convert(str(path))


def test_onnx_output_is_for_pytorch_only(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"x")
    with pytest.raises(rayq.ConfigError, match="converts to OpenVINO only"):
        convert.convert(str(path), to="onnx")


@pytest.mark.parametrize(
    "call",
    [
        lambda: convert.convert("m.pt", to="tf"),
        lambda: convert.prepare("m.onnx", None, "ir"),
        lambda: rayq.quantize(str(DIGITS / "digits_cnn.onnx"), [], convert_to="ir"),
    ],
)
def test_unknown_convert_target_is_a_config_error(call):
    with pytest.raises(rayq.ConfigError, match="convert_to="):
        call()


def test_torchscript_file_without_torch_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    path.write_bytes(b"x")
    monkeypatch.setattr(convert, "_has", lambda package: package != "torch")
    with pytest.raises(rayq.ConfigError, match=r'pip install "rayq\[torch\]"'):
        convert.convert(str(path), None)


def test_onnx_and_openvino_models_pass_through_unchanged():
    sentinel = object()
    assert convert.prepare(sentinel, None, None) is sentinel
    assert convert.prepare("m.onnx", None, "onnx") == "m.onnx"


def test_default_target_follows_the_runtime_for_framework_models_only():
    assert convert.default_target("m.pt", None, "onnxruntime") == "onnx"
    assert convert.default_target("m.pt", None, "openvino") is None
    assert convert.default_target("m.pt", "openvino", "onnxruntime") == "openvino"
    assert convert.default_target("m.onnx", None, "onnxruntime") is None


def test_example_input_gets_back_the_batch_axis_of_rows_only():
    import numpy as np

    row = np.zeros((3, 8, 8), np.float32)
    assert convert.example_from(np.zeros((4, 3, 8, 8)), row).shape == (1, 3, 8, 8)
    assert convert.example_from("calib.npz", {"x": row})["x"].shape == (1, 3, 8, 8)
    batch = row[None]
    assert convert.example_from(rayq.Dataset([row], lambda r: r[None]), batch) is batch


def test_keras_file_without_tensorflow_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "m.keras"
    path.write_bytes(b"x")
    monkeypatch.setattr(convert, "_has", lambda package: package != "tensorflow")
    with pytest.raises(rayq.ConfigError, match=r'pip install "rayq\[tf\]"'):
        convert.convert(str(path))


def test_save_as_converts_onnx_to_openvino_and_leaves_no_temporary_file(tmp_path):
    from rayq.backends import get_backend

    onnx_backend = get_backend("onnx")
    model = onnx_backend.load(str(DIGITS / "digits_cnn.onnx"))
    written = convert.save_as(model, "onnx", "openvino", str(tmp_path / "m.xml"))
    assert sorted(Path(p).name for p in written) == ["m.bin", "m.xml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]  # the .tmp.onnx is gone
    ov_model = get_backend("openvino").load(str(tmp_path / "m.xml"))
    assert [s.name for s in get_backend("openvino").inputs(ov_model)] == [s.name for s in onnx_backend.inputs(model)]
    with pytest.raises(rayq.ConfigError, match="an openvino model cannot be saved as onnx"):
        convert.save_as(ov_model, "openvino", "onnx", str(tmp_path / "x.onnx"))
