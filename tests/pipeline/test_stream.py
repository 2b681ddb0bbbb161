"""Streamed calibration batches (``BatchStream``) are bit-identical to the materialised
list path (``take`` -> ``to_feeds`` -> ``batches``), read each source once, and do not
hold the calibration set in memory."""

from __future__ import annotations

import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import rayq
from rayq.backends import get_backend
from rayq.backends.base import InputSpec
from rayq.core.plan import QuantPlan
from rayq.pipeline import calibrate, data
from rayq.pipeline.build import placement_for
from rayq.pipeline.stream import BatchStream

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"
MODEL = str(DIGITS / "digits_cnn.onnx")
SPECS = [InputSpec("x", (None, 3), "float32")]


def _list_path(dataset, specs, subset_size, batch_size=None):
    """The pre-streaming path: every item, feed and batch in lists."""
    feeds = [data.to_feeds(item, specs) for item in data.take(data.as_dataset(dataset), subset_size)]
    bs = data.batch_size_for(feeds, specs, batch_size)
    return list(enumerate(data.batches(feeds, specs, bs))), data.fingerprint(feeds), bs


def _assert_same(stream: BatchStream, batches, fp, bs) -> None:
    assert stream.fingerprint == fp and stream.batch_size == bs and len(stream) == len(batches)
    for _ in range(2):  # every iteration gives the same batches
        got = list(stream)
        assert [i for i, _ in got] == [i for i, _ in batches]
        for (_, a), (_, b) in zip(got, batches):
            assert a.keys() == b.keys()
            for k in a:
                assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes()


@pytest.mark.parametrize("form", ["array", "list", "generator", "transform", "columns", "ragged"])
@pytest.mark.parametrize("subset", [None, 7, 19])
def test_stream_equals_the_list_path(form, subset):
    arr = np.random.default_rng(0).standard_normal((19, 1, 3)).astype(np.float32)
    make = {
        "array": lambda: arr,
        "list": lambda: list(arr),
        "generator": lambda: (x for x in arr),
        "transform": lambda: rayq.Dataset(list(arr * 2), lambda x: {"x": x / 2}),
        "columns": lambda: {"x": arr},
        "ragged": lambda: (np.ones((1, 1 + i % 3), np.float32) * i for i in range(19)),
    }[form]
    specs = [InputSpec("x", (None, None), "float32")] if form == "ragged" else SPECS
    stream = BatchStream(data.as_dataset(make()), specs, subset_size=subset, batch_size=None)
    _assert_same(stream, *_list_path(make(), specs, subset))
    assert stream.num_items == (subset or 19)
    assert stream.batch_size == (1 if form == "ragged" else data.AUTO_BATCH)


def test_requested_batch_size_and_slicing():
    arr = np.random.default_rng(1).standard_normal((11, 1, 3)).astype(np.float32)
    stream = BatchStream(data.as_dataset(iter(arr)), SPECS, subset_size=None, batch_size=3)
    batches, fp, bs = _list_path(arr, SPECS, None, 3)
    _assert_same(stream, batches, fp, bs)
    assert [i for i, _ in stream[1:3]] == [1, 2] and stream[-1][0] == 3 and stream[0][1]["x"].shape == (3, 3)
    with pytest.raises(IndexError):
        stream[4]
    with pytest.raises(rayq.DataError, match="batch_size > 1 needs"):
        BatchStream(
            data.as_dataset([np.zeros((1, 3), np.float32), np.zeros((1, 2), np.float32)]),
            [InputSpec("x", (None, None), "float32")],
            subset_size=None,
            batch_size=2,
        )


def test_transform_runs_once_per_item_and_pickles_as_a_list():
    calls = []

    def transform(x):
        calls.append(1)
        return x

    arr = np.arange(30, dtype=np.float32).reshape(10, 1, 3)
    stream = BatchStream(data.as_dataset(rayq.Dataset(list(arr), transform)), SPECS, subset_size=None, batch_size=None)
    for _ in range(3):
        list(stream)
    assert len(calls) == 10  # the spool replays the feeds: the user's transform is not re-run
    copy = pickle.loads(pickle.dumps(stream))
    assert isinstance(copy, list) and [i for i, _ in copy] == [0, 1]
    np.testing.assert_array_equal(copy[1][1]["x"], arr[8:].reshape(2, 3))


def test_stream_does_not_hold_the_calibration_set():
    """2 000 items of 64 KiB (125 MiB) from a generator: peak Python/numpy allocations
    stay at a few batches (the list path holds every item)."""
    specs = [InputSpec("x", (None, 16384), "float32")]

    def gen():
        for i in range(2000):
            yield np.full((1, 16384), i, np.float32)

    tracemalloc.start()
    try:
        stream = BatchStream(data.as_dataset(gen()), specs, subset_size=None, batch_size=None)
        total = sum(float(f["x"][:, 0].sum()) for _, f in stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == sum(range(2000))
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_statistics_from_the_stream_are_bit_identical_to_the_list_path():
    """Both passes (min/max, histograms) of the digits CNN, streamed from a generator vs
    the materialised batches."""
    backend = get_backend("onnx")
    model = backend.load(MODEL)
    specs = backend.inputs(model)
    with np.load(DIGITS / "calibration.npz") as z:
        calib = z["input"][:40].copy()
    plan = QuantPlan.create()
    spec = calibrate.stat_spec(
        backend.graph(model), placement_for(backend.graph(model), plan), histograms=True, smooth_quant=False
    )
    stream = BatchStream(data.as_dataset(x for x in calib), specs, subset_size=None, batch_size=None)
    batches, _, _ = _list_path(calib, specs, None)
    a = calibrate.collect_local(backend, model, stream, spec).to_arrays()
    b = calibrate.collect_local(backend, model, batches, spec).to_arrays()
    assert a.keys() == b.keys()
    for t in a:
        for f in a[t]:
            assert np.asarray(a[t][f]).tobytes() == np.asarray(b[t][f]).tobytes(), (t, f)


def test_npy_rows_are_read_from_disk(tmp_path):
    """A ``.npy`` calibration file is read row by row (no mapping, no whole-file load):
    same batches as the array, and peak allocations of a few rows."""
    arr = np.random.default_rng(3).standard_normal((600, 1, 4096)).astype(np.float32)  # 9.4 MiB
    np.save(tmp_path / "calib.npy", arr)
    specs = [InputSpec("x", (None, 4096), "float32")]
    tracemalloc.start()
    try:
        stream = BatchStream(data.as_dataset(tmp_path / "calib.npy"), specs, subset_size=None, batch_size=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, f"scan peak {peak / 2**20:.1f} MiB"
    _assert_same(stream, *_list_path(arr, specs, None))
    rows = data.load_path(tmp_path / "calib.npy")
    np.testing.assert_array_equal(rows[-1], arr[-1])
    np.testing.assert_array_equal(rows[3:5][1], arr[4])
