"""Tests of rayq.core.stats: exact, order-independent mergeable statistics."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rayq.core.stats import ExactSum, Histogram, StatisticSet, TensorStatistics
from rayq.errors import DataError

FAST = settings(max_examples=40, deadline=None, database=None)

# float32 values of every magnitude (subnormals, 3e38, -0.0), as the backends return.
F32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
# float64 values whose sums of a few dozen cannot overflow.
F64 = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False)


def _merge_tree(data, parts, merge):
    """Merges ``parts`` in a random tree order with random operand order."""
    parts = list(parts)
    while len(parts) > 1:
        i, j = data.draw(st.lists(st.integers(0, len(parts) - 1), min_size=2, max_size=2, unique=True))
        merged = merge(parts[i], parts[j])
        parts = [p for k, p in enumerate(parts) if k not in (i, j)] + [merged]
    return parts[0]


def _shard(data, items, new, feed, merge):
    """Feeds ``items`` to random shards in random order; returns the merged result."""
    n_shards = data.draw(st.integers(1, 4))
    owner = data.draw(st.lists(st.integers(0, n_shards - 1), min_size=len(items), max_size=len(items)))
    shards = []
    for s in range(n_shards):
        mine = [item for item, o in zip(items, owner, strict=True) if o == s]
        acc = new()
        for item in data.draw(st.permutations(mine)):
            feed(acc, item)
        shards.append(acc)
    return _merge_tree(data, shards, merge)


def _single(items, new, feed):
    acc = new()
    for item in items:
        feed(acc, item)
    return acc


def _rows(shape):
    return hnp.arrays(np.float32, shape, elements=F32)


# ---------------------------------------------------------------- ExactSum


@FAST
@given(st.lists(st.lists(F64, min_size=3, max_size=3), min_size=0, max_size=40))
def test_exact_sum_matches_fsum(rows):
    s = ExactSum((3,))
    for row in rows:
        s.update(np.array(row))
    expected = [math.fsum(col) + 0.0 for col in zip(*rows, strict=True)] if rows else [0.0] * 3
    assert s.value().tobytes() == np.array(expected).tobytes()


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1e16, 1.0, -1e16], 1.0),
        ([1e100, 1.0, -1e100, 1e-100], math.fsum([1.0, 1e-100])),
        ([0.1] * 10, math.fsum([0.1] * 10)),
        ([1.0, 1e-16, 1e-16, 1e-16, 1e-16], math.fsum([1.0] + [1e-16] * 4)),
        ([-0.0, -0.0], 0.0),
        ([5e-324, 5e-324, -1e-300, 1e-300], 1e-323),
    ],
)
def test_exact_sum_cancellation(values, expected):
    one_by_one, at_once = ExactSum(), ExactSum()
    for v in values:
        one_by_one.update(np.float64(v))
    at_once.update_rows(np.array(values))
    for s in (one_by_one, at_once):
        assert s.value().tobytes() == np.float64(expected).tobytes()
    assert 1e16 + 1.0 - 1e16 != 1.0  # the naive sum really is wrong for the first case


@FAST
@given(st.data(), st.lists(_rows((3, 2)), min_size=1, max_size=12))
def test_exact_sum_sharded_equals_single_pass(data, batches):
    new = lambda: ExactSum((2,))  # noqa: E731
    feed = ExactSum.update_rows
    single = _single(batches, new, feed)
    sharded = _shard(data, batches, new, feed, ExactSum.merge)
    assert sharded.value().tobytes() == single.value().tobytes()
    expected = [math.fsum(c) + 0.0 for c in np.concatenate(batches).astype(np.float64).T]
    assert single.value().tolist() == expected


@FAST
@given(st.lists(_rows((2, 3)), min_size=0, max_size=8))
def test_exact_sum_round_trip(batches):
    s = ExactSum((3,))
    for b in batches:
        s.update_rows(b)
    arrays = s.to_arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "fi" for v in arrays.values())
    back = ExactSum.from_arrays(arrays)
    assert back.equals(s) and back.value().tobytes() == s.value().tobytes()
    for key, value in back.to_arrays().items():
        assert value.tobytes() == arrays[key].tobytes()


@pytest.mark.parametrize("batch", [1, 7, 300])
def test_exact_sum_mixed_magnitudes_stay_short_and_exact(batch):
    rng = np.random.default_rng(batch)
    rows = rng.standard_normal((300, 64)) * 10.0 ** rng.uniform(-30, 30, (300, 64))
    s = ExactSum((64,))
    for start in range(0, 300, batch):
        s.update_rows(rows[start : start + batch])
    assert len(s.to_arrays()["partials"]) <= 40
    assert s.value().tolist() == [math.fsum(c) + 0.0 for c in rows.T]


def test_exact_sum_inputs_untouched_and_not_aliased():
    a, b = ExactSum((2,)), ExactSum((2,))
    x = np.array([1.0, 2.0])
    a.update(x)
    x[:] = 100.0  # the caller reuses its buffer
    b.update(np.array([3.0, 4.0]))
    merged = a.merge(b)
    merged.update(np.array([1.0, 1.0]))
    assert a.value().tolist() == [1.0, 2.0] and b.value().tolist() == [3.0, 4.0]
    assert merged.value().tolist() == [5.0, 7.0]


def test_exact_sum_rejects_bad_input():
    s = ExactSum((2,))
    with pytest.raises(ValueError):
        s.update(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        s.update(np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError):
        s.merge(ExactSum((3,)))
    with pytest.raises(ValueError):
        ExactSum.from_arrays({"partials": np.zeros((1, 3)), "shape": np.array([2])})
    big = ExactSum()
    big.update(np.float64(1e308))
    with pytest.raises(OverflowError):
        big.update(np.float64(1e308))
    assert big.value() == 1e308  # a failed update leaves the sum untouched


# ---------------------------------------------------------------- Histogram


def test_histogram_bins_match_numpy_and_clip_outliers():
    rng = np.random.default_rng(0)
    values = rng.uniform(-1.0, 1.0, 10_000)
    h = Histogram(-1.0, 1.0, 37)
    h.update(values)
    h.update(np.array([-5.0, -1.0, 1.0, 9.0]))
    expected, edges = np.histogram(np.concatenate([values, [-1.0, -1.0, 1.0, 1.0]]), 37, (-1.0, 1.0))
    assert np.array_equal(h.counts, expected) and h.counts.dtype == np.int64
    assert np.array_equal(h.edges(), edges)
    assert h.total == 10_004


@FAST
@given(st.data(), st.lists(_rows(st.integers(1, 20)), min_size=1, max_size=10))
def test_histogram_sharded_equals_single_pass(data, batches):
    new = lambda: Histogram(-100.0, 50.0, 16)  # noqa: E731
    single = _single(batches, new, Histogram.update)
    sharded = _shard(data, batches, new, Histogram.update, Histogram.merge)
    assert sharded.equals(single) and single.total == sum(b.size for b in batches)


def test_histogram_merge_rejects_other_edges():
    with pytest.raises(ValueError, match="edges differ"):
        Histogram(0.0, 1.0, 10).merge(Histogram(0.0, 1.0, 11))
    with pytest.raises(ValueError):
        Histogram(1.0, 1.0, 4)
    with pytest.raises(ValueError):
        Histogram(0.0, 1.0, 4).update(np.array([np.inf]))


# ---------------------------------------------------------------- TensorStatistics


@st.composite
def _tensor_batches(draw, channels=3, raw=True):
    """Reductions of random batches computed from random raw float32 tensors."""
    batches = []
    for _ in range(draw(st.integers(1, 8))):
        b = draw(st.integers(1, 4))
        x = draw(hnp.arrays(np.float32, (b, channels, 2), elements=F32))
        red = {
            "min": x.min(axis=(1, 2)),
            "max": x.max(axis=(1, 2)),
            "ch_mean": (x.astype(np.float64).mean(axis=2)).astype(np.float32),
            "ch_absmax": np.abs(x).max(axis=2),
            "ch_min": x.min(axis=2),
            "ch_max": x.max(axis=2),
        }
        if raw:
            red["raw"] = x
        batches.append(red)
    return batches


def _new_tensor():
    s = TensorStatistics("conv1")
    s.enable_histogram(-1e30, 1e30, 32)
    return s


@FAST
@given(st.data(), _tensor_batches())
def test_tensor_statistics_sharded_equals_single_pass(data, batches):
    single = _single(batches, _new_tensor, TensorStatistics.update)
    sharded = _shard(data, batches, _new_tensor, TensorStatistics.update, TensorStatistics.merge)
    assert sharded.equals(single)
    assert single.n == sum(len(b["min"]) for b in batches)
    mins = np.concatenate([b["min"] for b in batches]).astype(np.float64)
    assert single.min == mins.min() and single.mean_min == math.fsum(mins) / single.n
    allx = np.concatenate([b["ch_min"] for b in batches]).astype(np.float64)
    assert np.array_equal(single.channel_min, allx.min(axis=0) + 0.0)
    assert single.channel_mean.shape == (3,) and single.hist.total == sum(b["raw"].size for b in batches)


@FAST
@given(_tensor_batches())
def test_tensor_statistics_round_trip(batches):
    s = _single(batches, _new_tensor, TensorStatistics.update)
    arrays = s.to_arrays()
    assert all(isinstance(v, np.ndarray) and v.ndim <= 2 and v.dtype.kind in "fi" for v in arrays.values())
    assert TensorStatistics.from_arrays("conv1", arrays).equals(s)
    assert TensorStatistics.from_arrays("conv1", TensorStatistics("conv1").to_arrays()).equals(
        TensorStatistics("conv1")
    )


def test_tensor_statistics_known_values():
    s = TensorStatistics("x")
    s.update({"min": np.array([-1.0, 0.0], np.float32), "max": np.array([2.0, 4.0], np.float32)})
    s.update({"min": np.array([-4.0], np.float32), "max": np.array([0.5], np.float32)})
    assert (s.n, s.min, s.max) == (3, -4.0, 4.0)
    assert s.mean_min == -5.0 / 3 and s.mean_max == 6.5 / 3
    assert s.channel_mean is None and s.channel_absmax is None and s.hist is None


def test_negative_zero_does_not_depend_on_order():
    a, b = TensorStatistics("x"), TensorStatistics("x")
    a.update({"min": np.array([-0.0, 0.0]), "max": np.array([-0.0, 0.0])})
    b.update({"min": np.array([0.0, -0.0]), "max": np.array([0.0, -0.0])})
    assert a.equals(b) and math.copysign(1.0, a.min) == 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("key", ["min", "ch_mean", "raw"])
def test_non_finite_reductions_raise_data_error(key, bad):
    s = _new_tensor()
    red = {"min": np.zeros(2), "max": np.ones(2), "ch_mean": np.zeros((2, 3)), "raw": np.zeros((2, 5))}
    red[key] = red[key].copy()
    red[key].flat[1] = bad
    with pytest.raises(DataError, match="conv1"):
        s.update(red)
    assert s.n == 0 and s.min == math.inf  # nothing absorbed


def test_tensor_statistics_rejects_inconsistent_input():
    s = TensorStatistics("x")
    s.update({"min": np.zeros(2), "max": np.ones(2), "ch_mean": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="earlier"):
        s.update({"min": np.zeros(2), "max": np.ones(2)})
    with pytest.raises(ValueError, match="channel"):
        s.update({"min": np.zeros(2), "max": np.ones(2), "ch_mean": np.zeros((2, 4))})
    with pytest.raises(ValueError, match="batch size"):
        s.update({"min": np.zeros(2), "max": np.ones(3), "ch_mean": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="histogram"):
        TensorStatistics("x").update({"raw": np.zeros((1, 4))})
    with pytest.raises(ValueError, match="among"):
        TensorStatistics("x").update({"mean": np.zeros(1)})
    with pytest.raises(ValueError):
        s.merge(TensorStatistics("y"))
    other = TensorStatistics("x")
    other.update({"min": np.zeros(1), "max": np.ones(1)})
    with pytest.raises(ValueError, match="merge reductions"):
        s.merge(other)
    wide = TensorStatistics("x")
    wide.update({"min": np.zeros(1), "max": np.ones(1), "ch_mean": np.zeros((1, 4))})
    with pytest.raises(ValueError, match="channel"):
        s.merge(wide)
    h1, h2 = TensorStatistics("x"), TensorStatistics("x")
    h1.enable_histogram(0, 1, 8)
    h2.enable_histogram(0, 2, 8)
    with pytest.raises(ValueError, match="edges"):
        h1.merge(h2)
    with pytest.raises(ValueError, match="before the first update"):
        s.enable_histogram(0, 1, 8)


def test_merge_leaves_operands_untouched():
    a, b = _new_tensor(), _new_tensor()
    a.update({"min": np.zeros(1), "max": np.ones(1), "raw": np.ones((1, 2))})
    b.update({"min": -np.ones(1), "max": np.ones(1), "raw": np.zeros((1, 2))})
    before = a.to_arrays()
    merged = a.merge(b)
    merged.update({"min": -np.ones(1) * 7, "max": np.ones(1), "raw": np.zeros((1, 2))})
    assert a.equals(TensorStatistics.from_arrays("conv1", before))
    assert merged.n == 3 and a.n == 1 and merged.min == -7.0 and a.hist.total == 2


# ---------------------------------------------------------------- StatisticSet


@st.composite
def _set_batches(draw):
    """(batch id, {tensor: reductions}) with a histogram tensor and an optional one."""
    batches = []
    for batch_id, red in enumerate(draw(_tensor_batches(raw=True))):
        per_tensor = {"a": red, "b": {k: red[k] for k in ("min", "max")}}
        if draw(st.booleans()):
            per_tensor["c"] = {"min": red["min"] / 2, "max": red["max"]}
        batches.append((batch_id * 7 + 3, per_tensor))
    return batches


def _new_set():
    s = StatisticSet()
    s.enable_histogram("a", -1e38, 1e38, 64)
    return s


def _feed_set(s, item):
    s.update(*item)


@FAST
@given(st.data(), _set_batches())
def test_statistic_set_sharded_equals_single_pass(data, batches):
    single = _single(batches, _new_set, _feed_set)
    sharded = _shard(data, batches, _new_set, _feed_set, StatisticSet.merge)
    assert sharded.equals(single)
    assert single.batch_ids == frozenset(i for i, _ in batches)
    assert set(single.names()) >= {"a", "b"} and "a" in single and "z" not in single
    back = StatisticSet.from_arrays(single.to_arrays())
    assert back.equals(single) and back["a"].hist.equals(single["a"].hist)


def test_statistic_set_equals_detects_a_difference():
    a, b = StatisticSet(), StatisticSet()
    a.update(0, {"x": {"min": np.array([0.1]), "max": np.array([1.0])}})
    b.update(0, {"x": {"min": np.array([0.1]), "max": np.array([1.0 + 2**-52])}})
    assert not a.equals(b)
    c = StatisticSet()
    c.update(1, {"x": {"min": np.array([0.1]), "max": np.array([1.0])}})
    assert not a.equals(c)


def test_statistic_set_rejects_double_counting():
    a, b = StatisticSet(), StatisticSet()
    red = {"x": {"min": np.zeros(1), "max": np.ones(1)}}
    a.update(1, red)
    b.update(1, red)
    with pytest.raises(ValueError, match="twice"):
        a.merge(b)
    with pytest.raises(ValueError, match="already"):
        a.update(1, red)


def test_statistic_set_update_is_all_or_nothing():
    s = StatisticSet()
    good = {"min": np.zeros(1), "max": np.ones(1)}
    with pytest.raises(DataError, match="'y'"):
        s.update(0, {"x": good, "y": {"min": np.array([np.nan]), "max": np.ones(1)}})
    assert len(s) == 0 and s.batch_ids == frozenset()
    s.update(0, {"x": good})
    assert s["x"].n == 1


def test_core_stats_imports_only_numpy():
    code = (
        "import sys, rayq.core.stats, rayq.core.estimators\n"
        "bad = [m for m in ('pyarrow', 'ray', 'onnx', 'onnxruntime', 'openvino', 'optuna', 'pandas')"
        " if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
