"""``rayq.quantize_with_accuracy_control``: NNCF's accuracy-control entry point, run as
a :func:`rayq.search` restricted to the given preset and estimator (fallback sets only)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rayq import compat
from rayq.api.search import search
from rayq.compat import check_mode, compat_advanced
from rayq.core.advanced import AdvancedAccuracyRestorerParameters
from rayq.core.plan import AdvancedQuantizationParameters, QuantPlan
from rayq.core.scope import IgnoredScope
from rayq.tuning.result import SearchResult

log = logging.getLogger("rayq")


def quantize_with_accuracy_control(
    model: Any,
    calibration_dataset: Any,
    validation_dataset: Any,
    validation_fn: Callable,
    *,
    max_drop: float = 0.01,
    drop_type: str = "absolute",
    mode: str | None = None,
    preset: str | None = None,
    target_device: str = "ANY",
    subset_size: int = 300,
    fast_bias_correction: bool | None = True,
    model_type: str | None = None,
    convert_to: str | None = None,
    ignored_scope: IgnoredScope | None = None,
    advanced_quantization_parameters: AdvancedQuantizationParameters | None = None,
    advanced_accuracy_restorer_parameters: AdvancedAccuracyRestorerParameters | None = None,
    disable_bias_correction: bool | None = None,
    num_workers: int | None = None,
    target: str | None = None,
    output: str | None = None,
    validation_timeout: float | None = None,
    early_stop: bool = True,
) -> Any:
    """``nncf.quantize_with_accuracy_control`` with rayq's parallel search.

    Same signature and semantics as NNCF (``validation_fn(model, data)`` returns the
    metric or ``(metric, per_item_values)``; higher is better; relative drop is
    ``(fp32 - int8) / fp32``). Keeps the given preset and estimator, reverts the most
    harmful layers to FP32 (ranked in parallel, top-k candidates refined by bisection)
    and returns the chosen model (:mod:`rayq.tuning.selection`): within the budget and
    significantly faster than FP32 when one is. Like NNCF it always returns the
    restored model, and logs a warning when the budget is not met (the INT8 candidate
    with the smallest drop is returned), when most layers went back to FP32, or when
    the model is not significantly faster than FP32 on ``target``.

    A PyTorch, TensorFlow, TFLite or PaddlePaddle ``model`` is converted first
    (``convert_to`` as in :func:`search`).

    ``mode``, ``disable_bias_correction`` and the advanced parameters are as in
    :func:`rayq.quantize`. ``advanced_accuracy_restorer_parameters``
    (:class:`rayq.AdvancedAccuracyRestorerParameters`, or NNCF's) sets the ranking
    subset size, the workers (``num_ranking_workers`` when ``num_workers`` is None) and
    the output directory (``intermediate_model_dir`` when ``output`` is None).
    ``validation_timeout`` bounds each validation call as in :func:`search`, and
    ``early_stop`` (a rayq extension) stops hopeless candidates' validation early, as there.

    Example:
        >>> q = rayq.quantize_with_accuracy_control(model, calib, val, accuracy, max_drop=0.01)  # doctest: +SKIP
    """
    check_mode(mode)
    restorer = compat.accuracy_restorer_parameters(advanced_accuracy_restorer_parameters)
    adv = compat_advanced(advanced_quantization_parameters, disable_bias_correction)
    base = QuantPlan.create(preset=preset, model_type=model_type, fast_bias_correction=fast_bias_correction,
                            target_device=target_device, advanced=adv)
    result = search(
        model, calibration_dataset, validation_dataset, validation_fn, max_drop=max_drop, drop_type=drop_type,
        target=target, n_trials=None, num_workers=num_workers or restorer.num_ranking_workers,
        output=output or restorer.intermediate_model_dir, preset=base.preset,
        model_type=model_type, convert_to=convert_to, target_device=target_device, subset_size=subset_size,
        fast_bias_correction=fast_bias_correction, ignored_scope=ignored_scope,
        ranking_subset_size=restorer.ranking_subset_size or 300,
        advanced_parameters=adv, presets=(base.preset,),
        estimators=(base.activation_estimator,), bias_corrections=(base.bias_correction,),
        smooth_quant_alphas=(base.smooth_quant_alpha,) if base.model_type == "transformer" else None,
        explore=False, finalists=1, validation_timeout=validation_timeout, early_stop=early_stop)
    _warn_restored(result, result.n_quantizable)
    return result.model


def _warn_restored(result: SearchResult, n_ops: int) -> None:
    """NNCF's contract returns the restored model; say when it is hardly INT8 or not faster."""
    if result.status == "budget not met":
        log.warning("accuracy budget not met: best drop %.4f > max_drop %.4f; returning the most accurate "
                    "candidate", result.drop, result.max_drop)
    if n_ops and len(result.plan.fallback) * 2 > n_ops:
        log.warning("%d of %d quantizable layers went back to FP32: the returned model is mostly FP32",
                    len(result.plan.fallback), n_ops)
    if result.status == "no_speedup" or (result.speedup_high is not None and result.speedup_high <= 1.0):
        log.warning("the returned model is not significantly faster than FP32 on %s (%s)", result.target,
                    result.speedup_text)
