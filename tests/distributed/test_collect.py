"""Sharded calibration on a real local Ray: dynamic dispatch gives the same statistics as
one process, for any number of workers, and a worker that dies mid-pass loses nothing."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import rayq
from rayq.distributed import collect as dc
from rayq.pipeline import calibrate
from rayq.pipeline.build import placement_for
from rayq.session import ModelSession
from rayq.testing.models import resnet_like


def _arrays_equal(a: dict, b: dict, path: str = "") -> None:
    assert sorted(a) == sorted(b), path
    for k in a:
        if isinstance(a[k], dict):
            _arrays_equal(a[k], b[k], f"{path}/{k}")
        else:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=f"{path}/{k}")


@pytest.fixture(scope="module")
def setup():
    model = resnet_like(input_shape=(3, 16, 16), widths=(8, 16), blocks_per_stage=1)
    x = np.random.default_rng(3).normal(size=(160, 3, 16, 16)).astype(np.float32)
    session = ModelSession(model, x, subset_size=160, batch_size=8)  # 20 batches
    placement = placement_for(session.graph, rayq.QuantPlan.create())
    spec = calibrate.stat_spec(session.graph, placement, histograms=True, smooth_quant=False)
    local = calibrate.collect_local(session.backend, session.model, session.batches, spec)
    return session, spec, local.to_arrays()


def test_chunks_shrink_to_keep_every_worker_busy():
    batches = [(i, {}) for i in range(19)]
    assert [len(c) for c in dc._chunks(batches, 1)] == [4, 4, 4, 4, 3]
    assert [len(c) for c in dc._chunks(batches, 4)] == [2] * 9 + [1]
    assert [len(c) for c in dc._chunks(batches, 16)] == [1] * 19
    assert [b for c in dc._chunks(batches, 3) for b, _ in c] == list(range(19))


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_distributed_statistics_equal_in_process(ray_cluster, setup, workers):
    session, spec, local = setup
    seen = []
    stats, nodes = dc.collect_distributed("onnx", session.backend.to_bytes(session.model), session.batches, spec,
                                          num_workers=workers, resources={"num_cpus": 0.25}, on_batch=seen.append)
    _arrays_equal(stats.to_arrays(), local)
    assert len(nodes) == min(workers, 20)         # never more actors than chunks (20 batches)
    assert sum(seen) == 2 * len(session.batches)  # both passes report every batch once


class DiesOnce(dc.CalibrationWorker):
    """Kills its own process on the first ``run`` anywhere in the pool (a marker file)."""

    marker = ""

    def run(self, batches, edges=None):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return super().run(batches, edges)


def test_dead_worker_chunks_are_rerun_and_nothing_is_lost(ray_cluster, setup, tmp_path):
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    session, spec, local = setup
    marker = str(tmp_path / "died")
    cls = ray.remote(num_cpus=0.25)(type("DiesOnceHere", (DiesOnce,), {"marker": marker}))
    model_ref = ray.put(session.backend.to_bytes(session.model))
    factory = lambda: cls.remote("onnx", model_ref, spec, 1)  # noqa: E731
    pool = dc._Pool([factory(), factory()], factory)
    chunks = [(ray.put(c), c) for c in dc._chunks(session.batches)]
    try:
        first = pool.run_pass(chunks, None, None)
        edges = ray.put(calibrate.histogram_edges(first, spec))
        calibrate.attach_histograms(first, pool.run_pass(chunks, edges, None))
    finally:
        pool.kill()
    assert os.path.exists(marker)  # a worker really died
    _arrays_equal(first.to_arrays(), local)
