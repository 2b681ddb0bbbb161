"""The quantization plan: a frozen, hashable, JSON-serialisable value.

A :class:`QuantPlan` says *how* to quantize (preset, range estimator, bias
correction, SmoothQuant, ignored scope, FP32 fallback set). Building a model from
``(model, statistics, plan)`` is deterministic, so :meth:`QuantPlan.key` keys the
build cache and every search trial.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace

from rayq.core.scope import IgnoredScope
from rayq.errors import ConfigError

PRESETS = ("performance", "mixed")
MODEL_TYPES = (None, "transformer")
TARGET_DEVICES = ("ANY", "CPU", "GPU", "NPU", "CPU_SPR")
BIAS_CORRECTIONS = ("fast", "exact", "none")
OVERFLOW_FIXES = ("first_layer", "enable", "disable")
ACTIVATION_ESTIMATORS = ("minmax", "mean_minmax", "quantile", "histogram_mse")


def _check(name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {list(allowed)}")


@dataclass(frozen=True)
class AdvancedQuantizationParameters:
    """Advanced knobs, mirroring ``nncf.AdvancedQuantizationParameters``.

    Args:
        activation_estimator: Range estimator for activations
            (``minmax``, ``mean_minmax``, ``quantile``, ``histogram_mse``).
        quantile: Outlier probability for the ``quantile`` estimator.
        overflow_fix: ``first_layer`` (default), ``enable`` or ``disable``: 7-bit
            weight range that avoids u8*s8 accumulator saturation on AVX2 CPUs
            without VNNI.
        per_channel: Per-channel weight quantization (default True).
        smooth_quant_alpha: SmoothQuant migration strength for transformers; None
            uses 0.95 when ``model_type="transformer"``, a negative value disables it.
        bias_correction_iterations: Passes of the exact bias correction.
        batch_size: Calibration batch size (None: automatic, 1 if the model has a
            fixed batch dimension).

    Example:
        >>> AdvancedQuantizationParameters(activation_estimator="quantile", overflow_fix="disable")
        ... # doctest: +ELLIPSIS
        AdvancedQuantizationParameters(activation_estimator='quantile', ...)
    """

    activation_estimator: str | None = None
    quantile: float = 1e-4
    overflow_fix: str = "first_layer"
    per_channel: bool = True
    smooth_quant_alpha: float | None = None
    bias_correction_iterations: int = 2
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.activation_estimator is not None:
            _check("activation_estimator", self.activation_estimator, ACTIVATION_ESTIMATORS)
        _check("overflow_fix", self.overflow_fix, OVERFLOW_FIXES)
        if not 0 < self.quantile < 0.5:
            raise ConfigError(f"quantile={self.quantile} must be in (0, 0.5)")
        if self.smooth_quant_alpha is not None and self.smooth_quant_alpha > 1:
            raise ConfigError(f"smooth_quant_alpha={self.smooth_quant_alpha} must be <= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")

    @classmethod
    def from_dict(cls, data: dict | None) -> AdvancedQuantizationParameters:
        data = dict(data or {})
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown advanced_parameters field(s): {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**data)


@dataclass(frozen=True)
class QuantPlan:
    """Everything that decides how a model is quantized, as one value.

    Args:
        preset: ``performance`` (symmetric activations) or ``mixed`` (asymmetric).
        model_type: None or ``transformer`` (SmoothQuant, transformer placement).
        target_device: NNCF-style target device name (recorded; placement is the same).
        activation_estimator: Activation range estimator.
        quantile: Outlier probability for the ``quantile`` estimator.
        bias_correction: ``fast``, ``exact`` or ``none``.
        bias_correction_iterations: Passes of the exact variant.
        smooth_quant_alpha: SmoothQuant strength, None when disabled.
        overflow_fix: See :class:`AdvancedQuantizationParameters`.
        per_channel: Per-channel weight scales.
        ignored_scope: Nodes that are never quantized.
        fallback: Names of quantizable ops reverted to FP32 (sorted tuple).

    Example:
        >>> p = QuantPlan.create(preset="mixed", fallback=["conv2", "conv1"])
        >>> p.fallback, len(p.key())
        (('conv1', 'conv2'), 16)
    """

    preset: str = "performance"
    model_type: str | None = None
    target_device: str = "ANY"
    activation_estimator: str = "mean_minmax"
    quantile: float = 1e-4
    bias_correction: str = "fast"
    bias_correction_iterations: int = 2
    smooth_quant_alpha: float | None = None
    overflow_fix: str = "first_layer"
    per_channel: bool = True
    ignored_scope: IgnoredScope = field(default_factory=IgnoredScope)
    fallback: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check("preset", self.preset, PRESETS)
        _check("model_type", self.model_type, MODEL_TYPES)
        _check("target_device", self.target_device, TARGET_DEVICES)
        _check("activation_estimator", self.activation_estimator, ACTIVATION_ESTIMATORS)
        _check("bias_correction", self.bias_correction, BIAS_CORRECTIONS)
        _check("overflow_fix", self.overflow_fix, OVERFLOW_FIXES)
        if self.smooth_quant_alpha is not None and not 0.0 <= self.smooth_quant_alpha <= 1.0:
            raise ConfigError(f"smooth_quant_alpha={self.smooth_quant_alpha} must be in [0, 1]")
        object.__setattr__(self, "fallback", tuple(sorted(set(self.fallback))))

    @classmethod
    def create(
        cls,
        *,
        preset: str | None = None,
        model_type: str | None = None,
        target_device: str = "ANY",
        fast_bias_correction: bool | None = True,
        ignored_scope: IgnoredScope | None = None,
        advanced: AdvancedQuantizationParameters | None = None,
        fallback: list[str] | tuple[str, ...] = (),
    ) -> QuantPlan:
        """Build a plan from ``nncf.quantize``-style arguments, applying defaults.

        ``preset=None`` means ``mixed`` for transformers and ``performance`` otherwise;
        ``fast_bias_correction=None`` disables bias correction.
        """
        _check("model_type", model_type, MODEL_TYPES)
        adv = advanced or AdvancedQuantizationParameters()
        if preset is None:
            preset = "mixed" if model_type == "transformer" else "performance"
        alpha = adv.smooth_quant_alpha
        if model_type == "transformer":
            alpha = 0.95 if alpha is None else alpha
        if alpha is not None and alpha < 0:
            alpha = None
        if model_type != "transformer" and adv.smooth_quant_alpha is None:
            alpha = None
        if fast_bias_correction is None:
            bc = "none"
        else:
            bc = "fast" if fast_bias_correction else "exact"
        return cls(
            preset=preset,
            model_type=model_type,
            target_device=target_device,
            activation_estimator=adv.activation_estimator or "mean_minmax",
            quantile=adv.quantile,
            bias_correction=bc,
            bias_correction_iterations=adv.bias_correction_iterations,
            smooth_quant_alpha=alpha,
            overflow_fix=adv.overflow_fix,
            per_channel=adv.per_channel,
            ignored_scope=ignored_scope or IgnoredScope(),
            fallback=tuple(fallback),
        )

    @property
    def symmetric_activations(self) -> bool:
        return self.preset == "performance"

    def with_fallback(self, fallback) -> QuantPlan:
        return replace(self, fallback=tuple(fallback))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ignored_scope"] = self.ignored_scope.to_dict()
        data["fallback"] = list(self.fallback)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> QuantPlan:
        data = dict(data)
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown plan field(s): {sorted(unknown)}")
        data["ignored_scope"] = IgnoredScope.from_dict(data.get("ignored_scope"))
        data["fallback"] = tuple(data.get("fallback", ()))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> QuantPlan:
        return cls.from_dict(json.loads(text))

    def key(self) -> str:
        """A 16-hex-digit content hash of the plan."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
