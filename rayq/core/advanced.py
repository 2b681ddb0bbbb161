"""NNCF's nested advanced-parameter objects, with NNCF's field names and defaults.

:class:`AdvancedSmoothQuantParameters` and :class:`AdvancedBiasCorrectionParameters`
are fields of :class:`rayq.AdvancedQuantizationParameters`;
:class:`AdvancedAccuracyRestorerParameters` is the
``advanced_accuracy_restorer_parameters=`` argument of
:func:`rayq.quantize_with_accuracy_control`. Values rayq cannot honour are rejected
on creation with a :class:`~rayq.errors.ConfigError` that names the field.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from rayq.core.enums import plain
from rayq.errors import ConfigError

#: NNCF's default for ``max_num_iterations`` ("as many as there are quantized layers").
UNLIMITED = sys.maxsize
RESTORE_MODES = ("activations_and_weights",)


@dataclass(frozen=True)
class AdvancedSmoothQuantParameters:
    """SmoothQuant migration strength per op type; a negative value disables it there.

    rayq smooths the inputs of MatMuls with a constant weight only, so ``convolution``
    must stay negative (NNCF's default, -1).

    Example:
        >>> AdvancedSmoothQuantParameters(matmul=0.5).matmul
        0.5
    """

    convolution: float = -1
    matmul: float = 0.95

    def __post_init__(self) -> None:
        if self.convolution >= 0:
            raise ConfigError(
                f"smooth_quant_alphas.convolution={self.convolution}: rayq applies SmoothQuant to "
                "MatMul inputs only; leave it negative (disabled)"
            )
        if self.matmul > 1:
            raise ConfigError(f"smooth_quant_alphas.matmul={self.matmul} must be <= 1 (negative disables it)")


@dataclass(frozen=True)
class AdvancedBiasCorrectionParameters:
    """Bias-correction knobs; rayq corrects the bias of ops that have one, without threshold.

    Example:
        >>> AdvancedBiasCorrectionParameters().apply_for_all_nodes
        False
    """

    apply_for_all_nodes: bool = False
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.apply_for_all_nodes:
            raise ConfigError(
                "bias_correction_params.apply_for_all_nodes=True is not supported: rayq corrects "
                "the bias of ops that have one"
            )
        if self.threshold is not None:
            raise ConfigError("bias_correction_params.threshold is not supported: rayq applies every correction")


@dataclass(frozen=True)
class AdvancedAccuracyRestorerParameters:
    """Knobs of :func:`rayq.quantize_with_accuracy_control`, with NNCF's names.

    Args:
        max_num_iterations: NNCF's cap on reverted layers; only the default (no cap) is
            supported, since rayq evaluates fallback sets in parallel instead of one
            layer per iteration.
        tune_hyperparams: Must be False; use :func:`rayq.search`, which searches preset,
            range estimator, bias correction and SmoothQuant alpha with the fallback set.
        ranking_subset_size: Validation items used to rank layers (default 300).
        num_ranking_workers: Workers of the search when ``num_workers`` is not given.
        intermediate_model_dir: Where the search writes its outputs when ``output``
            is not given (the model, ``trials.parquet``, ``result.json``).
        restore_mode: ``activations_and_weights`` (rayq reverts whole ops).

    Example:
        >>> AdvancedAccuracyRestorerParameters(ranking_subset_size=100).ranking_subset_size
        100
    """

    max_num_iterations: int = UNLIMITED
    tune_hyperparams: bool = False
    ranking_subset_size: int | None = None
    num_ranking_workers: int | None = None
    intermediate_model_dir: str | None = None
    restore_mode: str = "activations_and_weights"

    def __post_init__(self) -> None:
        object.__setattr__(self, "restore_mode", plain(self.restore_mode))
        if self.max_num_iterations != UNLIMITED:
            raise ConfigError(
                f"max_num_iterations={self.max_num_iterations} is not supported: rayq evaluates "
                "fallback sets in parallel; bound the time with rayq.search(timeout=...)"
            )
        if self.tune_hyperparams:
            raise ConfigError(
                "tune_hyperparams=True is not supported here: rayq.search() tunes preset, range "
                "estimator, bias correction and SmoothQuant alpha together with the fallback set"
            )
        if self.restore_mode not in RESTORE_MODES:
            raise ConfigError(
                f"restore_mode={self.restore_mode!r} is not supported; rayq reverts whole ops "
                f"(choose one of {list(RESTORE_MODES)})"
            )
        for name in ("ranking_subset_size", "num_ranking_workers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name}={value!r} must be a positive integer")
