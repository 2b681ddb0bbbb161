"""Bad input: exit code 2 and one ``rayq: error:`` line, before any calibration runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rayq
from rayq.cli.main import main

from .conftest import CALIBRATION, MODEL, VALIDATION, one_error_line


@pytest.fixture
def no_calibration(monkeypatch):
    """Fail the test if the CLI reaches rayq.quantize."""

    def forbidden(*args, **kwargs):
        raise AssertionError("rayq.quantize must not be called for bad input")

    monkeypatch.setattr(rayq, "quantize", forbidden)


def _run(tmp_path: Path, *args: str) -> int:
    return main(["quantize", *args, "--num-workers", "1", "-q"])


def _bad_arrays(tmp_path: Path, name: str, x: np.ndarray) -> str:
    path = tmp_path / name
    np.savez(path, input=x)
    return str(path)


def _cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf \x00\x01\x02" * 10)
    nan = np.zeros((20, 1, 8, 8), np.float32)
    nan[5, 0, 3, 3] = np.nan
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(f"model: {MODEL}\ncalibration: {CALIBRATION}\noutput: {tmp_path}/o.onnx\nbogus_field: 1\n")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    (tmp_path / "folder.onnx").mkdir()
    out = str(tmp_path / "out" / "m.onnx")
    data = ["--data", str(CALIBRATION)]
    val = ["--validation", str(VALIDATION)]
    return {
        "missing model": ([str(tmp_path / "nope.onnx"), *data, "-o", out], "does not exist"),
        "corrupt model": ([str(corrupt), *data, "-o", out], "not a readable ONNX model"),
        "unknown model format": ([str(CALIBRATION), *data, "-o", out], "cannot tell the format"),
        "missing data": ([str(MODEL), "--data", str(tmp_path / "nope.npz"), "-o", out], "does not exist"),
        "wrong data shape": (
            [str(MODEL), "--data", _bad_arrays(tmp_path, "shape.npz", np.zeros((20, 3, 5, 5), np.float32)), "-o", out],
            "shape",
        ),
        "NaN data": ([str(MODEL), "--data", _bad_arrays(tmp_path, "nan.npz", nan), "-o", out], "NaN"),
        "unknown config field": (["--config", str(unknown)], "bogus_field"),
        "missing config": (["--config", str(tmp_path / "nope.yaml")], "nope.yaml"),
        "validation_fn not importable": (
            [str(MODEL), *data, "-o", out, *val, "--validation-fn", "examples.digits.metric:no_such_fn"],
            "cannot be imported",
        ),
        "validation_fn not a reference": (
            [str(MODEL), *data, "-o", out, *val, "--validation-fn", "lambda x: 1"],
            "module:function",
        ),
        "validation data does not fit": (
            [
                str(MODEL),
                *data,
                "-o",
                out,
                "--validation",
                str(CALIBRATION).replace("calibration", "nope"),
                "--validation-fn",
                "examples.digits.metric:accuracy",
            ],
            "does not exist",
        ),
        "unwritable output": ([str(MODEL), *data, "-o", str(blocker / "sub" / "m.onnx")], "cannot write"),
        "output URI pyarrow cannot open": (
            [str(MODEL), *data, "-o", "foo://bucket/run/m.onnx"],
            "cannot open the output location 'foo://bucket/run/m.onnx'",
        ),
        "output URI missing a slash": ([str(MODEL), *data, "-o", "s3:/bucket/run/m.onnx"], "write s3://"),
        "output model is a folder": ([str(MODEL), *data, "-o", str(tmp_path / "folder.onnx")], "is an existing folder"),
        "suffix contradicts format": ([str(MODEL), *data, "-o", out, "--output-format", "openvino"], ".onnx"),
        "bad ignored name": ([str(MODEL), *data, "-o", out, "--ignored-scope", "/stem/stem.0/Con"], "matches no node"),
        "invalid subset size": ([str(MODEL), *data, "-o", out, "--subset-size", "0"], "subset_size"),
        "missing arguments": ([str(MODEL)], "--data"),
    }


CASES = [
    "missing model",
    "corrupt model",
    "unknown model format",
    "missing data",
    "wrong data shape",
    "NaN data",
    "unknown config field",
    "missing config",
    "validation_fn not importable",
    "validation_fn not a reference",
    "validation data does not fit",
    "unwritable output",
    "output URI pyarrow cannot open",
    "output URI missing a slash",
    "output model is a folder",
    "suffix contradicts format",
    "bad ignored name",
    "invalid subset size",
    "missing arguments",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line(case, tmp_path, capsys):
    args, expected = _cases(tmp_path)[case]
    assert _run(tmp_path, *args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert expected in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "case",
    [
        "missing model",
        "corrupt model",
        "unknown config field",
        "unwritable output",
        "validation_fn not importable",
        "suffix contradicts format",
        "output URI pyarrow cannot open",
        "output URI missing a slash",
        "output model is a folder",
    ],
)
def test_bad_input_fails_before_calibration(case, tmp_path, capsys, no_calibration):
    args, _ = _cases(tmp_path)[case]
    assert _run(tmp_path, *args) == 2
    one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
    assert not [p for p in Path.cwd().iterdir() if p.name.endswith(":")]  # no ./foo: or ./s3: folder


@pytest.mark.parametrize(
    "argv",
    [
        ["quantize", "--preset", "fast"],
        ["quantize", "--bogus"],
        ["frobnicate"],
        ["quantize", "--num-workers", "two"],
        ["quantize", "--no-bias-correction", "--exact-bias-correction"],
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err)


def test_no_command_exits_2(capsys):
    assert main([]) == 2
    assert "rayq: error:" in capsys.readouterr().err


def test_runtime_error_in_validation_fn_exits_1(tmp_path, capsys, monkeypatch):
    module = tmp_path / "badmetric.py"
    module.write_text("def metric(model, data):\n    raise RuntimeError('metric blew up')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(
        [
            "quantize",
            str(MODEL),
            "--data",
            str(CALIBRATION),
            "-o",
            str(tmp_path / "o"),
            "--subset-size",
            "16",
            "--num-workers",
            "1",
            "--validation",
            str(VALIDATION),
            "--validation-fn",
            "badmetric:metric",
            "-q",
        ]
    )
    assert code == 1
    assert "metric blew up" in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "o" / "digits_cnn_int8.onnx").is_file()  # the model is saved before validation
