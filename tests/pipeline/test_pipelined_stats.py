"""The pipelined statistics pass: several batches in flight give the same statistics,
bit for bit, as one batch at a time, on both backends; errors and memory stay bounded."""

from __future__ import annotations

import threading
import time

import numpy as np
import openvino as ov
import pytest

from rayq.api.session import ModelSession
from rayq.backends import get_backend, streams
from rayq.core.plan import QuantPlan
from rayq.core.stats import StatisticSet
from rayq.errors import CalibrationError
from rayq.pipeline import calibrate
from rayq.pipeline.build import placement_for
from rayq.testing.models import random_inputs, resnet_like


@pytest.fixture(scope="module")
def cnn():
    model = resnet_like(with_concat=True)
    calib = np.concatenate([f["input"] for f in random_inputs(model, 36, seed=3)])
    return model, calib


def _spec(session: ModelSession, plan: QuantPlan) -> calibrate.StatSpec:
    return calibrate.stat_spec(
        session.graph, placement_for(session.graph, plan), histograms=True, smooth_quant=False, exact_bias=True
    )


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_pipelined_statistics_equal_one_batch_at_a_time(cnn, backend):
    model, calib = cnn
    if backend == "openvino":
        model = ov.Core().read_model(model=model.SerializeToString(), weights=b"")
    session = ModelSession(model, calib, subset_size=36, batch_size=4)  # 9 batches
    assert session.backend.name == backend
    spec = _spec(session, QuantPlan.create())
    requests = calibrate.pass_requests(spec)
    serial = session.backend.stat_runner(session.model, requests, num_threads=1)
    piped = session.backend.stat_runner(session.model, requests, num_threads=2)
    assert getattr(serial, "streams", 1) == 1
    if backend == "onnx":
        assert piped.streams == 2  # two single-threaded streams on one session
    one = calibrate.collect_local(session.backend, session.model, session.batches, spec, num_threads=1)
    many = calibrate.collect_local(session.backend, session.model, session.batches, spec, num_threads=2)
    assert one.batch_ids == many.batch_ids == frozenset(range(9))
    assert any(one[n].hist is not None for n in one.names())  # the histogram pass ran too
    assert many.equals(one)


class _SlowRunner:
    """A thread-safe fake runner that records how many calls overlap."""

    def __init__(self, streams: int, fail_on: int | None = None) -> None:
        self.streams = streams
        self.fail_on = fail_on
        self.active = self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, feeds):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.02)
        with self.lock:
            self.active -= 1
        value = float(feeds["x"][0, 0])
        if value == self.fail_on:
            raise ValueError("bad reduction")
        return {"t": {"min": np.array([value], np.float32), "max": np.array([value + 1], np.float32)}}


def _batches(n: int, pulled: list[int] | None = None):
    for i in range(n):
        if pulled is not None:
            pulled.append(i)
        yield i, {"x": np.full((1, 2), i, np.float32)}


def test_streams_run_concurrently_and_results_come_in_batch_order():
    runner = _SlowRunner(streams=3)
    seen = [bid for bid, result in calibrate.run_pipelined(runner, _batches(12)) if result()]
    assert seen == list(range(12))
    assert runner.peak == 3


def test_in_flight_batches_are_bounded():
    runner, pulled = _SlowRunner(streams=2), []
    stream = calibrate.run_pipelined(runner, _batches(20, pulled))
    next(stream)
    assert len(pulled) <= 2 * 2 + 1  # calibration memory stays flat in the number of batches
    stream.close()


def test_pipelined_error_names_the_batch():
    stats = StatisticSet()
    with pytest.raises(CalibrationError, match="calibration batch 5"):
        for bid, result in calibrate.run_pipelined(_SlowRunner(streams=2, fail_on=5), _batches(10)):
            calibrate.absorb(stats, bid, result)
    assert stats.batch_ids == frozenset(range(5))


def test_stream_plan():
    assert streams.plan(2) == (2, 1)
    assert streams.plan(1) == (1, 1)
    assert streams.plan(16) == (4, 4)
    assert streams.plan(4, weights_bytes=streams.ONE_STREAM_BYTES) == (1, 4)


def _stateful_model() -> ov.Model:
    """y = x + state; state <- max over the batch of y (ReadValue/Assign)."""
    import openvino.opset13 as ops
    from openvino.op.util import Variable, VariableInfo

    x = ops.parameter([-1, 4], np.float32, name="x")
    info = VariableInfo()
    info.data_shape, info.data_type, info.variable_id = ov.PartialShape([1, 4]), ov.Type.f32, "s"
    var = Variable(info)
    y = ops.add(x, ops.read_value(ops.constant(np.zeros((1, 4), np.float32)), var), name="y")
    y.output(0).get_tensor().set_names({"y"})
    assign = ops.assign(ops.reduce_max(y, ops.constant(np.array([0], np.int64)), True), var)
    return ov.Model([ops.result(y)], [assign], [x], "stateful")


def test_stateful_openvino_model_keeps_one_request():
    """Its state lives in the infer request: every batch must run on the same one."""
    from rayq.backends.base import StatRequest

    run = get_backend("openvino").stat_runner(_stateful_model(), [StatRequest("y", ("min", "max"))], num_threads=2)
    assert getattr(run, "streams", 1) == 1
    maxima = [float(run({"x": np.ones((2, 4), np.float32)})["y"]["max"][0]) for _ in range(3)]
    assert maxima == [1.0, 2.0, 3.0]  # the state carried over from batch to batch
