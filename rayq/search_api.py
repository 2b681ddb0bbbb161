"""``rayq.search`` and ``rayq.quantize_with_accuracy_control``: the distributed,
latency-measuring accuracy-control search (see :mod:`rayq.tuning.control`)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from rayq.core.accuracy import check_drop_type
from rayq.core.plan import PRESETS, AdvancedQuantizationParameters, QuantPlan
from rayq.core.scope import IgnoredScope
from rayq.errors import ConfigError, DataError
from rayq.pipeline import data as data_mod
from rayq.pipeline.build import build_quantized, placement_for
from rayq.pipeline.candidate import CandidateEvaluator
from rayq.progress import Progress
from rayq.tuning.control import AccuracyControl, SearchSettings
from rayq.tuning.evaluator import DriverOutcome, TrialRecord
from rayq.tuning.result import SearchResult
from rayq.tuning.space import SearchSpace
from rayq.session import ModelSession, _resolve_workers, start_workers_early
from rayq.storage import local_dir_for

log = logging.getLogger("rayq")

DEFAULT_ALPHAS = (0.5, 0.8, 0.95)
TARGETS = ("onnxruntime", "openvino")


def _study_name(session: ModelSession, base: QuantPlan, settings_text: str) -> str:
    h = hashlib.sha256(f"{session.model_fingerprint}|{session.data_fingerprint}|{base.key()}|{settings_text}".encode())
    return f"rayq-{h.hexdigest()[:12]}"


def _space(base: QuantPlan, ops, *, presets, estimators, bias_corrections, alphas) -> SearchSpace:
    if base.model_type == "transformer":
        alphas = tuple(alphas) if alphas is not None else DEFAULT_ALPHAS
    else:
        alphas = ()
    return SearchSpace(presets=tuple(presets), estimators=tuple(estimators),
                       bias_corrections=tuple(bias_corrections), smooth_quant_alphas=alphas, ranking=tuple(ops))


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
    target_device: str = "ANY",
    subset_size: int = 300,
    fast_bias_correction: bool | None = True,
    ignored_scope: IgnoredScope | None = None,
    advanced_parameters: AdvancedQuantizationParameters | None = None,
    presets: tuple[str, ...] = PRESETS,
    estimators: tuple[str, ...] = ("mean_minmax", "minmax", "quantile", "histogram_mse"),
    bias_corrections: tuple[str, ...] = ("fast", "none"),
    smooth_quant_alphas: tuple[float | None, ...] | None = None,
    explore: bool = True,
    generation_size: int = 4,
    latency_threads: int = 0,
    cache: bool = True,
) -> SearchResult:
    """Find the fastest *measured* INT8 model whose metric drop is within ``max_drop``.

    Calibrates once (sharded over Ray tasks, cached), validates FP32 and the fully
    quantized model per preset, ranks fallback groups in parallel, evaluates top-k
    fallback sets (refined by bisection), then lets a seeded Optuna study explore
    preset x estimator x bias correction x SmoothQuant alpha x fallback set. Every
    finished trial is persisted (a journal in ``output`` by default) and a rerun with
    the same study resumes.

    Args:
        model: ONNX / OpenVINO model or path.
        calibration_dataset: Calibration data (see :func:`rayq.quantize`).
        validation_dataset: Validation data; its raw items are passed to ``validation_fn``.
        validation_fn: ``fn(model, items) -> metric`` or ``(metric, per_item_values)``,
            higher is better (NNCF's contract). ``model`` is an ``openvino.CompiledModel``
            for the OpenVINO target, else a callable wrapper of the ``onnx.ModelProto``.
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
        output: Directory or URI for the model, ``trials.parquet``, ``result.json``, ``pareto.png``.
        seed: Sampler seed; with the same seed any worker count gives the same plan.

    Resume: re-running with the same ``storage`` and ``study_name`` (the default
    ones for the same model, data, settings and ``output``) continues the study:
    finished trials are not evaluated again, trials in flight when the previous
    run was killed are evaluated once under their own numbers, the persisted
    fallback ranking is reused, and the run stops at ``n_trials`` in all.

    Returns:
        A :class:`~rayq.tuning.result.SearchResult`.

    Example:
        >>> result = rayq.search("model.onnx", calib, val, accuracy, max_drop=0.01,
        ...                      output="runs/search")                  # doctest: +SKIP
        >>> result.trials.head()                                       # doctest: +SKIP
    """
    start, cpu0 = time.perf_counter(), time.process_time()
    drop_type = check_drop_type(drop_type)
    if not callable(validation_fn):
        raise ConfigError("validation_fn must be callable: fn(model, validation_items) -> metric")
    if n_trials is None and explore or n_trials is not None and n_trials < 1:
        raise ConfigError(f"n_trials={n_trials} must be >= 1 (None, no cap, only with explore=False)")
    adv = advanced_parameters or AdvancedQuantizationParameters()
    base = QuantPlan.create(preset=preset, model_type=model_type, target_device=target_device,
                            fast_bias_correction=fast_bias_correction, ignored_scope=ignored_scope, advanced=adv)
    start_workers_early(num_workers, None, subset_size=subset_size)
    session = ModelSession(model, calibration_dataset, subset_size=subset_size, batch_size=adv.batch_size)
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
                              seed=seed, generation_size=generation_size, explore=explore)
    out_dir = local_dir_for(output) if output else None
    if storage is None and out_dir:
        os.makedirs(out_dir, exist_ok=True)
        storage = os.path.join(out_dir, "study.journal")
    study = study_name or _study_name(session, base, f"{settings}|{space.choices_fingerprint()}|{target}")
    settings = SearchSettings(**{**settings.__dict__, "storage": storage, "study_name": study})
    latency_feeds = {k: v[:1] for k, v in session.batches[0][1].items()}
    kwargs = dict(runtime=target, latency_feeds=latency_feeds, calibration_batches=session.batches,
                  latency_threads=latency_threads)
    pool = _make_pool(session, stats, items, validation_fn, kwargs, num_workers, worker_resources)
    try:
        with Progress("search", total=n_trials, unit="trial") as bar:
            best_latency = [float("inf")]

            def on_trial(rec: TrialRecord) -> None:
                if rec.feasible and rec.latency_ms is not None:
                    best_latency[0] = min(best_latency[0], rec.latency_ms)
                bar.update(1)
                shown = f"{best_latency[0]:.3f} ms" if best_latency[0] < float("inf") else "none yet"
                bar.set_postfix(f"trial {rec.number}: {rec.status}, best feasible latency {shown}")

            control = AccuracyControl(pool, base, placement.ops, space, settings, on_trial=on_trial)
            best, status, records = control.run()
            fp32_latency = control.fp32_latency or pool.map_latency([None])[0]
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
    outcome = DriverOutcome(best, status, records, study, max_drop)
    worker_seconds = sum(r.eval_seconds for r in records if not r.reused)
    result = SearchResult(
        model=qmodel, plan=best.plan, status=status, fp32_metric=control.fp32.value, metric=best.metric,
        drop=best.drop, max_drop=max_drop, drop_type=drop_type, latency_ms=best.latency_ms,
        latency_spread_ms=best.latency_spread_ms, fp32_latency_ms=fp32_latency.median_ms, target=target,
        trials=outcome.trials_frame(), pareto=outcome.pareto(), wall_seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu0 + worker_seconds, ranking=list(control.ranking), study_name=study,
        worker_nodes=nodes)
    if output:
        result.save(output)
    log.info("rayq.search: %s in %.1fs: metric %.4f (FP32 %.4f, drop %.4f), %.3f ms (FP32 %.3f ms), "
             "%d layers FP32, %d trials", status, result.wall_seconds, best.metric, control.fp32.value,
             best.drop, best.latency_ms, fp32_latency.median_ms, len(best.plan.fallback), len(records))
    return result


def _make_pool(session, stats, items, fn, kwargs, num_workers, worker_resources):
    workers = _resolve_workers(num_workers, 2)
    if workers == 1:
        from rayq.distributed.evaluator import LocalEvaluatorPool

        return LocalEvaluatorPool(CandidateEvaluator(session.backend.name, session.model, stats, items, fn,
                                                     **kwargs))
    from rayq.distributed.evaluator import RayEvaluatorPool

    return RayEvaluatorPool(num_workers=workers, resources=worker_resources, backend_name=session.backend.name,
                            model_bytes=session.backend.to_bytes(session.model), stats=stats, items=items,
                            validation_fn=fn, kwargs=kwargs)


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
    num_workers: int | None = None,
    target: str | None = None,
    output: str | None = None,
) -> Any:
    """``nncf.quantize_with_accuracy_control`` with rayq's parallel search.

    Same signature and semantics as NNCF (``validation_fn(model, data)`` returns the
    metric or ``(metric, per_item_values)``; higher is better; relative drop is
    ``(fp32 - int8) / fp32``). Keeps the given preset and estimator, reverts the most
    harmful layers to FP32 (ranked in parallel, top-k candidates refined by bisection)
    and returns the fastest measured model within budget. If no candidate meets the
    budget, the one with the smallest drop is returned and a warning is logged.

    Example:
        >>> q = rayq.quantize_with_accuracy_control(model, calib, val, accuracy, max_drop=0.01)  # doctest: +SKIP
    """
    base = QuantPlan.create(preset=preset, model_type=model_type, fast_bias_correction=fast_bias_correction,
                            advanced=advanced_quantization_parameters or AdvancedQuantizationParameters())
    result = search(
        model, calibration_dataset, validation_dataset, validation_fn, max_drop=max_drop, drop_type=drop_type,
        target=target, n_trials=None, num_workers=num_workers, output=output, preset=base.preset,
        model_type=model_type, target_device=target_device, subset_size=subset_size,
        fast_bias_correction=fast_bias_correction, ignored_scope=ignored_scope,
        advanced_parameters=advanced_quantization_parameters, presets=(base.preset,),
        estimators=(base.activation_estimator,), bias_corrections=(base.bias_correction,),
        smooth_quant_alphas=(base.smooth_quant_alpha,) if model_type == "transformer" else None,
        explore=False)
    if result.status != "met":
        log.warning("accuracy budget not met: best drop %.4f > max_drop %.4f; returning the most accurate "
                    "candidate", result.drop, max_drop)
    return result.model



def search_from_config(config, *, output: str | None = None, num_workers: int | None = None) -> SearchResult:
    """Run :func:`search` for a :class:`rayq.config.SearchConfig` (used by the CLI and sweeps)."""
    from rayq.config import resolve_reference

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
        generation_size=config.generation_size)
