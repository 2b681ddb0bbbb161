"""The typed schema of rayq's config files (pydantic v2), and its JSON Schema.

One set of models describes every field of ``rayq quantize``, ``rayq search`` and
``rayq sweep`` configs: its type, its allowed values and its default. A YAML
config is validated against it before the frozen config objects of
:mod:`rayq.api.config` are built, so a wrong field is a :class:`~rayq.errors.ConfigError`
naming the field, the expected type and the value given -- never an internal error.

Scalars are strict: YAML has types, and ``num_workers: true`` or
``subset_size: "ten"`` are mistakes, not values to coerce (an integer is still a
valid float). Lists stay lists: ``presets: performance`` is an error, never
``['p', 'e', ...]``.

``configs/schema.json`` is :func:`json_schema` written out (a test checks it is
current); editors use it through ``# yaml-language-server: $schema=...``.

Example:
    >>> validate({"model": "m.onnx", "calibration": "c.npz", "output": "o.onnx", "subset_size": "ten"},
    ...          "quantize")
    Traceback (most recent call last):
    ...
    rayq.errors.ConfigError: invalid quantize config: subset_size: expected an integer, got 'ten' (str)
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, create_model

from rayq.core.plan import (
    ACTIVATION_ESTIMATORS,
    BIAS_CORRECTIONS,
    OVERFLOW_FIXES,
    PRESETS,
    TARGET_DEVICES,
)
from rayq.errors import ConfigError

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # strict floats still take integers
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
Seconds = Annotated[float, Strict(), Field(gt=0)]
Preset = Literal[PRESETS]
Estimator = Literal[ACTIVATION_ESTIMATORS]
Reference = Annotated[str, Strict(), Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
                                           description="a 'package.module:function' reference")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)


class SubgraphModel(_Model):
    """Nodes on every path from ``inputs`` to ``outputs`` (inclusive)."""

    inputs: tuple[Str, ...] = ()
    outputs: tuple[Str, ...] = ()


class IgnoredScopeModel(_Model):
    """``ignored_scope``: nodes kept in FP32 (:class:`rayq.IgnoredScope`)."""

    names: tuple[Str, ...] = Field((), description="exact node names")
    patterns: tuple[Str, ...] = Field((), description="regular expressions, full-matched against node names")
    types: tuple[Str, ...] = Field((), description="op types")
    subgraphs: tuple[SubgraphModel, ...] = ()
    validate_: Bool = Field(True, alias="validate", description="a rule that matches no node is an error")


class SmoothQuantAlphasModel(_Model):
    """``advanced.smooth_quant_alphas``: :class:`rayq.AdvancedSmoothQuantParameters` (NNCF's)."""

    convolution: Float = -1
    matmul: Float = 0.95


class BiasCorrectionParamsModel(_Model):
    """``advanced.bias_correction_params``: :class:`rayq.AdvancedBiasCorrectionParameters` (NNCF's)."""

    apply_for_all_nodes: Bool = False
    threshold: Float | None = None


class AdvancedModel(_Model):
    """``advanced``: :class:`rayq.AdvancedQuantizationParameters`."""

    activation_estimator: Estimator | None = None
    quantile: Annotated[float, Strict(), Field(gt=0, lt=0.5)] = 1e-4
    overflow_fix: Literal[(*OVERFLOW_FIXES, "first_layer_only")] | None = None
    per_channel: Bool = True
    smooth_quant_alpha: Annotated[float, Strict(), Field(le=1)] | None = None
    bias_correction_iterations: Int = 2
    batch_size: PositiveInt | None = None
    disable_bias_correction: Bool = False
    smooth_quant_alphas: SmoothQuantAlphasModel = Field(default_factory=lambda: SmoothQuantAlphasModel())
    bias_correction_params: BiasCorrectionParamsModel = Field(default_factory=lambda: BiasCorrectionParamsModel())
    quantize_outputs: Bool = False
    inplace_statistics: Bool = True
    disable_channel_alignment: Bool = True
    batchwise_statistics: Bool | None = None


class _Plan(_Model):
    """Fields of the base quantization plan, shared by quantize and search."""

    model: Str = Field(description="FP32 model: .onnx, or OpenVINO IR .xml")
    calibration: Str = Field(description="calibration data: .npz, .npy or Parquet")
    preset: Preset | None = None
    target_device: Literal[TARGET_DEVICES] = "ANY"
    subset_size: PositiveInt = 300
    fast_bias_correction: Bool | None = True
    model_type: Literal["transformer"] | None = None
    ignored_scope: IgnoredScopeModel = Field(default_factory=IgnoredScopeModel)
    advanced: AdvancedModel = Field(default_factory=AdvancedModel)
    num_workers: PositiveInt | None = None
    address: Str | None = None


class QuantizeModel(_Plan):
    """``rayq quantize`` (:class:`rayq.api.config.QuantizeConfig`)."""

    command: Literal["quantize"] | None = None
    output: Str = Field(description="INT8 model file (.onnx/.xml) or folder")
    output_format: Literal["onnx", "openvino"] | None = None
    validation: Str | None = None
    validation_fn: Reference | None = None
    latency_batch: PositiveInt = 1


class SearchModel(_Plan):
    """``rayq search`` (:class:`rayq.api.config.SearchConfig`)."""

    command: Literal["search"] | None = None
    validation: Str = Field(description="validation data; its raw items are passed to validation_fn")
    validation_fn: Reference
    output: Str | None = None
    max_drop: Annotated[float, Strict(), Field(ge=0)] = 0.01
    drop_type: Literal["absolute", "relative"] = "absolute"
    target: Literal["onnxruntime", "openvino"] | None = None
    n_trials: Annotated[int, Strict(), Field(ge=0)] = 32
    timeout: Seconds | None = None
    validation_timeout: Seconds | None = Field(
        None, description="seconds one validation call may take (null: 10x the FP32 validation, at least 60)")
    worker_resources: dict[Str, Any] | None = None
    storage: Str | None = None
    study_name: Str | None = None
    seed: Int = 0
    presets: tuple[Preset, ...] | None = None  # None: only `preset` when given, else all
    estimators: tuple[Estimator, ...] = ("mean_minmax", "minmax", "quantile", "histogram_mse")
    bias_corrections: tuple[Literal[BIAS_CORRECTIONS], ...] = ("fast", "none")
    smooth_quant_alphas: tuple[Float | None, ...] | None = None
    explore: Bool = True
    generation_size: PositiveInt = 4
    early_stop: Bool = Field(
        True, description="stop a candidate's validation once its drop is sure to exceed max_drop "
        "(needs per-item values whose mean is the metric)")


#: Sweep ``defaults`` and entries take any search field, each optional.
SweepDefaultsModel = create_model(
    "SweepDefaultsModel", __base__=_Model, __doc__="``defaults`` of a sweep: any search field, shared by every entry.",
    **{name: (info.annotation, Field(None, description=info.description))
       for name, info in SearchModel.model_fields.items() if name != "command"})

SweepEntryModel = create_model(
    "SweepEntryModel", __base__=SweepDefaultsModel,
    __doc__="One ``models`` entry of a sweep: ``model`` or ``glob``, an optional ``name``, search fields.",
    glob=(Str | None, Field(None, description="a pattern of model paths (instead of model)")),
    name=(Str | None, Field(None, description="the entry's output folder name (default: the file stem)")))


class SweepModel(_Model):
    """``rayq sweep`` (:class:`rayq.api.config.SweepConfig`)."""

    command: Literal["sweep"] | None = None
    models: Annotated[list[Str | SweepEntryModel], Field(min_length=1)]
    output: Str
    defaults: SweepDefaultsModel = Field(default_factory=SweepDefaultsModel)
    max_concurrent: PositiveInt = 2
    address: Str | None = None


MODELS: dict[str, type[_Model]] = {"quantize": QuantizeModel, "search": SearchModel, "sweep": SweepModel}

_EXPECTED = {  # pydantic error type -> what the field expects, in words
    "int_type": "an integer", "int_parsing": "an integer", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
    "tuple_type": "a list", "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping", "none_required": "null",
    "string_pattern_mismatch": "a 'package.module:function' reference",
}


_UNION_TAGS = {"str", "int", "float", "bool", "none", "dict", "list", "tuple", "literal"}


def _field_loc(loc: tuple) -> tuple:
    """The error location without pydantic's union-member tags (``str``, ``SweepEntryModel``...)."""
    return tuple(p for p in loc if not (isinstance(p, str) and (
        p in _UNION_TAGS or "[" in p or p.endswith("Model") or p.startswith("function-"))))


def _where(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(config)"


def _messages(errors: list[dict]) -> list[str]:
    """One message per wrong field: what it expects (all union members) and the value given."""
    located = [(_field_loc(e["loc"]), e) for e in errors]
    deeper = {loc[:i] for loc, _ in located for i in range(len(loc))}
    expected: dict[tuple, list[str]] = {}
    messages: dict[tuple, str] = {}
    for loc, e in located:
        where, kind, value = _where(loc), e["type"], e.get("input")
        if kind == "extra_forbidden":
            messages[loc] = f"unknown field {where!r}"
        elif kind == "missing":
            messages[loc] = f"{where}: required field missing"
        elif loc not in deeper:  # a union member that fits better reports inside this value
            want = _expected(kind, e["msg"])
            expected.setdefault(loc, [])
            if want not in expected[loc]:
                expected[loc].append(want)
            messages[loc] = f"{where}: expected {' or '.join(expected[loc])}, got {value!r} ({type(value).__name__})"
    return list(messages.values())


def _expected(kind: str, msg: str) -> str:
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    msg = msg.removeprefix("Input should be ").removeprefix("Value error, ")
    if kind.startswith(("greater_than", "less_than")):
        return f"a number {msg}"
    if kind == "too_short":
        return msg.replace("List should have", "a list with").replace(" after validation", "").split(",")[0]
    return msg[:1].lower() + msg[1:]


def validate(data: Any, command: str) -> dict:
    """Check ``data`` against the schema of ``command``; returns the fields it sets.

    Raises:
        ConfigError: naming every wrong field, what it expects and the value given.
    """
    model = MODELS[command]
    if not isinstance(data, dict):
        raise ConfigError(f"a {command} config must be a mapping of field names to values, "
                          f"got {type(data).__name__}: {data!r:.80}")
    try:
        checked = model.model_validate(data)
    except ValidationError as exc:
        errors = _messages(exc.errors(include_url=False))
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        top_unknown = any(e["type"] == "extra_forbidden" and len(e["loc"]) == 1 for e in exc.errors())
        hint = f"; valid fields: {sorted(model.model_fields)}" if top_unknown else ""
        raise ConfigError(f"invalid {command} config: {'; '.join(errors[:5])}{more}{hint}") from None
    return checked.model_dump(by_alias=True, exclude_unset=True, exclude={"command"})


def json_schema() -> dict:
    """The JSON Schema of a config file (any of the three commands), as published in
    ``configs/schema.json``."""
    defs: dict[str, Any] = {}
    variants = []
    for command, model in MODELS.items():
        schema = model.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[model.__name__] = schema
        variants.append({"$ref": f"#/$defs/{model.__name__}"})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "rayq config",
        "description": "A rayq quantize, search or sweep config (configs/README.md). Generated from "
                       "rayq.api.config_schema; regenerate with `python -m rayq.api.config_schema > configs/schema.json`.",
        "anyOf": variants,
        "$defs": dict(sorted(defs.items())),
    }


def json_schema_text() -> str:
    """:func:`json_schema` as the text of ``configs/schema.json``."""
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(json_schema_text())
