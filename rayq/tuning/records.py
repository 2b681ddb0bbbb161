"""The evaluator interface and the result values of a search.

:class:`Evaluator` is what the search driver needs from whoever builds and
measures candidates; :class:`EvalResult` is its answer for one plan,
:class:`TrialRecord` the driver's record of one trial, and
:class:`DriverOutcome` the answer of a whole search (with its trials frame and
Pareto front).

The driver hands a batch of plans to :meth:`Evaluator.evaluate` and gets one
:class:`EvalResult` per plan, in the same order. How the batch is spread over
workers (Ray tasks, threads, one process) is the evaluator's business; the
driver's result does not depend on it. A candidate that cannot be built or
validated is a result with ``status="failed"`` and a reason, not an exception:
an exception from ``evaluate`` stops the search (the in-flight trials stay
running in the study; re-running the search evaluates and tells them).

Example:
    >>> from rayq.core.plan import QuantPlan
    >>> class Constant:
    ...     def evaluate(self, plans):
    ...         return [EvalResult(p.key(), 0.9, 0.0, 1.0, 0.1, "ok") for p in plans]
    >>> isinstance(Constant(), Evaluator)
    True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from rayq.core.plan import QuantPlan
from rayq.tuning.tables import text_as_objects

logger = logging.getLogger(__name__)

DEFAULT_STUDY_NAME = "rayq-search"


@dataclass(frozen=True)
class EvalResult:
    """The outcome of building, validating and timing one plan.

    Args:
        plan_key: ``plan.key()`` of the evaluated plan.
        metric: Validation metric (higher is better); None if failed.
        drop: Accuracy drop versus FP32 (see :mod:`rayq.core.accuracy`); None if failed.
        latency_ms: Median measured latency in milliseconds; None if failed.
        latency_spread_ms: Spread of the latency repeats (e.g. IQR); None if unknown.
        status: ``"ok"`` or ``"failed"``.
        error: Why it failed (None when ok).
        eval_seconds: Wall time spent on this candidate.
        fp32_latency_ms: The FP32 model's latency timed in the same run as
            ``latency_ms`` (interleaved with it), when the evaluator measures one.
        speedup: ``(estimate, low, high)``: the speed-up over FP32 from those
            interleaved rounds and its 95 % interval (:mod:`rayq.core.speed`).
        early_stopped: The validation stopped early (:mod:`rayq.core.early`): ``metric``
            and ``drop`` are those of the items seen, the drop was sure to exceed the
            budget, and no latency was measured (``status`` stays ``"ok"``: infeasible).
        items_saved: Validation items not run thanks to the early stop.

    Example:
        >>> EvalResult("0123456789abcdef", None, None, None, None, "failed", "NaN metric").status
        'failed'
    """

    plan_key: str
    metric: float | None
    drop: float | None
    latency_ms: float | None
    latency_spread_ms: float | None
    status: str
    error: str | None = None
    eval_seconds: float = 0.0
    fp32_latency_ms: float | None = None
    speedup: tuple[float, float, float] | None = None
    early_stopped: bool = False
    items_saved: int = 0

    @classmethod
    def failure(cls, plan: QuantPlan, error: str, eval_seconds: float = 0.0) -> EvalResult:
        """A failed result for ``plan``.

        Example:
            >>> EvalResult.failure(QuantPlan(), "validation raised ValueError").error
            'validation raised ValueError'
        """
        return cls(plan.key(), None, None, None, None, "failed", error, eval_seconds)


@runtime_checkable
class Evaluator(Protocol):
    """Builds, validates and times candidate plans.

    Example:
        >>> hasattr(Evaluator, "evaluate")
        True
    """

    def evaluate(self, plans: Sequence[QuantPlan]) -> list[EvalResult]:
        """Evaluate ``plans`` (in parallel however it likes); results in the same order."""
        ...


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial, as the driver reports it.

    ``status`` is ``"ok"`` or ``"failed"`` (the evaluator reported a failure).
    ``remeasured``: the latency is from the final runoff (the feasible finalists
    timed against each other and FP32, or a finalist running the same graph), not
    from the trial's own moment.
    ``fp32_latency_ms``: FP32 timed together with the trial (its generation), so
    :attr:`speedup` compares the trial with FP32 at the same moment;
    ``speedup_low``/``speedup_high`` bound it (95 %, from the interleaved rounds).
    ``cost``: the deterministic cost the sampler minimised (share of compute in FP32).
    ``early_stopped``: its validation stopped once the drop was sure to exceed the budget
    (partial ``metric``/``drop``, no latency; never feasible); ``validation_items_saved``:
    the validation items that saved. When no trial met the budget, the stopped trials
    are validated whole at the end (the answer is then the most accurate): their records
    hold the full metric and latency, ``early_stopped`` stays True and
    ``validation_items_saved`` is 0.

    Example:
        >>> TrialRecord(0, QuantPlan(), 0.9, 0.0, 1.0, 0.1, "ok", None, True, "seed").feasible
        True
    """

    number: int
    plan: QuantPlan
    metric: float | None
    drop: float | None
    latency_ms: float | None
    latency_spread_ms: float | None
    status: str
    error: str | None
    feasible: bool
    source: str
    reused: bool = False
    eval_seconds: float = 0.0
    remeasured: bool = False
    fp32_latency_ms: float | None = None
    cost: float | None = None
    speedup_est: float | None = None
    speedup_low: float | None = None
    speedup_high: float | None = None
    early_stopped: bool = False
    validation_items_saved: int = 0

    @property
    def speedup(self) -> float | None:
        """Speed-up over FP32 timed in the same run: the per-round estimate when known,
        else FP32 latency / this latency (None when unknown)."""
        if self.speedup_est is not None:
            return self.speedup_est
        if not self.latency_ms or not self.fp32_latency_ms:
            return None
        return self.fp32_latency_ms / self.latency_ms


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _record_row(r: TrialRecord, chosen: int | None = None, n_quantizable: int = 0) -> dict[str, Any]:
    row: dict[str, Any] = {
        "number": r.number,
        "status": r.status,
        "source": r.source,
        "feasible": r.feasible,
        "reused": r.reused,
        "metric": _float(r.metric),
        "drop": _float(r.drop),
        "latency_ms": _float(r.latency_ms),
        "latency_spread_ms": _float(r.latency_spread_ms),
        "fp32_latency_ms": _float(r.fp32_latency_ms),
        "speedup": _float(r.speedup),
        "speedup_low": _float(r.speedup_low),
        "speedup_high": _float(r.speedup_high),
        "cost": _float(r.cost),
        "error": r.error,
        "eval_seconds": float(r.eval_seconds),
        "remeasured": r.remeasured,
        "chosen": chosen is not None and r.number == chosen,
        "plan_key": r.plan.key(),
        "early_stopped": bool(r.early_stopped),
        "validation_items_saved": int(r.validation_items_saved),
        "int8": not n_quantizable or len(set(r.plan.fallback)) < n_quantizable,
    }
    plan = r.plan.to_dict()
    row.update(plan)
    row["smooth_quant_alpha"] = _float(plan["smooth_quant_alpha"])
    row["n_fallback"] = len(r.plan.fallback)
    row["plan"] = plan
    return row


@dataclass(frozen=True)
class DriverOutcome:
    """What a search returns.

    Args:
        best: The chosen trial (:mod:`rayq.tuning.selection`; None when no trial
            succeeded); the trials frame marks it in its ``chosen`` column.
        status: ``"met"``, ``"no_speedup"`` or ``"budget not met"``.
        records: Every finished trial of the study, by trial number.
        study_name: The Optuna study name.
        max_drop: The budget the records were judged against.
        n_quantizable: Quantizable layers of the model (0: unknown); a trial keeping
            all of them in FP32 has ``int8=False`` in the frame and is left off the front.

    Example:
        >>> DriverOutcome(None, "budget not met", [], "s", 0.01).trials_frame().empty
        True
    """

    best: TrialRecord | None
    status: str
    records: list[TrialRecord] = field(default_factory=list)
    study_name: str = DEFAULT_STUDY_NAME
    max_drop: float = 0.0
    n_quantizable: int = 0

    def trials_frame(self) -> pd.DataFrame:
        """One row per trial with the plan's fields flattened.

        ``fallback`` is a list of names, ``ignored_scope`` a dict and ``plan`` the
        whole plan as a dict (:func:`rayq.tuning.tables.plan_of` rebuilds it); None
        numbers are NaN. Saved with typed Arrow columns (``list<string>``, structs;
        :func:`rayq.tuning.tables.write_parquet`).

        Example:
            >>> rec = TrialRecord(3, QuantPlan(fallback=("b", "a")), 0.9, 0.0, 1.0, None, "ok", None, True, "seed")
            >>> DriverOutcome(rec, "met", [rec]).trials_frame().loc[0, "fallback"]
            ['a', 'b']
        """
        chosen = None if self.best is None else self.best.number
        rows = [_record_row(r, chosen, self.n_quantizable) for r in self.records]
        if not rows:
            return pd.DataFrame(columns=list(_record_row(_EMPTY_RECORD)))
        return text_as_objects(pd.DataFrame(rows))

    def pareto(self) -> pd.DataFrame:
        """The ok trials not dominated on (speed-up over FP32: higher, metric: higher).

        Exact duplicates keep the lowest trial number. Sorted by speed-up, fastest first.

        Example:
            >>> recs = [TrialRecord(i, QuantPlan(), m, 0.0, lat, None, "ok", None, True, "sampler",
            ...                     fp32_latency_ms=3.0)
            ...         for i, (lat, m) in enumerate([(1.0, 0.5), (2.0, 0.4), (3.0, 0.9)])]
            >>> DriverOutcome(None, "met", recs).pareto()["number"].tolist()
            [0, 2]
        """
        return pareto_front(self.trials_frame())


_EMPTY_RECORD = TrialRecord(0, QuantPlan(), None, None, None, None, "ok", None, False, "sampler")


def pareto_front(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of a trials frame not dominated on (speed-up max, metric max): the quantity
    the choice uses (:mod:`rayq.tuning.selection`). A frame without speed-ups (no FP32
    timing) falls back to latency (lower is better).

    Only rows with ``status == "ok"``, a known speed-up and (when the frame says)
    ``int8`` take part; exact duplicates keep the lowest ``number``.

    Example:
        >>> f = pd.DataFrame({"number": [0, 1], "status": ["ok", "ok"],
        ...                   "speedup": [1.5, 1.5], "metric": [0.8, 0.9]})
        >>> pareto_front(f)["number"].tolist()
        [1]
    """
    ok = frame[frame["status"] == "ok"]
    if "int8" in ok:
        ok = ok[ok["int8"].astype(bool)]
    if "speedup" in ok and ok["speedup"].notna().any():
        ok = ok[ok["speedup"].notna()].assign(_speed=lambda f: -f["speedup"])
    else:
        ok = ok.assign(_speed=ok["latency_ms"])
    ok = ok.sort_values(["_speed", "metric", "number"], ascending=[True, False, True], kind="mergesort").drop(
        columns="_speed"
    )
    keep, best = [], -math.inf
    for index, metric in zip(ok.index, ok["metric"]):
        if metric > best:
            keep.append(index)
            best = metric
    return ok.loc[keep].reset_index(drop=True)


__all__ = ["EvalResult", "Evaluator", "TrialRecord", "DriverOutcome", "pareto_front"]
