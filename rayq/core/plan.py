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

from rayq.core.advanced import AdvancedBiasCorrectionParameters, AdvancedSmoothQuantParameters
from rayq.core.enums import plain
from rayq.core.scope import IgnoredScope
from rayq.errors import ConfigError

PRESETS = ("performance", "mixed")
MODEL_TYPES = (None, "transformer")
TARGET_DEVICES = ("ANY", "CPU", "GPU", "NPU", "CPU_SPR")
BIAS_CORRECTIONS = ("fast", "exact", "none")
OVERFLOW_FIXES = ("first_layer", "enable", "disable")
ACTIVATION_ESTIMATORS = ("minmax", "mean_minmax", "quantile", "histogram_mse")


#: NNCF field names that rayq accepts only at the value it implements (others: ConfigError).
NNCF_FIXED = {"quantize_outputs": False, "disable_channel_alignment": True}


def default_overflow_fix(target_device: str) -> str:
    """The overflow fix a target device gets unless one is given.

    ``CPU_SPR`` (Sapphire Rapids: AMX and AVX-512 VNNI accumulate u8 x s8 products in
    int32 without saturating) gets ``disable``: full 8-bit weights. Every other device
    gets ``first_layer``, NNCF's default for CPUs whose AVX2/AVX-512 kernels saturate.

    Example:
        >>> default_overflow_fix("CPU_SPR"), default_overflow_fix("ANY")
        ('disable', 'first_layer')
    """
    return "disable" if plain(target_device) == "CPU_SPR" else "first_layer"


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
        overflow_fix: ``first_layer``, ``enable`` or ``disable`` (or a
            :class:`rayq.OverflowFix`): 7-bit weight range that avoids u8*s8
            accumulator saturation on AVX2 CPUs without VNNI. None (default): the
            target device's default (:func:`default_overflow_fix`).
        per_channel: Per-channel weight quantization (default True).
        smooth_quant_alpha: SmoothQuant migration strength for transformers; None
            uses 0.95 when ``model_type="transformer"``, a negative value disables it.
        bias_correction_iterations: Passes of the exact bias correction.
        batch_size: Calibration batch size (None: automatic, 1 if the model has a
            fixed batch dimension).
        disable_bias_correction: NNCF's switch: True applies no bias correction.
        smooth_quant_alphas: NNCF's per-op-type SmoothQuant strengths
            (:class:`rayq.AdvancedSmoothQuantParameters`); ``matmul`` is the alpha of
            transformers unless ``smooth_quant_alpha`` is given.
        bias_correction_params: :class:`rayq.AdvancedBiasCorrectionParameters`.
        quantize_outputs, disable_channel_alignment: NNCF's fields, accepted at their
            defaults (False, True) only.
        inplace_statistics, batchwise_statistics: NNCF's fields, accepted and without
            effect: rayq always reduces statistics inside the graph, per item.

    Example:
        >>> AdvancedQuantizationParameters(activation_estimator="quantile", overflow_fix="disable")
        ... # doctest: +ELLIPSIS
        AdvancedQuantizationParameters(activation_estimator='quantile', ...)
    """

    activation_estimator: str | None = None
    quantile: float = 1e-4
    overflow_fix: str | None = None
    per_channel: bool = True
    smooth_quant_alpha: float | None = None
    bias_correction_iterations: int = 2
    batch_size: int | None = None
    disable_bias_correction: bool = False
    smooth_quant_alphas: AdvancedSmoothQuantParameters = field(default_factory=AdvancedSmoothQuantParameters)
    bias_correction_params: AdvancedBiasCorrectionParameters = field(default_factory=AdvancedBiasCorrectionParameters)
    quantize_outputs: bool = False
    inplace_statistics: bool = True
    disable_channel_alignment: bool = True
    batchwise_statistics: bool | None = None

    def __post_init__(self) -> None:
        for name in ("activation_estimator", "overflow_fix"):
            object.__setattr__(self, name, plain(getattr(self, name)))
        if self.activation_estimator is not None:
            _check("activation_estimator", self.activation_estimator, ACTIVATION_ESTIMATORS)
        if self.overflow_fix is not None:
            _check("overflow_fix", self.overflow_fix, OVERFLOW_FIXES)
        for name, supported in NNCF_FIXED.items():
            if getattr(self, name) != supported:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not supported by rayq (only {supported})")
        for name, cls in (
            ("smooth_quant_alphas", AdvancedSmoothQuantParameters),
            ("bias_correction_params", AdvancedBiasCorrectionParameters),
        ):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, _nested(cls, name, getattr(self, name)))
            elif not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a rayq.{cls.__name__}, got {type(getattr(self, name)).__name__}")
        if not 0 < self.quantile < 0.5:
            raise ConfigError(f"quantile={self.quantile} must be in (0, 0.5)")
        if self.smooth_quant_alpha is not None and self.smooth_quant_alpha > 1:
            raise ConfigError(f"smooth_quant_alpha={self.smooth_quant_alpha} must be <= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")

    @classmethod
    def from_dict(cls, data: dict | None) -> AdvancedQuantizationParameters:
        """Build from a mapping (a config file's ``advanced:``); nested mappings are allowed."""
        data = dict(data or {})
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown advanced_parameters field(s): {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**data)


def _nested(cls, name: str, data: dict):
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ConfigError(f"unknown {name} field(s): {sorted(unknown)}; valid: {[f.name for f in fields(cls)]}")
    return cls(**data)


@dataclass(frozen=True)
class QuantPlan:
    """Everything that decides how a model is quantized, as one value.

    Args:
        preset: ``performance`` (symmetric activations) or ``mixed`` (asymmetric).
        model_type: None or ``transformer`` (SmoothQuant, transformer placement).
        target_device: NNCF's target device. ``CPU_SPR`` leaves one input of each
            residual Add in FP32 and defaults ``overflow_fix`` to ``disable``; ``ANY``,
            ``CPU``, ``GPU`` and ``NPU`` give the same INT8 scheme (NNCF maps 8-bit
            GPU/NPU quantization to the CPU scheme).
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
        for f in fields(self):
            object.__setattr__(self, f.name, plain(getattr(self, f.name)))
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
        ``fast_bias_correction=None`` (or ``advanced.disable_bias_correction``) disables
        bias correction; ``advanced.overflow_fix=None`` takes the target device's default.
        """
        preset, model_type, target_device = plain(preset), plain(model_type), plain(target_device)
        _check("model_type", model_type, MODEL_TYPES)
        _check("target_device", target_device, TARGET_DEVICES)
        adv = advanced or AdvancedQuantizationParameters()
        if preset is None:
            preset = "mixed" if model_type == "transformer" else "performance"
        alpha = adv.smooth_quant_alpha
        if model_type == "transformer":
            alpha = adv.smooth_quant_alphas.matmul if alpha is None else alpha
        if alpha is not None and alpha < 0:
            alpha = None
        if model_type != "transformer" and adv.smooth_quant_alpha is None:
            alpha = None
        if fast_bias_correction is None or adv.disable_bias_correction:
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
            overflow_fix=adv.overflow_fix or default_overflow_fix(target_device),
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
