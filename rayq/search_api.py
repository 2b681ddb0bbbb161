"""``rayq.search`` and ``rayq.quantize_with_accuracy_control``: the distributed,
latency-measuring accuracy-control search (see :mod:`rayq.tuning.control`)."""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from rayq import compat
from rayq.backends.convert import default_target
from rayq.compat import check_mode, compat_advanced
from rayq.core.accuracy import check_drop_type
from rayq.core.cost import compute_shares
from rayq.core.speed import CONFIDENCE
from rayq.core.advanced import AdvancedAccuracyRestorerParameters
from rayq.core.enums import plain
from rayq.core.plan import PRESETS, AdvancedQuantizationParameters, QuantPlan
from rayq.core.scope import IgnoredScope
from rayq.errors import ConfigError, DataError
from rayq.pipeline import data as data_mod
from rayq.pipeline.build import build_quantized, placement_for
from rayq.pipeline.candidate import CandidateEvaluator
from rayq.pipeline.latency import runtime_settings
from rayq.pipeline.evaluate import ValidationTimeout
from rayq.progress import Progress
from rayq.tuning.control import AccuracyControl, SearchSettings
from rayq.tuning.evaluator import DriverOutcome, TrialRecord
from rayq.tuning.result import SearchResult
from rayq.tuning.sensitivity import sensitivity_frame
from rayq.tuning.space import SearchSpace
from rayq.session import ModelSession, _resolve_workers, start_workers_early
from rayq.storage import OutputLock, local_dir_for

log = logging.getLogger("rayq")

DEFAULT_ALPHAS = (0.5, 0.8, 0.95)
TARGETS = ("onnxruntime", "openvino")


def _study_name(session: ModelSession, base: QuantPlan, settings_text: str) -> str:
    h = hashlib.sha256(f"{session.model_fingerprint}|{session.data_fingerprint}|{base.key()}|{settings_text}".encode())
    return f"rayq-{h.hexdigest()[:12]}"


def search_presets(preset: str | None, presets) -> tuple[str, ...]:
    """The presets a search tries: ``presets`` when given, else ``preset`` alone when
    given, else all of :data:`PRESETS`.

    Example:
        >>> search_presets("mixed", None), search_presets("mixed", ["mixed", "performance"])
        (('mixed',), ('mixed', 'performance'))
    """
    if presets is not None:
        return tuple(plain(p) for p in presets)
    return (plain(preset),) if preset is not None else tuple(PRESETS)


def _space(base: QuantPlan, ops, *, presets, estimators, bias_corrections, alphas) -> SearchSpace:
    if base.model_type == "transformer":
        alphas = tuple(alphas) if alphas is not None else DEFAULT_ALPHAS
    else:  # SmoothQuant is for transformers; wrong alphas are still an error, not silently dropped
        SearchSpace(presets=(), estimators=(), bias_corrections=(), smooth_quant_alphas=tuple(alphas or ()))
        alphas = ()
    return SearchSpace(presets=tuple(presets), estimators=tuple(estimators),
                       bias_corrections=tuple(bias_corrections), smooth_quant_alphas=alphas, ranking=tuple(ops))


def _claims_output(fn: Callable) -> Callable:
    """Check ``output`` and hold its :class:`~rayq.storage.OutputLock` for the whole call.

    Both happen before any work (calibration, Ray): an unusable output or one that
    another run holds raises :class:`~rayq.errors.OutputError` at once.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        output = signature.bind(*args, **kwargs).arguments.get("output")
        if output is None:
            return fn(*args, **kwargs)
        with OutputLock(output, command="search"):
            return fn(*args, **kwargs)

    return wrapper


@_claims_output
def search(
    model: Any,
    calibration_dataset: Any,
    validation_dataset: Any,
    validation_fn: Callable,
    *,
    max_drop: float = 0.01,
    drop_type: str = "absolute",
    target: str | None = None,
    n_trials: int | None = 32,
    timeout: float | None = None,
    num_workers: int | None = None,
    worker_resources: dict | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    output: str | None = None,
    seed: int = 0,
    preset: str | None = None,
    model_type: str | None = None,
    convert_to: str | None = None,
    target_device: str = "ANY",
    subset_size: int = 300,
    fast_bias_correction: bool | None = True,
    ignored_scope: IgnoredScope | None = None,
    advanced_parameters: AdvancedQuantizationParameters | None = None,
    presets: tuple[str, ...] | None = None,
    estimators: tuple[str, ...] = ("mean_minmax", "minmax", "quantile", "histogram_mse"),
    bias_corrections: tuple[str, ...] = ("fast", "none"),
    smooth_quant_alphas: tuple[float | None, ...] | None = None,
    explore: bool = True,
    generation_size: int = 4,
    latency_threads: int = 0,
    finalists: int = 4,
    cache: bool = True,
    ranking_subset_size: int = 300,
    output_files: Mapping[str, str] | None = None,
    validation_timeout: float | None = None,
    early_stop: bool = True,
) -> SearchResult:
    """Find an INT8 model within ``max_drop`` that is *significantly* faster than FP32.

    Calibrates once (sharded over Ray tasks, cached), validates FP32 and the fully
    quantized model per preset, ranks fallback groups in parallel, evaluates top-k
    fallback sets (refined by bisection), then lets a seeded Optuna study explore
    preset x estimator x bias correction x SmoothQuant alpha x fallback set. The
    sampler minimises a deterministic cost (share of compute left in FP32) under the
    accuracy constraint, so the same seed tries the same plans; measured latency
    decides only at the end, among the feasible finalists, by confidence intervals
    on interleaved timings against FP32 on ``target`` (see
    :mod:`rayq.tuning.selection`). Every finished trial is persisted (a journal in
    ``output`` by default) and a rerun with the same study resumes.

    Args:
        model: ONNX / OpenVINO model or path, or a PyTorch / TensorFlow / TFLite /
            PaddlePaddle model converted first (see :func:`rayq.quantize`).
        convert_to: What a framework model is converted to: ``"openvino"`` or ``"onnx"``
            (PyTorch only). None: ``"onnx"`` when ``target="onnxruntime"``, else ``"openvino"``.
        calibration_dataset: Calibration data (see :func:`rayq.quantize`).
        validation_dataset: Validation data; its raw items are passed to ``validation_fn``.
        validation_fn: ``fn(model, items) -> metric`` or ``(metric, per_item_values)``,
            higher is better (NNCF's contract). ``model`` is an ``openvino.CompiledModel``
            for an OpenVINO model, a callable wrapper of the ``onnx.ModelProto`` for an ONNX one.
        max_drop: Accuracy budget; ``drop_type`` ``absolute`` or ``relative``.
        target: Runtime to validate and time on: ``onnxruntime`` or ``openvino``.
        n_trials: Total trials of the study: preset seeds, top-k candidates, bisection
            steps and Optuna trials together, counted across resumes; the search
            never runs more. None: no cap, only with ``explore=False`` (the preset
            seeds, candidates and bisection steps, as ``quantize_with_accuracy_control``).
        timeout: Seconds after which no new generation starts.
        num_workers: Evaluations at once, as Ray tasks (None: all CPUs of the cluster; 1: in-process).
        worker_resources: Ray resources per evaluation task, e.g. ``{"num_cpus": 2, "num_gpus": 1}``.
        storage: Optuna storage: a journal path or an RDB URL (default: journal in ``output``).
        study_name: Study name (default: derived from model, data and settings).
        output: Folder (local path, ``file://`` or ``pyarrow.fs`` URI) for the model,
            ``trials.parquet``, ``pareto.*`` and ``result.json`` (written last: the marker
            of a complete run). Checked and locked before any work: :class:`~rayq.OutputError`
            if it is unusable or another run holds it.
        seed: Sampler seed; with the same seed any worker count gives the same plan.
        preset / presets: ``preset`` is the base plan's preset; ``presets`` the presets
            the study may try. ``presets=None`` (the default) means only ``preset`` when
            it is given, else every preset (``performance`` and ``mixed``): an explicit
            ``preset="mixed"`` returns a mixed-preset model unless ``presets`` widens it.
        finalists: Feasible plans (cheapest first) timed against each other and FP32
            at the end; ``quantize_with_accuracy_control`` times only the cheapest.
        ranking_subset_size: Validation items (those FP32 and INT8 disagree on) used to
            rank fallback groups.
        output_files: Extra text files (name -> content) saved with the results in
            ``output`` before ``result.json``; the CLI adds ``config.yaml``.
        validation_timeout: Seconds one call of ``validation_fn`` may take (None: 10x the
            FP32 validation time, at least 60 s). A candidate whose validation does not
            return in time is a failed trial with a ``timeout`` error; its Ray worker is
            killed and replaced (in-process, ``num_workers=1``: its thread is abandoned,
            since a thread cannot be killed), and the search goes on. An FP32 validation
            that times out stops the search with a :class:`~rayq.errors.SearchError`.
        early_stop: Validate candidates in chunks (25 %, 50 %, 100 % of the items in a
            seeded order) and stop one as soon as a 99.9 % lower confidence bound on its
            drop exceeds ``max_drop`` (:mod:`rayq.core.early`); it is recorded infeasible
            with ``early_stopped=True`` and the items it saved. Only when ``validation_fn``
            returns ``(metric, per_item_values)`` with the metric their mean (checked on
            FP32); otherwise candidates are validated whole.

    Resume: re-running with the same ``storage`` and ``study_name`` (the default
    ones for the same model, data, settings and ``output``) continues the study:
    finished trials are not evaluated again, trials in flight when the previous
    run was killed are evaluated once under their own numbers, the persisted
    fallback ranking is reused, and the run stops at ``n_trials`` in all.

    Returns:
        A :class:`~rayq.tuning.result.SearchResult`: ``status`` is ``"met"``,
        ``"no_speedup"`` (within budget but not significantly faster than FP32: the
        most accurate quantized model) or ``"budget not met"``.

    Example:
        >>> result = rayq.search("model.onnx", calib, val, accuracy, max_drop=0.01,
        ...                      output="runs/search")                  # doctest: +SKIP
        >>> result.trials.head()                                       # doctest: +SKIP
    """
    start, cpu0 = time.perf_counter(), time.process_time()
    drop_type = check_drop_type(drop_type)
    if not callable(validation_fn):
        raise ConfigError("validation_fn must be callable: fn(model, validation_items) -> metric")
    if not isinstance(finalists, int) or finalists < 1:
        raise ConfigError(f"finalists={finalists!r} must be an integer >= 1")
    if n_trials is None and explore or n_trials is not None and n_trials < 1:
        raise ConfigError(f"n_trials={n_trials} must be >= 1 (None, no cap, only with explore=False)")
    adv = compat_advanced(advanced_parameters)
    ignored_scope = compat.ignored_scope(ignored_scope)
    call_limit = ValidationTimeout(validation_timeout)
    base = QuantPlan.create(preset=preset, model_type=model_type, target_device=target_device,
                            fast_bias_correction=fast_bias_correction, ignored_scope=ignored_scope, advanced=adv)
    presets = search_presets(preset, presets)
    start_workers_early(num_workers, None, subset_size=subset_size)
    session = ModelSession(model, calibration_dataset, subset_size=subset_size, batch_size=adv.batch_size,
                           convert_to=default_target(model, convert_to, target))
    target = target or session.backend.runtimes[0]
    if target not in session.backend.runtimes:
        raise ConfigError(f"target={target!r} cannot run {session.backend.name} models; "
                          f"choose one of {list(session.backend.runtimes)}")
    items = list(data_mod.as_dataset(validation_dataset).get_data())
    if not items:
        raise DataError("the validation dataset is empty")
    placement = placement_for(session.graph, base)
    space = _space(base, placement.ops, presets=presets, estimators=estimators,
                   bias_corrections=bias_corrections, alphas=smooth_quant_alphas)
    stats = session.statistics(base, histograms=True, num_workers=num_workers, use_cache=cache,
                               exact_bias="exact" in (*bias_corrections, base.bias_correction),
                               worker_resources=None)
    settings = SearchSettings(max_drop=max_drop, drop_type=drop_type, n_trials=n_trials, timeout=timeout,
                              seed=seed, generation_size=generation_size, explore=explore, finalists=finalists,
                              ranking_subset=ranking_subset_size, early_stop=bool(early_stop))
    out_dir = local_dir_for(output) if output else None
    if storage is None and out_dir:
        os.makedirs(out_dir, exist_ok=True)
        storage = os.path.join(out_dir, "study.journal")
    study = study_name or _study_name(session, base, f"{settings}|{space.choices_fingerprint()}|{target}")
    settings = SearchSettings(**{**settings.__dict__, "storage": storage, "study_name": study})
    latency_feeds = {k: v[:1] for k, v in session.batches[0][1].items()}
    kwargs = dict(runtime=target, latency_feeds=latency_feeds, calibration_batches=session.batches,
                  latency_threads=latency_threads)
    pool = _make_pool(session, stats, items, validation_fn, kwargs, num_workers, worker_resources, call_limit)
    try:
        with Progress("search", total=n_trials, unit="trial") as bar:
            feasible = [0]

            def on_trial(rec: TrialRecord) -> None:
                feasible[0] += bool(rec.feasible)
                speed = "" if rec.speedup is None else f", {rec.speedup:.2f}x FP32"
                bar.set_postfix(f"trial {rec.number} {rec.status}{speed}, {len(rec.plan.fallback)} layers FP32; "
                                f"{feasible[0]} in budget")
                bar.update(1)

            control = AccuracyControl(pool, base, placement.ops, space, settings, on_trial=on_trial,
                                      shares=compute_shares(session.graph, placement.ops))
            best, status, records = control.run()
            choice = control.choice
            fp32_ms = choice.fp32_latency_ms if choice.fp32_latency_ms is not None else \
                pool.map_latency([None])[0].median_ms
        nodes = {"calibration": list(session.info.node_ids if session.info else []),
                 "evaluation": list(pool.node_ids)}
    finally:
        pool.close()
    if best is None:
        from rayq.errors import SearchError

        raise SearchError("every candidate failed; see the trial errors: "
                          + "; ".join(sorted({str(r.error) for r in records if r.error})[:3]))
    qmodel, _ = build_quantized(session.backend, session.model, session.graph, stats, best.plan,
                                placement=None, batches=session.batches)
    outcome = DriverOutcome(best, status, records, study, max_drop, n_quantizable=len(placement.ops))
    worker_seconds = sum(r.eval_seconds for r in records if not r.reused)
    iv = choice.speedup
    result = SearchResult(
        model=qmodel, plan=best.plan, status=status, fp32_metric=control.fp32.value, metric=best.metric,
        drop=best.drop, max_drop=max_drop, drop_type=drop_type, latency_ms=best.latency_ms,
        latency_spread_ms=best.latency_spread_ms, fp32_latency_ms=fp32_ms, target=target,
        trials=outcome.trials_frame(), pareto=outcome.pareto(), wall_seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu0 + worker_seconds, ranking=list(control.ranking), study_name=study,
        worker_nodes=nodes, speedup=None if iv is None else iv.estimate,
        speedup_low=None if iv is None else iv.low, speedup_high=None if iv is None else iv.high,
        speedup_margin=choice.margin, chosen_trial=best.number, n_quantizable=len(placement.ops),
        message=choice.message(target),
        latency_settings=choice.settings or runtime_settings(target, latency_threads),
        decision={"finalists": [r.number for r in choice.finalists], "rounds": choice.rounds,
                  "seconds": choice.seconds, "clear": choice.clear, "confidence": CONFIDENCE},
        sensitivity=sensitivity_frame(control.ranking, control.scores, control.basis, best.plan.fallback))
    if output:
        result.save(output, files=dict(output_files or {}))
    log.info("rayq.search: %s in %.1fs: metric %.4f (FP32 %.4f, drop %.4f), %.3f ms (FP32 %.3f ms, %s), "
             "%d layers FP32, %d trials", status, result.wall_seconds, best.metric, control.fp32.value,
             best.drop, best.latency_ms or math.nan, fp32_ms, result.speedup_text, len(best.plan.fallback),
             len(records))
    if status != "met":
        log.warning("rayq.search: %s", result.message)
    return result


def _make_pool(session, stats, items, fn, kwargs, num_workers, worker_resources, timeout):
    workers = _resolve_workers(num_workers, 2)
    if workers == 1:
        from rayq.pipeline.candidate import LocalEvaluatorPool

        return LocalEvaluatorPool(CandidateEvaluator(session.backend.name, session.model, stats, items, fn,
                                                     **kwargs), timeout=timeout)
    from rayq.distributed.eval_pool import RayEvaluatorPool

    return RayEvaluatorPool(num_workers=workers, resources=worker_resources, backend_name=session.backend.name,
                            model=session.model, stats=stats, items=items,
                            validation_fn=fn, kwargs=kwargs, timeout=timeout)


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



def search_from_config(config, *, output: str | None = None, num_workers: int | None = None) -> SearchResult:
    """Run :func:`search` for a :class:`rayq.config.SearchConfig` (used by the CLI and sweeps).

    The effective config is saved as ``config.yaml`` with the results.
    """
    from rayq.config import dump, resolve_reference

    fn = resolve_reference(config.validation_fn, "validation_fn")
    return search(
        config.model, config.calibration, config.validation, fn, max_drop=config.max_drop,
        drop_type=config.drop_type, target=config.target, n_trials=config.n_trials, timeout=config.timeout,
        num_workers=num_workers or config.num_workers, worker_resources=config.worker_resources,
        storage=config.storage, study_name=config.study_name, output=output or config.output, seed=config.seed,
        preset=config.preset, model_type=config.model_type, target_device=config.target_device,
        subset_size=config.subset_size, fast_bias_correction=config.fast_bias_correction,
        ignored_scope=config.ignored_scope, advanced_parameters=config.advanced, presets=config.presets,
        estimators=config.estimators, bias_corrections=config.bias_corrections,
        smooth_quant_alphas=config.smooth_quant_alphas, explore=config.explore,
        generation_size=config.generation_size, validation_timeout=config.validation_timeout,
        early_stop=config.early_stop,
        output_files={"config.yaml": dump(config)})
