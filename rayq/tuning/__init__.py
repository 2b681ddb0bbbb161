"""The accuracy-controlled search: the only rayq package that imports Optuna.

- :class:`SearchSpace` maps Optuna parameters to and from
  :class:`~rayq.core.plan.QuantPlan` (preset, range estimator, bias correction,
  SmoothQuant alpha, "revert the top-k fallback groups").
- :class:`Evaluator` is what the driver needs from the layer that builds and
  measures plans (Ray tasks in production, a fake in tests);
  :class:`EvalResult` is its answer for one plan.
- :class:`SearchDriver` runs generations of ask/evaluate/tell, minimising a
  deterministic cost (compute left in FP32, never a timing) subject to
  ``drop <= max_drop``, persisting every trial and resuming a study by name; it
  returns a :class:`DriverOutcome` (chosen trial, all :class:`TrialRecord` s,
  trials frame, Pareto front).
- :mod:`rayq.tuning.selection` is the one choice of the answer: feasible INT8
  finalists timed against FP32 in interleaved rounds, significance with a margin,
  deterministic tie-breaks, ``"no_speedup"`` when nothing beats FP32.
- :func:`plot_pareto` draws latency vs. accuracy.

Example:
    >>> from rayq.tuning import SearchSpace
    >>> SearchSpace(ranking=("fc", "conv1")).max_fallback
    2
"""

import optuna as _optuna

from rayq.tuning.driver import DriverOutcome, SearchDriver, TrialRecord, open_storage, pareto_front
from rayq.tuning.plot import plot_pareto
from rayq.tuning.records import EvalResult, Evaluator
from rayq.tuning.space import SearchSpace

_optuna.logging.set_verbosity(_optuna.logging.WARNING)

__all__ = [
    "SearchSpace",
    "EvalResult",
    "Evaluator",
    "SearchDriver",
    "DriverOutcome",
    "TrialRecord",
    "open_storage",
    "pareto_front",
    "plot_pareto",
]
