"""The search space and its two-way mapping to :class:`~rayq.core.plan.QuantPlan`.

Optuna sees a few categorical parameters and one integer:

- ``preset``, ``activation_estimator``, ``bias_correction``,
  ``smooth_quant_alpha`` -- categoricals, suggested only when their tuple of
  choices is non-empty (otherwise the base plan's value is kept);
- ``k`` in ``[0, max_fallback]`` -- "revert the top-k groups of ``ranking``".

Example:
    >>> import optuna
    >>> from rayq.core.plan import QuantPlan
    >>> space = SearchSpace(presets=("performance",), ranking=("fc", "conv1"), max_fallback=2)
    >>> space.from_params({"k": 1, "preset": "performance"}, QuantPlan()).fallback
    ('fc',)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from typing import Any

import optuna

from rayq.core.plan import ACTIVATION_ESTIMATORS, BIAS_CORRECTIONS, PRESETS, QuantPlan
from rayq.errors import ConfigError

logger = logging.getLogger(__name__)

# optuna parameter name -> (SearchSpace field, QuantPlan field)
_CATEGORICALS = (
    ("preset", "presets"),
    ("activation_estimator", "estimators"),
    ("bias_correction", "bias_corrections"),
    ("smooth_quant_alpha", "smooth_quant_alphas"),
)
K_PARAM = "k"


def _check_choices(name: str, values: tuple, allowed: tuple | None) -> None:
    if len(set(values)) != len(values):
        raise ConfigError(f"{name} holds duplicates: {list(values)}")
    for v in values:
        if allowed is not None and v not in allowed:
            raise ConfigError(f"{name}: {v!r} is not valid; choose from {list(allowed)}")
        if allowed is None and v is not None and not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
            raise ConfigError(f"{name}: {v!r} must be None or a number in [0, 1]")


@dataclass(frozen=True)
class SearchSpace:
    """What the Optuna study may vary.

    Args:
        presets: Preset choices (empty: keep the base plan's).
        estimators: Activation range estimator choices (empty: keep the base's).
        bias_corrections: Bias correction choices (empty: keep the base's).
        smooth_quant_alphas: SmoothQuant alphas, floats in [0, 1] or None
            (disabled); empty when the model is not a transformer.
        ranking: Fallback group names, most harmful first.
        max_fallback: Largest k (default: ``len(ranking)``).

    Example:
        >>> SearchSpace(ranking=["b", "a"]).max_fallback
        2
    """

    presets: tuple[str, ...] = PRESETS
    estimators: tuple[str, ...] = ACTIVATION_ESTIMATORS
    bias_corrections: tuple[str, ...] = BIAS_CORRECTIONS
    smooth_quant_alphas: tuple[float | None, ...] = ()
    ranking: tuple[str, ...] = ()
    max_fallback: int | None = None

    def __post_init__(self) -> None:
        for attr in ("presets", "estimators", "bias_corrections", "ranking"):
            value = getattr(self, attr)
            object.__setattr__(self, attr, (value,) if isinstance(value, str) else tuple(value))
        alphas = tuple(None if a is None else float(a) for a in self.smooth_quant_alphas)
        object.__setattr__(self, "smooth_quant_alphas", alphas)
        _check_choices("presets", self.presets, PRESETS)
        _check_choices("estimators", self.estimators, ACTIVATION_ESTIMATORS)
        _check_choices("bias_corrections", self.bias_corrections, BIAS_CORRECTIONS)
        _check_choices("smooth_quant_alphas", self.smooth_quant_alphas, None)
        _check_choices("ranking", self.ranking, tuple(self.ranking))
        n = len(self.ranking)
        max_fallback = n if self.max_fallback is None else int(self.max_fallback)
        if not 0 <= max_fallback <= n:
            raise ConfigError(f"max_fallback={self.max_fallback} must be in [0, {n}] (the ranking's length)")
        object.__setattr__(self, "max_fallback", max_fallback)

    @property
    def _max_k(self) -> int:
        """``max_fallback`` as resolved by ``__post_init__`` (an int from then on)."""
        assert self.max_fallback is not None, "SearchSpace.__post_init__ resolves max_fallback"
        return self.max_fallback

    def to_dict(self) -> dict:
        """The space as JSON-compatible data.

        Example:
            >>> SearchSpace(presets=("mixed",), ranking=["a"]).to_dict()["presets"]
            ['mixed']
        """
        return {
            "presets": list(self.presets),
            "estimators": list(self.estimators),
            "bias_corrections": list(self.bias_corrections),
            "smooth_quant_alphas": list(self.smooth_quant_alphas),
            "ranking": list(self.ranking),
            "max_fallback": self.max_fallback,
        }

    def fingerprint(self) -> str:
        """A 16-hex-digit hash of the space; a resumed study must use the same one.

        Example:
            >>> len(SearchSpace().fingerprint())
            16
        """
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def choices_fingerprint(self) -> str:
        """Hash of the choices only (not the ranking order): what a resumed study must
        share. The ranking is stored by the search itself; recorded trials keep their
        full plan, so they never depend on the ranking they were sampled with."""
        data = self.to_dict()
        data["ranking"] = sorted(data["ranking"])
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def suggest(self, trial: optuna.Trial, base: QuantPlan) -> QuantPlan:
        """Ask ``trial`` for every dimension and build the plan.

        The plan is ``base`` with the suggested values and
        ``fallback = ranking[:k]`` (the base plan's fallback is replaced).

        Args:
            trial: A live Optuna trial (from ``study.ask()``).
            base: Supplies every field the space does not vary.

        Returns:
            The candidate plan.

        Example:
            >>> study = optuna.create_study()
            >>> space = SearchSpace(presets=("mixed",), estimators=("minmax",),
            ...                     bias_corrections=("none",), ranking=("a",))
            >>> space.suggest(study.ask({}), QuantPlan()).preset
            'mixed'
        """
        params: dict[str, Any] = {}
        for param, attr in _CATEGORICALS:
            choices = getattr(self, attr)
            if choices:
                params[param] = trial.suggest_categorical(param, list(choices))
        params[K_PARAM] = trial.suggest_int(K_PARAM, 0, self._max_k)
        return self.from_params(params, base)

    def from_params(self, params: dict[str, Any], base: QuantPlan) -> QuantPlan:
        """Build the plan that Optuna ``params`` describe.

        Args:
            params: Optuna parameters; a missing one keeps ``base``'s value
                (a missing ``k`` keeps ``base.fallback``).
            base: Supplies every field the parameters do not set.

        Returns:
            The plan.

        Raises:
            ConfigError: ``k`` is outside ``[0, max_fallback]`` or a value is invalid.

        Example:
            >>> SearchSpace(ranking=("b", "a")).from_params({"k": 2}, QuantPlan()).fallback
            ('a', 'b')
        """
        changes: dict[str, Any] = {param: params[param] for param, _ in _CATEGORICALS if param in params}
        if K_PARAM in params:
            k = int(params[K_PARAM])
            if not 0 <= k <= self._max_k:
                raise ConfigError(f"k={k} is outside [0, {self.max_fallback}]")
            changes["fallback"] = tuple(self.ranking[:k])
        return replace(base, **changes)

    def to_params(self, plan: QuantPlan) -> dict[str, Any]:
        """The Optuna parameters that reproduce ``plan`` (for ``study.enqueue_trial``).

        Only the dimensions the space varies are returned; fields it does not
        vary come from the base plan in :meth:`from_params`. A fallback set
        that is not a prefix of ``ranking`` maps to the smallest k whose top-k
        covers it, so ``from_params(to_params(plan), base)`` may revert *more*
        groups than ``plan`` did (a superset: at least as accurate).

        Args:
            plan: The plan to encode.

        Returns:
            ``{"preset": ..., ..., "k": int}``.

        Raises:
            ConfigError: A value is not among the space's choices, a fallback
                group is not in ``ranking``, or the covering k exceeds ``max_fallback``.

        Example:
            >>> space = SearchSpace(presets=(), estimators=(), bias_corrections=(), ranking=("c", "b", "a"))
            >>> space.to_params(QuantPlan(fallback=("b",)))
            {'k': 2}
        """
        params: dict[str, Any] = {}
        for param, attr in _CATEGORICALS:
            choices = getattr(self, attr)
            if not choices:
                continue
            value = getattr(plan, param)
            if value not in choices:
                raise ConfigError(f"plan {param}={value!r} is not in the search space's choices {list(choices)}")
            params[param] = value
        params[K_PARAM] = self._covering_k(plan.fallback)
        return params

    def _covering_k(self, fallback: tuple[str, ...]) -> int:
        position = {name: i for i, name in enumerate(self.ranking)}
        unknown = sorted(set(fallback) - set(position))
        if unknown:
            raise ConfigError(f"fallback group(s) {unknown} are not in the search space's ranking")
        k = max((position[name] + 1 for name in fallback), default=0)
        if k > self._max_k:
            raise ConfigError(f"fallback {list(fallback)} needs k={k} > max_fallback={self.max_fallback}")
        if k != len(fallback):
            logger.info(
                "fallback %s is not a top-k prefix; using k=%d (reverts %d more group(s))",
                list(fallback),
                k,
                k - len(fallback),
            )
        return k


__all__ = ["SearchSpace", "K_PARAM"]
