"""Evaluating candidate plans: build, validate, time. The state an evaluator keeps.

:class:`CandidateEvaluator` is a plain class: Ray worker processes keep one
resident per search (:mod:`rayq.distributed.eval_pool`) and the in-process search
uses it through :class:`LocalEvaluatorPool`, so both paths run the same code.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from rayq.backends import get_backend
from rayq.backends.base import Runner
from rayq.core.early import EarlyStop
from rayq.core.plan import QuantPlan
from rayq.core.stats import StatisticSet
from rayq.pipeline.build import build_quantized, placement_for
from rayq.pipeline.calibrate import Batch
from rayq.pipeline.latency import (
    GATE,
    Latency,
    runtime_settings,
    summarize,
    time_rounds,
    time_runner,
)
from rayq.pipeline.validation import (
    ValidationFailed,
    ValidationTimeout,
    output_nmse,
    run_validation,
    validation_model,
)

log = logging.getLogger(__name__)

LATENCY_MIN_SECONDS = 0.2  # timed seconds per model at least (a fast model gets more repeats)
#: The same when models are timed against each other: interleaved turns already cancel
#: the machine's drift, which the longer single timing only averages over.
INTERLEAVED_MIN_SECONDS = 0.1
#: Interleaved rounds per comparison: each round is one sample of every ratio
#: (:func:`rayq.core.speed.ratio_interval`); a search adds calls while undecided.
INTERLEAVED_ROUNDS = 5


@dataclass(frozen=True)
class CandidateMetric:
    """Metric of one plan: value, optional per-item values, and build/validate time.

    ``early_stopped``: the validation stopped after ``items_seen`` items because the drop
    was already sure to exceed the budget (:mod:`rayq.core.early`); ``value`` is then the
    metric on those items and ``per_item`` is None. ``items_seen`` is None when the
    validation ran whole (not in chunks).
    """

    plan_key: str
    value: float | None
    per_item: np.ndarray | None
    seconds: float
    error: str | None = None
    early_stopped: bool = False
    items_seen: int | None = None


class CandidateEvaluator:
    """Builds plans from cached statistics and validates / times them.

    Args:
        backend_name: Registered backend of the model.
        model: The FP32 model (backend object).
        stats: Calibration statistics.
        validation_items: Raw validation items (``Dataset.get_data()``), passed to
            ``validation_fn`` like NNCF does.
        validation_fn: ``fn(model, items) -> metric | (metric, per_item)``.
        runtime: Runtime of validation and latency (``onnxruntime``/``openvino``).
        device: Where validation runs: ``CPU`` or ``GPU`` (ONNX Runtime's CUDA provider
            when installed, else CPU with a warning).
        latency_device: Where latency is measured: the deployment target (``CPU``).
        latency_feeds: One batch used for latency measurement.
        calibration_batches: Batches for the exact bias correction and output error.
        threads: Threads for validation runs (0: runtime default).
        latency_threads: Threads the latency measurement pins (0: runtime default).
    """

    def __init__(
        self,
        backend_name: str,
        model: Any,
        stats: StatisticSet,
        validation_items: Sequence[Any],
        validation_fn: Callable | None,
        *,
        runtime: str,
        device: str = "CPU",
        latency_feeds: dict[str, np.ndarray] | None = None,
        calibration_batches: Sequence[Batch] = (),
        threads: int = 0,
        latency_threads: int = 0,
        latency_repeats: int = 30,
        latency_device: str = "CPU",
    ) -> None:
        self.backend = get_backend(backend_name)
        self.model = model
        self.graph = self.backend.graph(model)
        self.stats = stats
        self.items = list(validation_items)
        self.fn = validation_fn
        self.runtime, self.device = runtime, device
        self.latency_feeds = latency_feeds
        # a re-iterable sequence (the session's lazy BatchStream in-process) is kept as is
        self.batches = calibration_batches if isinstance(calibration_batches, Sequence) else list(calibration_batches)
        self.threads, self.latency_threads, self.latency_repeats = threads, latency_threads, latency_repeats
        self.latency_device = latency_device
        self._placements: dict[tuple, Any] = {}
        self._built: OrderedDict[str, Any] = OrderedDict()
        self._reference: list | None = None
        self._fp32_runner: Runner | None = None
        #: Seconds one validation call may take (None: no limit; the in-process pool sets
        #: it per call, Ray pools enforce it from the driver by killing the worker)
        self.validation_timeout: float | None = None

    # -- building --------------------------------------------------------------------
    def build(self, plan: QuantPlan) -> Any:
        """The quantized model of ``plan`` (small LRU cache keyed by the plan hash)."""
        key = plan.key()
        if key in self._built:
            self._built.move_to_end(key)
            return self._built[key]
        pkey = (plan.model_type, plan.ignored_scope, plan.target_device)
        if pkey not in self._placements:
            self._placements[pkey] = placement_for(self.graph, plan)
        model, _ = build_quantized(
            self.backend,
            self.model,
            self.graph,
            self.stats,
            plan,
            placement=self._placements[pkey],
            batches=self.batches,
            num_threads=self.threads,
        )
        self._built[key] = model
        while len(self._built) > 4:
            self._built.popitem(last=False)
        return model

    def compiled(self, model: Any, threads: int) -> Any:
        """The object ``validation_fn`` receives (see :func:`~rayq.pipeline.validation.validation_model`)."""
        return validation_model(self.backend, model, runtime=self.runtime, device=self.device, threads=threads)

    def _validation_fn(self) -> Callable:
        """The validation function; a failed validation (not a crash) when none was given."""
        if self.fn is None:
            raise ValidationFailed("no validation function was given, so no plan can be validated")
        return self.fn

    # -- verbs -----------------------------------------------------------------------
    def fp32_metric(self, indices: Sequence[int] | None = None) -> CandidateMetric:
        return self._metric("fp32", self.model, indices)

    def metric(
        self, plan: QuantPlan, indices: Sequence[int] | None = None, stop: EarlyStop | None = None
    ) -> CandidateMetric:
        """Validate ``plan`` on all items (or ``indices``); failures become an error string.

        With ``stop`` (and all items), validate in its chunks and stop once the drop's
        lower bound exceeds the budget (:mod:`rayq.core.early`)."""
        start = time.perf_counter()
        try:
            model = self.build(plan)
        except Exception as exc:  # a plan that cannot be built is a failed trial, not a crash
            log.warning("building plan %s failed: %s", plan.key(), exc)
            return CandidateMetric(
                plan.key(), None, None, time.perf_counter() - start, f"build failed: {type(exc).__name__}: {exc}"
            )
        result = self._metric(plan.key(), model, indices, stop)
        return replace(result, seconds=time.perf_counter() - start)

    def _metric(
        self, key: str, model: Any, indices: Sequence[int] | None, stop: EarlyStop | None = None
    ) -> CandidateMetric:
        start = time.perf_counter()
        items = self.items if indices is None else [self.items[i] for i in indices]
        try:
            compiled = self.compiled(model, self.threads)
            if stop is not None and indices is None and stop.n_items == len(self.items):
                chunked = self._chunked(key, compiled, stop, start)
                if chunked is not None:
                    return chunked
            m = run_validation(self._validation_fn(), compiled, items, timeout=self.validation_timeout)
        except ValidationFailed as exc:
            return CandidateMetric(key, None, None, time.perf_counter() - start, str(exc))
        return CandidateMetric(key, m.value, m.per_item, time.perf_counter() - start)

    def _chunked(self, key: str, compiled: Any, stop: EarlyStop, start: float) -> CandidateMetric | None:
        """Validation in ``stop``'s chunks (the validation function called once per chunk),
        stopped early when the drop's bound exceeds the budget. The full result's metric
        is the mean of the per-item values (what :func:`rayq.core.early.chunkable` checked
        the metric to be). None: a chunk gave no per-item values (validate whole instead)."""
        values = np.full(len(self.items), np.nan)
        seen = np.zeros(0, dtype=np.int64)
        fn = self._validation_fn()
        for chunk in stop.chunks():
            m = run_validation(fn, compiled, [self.items[i] for i in chunk], timeout=self.validation_timeout)
            if m.per_item is None or len(m.per_item) != len(chunk):
                log.warning("validation of %s: a chunk returned no per-item values; validating whole", key)
                return None
            values[chunk] = m.per_item
            seen = np.concatenate([seen, chunk])
            if stop.should_stop(seen, values[seen]):
                return CandidateMetric(
                    key,
                    float(np.mean(values[seen])),
                    None,
                    time.perf_counter() - start,
                    early_stopped=True,
                    items_seen=len(seen),
                )
        return CandidateMetric(key, float(np.mean(values)), values, time.perf_counter() - start, items_seen=len(values))

    def output_error(self, plan: QuantPlan | None, max_batches: int = 4) -> float:
        """NMSE of the plan's outputs vs FP32 on the first calibration batches."""
        feeds = [f for _, f in self.batches[:max_batches]]
        if self._reference is None:
            ref = self.backend.runner(self.model, runtime=self.runtime, num_threads=self.threads)
            self._reference = [ref(f) for f in feeds]
        model = self.model if plan is None else self.build(plan)
        run = self.backend.runner(model, runtime=self.runtime, num_threads=self.threads)
        outs = [run(f) for f in feeds]
        return float(np.mean([output_nmse(r, o) for r, o in zip(self._reference, outs)]))

    def _latency_runner(self, plan: QuantPlan | None):
        """A compiled runner for timing; the FP32 one is kept (every generation times it)."""
        if plan is None and self._fp32_runner is not None:
            return self._fp32_runner
        model = self.model if plan is None else self.build(plan)
        run = self.backend.runner(
            model, runtime=self.runtime, device=self.latency_device, num_threads=self.latency_threads
        )
        if plan is None:
            self._fp32_runner = run
        return run

    @property
    def _latency_feeds(self) -> dict[str, np.ndarray]:
        return self.latency_feeds if self.latency_feeds is not None else self.batches[0][1]

    def latency(self, plan: QuantPlan | None) -> Latency:
        """Measured latency of ``plan`` (None: the FP32 model) on one batch."""
        times = time_runner(
            self._latency_runner(plan),
            self._latency_feeds,
            warmup=5,
            repeats=self.latency_repeats,
            min_seconds=LATENCY_MIN_SECONDS,
        )
        return summarize(times, self.runtime, self.latency_threads)

    def compare_latency(self, plans: Sequence[QuantPlan | None]) -> list[Latency]:
        """Latencies of ``plans`` measured against each other in interleaved rounds; each
        :class:`Latency` keeps its per-round medians (``rounds_ms``, aligned across the
        plans) and the runtime settings it was measured with."""
        runs = [self._latency_runner(p) for p in plans]
        rounds = INTERLEAVED_ROUNDS
        times = time_rounds(
            runs,
            self._latency_feeds,
            warmup=5,
            rounds=rounds,
            block=max(1, -(-self.latency_repeats // rounds)),
            min_seconds=INTERLEAVED_MIN_SECONDS / rounds,
        )
        settings = runtime_settings(self.runtime, self.latency_threads, self.latency_device)
        return [summarize([x for r in t for x in r], self.runtime, self.latency_threads, t, settings) for t in times]


class LocalEvaluatorPool:
    """The in-process pool (``num_workers=1``): the verbs of
    :class:`~rayq.distributed.eval_pool.RayEvaluatorPool` on one evaluator, no Ray.

    A validation call past the timeout is abandoned in its thread (a thread cannot be
    killed) and gives a ``timeout`` metric; the search goes on.
    """

    def __init__(self, evaluator: CandidateEvaluator, timeout: ValidationTimeout | None = None) -> None:
        self.ev = evaluator
        self.timeout = timeout or ValidationTimeout()
        self.node_ids = ["local"]

    def close(self) -> None:
        pass

    def map_metric(self, plans, indices=None, stop: EarlyStop | None = None) -> list[CandidateMetric]:
        out = []
        with GATE.evaluating():
            for p in plans:
                self.ev.validation_timeout = self.timeout.limit()
                out.append(self.ev.fp32_metric(indices) if p is None else self.ev.metric(p, indices, stop))
        observe_fp32(self.timeout, plans, indices, out)
        return out

    def map_output_error(self, plans) -> list[float]:
        with GATE.evaluating():
            return [self.ev.output_error(p) for p in plans]

    def map_latency(self, plans) -> list[Latency]:
        with GATE.measuring():
            return [self.ev.latency(p) for p in plans]

    def compare_latency(self, plans) -> list[Latency]:
        with GATE.measuring():
            return self.ev.compare_latency(plans)


def observe_fp32(timeout: ValidationTimeout, plans: Sequence[QuantPlan | None], indices, out) -> None:
    """Record the first full FP32 validation's duration (the automatic timeout's base)."""
    if timeout.fp32_seconds is None and indices is None:
        for plan, m in zip(plans, out):
            if plan is None and getattr(m, "error", "no metric") is None:
                timeout.fp32_seconds = m.seconds
                return
