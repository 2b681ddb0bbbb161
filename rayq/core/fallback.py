"""Fallback groups: which quantized ops to revert to FP32, and in what order.

A *fallback group* is a quantizable op that can be reverted to FP32. The search
scores every group (the metric gained by reverting it alone), ranks them most
harmful first, then tries "revert the top-k" for a spread of k and narrows the
smallest feasible k by bisection. Everything here is deterministic: ties are
broken by the graph's topological order.

Example:
    >>> ranking = rank_groups({"a": 0.1, "b": 0.3, "c": 0.1}, order=["c", "a", "b"])
    >>> ranking
    ['b', 'c', 'a']
    >>> topk_candidates(ranking)
    [('b',), ('b', 'c'), ('a', 'b', 'c')]
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from rayq.errors import ConfigError

logger = logging.getLogger(__name__)


def rank_groups(scores: Mapping[str, float], order: Sequence[str]) -> list[str]:
    """Sort fallback groups most harmful first.

    Args:
        scores: Harm of each group (higher = more harmful = revert first), e.g.
            the metric gained by reverting that group alone.
        order: The graph's topological order of node names; it breaks ties
            (earlier first). It may hold names that are not groups.

    Returns:
        The group names, most harmful first.

    Raises:
        ConfigError: A group is missing from ``order`` or has a NaN score.

    Example:
        >>> rank_groups({"conv2": 0.2, "conv1": 0.2, "fc": 0.5}, ["conv1", "conv2", "fc"])
        ['fc', 'conv1', 'conv2']
    """
    position = {name: i for i, name in enumerate(order)}
    missing = sorted(set(scores) - set(position))
    if missing:
        raise ConfigError(f"fallback group(s) {missing} are not in the graph order")
    bad = sorted(name for name, s in scores.items() if math.isnan(float(s)))
    if bad:
        raise ConfigError(f"fallback group(s) {bad} have a NaN score; score them again or drop them")
    return sorted(scores, key=lambda name: (-float(scores[name]), position[name]))


def _geometric(n: int, count: int) -> list[int]:
    """A geometric spread of k in [1, n] with ``min(count, n)`` values, 1 and n included."""
    if n <= count:
        return list(range(1, n + 1))
    ks: list[int] = []
    for num in itertools.count(count):  # rounding merges small k: add points until count distinct
        ks = sorted({int(round(p)) for p in np.geomspace(1, n, num=num)})  # noqa: RUF046 (numpy<2 rounds to float)
        if len(ks) >= count:
            break
    while len(ks) > count:
        ks.pop(len(ks) // 2)
    return ks


def topk_candidates(
    ranking: Sequence[str],
    ks: Sequence[int] | None = None,
    *,
    max_candidates: int = 8,
) -> list[tuple[str, ...]]:
    """Fallback sets "revert the top-k of ``ranking``" for several k.

    Args:
        ranking: Group names, most harmful first (see :func:`rank_groups`).
        ks: The k values to use. Values <= 0 are dropped (k=0 is the fully
            quantized model, evaluated elsewhere) and values above
            ``len(ranking)`` are clamped to it. None picks a geometric-ish
            spread that includes 1 and ``len(ranking)`` (every k when
            ``len(ranking) <= max_candidates``).
        max_candidates: Cap on the number of sets of the automatic spread
            (>= 2); ignored when ``ks`` is given.

    Returns:
        Distinct fallback sets in increasing k, each a sorted tuple.

    Raises:
        ConfigError: ``max_candidates < 2`` or duplicate names in ``ranking``.

    Example:
        >>> topk_candidates(["d", "c", "b", "a"], ks=[0, 2, 9])
        [('c', 'd'), ('a', 'b', 'c', 'd')]
    """
    ranking = list(ranking)
    if len(set(ranking)) != len(ranking):
        raise ConfigError("ranking holds duplicate group names")
    if max_candidates < 2:
        raise ConfigError(f"max_candidates={max_candidates} must be >= 2")
    n = len(ranking)
    if n == 0:
        return []
    if ks is None:
        chosen = _geometric(n, max_candidates)
    else:
        chosen = sorted({min(int(k), n) for k in ks if int(k) > 0})
    logger.debug("top-k candidates for k=%s of %d groups", chosen, n)
    return [tuple(sorted(ranking[:k])) for k in chosen]


def bisect_k(feasible: Mapping[int, bool], n: int) -> int | None:
    """The next k to evaluate when looking for the smallest feasible top-k.

    Assumes feasibility is monotone in k (reverting more groups never hurts
    accuracy). k=0 (the fully quantized model) is taken as infeasible unless
    ``feasible`` says otherwise, since the search only runs when it is.
    Results that contradict monotonicity (an infeasible k above a feasible
    one) are ignored.

    Args:
        feasible: The k values evaluated so far and whether each met the budget.
        n: The number of groups (largest k).

    Returns:
        The next k to try, or None when resolved: the smallest feasible k is
        then ``min(k for k, ok in feasible.items() if ok)``, or no k is
        feasible when ``n`` itself was infeasible.

    Raises:
        ConfigError: A key is outside ``[0, n]`` or ``n < 0``.

    Example:
        >>> bisect_k({}, 10), bisect_k({10: True}, 10), bisect_k({10: True, 5: False}, 10)
        (10, 5, 7)
        >>> bisect_k({4: False, 5: True}, 10) is None
        True
    """
    if n < 0:
        raise ConfigError(f"n={n} must be >= 0")
    outside = sorted(k for k in feasible if not 0 <= k <= n)
    if outside:
        raise ConfigError(f"k values {outside} are outside [0, {n}]")
    good = [k for k, ok in feasible.items() if ok]
    if not good:
        return None if n in feasible or n == 0 else n
    hi = min(good)
    lo = max([k for k, ok in feasible.items() if not ok and k < hi], default=0)
    if hi == 0 or hi - lo <= 1:
        return None
    return (lo + hi) // 2


__all__ = ["rank_groups", "topk_candidates", "bisect_k"]
