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
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, create_model

from rayq.api.options import (
    OPTION_CLASSES,
    Bool,
    Estimator,
    Float,
    Int,
    PositiveInt,
    Preset,
    Str,
    messages,
)
from rayq.core.plan import OVERFLOW_FIXES, TARGET_DEVICES
from rayq.errors import ConfigError

if TYPE_CHECKING:  # a Literal of a tuple built elsewhere is valid for pydantic, not for a static checker
    OverflowFix: TypeAlias = str
    TargetDevice: TypeAlias = str
else:
    OverflowFix = Literal[(*OVERFLOW_FIXES, "first_layer_only")]
    TargetDevice = Literal[TARGET_DEVICES]

Reference = Annotated[
    str,
    Strict(),
    Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$", description="a 'package.module:function' reference"),
]


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
    overflow_fix: OverflowFix | None = None
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
    target_device: TargetDevice = "ANY"
    subset_size: PositiveInt = 300
    fast_bias_correction: Bool | None = True
    model_type: Literal["transformer"] | None = None
    ignored_scope: IgnoredScopeModel = Field(default_factory=lambda: IgnoredScopeModel())
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


#: The option fields of a search (:mod:`rayq.api.options`), flat in a config file.
OPTION_FIELDS: dict[str, Any] = {
    name: (info.annotation, info) for cls in OPTION_CLASSES for name, info in cls.model_fields.items()
}


class _SearchFields(_Plan):
    """The fields of ``rayq search`` that are not options: data, budget, output."""

    command: Literal["search"] | None = None
    validation: Str = Field(description="validation data; its raw items are passed to validation_fn")
    validation_fn: Reference
    output: Str | None = None
    max_drop: Annotated[float, Strict(), Field(ge=0)] = 0.01
    drop_type: Literal["absolute", "relative"] = "absolute"
    convert_to: Literal["onnx", "openvino"] | None = Field(
        None, description="what a framework model is converted to (null: onnx for target onnxruntime, else openvino)"
    )


#: ``rayq search`` (:class:`rayq.api.config.SearchConfig`): the fields above plus every option field.
SearchModel = create_model(
    "SearchModel",
    __base__=_SearchFields,
    __doc__="``rayq search`` (:class:`rayq.api.config.SearchConfig`).",
    **OPTION_FIELDS,
)


#: Sweep ``defaults`` and entries take any search field, each optional.
_SWEEP_FIELDS: dict[str, Any] = {
    name: (info.annotation, Field(None, description=info.description))
    for name, info in SearchModel.model_fields.items()
    if name != "command"
}
if TYPE_CHECKING:  # built at run time from the search fields; a static checker sees their base classes

    class SweepDefaultsModel(_Model): ...

    class SweepEntryModel(SweepDefaultsModel): ...
else:
    SweepDefaultsModel = create_model(
        "SweepDefaultsModel",
        __base__=_Model,
        __doc__="``defaults`` of a sweep: any search field, shared by every entry.",
        **_SWEEP_FIELDS,
    )

    SweepEntryModel = create_model(
        "SweepEntryModel",
        __base__=SweepDefaultsModel,
        __doc__="One ``models`` entry of a sweep: ``model`` or ``glob``, an optional ``name``, search fields.",
        glob=(Str | None, Field(None, description="a pattern of model paths (instead of model)")),
        name=(Str | None, Field(None, description="the entry's output folder name (default: the file stem)")),
    )


class SweepModel(_Model):
    """``rayq sweep`` (:class:`rayq.api.config.SweepConfig`)."""

    command: Literal["sweep"] | None = None
    models: Annotated[list[Str | SweepEntryModel], Field(min_length=1)]
    output: Str
    defaults: SweepDefaultsModel = Field(default_factory=SweepDefaultsModel)
    max_concurrent: PositiveInt = 2
    address: Str | None = None


MODELS: dict[str, type[_Model]] = {"quantize": QuantizeModel, "search": SearchModel, "sweep": SweepModel}


def validate(data: Any, command: str) -> dict:
    """Check ``data`` against the schema of ``command``; returns the fields it sets.

    Raises:
        ConfigError: naming every wrong field, what it expects and the value given.
    """
    model = MODELS[command]
    if not isinstance(data, dict):
        raise ConfigError(
            f"a {command} config must be a mapping of field names to values, got {type(data).__name__}: {data!r:.80}"
        )
    try:
        checked = model.model_validate(data)
    except ValidationError as exc:
        errors = messages(exc.errors(include_url=False))
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
    for model in MODELS.values():
        schema = model.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[model.__name__] = schema
        variants.append({"$ref": f"#/$defs/{model.__name__}"})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "rayq config",
        "description": "A rayq quantize, search or sweep config (configs/README.md). Generated from "
        "rayq.api.config_schema; regenerate with "
        "`python -m rayq.api.config_schema > configs/schema.json`.",
        "anyOf": variants,
        "$defs": dict(sorted(defs.items())),
    }


def json_schema_text() -> str:
    """:func:`json_schema` as the text of ``configs/schema.json``."""
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(json_schema_text())
