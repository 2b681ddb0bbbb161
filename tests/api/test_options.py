"""The search's options have one definition: ``rayq.search``'s keywords, the config file
schema and the ``rayq search`` flags cover the same fields with the same defaults."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pydantic
import pytest

import rayq
from rayq.api import config_schema
from rayq.api import search as search_mod
from rayq.api.config import SearchConfig, from_dict
from rayq.api.options import OPTION_CLASSES, Execution, SearchOptions, SearchSpace, resolve
from rayq.cli import search as cli_search
from rayq.cli.main import build_parser

#: search() argument -> config file field, where the names differ (NNCF's names in Python).
PYTHON_NAMES = {
    "calibration_dataset": "calibration",
    "validation_dataset": "validation",
    "advanced_parameters": "advanced",
}
#: Python-only arguments: the option objects themselves and the CLI's extra result files.
PYTHON_ONLY = {"space", "options", "execution", "output_files"}
OPTION_FIELDS = {name for cls in OPTION_CLASSES for name in cls.model_fields}
DIGITS = dict(model="m.onnx", calibration="c.npz", validation="v.npz", validation_fn="pkg.metrics:accuracy")


def _search_keywords() -> set[str]:
    params = [p for p in inspect.signature(rayq.search).parameters.values() if p.kind != p.VAR_KEYWORD]
    names = {p.name for p in params} | set(search_mod.EXTRA_KWARGS) | OPTION_FIELDS
    return {PYTHON_NAMES.get(n, n) for n in names - PYTHON_ONLY} | {"model"}


def _cli_fields() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["search"]
    dests = {a.dest for a in sub._actions} - {"help", "config", "verbose", "quiet", "debug"}
    mapping = {**cli_search.FIELDS, **cli_search.OPTION_FIELDS, "bias_correction": "fast_bias_correction"}
    unmapped = dests - set(mapping)
    assert not unmapped, f"flags with no config field: {unmapped}"
    return {mapping[d] for d in dests} | set(cli_search.CONFIG_ONLY)


def test_search_keywords_config_fields_and_cli_flags_are_the_same_set():
    schema = set(config_schema.SearchModel.model_fields) - {"command"}
    config = {f.name for f in dataclasses.fields(SearchConfig)}
    assert schema == config
    assert _search_keywords() == schema
    assert _cli_fields() == schema
    assert schema >= OPTION_FIELDS and {"latency_threads", "cache", "finalists"} <= schema  # the old drift


def test_defaults_are_declared_once():
    fields = {f.name: f for f in dataclasses.fields(SearchConfig)}
    for cls in OPTION_CLASSES:
        for name, info in cls.model_fields.items():
            assert fields[name].default == info.default, name
            assert config_schema.SearchModel.model_fields[name].default == info.default, name
    plan = config_schema.SearchModel.model_fields
    for name, default in search_mod.QUANTIZATION_KWARGS.items():
        key = PYTHON_NAMES.get(name, name)
        if key != "advanced" and key != "ignored_scope":
            assert plan[key].default == default, name
            assert fields[key].default == default, name


def test_flat_keywords_land_on_their_object_and_win():
    space, options, execution, rest = resolve(
        SearchSpace(presets=("mixed",)),
        SearchOptions(n_trials=4, seed=2),
        None,
        {"seed": 7, "num_workers": 1, "estimators": ["minmax"], "preset": "mixed"},
        allowed=frozenset({"preset"}),
    )
    assert (space.presets, space.estimators) == (("mixed",), ("minmax",))
    assert (options.n_trials, options.seed) == (4, 7)
    assert execution == Execution(num_workers=1)
    assert rest == {"preset": "mixed"}


def test_unknown_keywords_and_wrong_objects_are_config_errors():
    with pytest.raises(rayq.ConfigError, match=r"unknown keyword argument\(s\) \['n_trails'\].*'n_trials'"):
        rayq.search("m.onnx", None, None, len, n_trails=3)
    with pytest.raises(rayq.ConfigError, match="execution: expected a rayq.Execution, got dict"):
        rayq.search("m.onnx", None, None, len, execution={"num_workers": 1})
    with pytest.raises(rayq.ConfigError, match="does not take \\['n_trials'\\]"):
        rayq.quantize_with_accuracy_control("m.onnx", None, None, len, n_trials=3)
    with pytest.raises(rayq.ConfigError, match="unknown keyword argument"):
        rayq.quantize("m.onnx", None, n_trials=3)


def test_options_are_frozen_and_checked_on_replace():
    ex = rayq.Execution(num_workers=2)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        ex.num_workers = 3
    with pytest.raises(rayq.ConfigError, match="num_workers=0"):
        ex.replace(num_workers=0)
    assert rayq.SearchSpace(presets=[rayq.QuantizationPreset.MIXED]).presets == ("mixed",)


def test_cli_flags_build_the_option_objects():
    args = build_parser().parse_args(
        [
            "search",
            "m.onnx",
            "--data",
            "c.npz",
            "--validation",
            "v.npz",
            "--validation-fn",
            "pkg.m:acc",
            "--presets",
            "mixed",
            "performance",
            "--smooth-quant-alphas",
            "0.5",
            "none",
            "--n-trials",
            "5",
            "--no-cache",
            "--no-early-stop",
            "--worker-resources",
            '{"num_cpus": 1}',
            "--latency-threads",
            "2",
            "--exact-bias-correction",
        ]
    )
    cfg = cli_search.config_from_args(args)
    assert cfg.space.presets == ("mixed", "performance") and cfg.space.smooth_quant_alphas == (0.5, None)
    assert (cfg.options.n_trials, cfg.options.early_stop) == (5, False)
    assert cfg.execution == Execution(cache=False, worker_resources={"num_cpus": 1}, latency_threads=2)
    assert cfg.fast_bias_correction is False


def test_config_file_fields_build_the_same_objects_as_python():
    cfg = from_dict(
        {**DIGITS, "command": "search", "latency_threads": 3, "cache": False, "finalists": 2, "ranking_subset_size": 50}
    )
    assert cfg.execution == Execution(latency_threads=3, cache=False)
    assert cfg.options == SearchOptions(finalists=2)
    assert cfg.space == SearchSpace(ranking_subset_size=50)
    with pytest.raises(rayq.ConfigError, match="n_trials=None must be >= 1"):
        from_dict({**DIGITS, "command": "search", "n_trials": None})


def test_no_public_function_takes_more_than_twelve_parameters():
    """quantize_with_accuracy_control keeps NNCF's 14 (plus execution=)."""
    limits = {"quantize_with_accuracy_control": 15}
    for name in rayq.__all__:
        obj = getattr(rayq, name)
        if inspect.isfunction(obj):
            params = [p for p in inspect.signature(obj).parameters.values() if p.kind != p.VAR_KEYWORD]
            assert len(params) <= limits.get(name, 12), (name, len(params))
