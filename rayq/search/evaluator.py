"""What the search driver needs from whoever builds and measures candidates.

The driver hands a batch of plans to :meth:`Evaluator.evaluate` and gets one
:class:`EvalResult` per plan, in the same order. How the batch is spread over
workers (Ray actors, threads, one process) is the evaluator's business; the
driver's result does not depend on it. A candidate that cannot be built or
validated is a result with ``status="failed"`` and a reason, not an exception:
an exception from ``evaluate`` stops the search (the in-flight trials are
recorded as interrupted and re-run when the study is resumed).

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from rayq.core.plan import QuantPlan

logger = logging.getLogger(__name__)

EVAL_STATUSES = ("ok", "failed")


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


__all__ = ["EVAL_STATUSES", "EvalResult", "Evaluator"]
