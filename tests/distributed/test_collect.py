"""Sharded calibration on a real local Ray: dynamic dispatch gives the same statistics as
one process, for any number of workers, and a worker that dies mid-pass loses nothing."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import rayq
from rayq.api.session import ModelSession
from rayq.distributed import collect as dc
from rayq.distributed import pool as dpool
from rayq.distributed import resident
from rayq.distributed.cluster import resource_bundle
from rayq.pipeline import calibrate
from rayq.pipeline.build import placement_for
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
    stats, nodes = dc.collect_distributed(
        "onnx",
        session.model,
        session.batches,
        spec,
        num_workers=workers,
        resources={"num_cpus": 0.25},
        on_batch=seen.append,
    )
    _arrays_equal(stats.to_arrays(), local)
    assert len(nodes) == 1  # one local node
    assert sum(seen) == 2 * len(session.batches)  # both passes report every batch once


def test_worker_processes_are_reused_and_drop_ended_calls(ray_cluster, setup):
    """A second call runs in the same pooled worker processes, where the current call's
    model is resident and the ended first call's is dropped."""
    import ray

    session, spec, _ = setup

    @ray.remote
    def where(call, batches, edges_box):
        arrays, _node = dc.calibrate_chunk(call, batches, edges_box)
        return arrays, f"{os.getpid()}:{','.join(resident.tokens())}"

    seen, held, calls = [], [], []
    for _ in range(2):
        shards = dc.ShardedCalibration(
            "onnx", session.model, spec, session.batches, num_workers=2, resources={"num_cpus": 0.25}, task=where
        )
        _, procs = shards.run_pass()
        seen.append({p.split(":")[0] for p in procs})
        held.append([p.split(":")[1].split(",") for p in procs])
        calls.append(shards.call.token)
        assert all(h[-1] == calls[-1] for h in held[-1])  # the most recent resident call: this one
        resident.end(calls[-1])  # as collect_distributed does when it returns
    assert seen[0] & seen[1]  # warm processes were reused
    assert all(calls[0] not in h for h in held[1])  # the ended call's model was dropped


def test_unplaceable_workers_raise_a_cluster_error(ray_cluster, setup, monkeypatch):
    session, spec, _ = setup
    monkeypatch.setattr(dpool, "PLACEMENT_TIMEOUT_S", 2)
    with pytest.raises(rayq.ClusterError, match="no node of the cluster can run a calibration worker"):
        dc.collect_distributed(
            "onnx",
            session.model,
            session.batches,
            spec,
            num_workers=2,
            resources={"num_cpus": 1, "resources": {"no_such_node": 1}},
        )
    with pytest.raises(rayq.ConfigError, match="unsupported worker resources"):
        resource_bundle({"num_cpus": 1, "accelerator": "x"})


def dies_once(marker, call, batches, edges_box):
    """Kills its own process on the first chunk anywhere (a marker file), then calibrates."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return dc.calibrate_chunk(call, batches, edges_box)


def test_dead_worker_chunks_are_rerun_and_nothing_is_lost(ray_cluster, setup, tmp_path):
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    session, spec, local = setup
    marker = str(tmp_path / "died")

    def body(call, batches, edges_box):
        return dies_once(marker, call, batches, edges_box)

    task = ray.remote(body)
    shards = dc.ShardedCalibration(
        "onnx", session.model, spec, session.batches, num_workers=2, resources={"num_cpus": 0.25}, task=task
    )
    first, _ = shards.run_pass()
    hist, _ = shards.run_pass(calibrate.histogram_edges(first, spec))
    calibrate.attach_histograms(first, hist)
    assert os.path.exists(marker)  # a worker really died
    _arrays_equal(first.to_arrays(), local)


def test_workers_start_early_only_when_joining_a_cluster(ray_cluster, monkeypatch):
    import ray

    from rayq.api import session as session_mod

    refs = session_mod.start_workers_early(3, {"num_cpus": 0.25}, subset_size=300)
    assert len(refs) == 3 and all(isinstance(p, int) for p in ray.get(refs, timeout=120))
    assert len(session_mod.start_workers_early(8, {"num_cpus": 0.25}, subset_size=2)) == 2  # <= one per item
    assert session_mod.start_workers_early(1, None, subset_size=300) == []  # in-process
    monkeypatch.setattr(session_mod, "_would_start_local_ray", lambda: True)
    assert session_mod.start_workers_early(None, None, subset_size=300) == []  # Ray pre-starts its own
