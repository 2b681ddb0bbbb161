"""The bad-input table: each case is one wrong input to the Python API or the CLI, with
the rayq error class (API) or exit code (CLI) it must give and a fragment of the message.

Nothing else may come out: no raw library exception, no traceback, no hang (every case
runs the digits example in-process, so a case takes at most a few seconds). Exit codes:
2 = the user's input is wrong (ConfigError, DataError, OutputError, usage), 1 = the
user's code or the runtime failed (a validation function that raises or returns junk,
an unreachable cluster). More cases live next to the code they guard:
tests/e2e/test_bad_input.py (API), tests/cli/test_errors.py (CLI) and the 54-case config
schema table tests/cli/test_config_schema.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rayq
from rayq.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
MODEL, CALIB, VALID = DIGITS / "digits_cnn.onnx", DIGITS / "calibration.npz", DIGITS / "validation.npz"

#: validation functions of the CLI cases, written as importable modules
FUNCTIONS = {
    "rqf_raises": "def f(model, items):\n    raise ValueError('kaboom')\n",
    "rqf_nan": "def f(model, items):\n    return float('nan')\n",
    "rqf_str": "def f(model, items):\n    return 'great'\n",
    "rqf_len": "def f(model, items):\n    return 0.9, [1.0, 0.0, 1.0]\n",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Every broken file the cases name, made once."""
    t = tmp_path_factory.mktemp("bad")
    raw = MODEL.read_bytes()
    (t / "truncated.onnx").write_bytes(raw[: len(raw) // 2])
    (t / "text.onnx").write_text("hello, I am not a model\n")
    (t / "zeros.onnx").write_bytes(b"\0" * 4096)
    (t / "folder.onnx").mkdir()
    (t / "folder.xml").mkdir()
    (t / "nobin.xml").write_text("<net/>")
    (t / "garbage.xml").write_text("<net/>")
    (t / "garbage.bin").write_bytes(b"\0" * 16)
    np.savez(t / "no_arrays.npz")
    np.savez(t / "zero_rows.npz", input=np.zeros((0, 1, 8, 8), np.float32))
    pq.write_table(pa.table({}), t / "no_columns.parquet")
    np.savez(t / "inf.npz", input=np.full((8, 1, 8, 8), np.inf, np.float32))
    np.savez(t / "wrong_name.npz", pixels=np.zeros((8, 1, 8, 8), np.float32))
    np.savez(t / "int32.npz", input=np.zeros((8, 1, 8, 8), np.int32))
    np.savez(t / "rank3.npz", input=np.zeros((8, 8, 8), np.float32))
    np.savez(t / "small_images.npz", input=np.zeros((8, 1, 4, 4), np.float32), label=np.zeros(8, np.int64))
    np.savez(t / "no_labels.npz", input=np.zeros((8, 1, 8, 8), np.float32))
    (t / "list.yaml").write_text("- a\n- b\n")
    (t / "string.yaml").write_text("just a string\n")
    (t / "a_file").write_text("x")
    (t / "run_file").write_text("x")
    for name, code in FUNCTIONS.items():
        (t / f"{name}.py").write_text(code)
    return t


@pytest.fixture(autouse=True)
def _in_repo(files, monkeypatch, tmp_path):
    """The repository root as working directory (``examples.digits.metric`` imports), the
    case functions importable, an own cache, no progress bars."""
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.syspath_prepend(str(files))
    monkeypatch.setenv("RAYQ_PROGRESS", "off")


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    with np.load(CALIB) as z:
        return z["input"][:16].copy()


@pytest.fixture(scope="module")
def valid() -> list[dict]:
    with np.load(VALID) as z:
        return [{"input": x, "label": y} for x, y in zip(z["input"][:32], z["label"][:32])]


def _accuracy(model, items):
    from examples.digits.metric import accuracy

    return accuracy(model, items)


def _q(model, data, **kw):
    return rayq.quantize(str(model), data, num_workers=1, cache=False, subset_size=16, **kw)


def _s(calib, valid, fn=_accuracy, model=MODEL, **kw):
    kw = {"num_workers": 1, "n_trials": 2, "cache": False, "subset_size": 16, **kw}
    return rayq.search(str(model), calib, valid, fn, **kw)


def _qac(calib, valid, fn=_accuracy, **kw):
    return rayq.quantize_with_accuracy_control(str(MODEL), calib, valid, fn, num_workers=1, subset_size=16, **kw)


# (id, call(files, calib, valid), error class, message fragment)
API_CASES = [
    # the model
    ("truncated onnx", lambda f, c, v: _q(f / "truncated.onnx", c), rayq.BackendError, "is not a readable ONNX model"),
    ("text file as onnx", lambda f, c, v: _q(f / "text.onnx", c), rayq.BackendError, "is not a readable ONNX model"),
    ("zero bytes onnx", lambda f, c, v: _q(f / "zeros.onnx", c), rayq.BackendError, "ONNX"),
    ("onnx path is a folder", lambda f, c, v: _q(f / "folder.onnx", c), rayq.BackendError, "is a folder"),
    ("xml path is a folder", lambda f, c, v: _q(f / "folder.xml", c), rayq.BackendError, "is a folder"),
    ("xml without bin", lambda f, c, v: _q(f / "nobin.xml", c), rayq.BackendError, "nobin.bin' of OpenVINO IR"),
    ("xml not an IR", lambda f, c, v: _q(f / "garbage.xml", c), rayq.BackendError, "OpenVINO cannot read"),
    ("data folder as model", lambda f, c, v: _q(f, c), rayq.BackendError, "cannot tell the format"),
    # the calibration data
    ("npz without arrays", lambda f, c, v: _q(MODEL, str(f / "no_arrays.npz")), rayq.DataError, "holds no arrays"),
    ("npz with zero rows", lambda f, c, v: _q(MODEL, str(f / "zero_rows.npz")), rayq.DataError, "dataset is empty"),
    (
        "parquet without columns",
        lambda f, c, v: _q(MODEL, str(f / "no_columns.parquet")),
        rayq.DataError,
        "holds no arrays",
    ),
    ("Inf everywhere", lambda f, c, v: _q(MODEL, str(f / "inf.npz")), rayq.DataError, "contains NaN or Inf"),
    (
        "wrong input name",
        lambda f, c, v: _q(MODEL, str(f / "wrong_name.npz")),
        rayq.DataError,
        "do not include the model input 'input'",
    ),
    (
        "item without the input",
        lambda f, c, v: _q(MODEL, [{"input": c[0]}, {}]),
        rayq.DataError,
        "missing model input(s) ['input']",
    ),
    (
        "int32 data",
        lambda f, c, v: _q(MODEL, str(f / "int32.npz")),
        rayq.DataError,
        "model expects float32, data has int32",
    ),
    ("bool data", lambda f, c, v: _q(MODEL, c > 0), rayq.DataError, "model expects float32, data has bool"),
    ("rank 3 data", lambda f, c, v: _q(MODEL, str(f / "rank3.npz")), rayq.DataError, "model expects shape"),
    ("ragged items", lambda f, c, v: _q(MODEL, [c[0], c[0][:, :4]]), rayq.DataError, "data has shape (1, 1, 4, 8)"),
    ("object array", lambda f, c, v: _q(MODEL, np.array([object(), object()])), rayq.DataError, "model expects shape"),
    ("Dataset of an int", lambda f, c, v: _q(MODEL, rayq.Dataset(5)), rayq.DataError, "needs an iterable data source"),
    (
        "Dataset transform not callable",
        lambda f, c, v: rayq.Dataset(c, 5),
        rayq.DataError,
        "transform_fn must be callable",
    ),
    # the arguments
    (
        "subset_size negative",
        lambda f, c, v: rayq.quantize(str(MODEL), c, num_workers=1, subset_size=-3),
        rayq.ConfigError,
        "subset_size=-3 must be a positive integer",
    ),
    (
        "subset_size float",
        lambda f, c, v: rayq.quantize(str(MODEL), c, num_workers=1, subset_size=2.5),
        rayq.ConfigError,
        "subset_size=2.5",
    ),
    (
        "num_workers negative",
        lambda f, c, v: rayq.quantize(str(MODEL), c, num_workers=-1),
        rayq.ConfigError,
        "num_workers=-1",
    ),
    (
        "num_workers a string",
        lambda f, c, v: rayq.quantize(str(MODEL), c, num_workers="two"),
        rayq.ConfigError,
        "num_workers='two'",
    ),
    ("mode fp8", lambda f, c, v: _q(MODEL, c, mode="fp8_e9"), rayq.ConfigError, "INT8 only"),
    (
        "target_device lowercase",
        lambda f, c, v: _q(MODEL, c, target_device="tpu"),
        rayq.ConfigError,
        "target_device='tpu' is not valid",
    ),
    (
        "ignored_scope a list",
        lambda f, c, v: _q(MODEL, c, ignored_scope=["a"]),
        rayq.ConfigError,
        "must be a rayq.IgnoredScope",
    ),
    (
        "ignored pattern not a regex",
        lambda f, c, v: rayq.IgnoredScope(patterns=["*conv"]),
        rayq.ConfigError,
        "not a valid regular expression",
    ),
    (
        "ignored subgraph unknown",
        lambda f, c, v: _q(
            MODEL, c, ignored_scope=rayq.IgnoredScope(subgraphs=[rayq.Subgraph(inputs=["nope"], outputs=["out"])])
        ),
        rayq.ConfigError,
        "'nope' matches no node",
    ),
    (
        "advanced parameters a dict",
        lambda f, c, v: _q(MODEL, c, advanced_parameters={"a": 1}),
        rayq.ConfigError,
        "unknown advanced_parameters field(s): ['a']",
    ),
    (
        "batch_size 0",
        lambda f, c, v: rayq.AdvancedQuantizationParameters(batch_size=0),
        rayq.ConfigError,
        "batch_size=0",
    ),
    (
        "SmoothQuant alpha 7",
        lambda f, c, v: rayq.AdvancedSmoothQuantParameters(matmul=7),
        rayq.ConfigError,
        "must be <= 1",
    ),
    # search arguments (refused before calibration)
    ("max_drop negative", lambda f, c, v: _s(c, v, max_drop=-0.1), rayq.ConfigError, "max_drop=-0.1"),
    ("max_drop NaN", lambda f, c, v: _s(c, v, max_drop=float("nan")), rayq.ConfigError, "max_drop=nan"),
    (
        "drop_type percent",
        lambda f, c, v: _s(c, v, drop_type="percent"),
        rayq.ConfigError,
        "drop_type='percent' is not valid",
    ),
    ("target tensorrt", lambda f, c, v: _s(c, v, target="tensorrt"), rayq.ConfigError, "target='tensorrt'"),
    ("n_trials 0", lambda f, c, v: _s(c, v, n_trials=0), rayq.ConfigError, "n_trials=0"),
    ("generation_size 0", lambda f, c, v: _s(c, v, generation_size=0), rayq.ConfigError, "generation_size=0"),
    ("finalists 0", lambda f, c, v: _s(c, v, finalists=0), rayq.ConfigError, "finalists=0"),
    ("presets bad", lambda f, c, v: _s(c, v, presets=("turbo",)), rayq.ConfigError, "presets: 'turbo'"),
    ("estimators bad", lambda f, c, v: _s(c, v, estimators=("median",)), rayq.ConfigError, "estimators: 'median'"),
    (
        "bias_corrections bad",
        lambda f, c, v: _s(c, v, bias_corrections=("slow",)),
        rayq.ConfigError,
        "bias_corrections: 'slow'",
    ),
    (
        "SmoothQuant alphas out of range",
        lambda f, c, v: _s(c, v, smooth_quant_alphas=(2.0,)),
        rayq.ConfigError,
        "smooth_quant_alphas: 2.0",
    ),
    (
        "validation_timeout negative",
        lambda f, c, v: _s(c, v, validation_timeout=-1),
        rayq.ConfigError,
        "validation_timeout=-1",
    ),
    ("storage not a path or URL", lambda f, c, v: _s(c, v, storage="foo"), rayq.ConfigError, "storage='foo'"),
    (
        "storage unknown database",
        lambda f, c, v: _s(c, v, storage="nosuch://x"),
        rayq.ConfigError,
        "cannot open the nosuch:// RDB storage",
    ),
    ("validation_fn not callable", lambda f, c, v: _s(c, v, fn=42), rayq.ConfigError, "validation_fn must be callable"),
    ("output is a file", lambda f, c, v: _s(c, v, output=str(f / "a_file")), rayq.OutputError, "is an existing file"),
    # the validation data and function
    ("validation set empty", lambda f, c, v: _s(c, []), rayq.DataError, "the validation dataset is empty"),
    (
        "validation items do not fit",
        lambda f, c, v: _s(c, [(np.zeros((1, 3, 3, 3), np.float32), 1)] * 4),
        rayq.DataError,
        "data has shape (4, 1, 3, 3, 3)",
    ),
    (
        "validation items mismatch the function",
        lambda f, c, v: _s(c, [(x["input"],) for x in v]),
        rayq.SearchError,
        "raised ValueError",
    ),
    (
        "validation_fn raises",
        lambda f, c, v: _s(c, v, fn=lambda m, d: 1 / 0),
        rayq.SearchError,
        "raised ZeroDivisionError: division by zero",
    ),
    (
        "validation_fn returns NaN",
        lambda f, c, v: _s(c, v, fn=lambda m, d: float("nan")),
        rayq.SearchError,
        "returned nan",
    ),
    (
        "validation_fn returns a string",
        lambda f, c, v: _s(c, v, fn=lambda m, d: "good"),
        rayq.SearchError,
        "returned 'good', not a number",
    ),
    (
        "validation_fn returns None",
        lambda f, c, v: _s(c, v, fn=lambda m, d: None),
        rayq.SearchError,
        "returned None, not a number",
    ),
    (
        "validation_fn per-item length",
        lambda f, c, v: _s(c, v, fn=lambda m, d: (0.9, [1.0, 0.0])),
        rayq.DataError,
        "returned 2 per-item values for 32 items",
    ),
    (
        "accuracy control: fn raises",
        lambda f, c, v: _qac(c, v, fn=lambda m, d: 1 / 0),
        rayq.SearchError,
        "raised ZeroDivisionError",
    ),
    (
        "accuracy control: fn returns Inf",
        lambda f, c, v: _qac(c, v, fn=lambda m, d: float("inf")),
        rayq.SearchError,
        "returned inf",
    ),
    (
        "accuracy control: fn returns a list",
        lambda f, c, v: _qac(c, v, fn=lambda m, d: [0.5]),
        rayq.SearchError,
        "returned [0.5], not a number",
    ),
    (
        "accuracy control: per-item length",
        lambda f, c, v: _qac(c, v, fn=lambda m, d: (0.5, [1.0] * 3)),
        rayq.DataError,
        "returned 3 per-item values for 32 items",
    ),
    ("accuracy control: max_drop negative", lambda f, c, v: _qac(c, v, max_drop=-1), rayq.ConfigError, "max_drop=-1"),
    # stored runs
    (
        "load a run that is a file",
        lambda f, c, v: rayq.SearchResult.load(str(f / "run_file")),
        rayq.OutputError,
        "it is a file",
    ),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(case, files, calib, valid):
    _, call, error, fragment = case
    with pytest.raises(rayq.RayqError) as info:
        call(files, calib, valid)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert fragment in str(info.value), str(info.value)


def _quantize(*extra: str, model: str | Path = MODEL, data: str | Path = CALIB) -> list[str]:
    return [
        "quantize",
        str(model),
        "--data",
        str(data),
        "-o",
        "{out}/m.onnx",
        "--num-workers",
        "1",
        "-q",
        "--subset-size",
        "16",
        *extra,
    ]


def _search(*extra: str, validation: str | Path = VALID, fn: str = "examples.digits.metric:accuracy") -> list[str]:
    return [
        "search",
        str(MODEL),
        "--data",
        str(CALIB),
        "--validation",
        str(validation),
        "--validation-fn",
        fn,
        "-o",
        "{out}/s",
        "--num-workers",
        "1",
        "-q",
        "--n-trials",
        "2",
        "--subset-size",
        "16",
        *extra,
    ]


# (id, argv with {files} and {out}, exit code, message fragment)
CLI_CASES = [
    ("truncated onnx", _quantize(model="{files}/truncated.onnx"), 2, "is not a readable ONNX model"),
    ("onnx path is a folder", _quantize(model="{files}/folder.onnx"), 2, "is a folder, not an ONNX model file"),
    ("xml without bin", _quantize(model="{files}/nobin.xml"), 2, "of OpenVINO IR"),
    ("xml not an IR", _quantize(model="{files}/garbage.xml"), 2, "OpenVINO cannot read"),
    ("npz without arrays", _quantize(data="{files}/no_arrays.npz"), 2, "holds no arrays"),
    ("npz with zero rows", _quantize(data="{files}/zero_rows.npz"), 2, "the dataset is empty"),
    ("parquet without columns", _quantize(data="{files}/no_columns.parquet"), 2, "holds no arrays"),
    ("Inf calibration data", _quantize(data="{files}/inf.npz"), 2, "contains NaN or Inf"),
    ("wrong input name", _quantize(data="{files}/wrong_name.npz"), 2, "do not include the model input 'input'"),
    ("int32 calibration data", _quantize(data="{files}/int32.npz"), 2, "model expects float32, data has int32"),
    ("rank 3 calibration data", _quantize(data="{files}/rank3.npz"), 2, "model expects shape"),
    ("preset unknown", _quantize("--preset", "turbo"), 2, "argument --preset: invalid choice: 'turbo'"),
    ("target device unknown", _quantize("--target-device", "TPU"), 2, "argument --target-device"),
    ("ignored pattern not a regex", _quantize("--ignored-pattern", "conv[("), 2, "not a valid regular expression"),
    ("ignored type absent", _quantize("--ignored-type", "Softmax"), 2, "ignored_scope type 'Softmax' matches no node"),
    ("output format unknown", _quantize("--output-format", "tflite"), 2, "--output-format"),
    ("search: max drop negative", _search("--max-drop", "-0.5"), 2, "max_drop"),
    ("search: max drop not a number", _search("--max-drop", "lots"), 2, "invalid float value: 'lots'"),
    ("search: drop type unknown", _search("--drop-type", "percent"), 2, "invalid choice: 'percent'"),
    ("search: target unknown", _search("--target", "tensorrt"), 2, "invalid choice: 'tensorrt'"),
    ("search: n trials 0", _search("--n-trials", "0"), 2, "n_trials"),
    ("search: subset size 0", _search("--subset-size", "0"), 2, "subset_size"),
    ("search: validation timeout negative", _search("--validation-timeout", "-1"), 2, "validation_timeout"),
    ("search: seed not an int", _search("--seed", "abc"), 2, "invalid int value: 'abc'"),
    ("search: storage unknown database", _search("--storage", "nosuch://x"), 2, "nosuch:// RDB storage"),
    ("search: storage not a path or URL", _search("--storage", "foo"), 2, "storage='foo'"),
    ("search: output URI unknown", _search("-o", "foo://bucket/run"), 2, "cannot open the output location"),
    ("search: output is a file", _search("-o", "{files}/a_file"), 2, "is an existing file"),
    ("search: no validation function", _search()[:6] + _search()[8:], 2, "missing --validation-fn"),
    ("search: validation empty", _search(validation="{files}/no_arrays.npz"), 2, "holds no arrays"),
    (
        "search: validation items do not fit",
        _search(validation="{files}/small_images.npz"),
        2,
        "data has shape (8, 1, 4, 4)",
    ),
    ("search: validation without labels", _search(validation="{files}/no_labels.npz"), 1, "raised KeyError: 'label'"),
    ("search: validation fn raises", _search(fn="rqf_raises:f"), 1, "rqf_raises:f raised ValueError: kaboom"),
    ("search: validation fn returns NaN", _search(fn="rqf_nan:f"), 1, "rqf_nan:f returned nan"),
    ("search: validation fn returns a string", _search(fn="rqf_str:f"), 1, "returned 'great', not a number"),
    (
        "search: per-item values of the wrong length",
        _search(fn="rqf_len:f"),
        2,
        "rqf_len:f returned 3 per-item values for 400 items",
    ),
    ("search: config is a list", ["search", "--config", "{files}/list.yaml"], 2, "must be a mapping"),
    ("search: config is a string", ["search", "--config", "{files}/string.yaml"], 2, "must be a mapping"),
    ("report: no such run", ["report", "{out}/nope"], 2, "it does not exist"),
    ("report: run is a file", ["report", "{files}/run_file"], 2, "it is a file"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(case, files, tmp_path, capsys):
    _, argv, code, fragment = case
    argv = [a.format(files=files, out=tmp_path) for a in argv]
    assert main(argv) == code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("rayq: error: ")]
    assert len(errors) == 1, captured.err
    assert fragment in errors[0], errors[0]
    assert captured.out == ""  # nothing on stdout for a failed run


@pytest.mark.parametrize("command", ["quantize", "search"])
def test_unreachable_cluster_address_fails_fast_from_the_cli(command, tmp_path):
    """A closed loopback port as --address: exit 1 within seconds, naming the address.
    A fresh process, so the Ray this test session may have started cannot answer instead."""
    args = _quantize() if command == "quantize" else _search()
    args = [a.format(out=tmp_path) for a in args]
    args[args.index("--num-workers") + 1] = "2"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "RAYQ_CACHE_DIR": str(tmp_path / "cache"),
    }
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run(
        [sys.executable, "-m", "rayq", *args, "--address", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert "cannot reach the Ray cluster at '127.0.0.1:1'" in run.stderr, run.stderr[-2000:]


def test_the_table_is_large_enough():
    assert len(API_CASES) + len(CLI_CASES) + 2 >= 60
