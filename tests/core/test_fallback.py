"""Fallback group ranking, top-k candidate sets and bisection."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rayq.core.fallback import bisect_k, rank_groups, topk_candidates
from rayq.errors import ConfigError


def test_rank_by_harm_then_topological_order():
    order = ["input", "conv1", "conv2", "conv3", "fc"]
    scores = {"fc": 0.1, "conv3": 0.4, "conv1": 0.1, "conv2": 0.4}
    assert rank_groups(scores, order) == ["conv2", "conv3", "conv1", "fc"]
    assert rank_groups({}, order) == []


def test_rank_errors():
    with pytest.raises(ConfigError, match="not in the graph order"):
        rank_groups({"ghost": 1.0}, ["a"])
    with pytest.raises(ConfigError, match="NaN"):
        rank_groups({"a": float("nan")}, ["a"])


@given(st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from([0.0, 0.5, 1.0])), st.randoms())
def test_rank_is_deterministic_whatever_the_dict_order(scores, rnd):
    order = list("hgfedcba")
    items = list(scores.items())
    rnd.shuffle(items)
    assert rank_groups(dict(items), order) == rank_groups(scores, order)


def test_topk_default_spread():
    ranking = [f"n{i:02d}" for i in range(20)]
    sets = topk_candidates(ranking)
    sizes = [len(s) for s in sets]
    assert sizes[0] == 1 and sizes[-1] == 20 and len(sets) == 8
    assert sizes == sorted(set(sizes))
    assert all(list(s) == sorted(s) for s in sets)
    assert sets[2] == tuple(sorted(ranking[: sizes[2]]))
    assert [len(s) for s in topk_candidates(ranking[:5])] == [1, 2, 3, 4, 5]
    assert len(topk_candidates(ranking, max_candidates=3)) == 3
    assert topk_candidates([]) == []


def test_topk_explicit_ks():
    ranking = ["d", "c", "b", "a"]
    assert topk_candidates(ranking, ks=[0, 2, 2, 9, -1]) == [("c", "d"), ("a", "b", "c", "d")]
    with pytest.raises(ConfigError):
        topk_candidates(ranking, max_candidates=1)
    with pytest.raises(ConfigError):
        topk_candidates(["a", "a"])


@given(st.integers(1, 300), st.integers(2, 12))
def test_topk_spread_properties(n, cap):
    sizes = [len(s) for s in topk_candidates([str(i) for i in range(n)], max_candidates=cap)]
    assert sizes[0] == 1 and sizes[-1] == n
    assert len(sizes) == min(n, cap) and sizes == sorted(set(sizes))


def test_bisect_sequence():
    assert bisect_k({}, 10) == 10
    assert bisect_k({10: False}, 10) is None  # nothing feasible
    assert bisect_k({10: True}, 10) == 5
    assert bisect_k({10: True, 5: False}, 10) == 7
    assert bisect_k({10: True, 5: False, 7: True}, 10) == 6
    assert bisect_k({10: True, 5: False, 7: True, 6: False}, 10) is None
    assert bisect_k({0: True}, 10) is None
    assert bisect_k({1: True}, 10) is None  # k=0 is taken as infeasible
    with pytest.raises(ConfigError):
        bisect_k({11: True}, 10)


@given(st.integers(1, 200), st.data())
def test_bisect_finds_smallest_feasible_k(n, data):
    threshold = data.draw(st.integers(1, n + 1))  # n + 1: nothing feasible
    feasible: dict[int, bool] = {}
    for _ in range(n + 2):
        k = bisect_k(feasible, n)
        if k is None:
            break
        assert k not in feasible
        feasible[k] = k >= threshold
    else:
        pytest.fail("bisection did not terminate")
    good = [k for k, ok in feasible.items() if ok]
    assert (min(good) if good else n + 1) == threshold
    assert len(feasible) <= n.bit_length() + 2


def test_core_modules_do_not_import_optuna():
    code = (
        "import sys, rayq.core.fallback, rayq.core.accuracy; "
        "bad = {'optuna', 'ray', 'onnx', 'onnxruntime', 'openvino'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
