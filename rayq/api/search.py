"""``rayq.search``: the distributed, latency-measuring accuracy-control search (see
:mod:`rayq.tuning.control`), in three steps: :func:`prepare` (check the arguments,
load the model, calibrate), :func:`run` (the study, on a pool of evaluators) and
:func:`assemble` (the chosen model and its :class:`~rayq.tuning.result.SearchResult`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rayq import compat
from rayq.api.options import Execution, SearchOptions, SearchSpace, resolve
from rayq.api.progress import Progress
from rayq.api.session import ModelSession, connect, resolve_workers, start_workers_early
from rayq.backends.convert import default_target
from rayq.compat import compat_advanced
from rayq.core.accuracy import check_drop_type
from rayq.core.cost import compute_shares
from rayq.core.enums import plain
from rayq.core.plan import PRESETS, QuantPlan
from rayq.core.rules import Placement
from rayq.core.speed import CONFIDENCE
from rayq.core.stats import StatisticSet
from rayq.errors import ConfigError, DataError, SearchError
from rayq.pipeline import data as data_mod
from rayq.pipeline.build import build_quantized, placement_for
from rayq.pipeline.candidate import CandidateEvaluator
from rayq.pipeline.latency import runtime_settings
from rayq.pipeline.validation import ValidationTimeout
from rayq.storage import OutputLock, local_dir_for
from rayq.tuning.control import AccuracyControl, SearchSettings
from rayq.tuning.records import DriverOutcome, TrialRecord
from rayq.tuning.result import SearchResult
from rayq.tuning.selection import Choice
from rayq.tuning.sensitivity import sensitivity_frame
from rayq.tuning.space import SearchSpace as TrialSpace

log = logging.getLogger("rayq")

DEFAULT_ALPHAS = (0.5, 0.8, 0.95)
TARGETS = ("onnxruntime", "openvino")

#: NNCF-style keywords of the base quantization plan (as in ``nncf.quantize``), with their
#: defaults; ``output_files`` adds text files to the results (the CLI's ``config.yaml``).
QUANTIZATION_KWARGS: dict[str, Any] = {
    "preset": None,
    "model_type": None,
    "target_device": "ANY",
    "subset_size": 300,
    "fast_bias_correction": True,
    "ignored_scope": None,
    "advanced_parameters": None,
    "convert_to": None,
}
EXTRA_KWARGS = frozenset({*QUANTIZATION_KWARGS, "output_files"})


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


def search(
    model: Any,
    calibration_dataset: Any,
    validation_dataset: Any,
    validation_fn: Callable,
    *,
    max_drop: float = 0.01,
    drop_type: str = "absolute",
    output: str | None = None,
    space: SearchSpace | None = None,
    options: SearchOptions | None = None,
    execution: Execution | None = None,
    **kwargs: Any,
) -> SearchResult:
    """Find an INT8 model within ``max_drop`` that is *significantly* faster than FP32.

    Calibrates once (sharded over Ray tasks, cached), validates FP32 and the fully
    quantized model per preset, ranks fallback groups in parallel, evaluates top-k
    fallback sets (refined by bisection), then lets a seeded Optuna study explore
    preset x estimator x bias correction x SmoothQuant alpha x fallback set. The
    sampler minimises a deterministic cost (share of compute left in FP32) under the
    accuracy constraint, so the same seed tries the same plans; measured latency
    decides only at the end, among the feasible finalists, by confidence intervals
    on interleaved timings against FP32 on ``execution.target`` (see
    :mod:`rayq.tuning.selection`). Every finished trial is persisted (a journal in
    ``output`` by default) and a rerun with the same study resumes.

    Args:
        model: ONNX / OpenVINO model or path, or a PyTorch / TensorFlow / TFLite /
            PaddlePaddle model converted first (see :func:`rayq.quantize`).
        calibration_dataset: Calibration data (see :func:`rayq.quantize`).
        validation_dataset: Validation data; its raw items are passed to ``validation_fn``.
        validation_fn: ``fn(model, items) -> metric`` or ``(metric, per_item_values)``,
            higher is better (NNCF's contract). ``model`` is an ``openvino.CompiledModel``
            for an OpenVINO model, a callable wrapper of the ``onnx.ModelProto`` for an ONNX one.
        max_drop: Accuracy budget; ``drop_type`` ``absolute`` or ``relative``.
        output: Folder (local path, ``file://`` or ``pyarrow.fs`` URI) for the model,
            ``trials.parquet``, ``pareto.*`` and ``result.json`` (written last: the marker
            of a complete run). Checked and locked before any work: :class:`~rayq.OutputError`
            if it is unusable or another run holds it.
        space: What is searched: :class:`rayq.SearchSpace` (presets, estimators, bias
            corrections, SmoothQuant alphas, ranking subset).
        options: How the study proceeds: :class:`rayq.SearchOptions` (``n_trials``,
            ``seed``, ``explore``, ``generation_size``, ``finalists``, ``early_stop``).
        execution: Where and how it runs: :class:`rayq.Execution` (``target`` runtime,
            ``num_workers``, ``worker_resources``, ``cache``, ``storage``, ``study_name``,
            ``timeout``, ``validation_timeout``, ``latency_threads``).
        **kwargs: NNCF-style keywords: the base plan's ``preset``, ``model_type``,
            ``target_device``, ``subset_size``, ``fast_bias_correction``, ``ignored_scope``,
            ``advanced_parameters`` (as in :func:`rayq.quantize`), ``convert_to`` (what a
            framework model becomes: ``"openvino"`` or ``"onnx"``; None: ``"onnx"`` for
            ``target="onnxruntime"``), ``output_files`` (extra text files, name ->
            content, saved before ``result.json``), and any field of the three option
            objects flat (``n_trials=8``, ``num_workers=1``), which wins over the object's.
            Anything else is a :class:`~rayq.ConfigError`.

    ``preset`` is the base plan's preset, ``space.presets`` those the study may try:
    None (the default) means only ``preset`` when it is given, else every preset, so an
    explicit ``preset="mixed"`` returns a mixed-preset model unless ``presets`` widens
    it. ``options.n_trials`` counts every trial (preset seeds, top-k candidates,
    bisection steps, Optuna trials) across resumes; None (no cap) only with
    ``explore=False``. ``execution.validation_timeout`` (None: 10x the FP32 validation,
    at least 60 s) makes a slower candidate a failed trial (its Ray worker is replaced;
    in-process its thread is abandoned); an FP32 validation that times out raises
    :class:`~rayq.errors.SearchError`. ``options.early_stop`` validates candidates in
    chunks and stops one once a 99.9 % lower confidence bound on its drop exceeds
    ``max_drop`` (:mod:`rayq.core.early`), when ``validation_fn`` returns per-item values
    whose mean is the metric (checked on FP32).

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
        >>> result = rayq.search("model.onnx", calib, val, accuracy, max_drop=0.01, output="runs/search",
        ...                      space=rayq.SearchSpace(presets=["mixed"]),
        ...                      execution=rayq.Execution(num_workers=4))   # doctest: +SKIP
        >>> rayq.search("model.onnx", calib, val, accuracy, n_trials=8, num_workers=1)  # doctest: +SKIP
        >>> result.trials.head()                                           # doctest: +SKIP
    """
    space, options, execution, extra = resolve(space, options, execution, kwargs, allowed=EXTRA_KWARGS)
    with OutputLock(output, command="search") if output else contextlib.nullcontext():
        start, cpu0 = time.perf_counter(), time.process_time()
        job = prepare(
            model,
            calibration_dataset,
            validation_dataset,
            validation_fn,
            max_drop=max_drop,
            drop_type=drop_type,
            output=output,
            space=space,
            options=options,
            execution=execution,
            **{k: v for k, v in extra.items() if k != "output_files"},
        )
        result = assemble(job, run(job), start=start, cpu0=cpu0)
        if output:
            result.save(output, files=dict(extra.get("output_files") or {}))
    return result


@dataclass
class PreparedSearch:
    """Everything a search needs once prepared: the loaded model and statistics, the
    validation items, the base plan and the trial space, the settings of the study."""

    session: ModelSession
    base: QuantPlan
    placement: Placement
    space: TrialSpace
    stats: StatisticSet
    items: list
    validation_fn: Callable
    settings: SearchSettings
    execution: Execution
    target: str


@dataclass
class SearchRun:
    """What :func:`run` returns: the controller (FP32, ranking, choice) and its answer."""

    control: AccuracyControl
    best: TrialRecord
    choice: Choice
    status: str
    records: list
    fp32_ms: float
    nodes: dict


def prepare(
    model: Any,
    calibration_dataset: Any,
    validation_dataset: Any,
    validation_fn: Callable,
    *,
    max_drop: float,
    drop_type: str,
    output: str | None,
    space: SearchSpace,
    options: SearchOptions,
    execution: Execution,
    **quantization: Any,
) -> PreparedSearch:
    """Check the arguments, load the model and data and calibrate (cached): a :class:`PreparedSearch`.

    Raises:
        ConfigError: A bad argument, before any work. DataError: no validation items.
    """
    drop_type = check_drop_type(drop_type)
    if (
        isinstance(max_drop, bool)
        or not isinstance(max_drop, (int, float))
        or not max_drop >= 0
        or not math.isfinite(max_drop)
    ):
        raise ConfigError(f"max_drop={max_drop!r} must be a finite number >= 0")
    if not callable(validation_fn):
        raise ConfigError("validation_fn must be callable: fn(model, validation_items) -> metric")
    q = {**QUANTIZATION_KWARGS, **quantization}
    adv = compat_advanced(q["advanced_parameters"])
    base = QuantPlan.create(
        preset=q["preset"],
        model_type=q["model_type"],
        target_device=q["target_device"],
        fast_bias_correction=q["fast_bias_correction"],
        ignored_scope=compat.ignored_scope(q["ignored_scope"]),
        advanced=adv,
    )
    presets = search_presets(q["preset"], space.presets)
    connect(execution.address)
    start_workers_early(execution.num_workers, None, subset_size=q["subset_size"])
    session = ModelSession(
        model,
        calibration_dataset,
        subset_size=q["subset_size"],
        batch_size=adv.batch_size,
        convert_to=default_target(model, q["convert_to"], execution.target),
    )
    target = _check_target(session, execution.target)
    items = list(data_mod.as_dataset(validation_dataset).get_data())
    if not items:
        raise DataError("the validation dataset is empty")
    placement = placement_for(session.graph, base)
    trial_space = _trial_space(base, placement.ops, presets, space)
    stats = session.statistics(
        base,
        histograms=True,
        num_workers=execution.num_workers,
        use_cache=execution.cache,
        exact_bias="exact" in (*space.bias_corrections, base.bias_correction),
        worker_resources=None,
    )
    settings = SearchSettings(
        max_drop=max_drop,
        drop_type=drop_type,
        n_trials=options.n_trials,
        timeout=execution.timeout,
        seed=options.seed,
        generation_size=options.generation_size,
        explore=options.explore,
        finalists=options.finalists,
        ranking_subset=space.ranking_subset_size,
        early_stop=options.early_stop,
    )
    settings = _with_study(settings, session, base, trial_space, target, output, execution)
    return PreparedSearch(
        session, base, placement, trial_space, stats, items, validation_fn, settings, execution, target
    )


def _check_target(session: ModelSession, target: str | None) -> str:
    target = target or session.backend.runtimes[0]
    if target not in session.backend.runtimes:
        raise ConfigError(
            f"target={target!r} cannot run {session.backend.name} models; "
            f"choose one of {list(session.backend.runtimes)}"
        )
    return target


def _trial_space(base: QuantPlan, ops, presets: tuple[str, ...], space: SearchSpace) -> TrialSpace:
    alphas = space.smooth_quant_alphas
    if base.model_type == "transformer":
        alphas = tuple(alphas) if alphas is not None else DEFAULT_ALPHAS
    else:  # SmoothQuant is for transformers; wrong alphas are still an error, not silently dropped
        TrialSpace(presets=(), estimators=(), bias_corrections=(), smooth_quant_alphas=tuple(alphas or ()))
        alphas = ()
    return TrialSpace(
        presets=presets,
        estimators=space.estimators,
        bias_corrections=space.bias_corrections,
        smooth_quant_alphas=alphas,
        ranking=tuple(ops),
    )


def _with_study(
    settings: SearchSettings,
    session: ModelSession,
    base: QuantPlan,
    space: TrialSpace,
    target: str,
    output: str | None,
    execution: Execution,
) -> SearchSettings:
    """The settings with their storage (default: a journal in ``output``) and study name
    (default: a hash of model, data, plan, settings, space and target)."""
    storage = execution.storage
    out_dir = local_dir_for(output) if output else None
    if storage is None and out_dir:
        os.makedirs(out_dir, exist_ok=True)
        storage = os.path.join(out_dir, "study.journal")
    text = (
        f"{session.model_fingerprint}|{session.data_fingerprint}|{base.key()}|"
        f"{settings}|{space.choices_fingerprint()}|{target}"
    )
    study = execution.study_name or f"rayq-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    return SearchSettings(**{**settings.__dict__, "storage": storage, "study_name": study})


def run(job: PreparedSearch) -> SearchRun:
    """Run the study on a pool of evaluators (Ray tasks, or in-process for one worker).

    Raises:
        SearchError: Every candidate failed (the first errors are named).
    """
    pool = _make_pool(job)
    try:
        with Progress("search", total=job.settings.n_trials, unit="trial") as bar:
            control = AccuracyControl(
                pool,
                job.base,
                job.placement.ops,
                job.space,
                job.settings,
                on_trial=_trial_reporter(bar),
                shares=compute_shares(job.session.graph, job.placement.ops),
            )
            best, status, records = control.run()
            choice = _chosen(control)
            fp32_ms = (
                choice.fp32_latency_ms if choice.fp32_latency_ms is not None else pool.map_latency([None])[0].median_ms
            )
        info = job.session.info
        nodes = {"calibration": list(info.node_ids if info else []), "evaluation": list(pool.node_ids)}
    finally:
        pool.close()
    if best is None:
        raise SearchError(
            "every candidate failed; see the trial errors: "
            + "; ".join(sorted({str(r.error) for r in records if r.error})[:3])
        )
    return SearchRun(control, best, choice, status, records, fp32_ms, nodes)


def _chosen(control: AccuracyControl) -> Choice:
    """The controller's answer; :meth:`AccuracyControl.run` always sets it."""
    if control.choice is None:
        raise SearchError("the search ended without choosing a trial")
    return control.choice


def _trial_reporter(bar: Progress) -> Callable[[TrialRecord], None]:
    feasible = [0]

    def on_trial(rec: TrialRecord) -> None:
        feasible[0] += bool(rec.feasible)
        speed = "" if rec.speedup is None else f", {rec.speedup:.2f}x FP32"
        bar.set_postfix(
            f"trial {rec.number} {rec.status}{speed}, {len(rec.plan.fallback)} layers FP32; {feasible[0]} in budget"
        )
        bar.update(1)

    return on_trial


def _make_pool(job: PreparedSearch):
    session, ex = job.session, job.execution
    feeds = {k: v[:1] for k, v in session.batches[0][1].items()}
    kwargs: dict[str, Any] = dict(
        runtime=job.target, latency_feeds=feeds, calibration_batches=session.batches, latency_threads=ex.latency_threads
    )
    timeout = ValidationTimeout(ex.validation_timeout)
    workers = resolve_workers(ex.num_workers, 2)
    if workers == 1:
        from rayq.pipeline.candidate import LocalEvaluatorPool

        return LocalEvaluatorPool(
            CandidateEvaluator(session.backend.name, session.model, job.stats, job.items, job.validation_fn, **kwargs),
            timeout=timeout,
        )
    from rayq.distributed.eval_pool import RayEvaluatorPool

    return RayEvaluatorPool(
        num_workers=workers,
        resources=ex.worker_resources,
        backend_name=session.backend.name,
        model=session.model,
        stats=job.stats,
        items=job.items,
        validation_fn=job.validation_fn,
        kwargs=kwargs,
        timeout=timeout,
    )


def assemble(job: PreparedSearch, done: SearchRun, *, start: float, cpu0: float) -> SearchResult:
    """Build the chosen model and the :class:`~rayq.tuning.result.SearchResult` (not saved)."""
    session, best, control, settings = job.session, done.best, done.control, job.settings
    fp32: Any = control.fp32  # the FP32 metric, measured by control.run() (AccuracyControl leaves it unannotated)
    qmodel, _ = build_quantized(
        session.backend, session.model, session.graph, job.stats, best.plan, placement=None, batches=session.batches
    )
    n_ops = len(job.placement.ops)
    outcome = DriverOutcome(
        best, done.status, done.records, settings.study_name, settings.max_drop, n_quantizable=n_ops
    )
    worker_seconds = sum(r.eval_seconds for r in done.records if not r.reused)
    choice, iv = done.choice, done.choice.speedup
    result = SearchResult(
        model=qmodel,
        plan=best.plan,
        status=done.status,
        fp32_metric=fp32.value,
        metric=best.metric,
        drop=best.drop,
        max_drop=settings.max_drop,
        drop_type=settings.drop_type,
        latency_ms=best.latency_ms,
        latency_spread_ms=best.latency_spread_ms,
        fp32_latency_ms=done.fp32_ms,
        target=job.target,
        trials=outcome.trials_frame(),
        pareto=outcome.pareto(),
        wall_seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu0 + worker_seconds,
        ranking=list(control.ranking),
        study_name=settings.study_name,
        worker_nodes=done.nodes,
        speedup=None if iv is None else iv.estimate,
        speedup_low=None if iv is None else iv.low,
        speedup_high=None if iv is None else iv.high,
        speedup_margin=choice.margin,
        chosen_trial=best.number,
        n_quantizable=n_ops,
        message=choice.message(job.target),
        latency_settings=choice.settings or runtime_settings(job.target, job.execution.latency_threads),
        decision={
            "finalists": [r.number for r in choice.finalists],
            "rounds": choice.rounds,
            "seconds": choice.seconds,
            "clear": choice.clear,
            "confidence": CONFIDENCE,
        },
        sensitivity=sensitivity_frame(control.ranking, control.scores, control.basis, best.plan.fallback),
    )
    log.info(
        "rayq.search: %s in %.1fs: metric %.4f (FP32 %.4f, drop %.4f), %.3f ms (FP32 %.3f ms, %s), "
        "%d layers FP32, %d trials",
        done.status,
        result.wall_seconds,
        best.metric,
        fp32.value,
        best.drop,
        best.latency_ms or math.nan,
        done.fp32_ms,
        result.speedup_text,
        len(best.plan.fallback),
        len(done.records),
    )
    if done.status != "met":
        log.warning("rayq.search: %s", result.message)
    return result


def search_from_config(config, *, output: str | None = None, num_workers: int | None = None) -> SearchResult:
    """Run :func:`search` for a :class:`rayq.api.config.SearchConfig` (used by the CLI and sweeps).

    The effective config is saved as ``config.yaml`` with the results.
    """
    from rayq.api.config import dump, resolve_reference

    fn = resolve_reference(config.validation_fn, "validation_fn")
    execution = config.execution.replace(num_workers=num_workers) if num_workers else config.execution
    return search(
        config.model,
        config.calibration,
        config.validation,
        fn,
        max_drop=config.max_drop,
        drop_type=config.drop_type,
        output=output or config.output,
        space=config.space,
        options=config.options,
        execution=execution,
        preset=config.preset,
        model_type=config.model_type,
        target_device=config.target_device,
        subset_size=config.subset_size,
        fast_bias_correction=config.fast_bias_correction,
        ignored_scope=config.ignored_scope,
        advanced_parameters=config.advanced,
        convert_to=config.convert_to,
        output_files={"config.yaml": dump(config)},
    )
