"""The ``rayq`` entry point: help, version, flag mapping, subprocess use, configs/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml

import rayq
from rayq.api.config import QuantizeConfig, load
from rayq.cli.main import build_parser, main
from rayq.cli.quantize import config_from_args
from rayq.core.plan import AdvancedQuantizationParameters
from rayq.core.scope import IgnoredScope

from .conftest import CALIBRATION, MODEL, ROOT


@pytest.mark.parametrize("argv", [["--help"], ["quantize", "--help"], ["-h"]])
def test_help_exits_0(argv, capsys):
    assert main(argv) == 0
    assert "usage: rayq" in capsys.readouterr().out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rayq {rayq.__version__}"


def test_every_flag_maps_to_its_config_field():
    args = build_parser().parse_args(
        [
            "quantize",
            "m.onnx",
            "--data",
            "c.npz",
            "-o",
            "o.xml",
            "--preset",
            "mixed",
            "--subset-size",
            "7",
            "--num-workers",
            "3",
            "--model-type",
            "transformer",
            "--target-device",
            "CPU",
            "--exact-bias-correction",
            "--ignored-scope",
            "a",
            "b",
            "--ignored-pattern",
            "x.*",
            "--ignored-type",
            "Softmax",
            "--ignored-type",
            "Add",
            "--estimator",
            "histogram_mse",
            "--overflow-fix",
            "enable",
            "--output-format",
            "openvino",
            "--address",
            "ray://head:10001",
            "--validation",
            "v.npz",
            "--validation-fn",
            "pkg.mod:fn",
        ]
    )
    cfg = config_from_args(args)
    assert cfg == QuantizeConfig(
        model="m.onnx",
        calibration="c.npz",
        output="o.xml",
        preset="mixed",
        subset_size=7,
        num_workers=3,
        model_type="transformer",
        target_device="CPU",
        fast_bias_correction=False,
        ignored_scope=IgnoredScope(names=("a", "b"), patterns=("x.*",), types=("Softmax", "Add")),
        advanced=AdvancedQuantizationParameters(activation_estimator="histogram_mse", overflow_fix="enable"),
        output_format="openvino",
        address="ray://head:10001",
        validation="v.npz",
        validation_fn="pkg.mod:fn",
    )


def test_global_options_before_or_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["-v", "quantize"]).verbose
    assert parser.parse_args(["quantize", "-v"]).verbose
    assert not parser.parse_args(["quantize"]).verbose


def test_subprocess_python_m(tmp_path):
    env = {**os.environ, "RAYQ_PROGRESS": "off"}
    out = tmp_path / "sub" / "m.onnx"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rayq.cli.main",
            "quantize",
            str(MODEL),
            "--data",
            str(CALIBRATION),
            "-o",
            str(out),
            "--num-workers",
            "1",
            "--subset-size",
            "32",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and (out.parent / "config.yaml").is_file()
    assert proc.stdout.startswith("rayq quantize:")
    assert "rayq.quantize:" in proc.stderr  # INFO progress/summary lines by default


def test_python_m_rayq_runs_the_cli():
    proc = subprocess.run(
        [sys.executable, "-m", "rayq", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "rayq" in proc.stdout + proc.stderr
    bare = subprocess.run([sys.executable, "-m", "rayq"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "give a command" in bare.stderr


@pytest.mark.skipif(shutil.which("rayq") is None, reason="console script not installed")
def test_console_script_error_exit_code(tmp_path):
    proc = subprocess.run(
        [
            "rayq",
            "quantize",
            str(tmp_path / "missing.onnx"),
            "--data",
            str(CALIBRATION),
            "-o",
            str(tmp_path / "o"),
            "--num-workers",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"rayq: error: model file {str(tmp_path / 'missing.onnx')!r} does not exist"
    ]


# -- configs/ --------------------------------------------------------------------------

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {"digits.yaml", "quantize_example.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_files_load(path: Path):
    data = yaml.safe_load(path.read_text())
    cfg = load(str(path), command=data.get("command"))
    if isinstance(cfg, QuantizeConfig):
        assert Path(cfg.model).is_file() and Path(cfg.calibration).is_file()


def test_digits_config_is_the_ray_demo():
    cfg = load("configs/digits.yaml", command="quantize")
    assert cfg.num_workers == 2 and cfg.output.startswith("runs/digits/")
    assert cfg.validation and cfg.validation_fn == "examples.digits.metric:accuracy"


def test_quantize_example_sets_every_field():
    data = yaml.safe_load((ROOT / "configs" / "quantize_example.yaml").read_text())
    assert set(data) - {"command"} == {f.name for f in fields(QuantizeConfig)}
    assert set(data["advanced"]) == {f.name for f in fields(AdvancedQuantizationParameters)}
    assert set(data["ignored_scope"]) == {f.name for f in fields(IgnoredScope)}


def test_readme_documents_every_field():
    text = (ROOT / "configs" / "README.md").read_text()
    names = {f.name for cls in (QuantizeConfig, AdvancedQuantizationParameters, IgnoredScope) for f in fields(cls)}
    missing = sorted(n for n in names if f"| `{n}` |" not in text)
    assert not missing
    assert "## `rayq search`" in text and "## `rayq sweep`" in text


def test_latency_batch_times_one_batch_of_validation_items():
    from rayq.api import compare as report
    from rayq.backends import get_backend
    from rayq.errors import DataError
    from rayq.testing.models import mlp

    backend = get_backend("onnx")
    model = backend.load(mlp())
    items = [{"input": np.full((1, 64), i, np.float32)} for i in range(5)]
    feeds = report.latency_feeds(backend, model, items, 4)
    assert feeds["input"].shape == (4, 64) and feeds["input"][3, 0] == 3
    assert report.latency_feeds(backend, model, items, 99)["input"].shape == (5, 64)  # all there are
    static = mlp()
    static.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    with pytest.raises(DataError, match="latency_batch=4"):
        report.latency_feeds(backend, backend.load(static), items, 4)
    with pytest.raises(rayq.ConfigError, match="latency_batch"):
        QuantizeConfig(model="m.onnx", calibration="c.npz", output="o.onnx", latency_batch=0)
