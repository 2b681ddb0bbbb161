"""NNCF's argument objects, accepted where rayq's are: converted field by field or refused.

Code written for NNCF may hand rayq NNCF's own objects (an ``nncf.IgnoredScope``, an
``nncf.AdvancedQuantizationParameters``, ...), for instance when only part of a
script swapped ``import nncf`` for ``import rayq as nncf``. They are recognised by
class name and fields (duck typing: rayq never imports nncf) and converted to rayq's
values; a field whose value rayq cannot honour raises a :class:`~rayq.errors.ConfigError`
naming it, never a raw ``AttributeError`` or ``TypeError``.

Example:
    >>> advanced_parameters({"overflow_fix": "disable"}).overflow_fix
    'disable'
    >>> check_mode("fp8_e4m3")
    Traceback (most recent call last):
    ...
    rayq.errors.ConfigError: mode='fp8_e4m3' is not supported: rayq quantizes to INT8 only (use mode=None)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rayq.core.advanced import (
    AdvancedAccuracyRestorerParameters,
    AdvancedBiasCorrectionParameters,
    AdvancedSmoothQuantParameters,
)
from rayq.core.enums import plain
from rayq.core.plan import AdvancedQuantizationParameters
from rayq.core.scope import IgnoredScope, Subgraph
from rayq.errors import ConfigError

INT8_MODES = (None, "int8")

#: NNCF range-estimator (min statistic, aggregator), (max statistic, aggregator) -> rayq estimator.
_ESTIMATORS = {
    (("min", "min"), ("max", "max")): "minmax",
    (("min", "mean"), ("max", "mean")): "mean_minmax",
    (("quantile", "mean"), ("quantile", "mean")): "quantile",
    (("raw", "histogram"), ("raw", "histogram")): "histogram_mse",
}
#: Fields of NNCF's AdvancedQuantizationParameters copied as they are.
_SAME = (
    "overflow_fix",
    "quantize_outputs",
    "inplace_statistics",
    "disable_channel_alignment",
    "disable_bias_correction",
    "batchwise_statistics",
    "smooth_quant_alpha",
)


def _fields(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}


def _foreign(obj: Any, name: str) -> bool:
    """An object of another library's class ``name`` (NNCF's), with readable fields."""
    return type(obj).__name__ == name and (dataclasses.is_dataclass(obj) or hasattr(obj, "__dict__"))


def check_mode(mode: Any) -> None:
    """Accept NNCF's ``mode=None`` (INT8) or ``QuantizationMode.INT8``; refuse FP8 and others."""
    if plain(mode) not in INT8_MODES:
        raise ConfigError(f"mode={plain(mode)!r} is not supported: rayq quantizes to INT8 only (use mode=None)")


def ignored_scope(scope: Any) -> IgnoredScope | None:
    """``rayq.IgnoredScope``, a mapping or an ``nncf.IgnoredScope`` -> ``rayq.IgnoredScope``."""
    if scope is None or isinstance(scope, IgnoredScope):
        return scope
    if isinstance(scope, dict):
        return IgnoredScope.from_dict(scope)
    if not _foreign(scope, "IgnoredScope"):
        raise ConfigError(f"ignored_scope must be a rayq.IgnoredScope, got {type(scope).__name__}")
    data = _fields(scope)
    unknown = set(data) - {"names", "patterns", "types", "subgraphs", "validate"}
    if unknown:
        raise ConfigError(f"ignored_scope field(s) {sorted(unknown)} are not supported by rayq")
    subs = tuple(Subgraph(tuple(s.inputs), tuple(s.outputs)) for s in data.get("subgraphs") or ())
    return IgnoredScope(
        names=tuple(data.get("names") or ()),
        patterns=tuple(data.get("patterns") or ()),
        types=tuple(data.get("types") or ()),
        subgraphs=subs,
        validate=bool(data.get("validate", True)),
    )


def advanced_parameters(adv: Any) -> AdvancedQuantizationParameters | None:
    """rayq's or NNCF's ``AdvancedQuantizationParameters`` (or a mapping) -> rayq's."""
    if adv is None or isinstance(adv, AdvancedQuantizationParameters):
        return adv
    if isinstance(adv, dict):
        return AdvancedQuantizationParameters.from_dict(adv)
    if not _foreign(adv, "AdvancedQuantizationParameters"):
        raise ConfigError(
            f"advanced_parameters must be a rayq.AdvancedQuantizationParameters, got {type(adv).__name__}"
        )
    data = _fields(adv)
    out: dict[str, Any] = {k: plain(data.pop(k)) for k in _SAME if k in data}
    if "smooth_quant_alphas" in data:
        out["smooth_quant_alphas"] = _nested(data.pop("smooth_quant_alphas"), AdvancedSmoothQuantParameters)
    if "bias_correction_params" in data:
        out["bias_correction_params"] = _nested(data.pop("bias_correction_params"), AdvancedBiasCorrectionParameters)
    est = _estimator(data.pop("activations_range_estimator_params", None), "activations_range_estimator_params")
    if est is not None:
        out["activation_estimator"], quantile = est
        out["quantile"] = quantile if quantile is not None else 1e-4
    if _estimator(data.pop("weights_range_estimator_params", None), "weights_range_estimator_params"):
        raise ConfigError(
            "weights_range_estimator_params is not supported: rayq takes weight ranges from "
            "the weights' per-channel min/max"
        )
    per_channel = _quant_params(data.pop("weights_quantization_params", None), "weights_quantization_params")
    if per_channel is not None:
        out["per_channel"] = per_channel
    if _quant_params(data.pop("activations_quantization_params", None), "activations_quantization_params"):
        raise ConfigError(
            "activations_quantization_params.per_channel=True is not supported: activations are quantized per tensor"
        )
    rule = data.pop("quantizer_propagation_rule", None)
    if rule is not None and getattr(rule, "name", rule) != "MERGE_ALL_IN_ONE":
        raise ConfigError(
            f"quantizer_propagation_rule={getattr(rule, 'name', rule)} is not supported "
            "(rayq merges quantizers like MERGE_ALL_IN_ONE)"
        )
    if data.pop("backend_params", None):
        raise ConfigError("backend_params is not supported by rayq")
    if data:
        raise ConfigError(f"advanced_parameters field(s) {sorted(data)} are not supported by rayq")
    return AdvancedQuantizationParameters(**out)


def compat_advanced(advanced: Any, disable_bias_correction: bool | None = None) -> AdvancedQuantizationParameters:
    """rayq's advanced parameters from rayq's, NNCF's or none, with the bias-correction switch applied."""
    adv = advanced_parameters(advanced) or AdvancedQuantizationParameters()
    if disable_bias_correction is not None:
        adv = dataclasses.replace(adv, disable_bias_correction=bool(disable_bias_correction))
    return adv


def accuracy_restorer_parameters(params: Any) -> AdvancedAccuracyRestorerParameters:
    """rayq's or NNCF's ``AdvancedAccuracyRestorerParameters`` (or None, a mapping) -> rayq's."""
    if params is None:
        return AdvancedAccuracyRestorerParameters()
    if isinstance(params, AdvancedAccuracyRestorerParameters):
        return params
    if isinstance(params, dict) or _foreign(params, "AdvancedAccuracyRestorerParameters"):
        return _nested(params, AdvancedAccuracyRestorerParameters, "advanced_accuracy_restorer_parameters")
    raise ConfigError(
        "advanced_accuracy_restorer_parameters must be a rayq.AdvancedAccuracyRestorerParameters, "
        f"got {type(params).__name__}"
    )


def _nested(obj: Any, cls: type, name: str | None = None):
    if isinstance(obj, cls):
        return obj
    data = dict(obj) if isinstance(obj, dict) else _fields(obj)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{name or cls.__name__} field(s) {sorted(unknown)} are not supported by rayq")
    return cls(**{k: plain(v) for k, v in data.items()})


def _estimator(params: Any, name: str) -> tuple[str, float | None] | None:
    """NNCF ``RangeEstimatorParameters`` -> (rayq estimator, quantile); None for NNCF's default."""
    if params is None:
        return None
    sides = [getattr(params, side, None) for side in ("min", "max")]
    key = tuple((plain(getattr(s, "statistics_type", None)), plain(getattr(s, "aggregator_type", None))) for s in sides)
    if any(getattr(s, "clipping_value", None) is not None for s in sides):
        raise ConfigError(f"{name}: clipping_value is not supported by rayq")
    if key == ((None, None), (None, None)):
        return None
    if key not in _ESTIMATORS:
        raise ConfigError(
            f"{name} {key} has no rayq equivalent; use AdvancedQuantizationParameters("
            "activation_estimator=...) with one of minmax, mean_minmax, quantile, histogram_mse"
        )
    return _ESTIMATORS[key], getattr(sides[0], "quantile_outlier_prob", None)


def _quant_params(params: Any, name: str) -> bool | None:
    """NNCF ``QuantizationParameters`` -> the per-channel flag; other settings must be INT8 defaults."""
    if params is None:
        return None
    data = _fields(params)
    if data.get("num_bits") not in (None, 8):
        raise ConfigError(f"{name}.num_bits={data['num_bits']} is not supported: rayq quantizes to 8 bits")
    mode = plain(data.get("mode"))
    if name.startswith("weights") and mode not in (None, "symmetric"):
        raise ConfigError(f"{name}.mode={mode!r} is not supported: rayq's weights are symmetric")
    if name.startswith("activations") and mode is not None:
        raise ConfigError(
            f"{name}.mode={mode!r} is not supported: choose the preset (performance: symmetric, "
            "mixed: asymmetric activations)"
        )
    for key in ("signedness_to_force", "narrow_range"):
        if data.get(key) is not None:
            raise ConfigError(f"{name}.{key} is not supported by rayq")
    unknown = set(data) - {"num_bits", "mode", "signedness_to_force", "narrow_range", "per_channel"}
    if unknown:
        raise ConfigError(f"{name} field(s) {sorted(unknown)} are not supported by rayq")
    return data.get("per_channel")
