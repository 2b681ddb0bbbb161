"""Seeded Optuna samplers whose draws depend on the trial, not on the driver's history.

:class:`TrialSeededSampler` wraps TPE or NSGA-II and seeds every draw from
``(seed, trial number, parameter name)``. A trial's parameters therefore do not
depend on how many trials one sampler object has drawn before it, on how trials
are grouped into generations, or on whether the driver was restarted: a resumed
driver that re-asks a trial a killed driver left half-suggested draws exactly
what the killed one drew (given the same finished trials).

Example:
    >>> import optuna
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> def first_x(seed):
    ...     study = optuna.create_study(sampler=TrialSeededSampler("tpe", seed))
    ...     return study.ask().suggest_int("x", 0, 1000)
    >>> first_x(1) == first_x(1)
    True
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from rayq.errors import ConfigError

SAMPLERS = ("tpe", "nsga2")


def constraints(trial: FrozenTrial) -> list[float]:
    """Optuna's ``constraints_func``: ``drop - max_drop`` (<= 0 is feasible), from the
    ``constraint`` user attribute the driver sets before telling the trial."""
    return [float(trial.user_attrs.get("constraint") or 0.0)]


def make_sampler(kind: str, seed: int, generation_size: int = 4) -> optuna.samplers.BaseSampler:
    """A plain Optuna sampler of ``kind`` (``"tpe"`` or ``"nsga2"``) seeded with ``seed``,
    with the accuracy constraint. Constraints go through ``constraints_func`` (deprecated
    in Optuna 5 in favour of ``set_constraint``): it writes the ``constraints`` list that
    optuna-dashboard (0.21) displays, which ``set_constraint``'s per-key attributes are not.

    Example:
        >>> type(make_sampler("tpe", 0)).__name__
        'TPESampler'
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*constraints_func.*", category=FutureWarning)
        if kind == "nsga2":
            return optuna.samplers.NSGAIISampler(
                population_size=max(8, 2 * generation_size), seed=seed, constraints_func=constraints
            )
        if kind == "tpe":
            return optuna.samplers.TPESampler(seed=seed, constraints_func=constraints)
    raise ConfigError(f"sampler={kind!r} is not valid; choose one of {list(SAMPLERS)}")


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE or NSGA-II with every draw seeded from ``(seed, trial number, parameter)``.

    Args:
        kind: ``"tpe"`` or ``"nsga2"``.
        seed: The search seed.
        generation_size: Sizes the NSGA-II population (``max(8, 2 * generation_size)``).

    Example:
        >>> TrialSeededSampler("nsga2", 3).kind
        'nsga2'
    """

    def __init__(self, kind: str, seed: int, generation_size: int = 4) -> None:
        self.kind, self.seed, self.generation_size = kind, int(seed), int(generation_size)
        self._base = make_sampler(kind, self.seed, generation_size)  # state-free hooks and search space

    def _seeded(self, number: int, name: str = "") -> optuna.samplers.BaseSampler:
        words = [self.seed, int(number), zlib.crc32(name.encode())]
        return make_sampler(self.kind, int(np.random.SeedSequence(words).generate_state(1)[0]), self.generation_size)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._seeded(trial.number).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._seeded(trial.number, param_name).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to reseed: every draw is seeded from the trial."""


__all__ = ["SAMPLERS", "TrialSeededSampler", "make_sampler"]
