"""``rayq.quantize_with_accuracy_control``: NNCF's accuracy-control entry point, run as
a :func:`rayq.search` restricted to the given preset and estimator (fallback sets only)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rayq import compat
from rayq.api.options import Execution, SearchOptions, SearchSpace, resolve
from rayq.api.search import search
from rayq.compat import check_mode, compat_advanced
from rayq.core.advanced import AdvancedAccuracyRestorerParameters
from rayq.core.plan import AdvancedQuantizationParameters, QuantPlan
from rayq.core.scope import IgnoredScope
from rayq.errors import ConfigError
from rayq.tuning.result import SearchResult

log = logging.getLogger("rayq")


#: rayq's additions to NNCF's keywords, beyond the :class:`~rayq.api.options.Execution` fields:
#: ``mode`` and ``disable_bias_correction`` as in :func:`rayq.quantize`, ``convert_to`` as in
#: :func:`rayq.search`, ``output`` (the results folder) and ``early_stop`` (stop hopeless
#: candidates' validation early, as in :func:`rayq.search`).
EXTRA_KWARGS = frozenset({"mode", "disable_bias_correction", "convert_to", "output", "early_stop"})


def quantize_with_accuracy_control(
    model: Any,
    calibration_dataset: Any,
    validation_dataset: Any,
    validation_fn: Callable,
    *,
    max_drop: float = 0.01,
    drop_type: str = "absolute",
    preset: str | None = None,
    target_device: str = "ANY",
    subset_size: int = 300,
    fast_bias_correction: bool | None = True,
    model_type: str | None = None,
    ignored_scope: IgnoredScope | None = None,
    advanced_quantization_parameters: AdvancedQuantizationParameters | None = None,
    advanced_accuracy_restorer_parameters: AdvancedAccuracyRestorerParameters | None = None,
    execution: Execution | None = None,
    **kwargs: Any,
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
    the model is not significantly faster than FP32 on the target runtime.

    ``advanced_accuracy_restorer_parameters`` (:class:`rayq.AdvancedAccuracyRestorerParameters`,
    or NNCF's) sets the ranking subset size, the workers (``num_ranking_workers`` when
    ``execution.num_workers`` is None) and the output directory (``intermediate_model_dir``
    when ``output`` is None).

    rayq's own settings go behind ``execution=`` (:class:`rayq.Execution`: ``target``,
    ``num_workers``, ``validation_timeout``, ...), or flat as keywords (``num_workers=1``),
    with ``mode``, ``disable_bias_correction``, ``convert_to``, ``output`` and
    ``early_stop`` (see :data:`EXTRA_KWARGS`). A PyTorch, TensorFlow, TFLite or
    PaddlePaddle ``model`` is converted first.

    Example:
        >>> q = rayq.quantize_with_accuracy_control(model, calib, val, accuracy, max_drop=0.01)  # doctest: +SKIP
        >>> q = rayq.quantize_with_accuracy_control(model, calib, val, accuracy, max_drop=0.01,
        ...                                         execution=rayq.Execution(num_workers=4))   # doctest: +SKIP
    """
    fixed = sorted(set(kwargs) & ({*SearchSpace.model_fields, *SearchOptions.model_fields} - {"early_stop"}))
    if fixed:
        raise ConfigError(
            f"quantize_with_accuracy_control does not take {fixed}: it keeps the given preset and "
            f"estimator; rayq.search explores them"
        )
    _, _, execution, extra = resolve(None, None, execution, kwargs, allowed=EXTRA_KWARGS, accepts=(Execution,))
    check_mode(extra.get("mode"))
    restorer = compat.accuracy_restorer_parameters(advanced_accuracy_restorer_parameters)
    adv = compat_advanced(advanced_quantization_parameters, extra.get("disable_bias_correction"))
    base = QuantPlan.create(
        preset=preset,
        model_type=model_type,
        fast_bias_correction=fast_bias_correction,
        target_device=target_device,
        advanced=adv,
    )
    if execution.num_workers is None and restorer.num_ranking_workers:
        execution = execution.replace(num_workers=restorer.num_ranking_workers)
    alphas = (base.smooth_quant_alpha,) if base.model_type == "transformer" else None
    space = SearchSpace(
        presets=(base.preset,),
        estimators=(base.activation_estimator,),
        bias_corrections=(base.bias_correction,),
        smooth_quant_alphas=alphas,
        ranking_subset_size=restorer.ranking_subset_size or 300,
    )
    options = SearchOptions(n_trials=None, explore=False, finalists=1, early_stop=extra.get("early_stop", True))
    result = search(
        model,
        calibration_dataset,
        validation_dataset,
        validation_fn,
        max_drop=max_drop,
        drop_type=drop_type,
        output=extra.get("output") or restorer.intermediate_model_dir,
        space=space,
        options=options,
        execution=execution,
        preset=base.preset,
        model_type=model_type,
        convert_to=extra.get("convert_to"),
        target_device=target_device,
        subset_size=subset_size,
        fast_bias_correction=fast_bias_correction,
        ignored_scope=ignored_scope,
        advanced_parameters=adv,
    )
    _warn_restored(result, result.n_quantizable)
    return result.model


def _warn_restored(result: SearchResult, n_ops: int) -> None:
    """NNCF's contract returns the restored model; say when it is hardly INT8 or not faster."""
    if result.status == "budget not met":
        log.warning(
            "accuracy budget not met: best drop %.4f > max_drop %.4f; returning the most accurate candidate",
            result.drop,
            result.max_drop,
        )
    if n_ops and len(result.plan.fallback) * 2 > n_ops:
        log.warning(
            "%d of %d quantizable layers went back to FP32: the returned model is mostly FP32",
            len(result.plan.fallback),
            n_ops,
        )
    if result.status == "no_speedup" or (result.speedup_high is not None and result.speedup_high <= 1.0):
        log.warning(
            "the returned model is not significantly faster than FP32 on %s (%s)", result.target, result.speedup_text
        )
