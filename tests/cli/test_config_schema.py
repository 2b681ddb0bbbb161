"""Config files are checked against one typed schema: every wrong field is exit 2 and
one line naming the field, what it expects and the value given; the published JSON
Schema (configs/schema.json) is the schema's own."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields

import pytest
import yaml

import rayq
from rayq.api import config_schema
from rayq.api.config import QuantizeConfig, SearchConfig, SweepConfig
from rayq.cli.main import main
from rayq.core.plan import AdvancedQuantizationParameters
from rayq.core.scope import IgnoredScope

from .conftest import CALIBRATION, MODEL, ROOT, SEARCH_DIGITS, VALIDATION, one_error_line

Q = f"command: quantize\nmodel: {MODEL}\ncalibration: {CALIBRATION}\noutput: OUT/m.onnx\n"
S = (
    f"command: search\nmodel: {MODEL}\ncalibration: {CALIBRATION}\nvalidation: {VALIDATION}\n"
    "validation_fn: examples.digits.metric:accuracy\noutput: OUT/search\n"
)
W = "command: sweep\noutput: OUT/sweep\n"

#: name -> (command, YAML text, expected message fragment); every one is exit code 2.
BAD = {
    "file is a list": ("quantize", "- a\n- b\n", "must be a mapping of field names to values"),
    "file is a string": ("quantize", "just some words\n", "not a str"),
    "file is a number": ("search", "42\n", "not a int"),
    "command not a string": ("quantize", Q.replace("command: quantize", "command: [quantize]"), "'command'"),
    "advanced is a number": ("quantize", Q + "advanced: 5\n", "advanced: expected a mapping, got 5 (int)"),
    "ignored_scope is a list": (
        "quantize",
        Q + "ignored_scope: [a, b]\n",
        "ignored_scope: expected a mapping, got ['a', 'b'] (list)",
    ),
    "subset_size is a word": ("quantize", Q + "subset_size: ten\n", "subset_size: expected an integer, got 'ten'"),
    "subset_size is a float": ("quantize", Q + "subset_size: 1.5\n", "subset_size: expected an integer, got 1.5"),
    "subset_size is zero": ("quantize", Q + "subset_size: 0\n", "subset_size: expected a number greater than"),
    "num_workers is a bool": ("quantize", Q + "num_workers: true\n", "num_workers: expected an integer, got True"),
    "preset unknown": ("quantize", Q + "preset: fast\n", "preset: expected 'performance' or 'mixed', got 'fast'"),
    "preset is a list": ("quantize", Q + "preset: [mixed]\n", "preset: expected"),
    "target_device unknown": ("quantize", Q + "target_device: TPU\n", "target_device: expected"),
    "fast_bias_correction word": (
        "quantize",
        Q + "fast_bias_correction: maybe\n",
        "fast_bias_correction: expected true or false, got 'maybe'",
    ),
    "model_type unknown": ("quantize", Q + "model_type: cnn\n", "model_type: expected 'transformer'"),
    "model is a number": ("quantize", Q.replace(f"model: {MODEL}", "model: 5"), "model: expected a string, got 5"),
    "output missing": ("quantize", Q.replace("output: OUT/m.onnx\n", ""), "output: required field missing"),
    "unknown field": ("quantize", Q + "bogus_field: 1\n", "unknown field 'bogus_field'"),
    "latency_batch word": ("quantize", Q + "latency_batch: many\n", "latency_batch: expected an integer"),
    "output_format unknown": ("quantize", Q + "output_format: tflite\n", "output_format: expected"),
    "advanced unknown field": ("quantize", Q + "advanced: {speed: 1}\n", "unknown field 'advanced.speed'"),
    "advanced.quantile word": (
        "quantize",
        Q + "advanced: {quantile: small}\n",
        "advanced.quantile: expected a number, got 'small'",
    ),
    "advanced.quantile range": (
        "quantize",
        Q + "advanced: {quantile: 0.7}\n",
        "advanced.quantile: expected a number less",
    ),
    "advanced.estimator unknown": (
        "quantize",
        Q + "advanced: {activation_estimator: median}\n",
        "advanced.activation_estimator: expected",
    ),
    "advanced.per_channel word": (
        "quantize",
        Q + "advanced: {per_channel: 'no'}\n",
        "advanced.per_channel: expected true or false, got 'no'",
    ),
    "advanced.batch_size bool": (
        "quantize",
        Q + "advanced: {batch_size: true}\n",
        "advanced.batch_size: expected an integer, got True",
    ),
    "ignored names a string": (
        "quantize",
        Q + "ignored_scope: {names: conv1}\n",
        "ignored_scope.names: expected a list, got 'conv1'",
    ),
    "ignored names numbers": (
        "quantize",
        Q + "ignored_scope: {names: [1]}\n",
        "ignored_scope.names[0]: expected a string, got 1",
    ),
    "ignored subgraph inputs": (
        "quantize",
        Q + "ignored_scope: {subgraphs: [{inputs: a, outputs: [b]}]}\n",
        "ignored_scope.subgraphs[0].inputs: expected a list",
    ),
    "ignored validate word": (
        "quantize",
        Q + "ignored_scope: {validate: sometimes}\n",
        "ignored_scope.validate: expected true or false",
    ),
    "validation_fn code": (
        "quantize",
        Q + "validation_fn: \"os.system('x')\"\n",
        "validation_fn: expected a 'package.module:function' reference",
    ),
    "presets a string": ("search", S + "presets: performance\n", "presets: expected a list, got 'performance'"),
    "presets unknown": ("search", S + "presets: [performance, turbo]\n", "presets[1]: expected"),
    "estimators a string": ("search", S + "estimators: minmax\n", "estimators: expected a list, got 'minmax'"),
    "bias_corrections unknown": ("search", S + "bias_corrections: [slow]\n", "bias_corrections[0]: expected"),
    "max_drop word": ("search", S + "max_drop: one percent\n", "max_drop: expected a number, got 'one percent'"),
    "max_drop negative": ("search", S + "max_drop: -0.1\n", "max_drop: expected a number greater than or equal"),
    "n_trials bool": ("search", S + "n_trials: false\n", "n_trials: expected an integer, got False"),
    "drop_type unknown": ("search", S + "drop_type: percent\n", "drop_type: expected 'absolute' or 'relative'"),
    "timeout word": ("search", S + "timeout: forever\n", "timeout: expected a number, got 'forever'"),
    "validation_timeout zero": ("search", S + "validation_timeout: 0\n", "validation_timeout: expected a number"),
    "worker_resources list": ("search", S + "worker_resources: [2]\n", "worker_resources: expected a mapping"),
    "smooth_quant_alphas word": ("search", S + "smooth_quant_alphas: [high]\n", "smooth_quant_alphas[0]: expected"),
    "explore word": ("search", S + "explore: lots\n", "explore: expected true or false"),
    "validation missing": ("search", S.replace(f"validation: {VALIDATION}\n", ""), "validation: required field"),
    "search seed word": ("search", S + "seed: lucky\n", "seed: expected an integer, got 'lucky'"),
    "sweep models a string": ("sweep", W + "models: a.onnx\n", "models: expected a list"),
    "sweep models empty": ("sweep", W + "models: []\n", "models: expected a list with at least 1 item"),
    "sweep entry a number": ("sweep", W + "models: [5]\n", "models[0]: expected a string or a mapping, got 5"),
    "sweep entry field type": (
        "sweep",
        W + "models: [{model: a.onnx, max_drop: big}]\n",
        "models[0].max_drop: expected a number, got 'big'",
    ),
    "sweep entry unknown field": (
        "sweep",
        W + "models: [{model: a.onnx, colour: red}]\n",
        "unknown field 'models[0].colour'",
    ),
    "sweep defaults type": (
        "sweep",
        W + "models: [a.onnx]\ndefaults: {n_trials: many}\n",
        "defaults.n_trials: expected an integer, got 'many'",
    ),
    "sweep defaults a list": ("sweep", W + "models: [a.onnx]\ndefaults: [a]\n", "defaults: expected a mapping"),
    "sweep max_concurrent bool": (
        "sweep",
        W + "models: [a.onnx]\nmax_concurrent: true\n",
        "max_concurrent: expected an integer, got True",
    ),
}


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets past its config."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a bad config must be refused before any work")

    monkeypatch.setattr(rayq, "quantize", forbidden)
    monkeypatch.setattr("rayq.api.search.search_from_config", forbidden)
    monkeypatch.setattr("rayq.api.sweep.run_sweep", forbidden, raising=False)


def test_at_least_25_bad_configs():
    assert len(BAD) >= 25


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_exits_2_naming_the_field(case, tmp_path, capsys, no_work):
    command, text, fragment = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("OUT", str(tmp_path / "out")))
    assert main([command, "--config", str(path), "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert fragment in line, line
    assert "internal error" not in line
    assert not (tmp_path / "out").exists()


def test_several_wrong_fields_are_all_named(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(Q.replace("OUT", str(tmp_path)) + "subset_size: ten\nnum_workers: true\npreset: fast\n")
    assert main(["quantize", "--config", str(path), "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    for name in ("subset_size", "num_workers", "preset"):
        assert f"{name}: expected" in line


def test_valid_configs_build_the_same_objects(tmp_path):
    """The schema changes nothing for valid configs: every field as before, lists as tuples."""
    text = Q.replace("OUT", str(tmp_path)) + (
        "subset_size: 64\nnum_workers: 2\npreset: mixed\nfast_bias_correction: null\n"
        "ignored_scope: {names: [a], types: [Softmax], subgraphs: [{inputs: [x], outputs: [y]}], validate: false}\n"
        "advanced: {activation_estimator: quantile, quantile: 0.001, smooth_quant_alpha: 1, batch_size: 4}\n"
    )
    path = tmp_path / "ok.yaml"
    path.write_text(text)
    cfg = rayq.api.config.load(str(path), command="quantize")
    assert cfg == QuantizeConfig(
        model=str(MODEL),
        calibration=str(CALIBRATION),
        output=f"{tmp_path}/m.onnx",
        subset_size=64,
        num_workers=2,
        preset="mixed",
        fast_bias_correction=None,
        ignored_scope=IgnoredScope(
            names=("a",), types=("Softmax",), subgraphs=({"inputs": ["x"], "outputs": ["y"]},), validate=False
        ),
        advanced=AdvancedQuantizationParameters(
            activation_estimator="quantile", quantile=0.001, smooth_quant_alpha=1.0, batch_size=4
        ),
    )
    text = S.replace("OUT", str(tmp_path)) + "presets: [mixed]\nmax_drop: 1\n"
    search = rayq.api.config.from_dict(yaml.safe_load(text))
    assert search.presets == ("mixed",) and search.max_drop == 1.0 and isinstance(search, SearchConfig)


@pytest.mark.parametrize("name", ["digits.yaml", "quantize_example.yaml", "search_digits.yaml", "sweep.yaml"])
def test_bundled_configs_are_valid(name):
    data = yaml.safe_load((ROOT / "configs" / name).read_text())
    cfg = rayq.api.config.from_dict(data)
    assert isinstance(cfg, (QuantizeConfig, SearchConfig, SweepConfig))
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data, json.loads((ROOT / "configs" / "schema.json").read_text()))


def test_published_schema_is_generated_from_the_models():
    committed = (ROOT / "configs" / "schema.json").read_text()
    assert committed == config_schema.json_schema_text(), (
        "configs/schema.json is stale: python -m rayq.api.config_schema > configs/schema.json"
    )


def test_published_schema_rejects_what_the_loader_rejects():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "configs" / "schema.json").read_text())
    for case in (
        "subset_size is a word",
        "num_workers is a bool",
        "presets a string",
        "ignored_scope is a list",
        "advanced is a number",
        "unknown field",
    ):
        _, text, _ = BAD[case]
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(yaml.safe_load(text.replace("OUT", "/tmp")), schema)


@pytest.mark.parametrize(
    ("model", "cls"),
    [
        (config_schema.QuantizeModel, QuantizeConfig),
        (config_schema.SearchModel, SearchConfig),
        (config_schema.AdvancedModel, AdvancedQuantizationParameters),
    ],
)
def test_schema_fields_and_defaults_match_the_config_objects(model, cls):
    """The schema documents the config objects: the same fields with the same defaults."""
    names = {f.name for f in fields(cls)}
    assert set(model.model_fields) - {"command"} == names
    for f in fields(cls):
        info = model.model_fields[f.name]
        if info.is_required():
            assert f.default is MISSING and f.default_factory is MISSING, f.name
        elif f.default_factory is not MISSING:  # a nested config: its own defaults are compared
            assert info.default_factory is not None, f.name
        else:
            assert info.default == f.default, f.name


def test_validation_timeout_flag(tmp_path, capsys, no_work):
    from rayq.cli.main import build_parser
    from rayq.cli.search import config_from_args

    argv = [
        *SEARCH_DIGITS,
        "--validation-timeout",
    ]
    assert config_from_args(build_parser().parse_args([*argv, "2.5"])).validation_timeout == 2.5
    assert main([*argv, "0", "-q"]) == 2
    assert "validation_timeout: expected a number greater than 0" in one_error_line(capsys.readouterr().err)


def test_bundled_configs_point_editors_at_the_schema():
    for path in (ROOT / "configs").glob("*.yaml"):
        assert path.read_text().startswith("# yaml-language-server: $schema=schema.json\n"), path.name
