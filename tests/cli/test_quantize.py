"""``rayq quantize`` end to end on the bundled digits model, in-process through ``main``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

import rayq
from rayq.api.config import QuantizeConfig, from_dict
from rayq.cli.main import main

from .conftest import CALIBRATION, MODEL, VALIDATION, one_error_line

FAST = ["--num-workers", "1", "--subset-size", "64"]


def _quantize(out: Path, *extra: str) -> int:
    return main(["quantize", str(MODEL), "--data", str(CALIBRATION), "--output", str(out), *FAST, *extra])


def _saved_config(folder: Path) -> QuantizeConfig:
    return from_dict(yaml.safe_load((folder / "config.yaml").read_text()))


def _no_staging_left(folder: Path) -> bool:
    return not list(folder.glob(".rayq-staging-*"))


def test_quantize_by_flags_writes_valid_model_and_config(tmp_path, capsys):
    out = tmp_path / "out" / "digits_int8.onnx"
    assert _quantize(out, "--estimator", "minmax", "--ignored-type", "Gemm") == 0

    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert gemm and all(producers.get(i) != "DequantizeLinear" for n in gemm for i in n.input)  # ignored
    conv = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(producers.get(n.input[1]) == "DequantizeLinear" for n in conv)

    cfg = _saved_config(out.parent)
    assert cfg.model == str(MODEL) and cfg.calibration == str(CALIBRATION) and cfg.output == str(out)
    assert cfg.num_workers == 1 and cfg.subset_size == 64
    assert cfg.advanced.activation_estimator == "minmax"
    assert cfg.ignored_scope.types == ("Gemm",)
    assert from_dict(cfg.to_dict()) == cfg  # round-trips
    assert _no_staging_left(out.parent)

    stdout = capsys.readouterr().out
    summary = [line for line in stdout.splitlines() if line.startswith("rayq quantize:")]
    assert len(summary) == 1
    assert re.search(
        r"\d+\.\ds, .*digits_cnn\.onnx \(0\.\d\d MB\) -> .*digits_int8\.onnx \(0\.\d\d MB, onnx\)", summary[0]
    )


def test_output_folder_gets_model_named_after_input(tmp_path):
    assert _quantize(tmp_path / "folder", "-q") == 0
    assert (tmp_path / "folder" / "digits_cnn_int8.onnx").is_file()
    assert (tmp_path / "folder" / "config.yaml").is_file()


def test_quantize_by_config_and_flags_override(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "command": "quantize",
                "model": str(MODEL),
                "calibration": str(CALIBRATION),
                "output": str(tmp_path / "from_file" / "m.onnx"),
                "preset": "performance",
                "subset_size": 32,
                "num_workers": 1,
                "advanced": {"activation_estimator": "minmax", "overflow_fix": "enable"},
                "ignored_scope": {"names": ["/head/Gemm"], "types": ["Add"]},
            }
        )
    )
    out = tmp_path / "from_flags" / "m.onnx"
    code = main(
        [
            "quantize",
            "--config",
            str(config),
            "--preset",
            "mixed",
            "--overflow-fix",
            "disable",
            "--no-bias-correction",
            "--ignored-type",
            "MaxPool",
            "-o",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    assert out.is_file() and not (tmp_path / "from_file").exists()
    cfg = _saved_config(out.parent)
    assert cfg.preset == "mixed"  # flag wins
    assert cfg.subset_size == 32 and cfg.num_workers == 1  # file kept
    assert cfg.advanced.activation_estimator == "minmax"  # sibling sub-field kept
    assert cfg.advanced.overflow_fix == "disable"  # sub-field overridden
    assert cfg.fast_bias_correction is None  # explicit "none" overrides
    assert cfg.ignored_scope.names == ("/head/Gemm",) and cfg.ignored_scope.types == ("MaxPool",)
    # the saved config reproduces the run
    assert main(["quantize", "--config", str(out.parent / "config.yaml"), "-q"]) == 0


def test_openvino_output_is_readable_ir(tmp_path):
    import openvino as ov

    assert _quantize(tmp_path / "ir", "--output-format", "openvino", "-q") == 0
    xml = tmp_path / "ir" / "digits_cnn_int8.xml"
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    assert not list((tmp_path / "ir").glob("*.onnx"))
    model = ov.Core().read_model(str(xml))
    assert "FakeQuantize" in {op.get_type_name() for op in model.get_ops()}
    compiled = ov.Core().compile_model(model, "CPU")
    x = np.load(CALIBRATION)["input"][:2]
    assert compiled(x)[0].shape == (2, 10)


def test_openvino_input_model(tmp_path):
    import openvino as ov

    ov.save_model(ov.Core().read_model(str(MODEL)), str(tmp_path / "fp32.xml"), compress_to_fp16=False)
    assert (
        main(
            ["quantize", str(tmp_path / "fp32.xml"), "--data", str(CALIBRATION), "-o", str(tmp_path / "q"), *FAST, "-q"]
        )
        == 0
    )
    assert (tmp_path / "q" / "fp32_int8.xml").is_file()


def test_validation_prints_fp32_and_int8_metrics(tmp_path, capsys):
    code = main(
        [
            "quantize",
            "--config",
            "configs/digits.yaml",
            "--num-workers",
            "1",
            "-o",
            str(tmp_path / "digits"),
            "--threads",
            "1",
            "-q",
        ]
    )
    assert code == 0
    stdout = capsys.readouterr().out
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0] in ("onnxruntime", "openvino") and parts[1] in ("FP32", "INT8"):
            rows[parts[0], parts[1]] = float(parts[2])
    assert set(rows) == {(r, m) for r in ("onnxruntime", "openvino") for m in ("FP32", "INT8")}
    assert rows["onnxruntime", "FP32"] == pytest.approx(0.98)
    assert all(v > 0.9 for v in rows.values())
    assert "accuracy" in stdout and "latency" in stdout


def test_validation_needs_both_fields(tmp_path, capsys):
    assert _quantize(tmp_path / "o", "--validation", str(VALIDATION), "-q") == 2
    assert "validation_fn" in one_error_line(capsys.readouterr().err)


def test_local_ray_with_two_workers_matches_in_process(tmp_path, ray_cluster):
    import ray

    args = ["quantize", str(MODEL), "--data", str(CALIBRATION), "--subset-size", "64", "--no-cache", "-q"]
    assert main([*args, "--num-workers", "2", "-o", str(tmp_path / "ray" / "m.onnx")]) == 0
    assert ray.is_initialized()  # a Ray the CLI did not start is left running
    assert main([*args, "--num-workers", "1", "-o", str(tmp_path / "local" / "m.onnx")]) == 0
    a, b = (onnx.load(str(tmp_path / d / "m.onnx")) for d in ("ray", "local"))
    assert a.graph.SerializeToString() == b.graph.SerializeToString()


def test_failure_after_calibration_leaves_nothing(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise rayq.CalibrationError("worker exploded")

    monkeypatch.setattr(rayq, "quantize", broken)
    assert _quantize(tmp_path / "new" / "deeper" / "m.onnx", "-q") == 1
    assert "worker exploded" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists()


def test_keyboard_interrupt_exits_130(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rayq, "quantize", interrupted)
    assert _quantize(tmp_path / "m.onnx", "-q") == 130
    assert "interrupted" in capsys.readouterr().err
    assert _no_staging_left(tmp_path)


def test_debug_shows_traceback(tmp_path, capsys):
    assert _quantize(tmp_path / "o", "--debug", "-q", "--subset-size", "0") == 2
    assert "Traceback" in capsys.readouterr().err
