"""Evaluator pools: Ray worker tasks vs in-process give the same metrics; warm worker
processes and their resident evaluators are reused; a dead worker's evaluation is
re-run; GPU requests fall back to CPU with a warning when ONNX Runtime has no CUDA
provider."""

from __future__ import annotations

import logging
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest

import rayq
from rayq.api.session import ModelSession
from rayq.backends.onnx.runtime import ort_providers
from rayq.distributed import eval_pool as de
from rayq.distributed import pool as dpool
from rayq.distributed import resident
from rayq.distributed.eval_pool import RayEvaluatorPool
from rayq.pipeline.candidate import CandidateEvaluator, LocalEvaluatorPool
from rayq.testing.metrics import pair_accuracy
from rayq.testing.models import labeled_inputs, sensitive_mlp


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a CUDA build is installed")
def test_gpu_request_without_cuda_warns_and_uses_cpu(caplog):
    with caplog.at_level(logging.WARNING):
        assert ort_providers("GPU") == ["CPUExecutionProvider"]
    assert "no CUDA provider" in caplog.text and "rayq[gpu]" in caplog.text


@pytest.fixture(scope="module")
def problem():
    model = sensitive_mlp()
    x, y = labeled_inputs(model, 200)
    session = ModelSession(model, x[:64], subset_size=64)
    plan = rayq.QuantPlan.create()
    stats = session.statistics(plan, histograms=False, num_workers=1)
    items = list(zip(x[64:], y[64:]))
    kwargs = {"runtime": "onnxruntime", "calibration_batches": session.batches}
    return session, plan, stats, items, kwargs


def _pool(problem, **opts) -> RayEvaluatorPool:
    session, _, stats, items, kwargs = problem
    opts = {"num_workers": 2, "resources": None, "validation_fn": pair_accuracy, **opts}
    return RayEvaluatorPool(backend_name="onnx", model=session.model, stats=stats, items=items, kwargs=kwargs, **opts)


def test_ray_pool_matches_local_pool(ray_cluster, problem):
    session, plan, stats, items, kwargs = problem
    local = LocalEvaluatorPool(CandidateEvaluator("onnx", session.model, stats, items, pair_accuracy, **kwargs))
    remote = _pool(problem)
    try:
        plans = [None, plan, plan.with_fallback(["Gemm_1"])]
        a = [m.value for m in local.map_metric(plans)]
        b = [m.value for m in remote.map_metric(plans)]
        assert a == b
        lat = remote.map_latency(plans[:2])
        assert all(np.isfinite(t.median_ms) and t.median_ms > 0 for t in lat)
        for pool in (local, remote):  # interleaved: every plan timed at least 30 times, for >= 0.1 s
            runoff = pool.compare_latency([None, *plans[:2]])
            # The turns last >= 0.1 s of wall time. On a CPU where the model runs in ~10 us
            # the timer's own overhead is a large part of each repeat, so the summed medians
            # fall short of it; there the time floor shows as many more repeats than 30.
            assert len(runoff) == 3 and all(
                t.repeats >= 30 and (t.repeats * t.median_ms >= 50 or t.repeats >= 300) for t in runoff
            )
            assert all(np.isfinite(t.median_ms) and t.median_ms > 0 for t in runoff)
        assert remote.map_output_error([plan])[0] == pytest.approx(local.map_output_error([plan])[0])
        info = remote.describe()
        assert {i["node_id"] for i in info} == set(remote.node_ids) and len(remote.node_ids) == 1
        assert all(
            i["gpu_ids"] == [] and i["device"] == "CPU" and i["providers"] == ["CPUExecutionProvider"] for i in info
        )
        assert {i["threads"] for i in info} == {1}  # one thread per reserved CPU, not every core
    finally:
        remote.close()


def test_warm_processes_and_resident_evaluators_are_reused(ray_cluster, problem):
    """A second pool (the next search) runs in the processes the first one used, which
    drop the first pool's evaluator; within a pool, each process keeps its evaluator."""
    import ray

    @ray.remote
    def where(call, verb, args):
        out, node = de.evaluate(call, verb, args)
        return (out, os.getpid(), tuple(resident.tokens())), node

    plan = problem[1]
    pids, tokens = [], []
    for _ in range(2):
        pool = _pool(problem, resources={"num_cpus": 0.5}, task=where)
        runs = pool.map_metric([plan.with_fallback([f"Gemm_{i % 2}"]) for i in range(6)])
        assert {held[-1] for _, _, held in runs} == {pool.call.token}  # the latest resident: this pool's
        assert len({m.value for m, _, _ in runs}) == 2  # two distinct plans, each computed for real
        pids.append({pid for _, pid, _ in runs})
        tokens.append(pool.call.token)
        pool.close()
        if len(tokens) == 2:
            assert all(tokens[0] not in held for _, _, held in runs)  # the ended pool's evaluator was dropped
    assert pids[0] & pids[1]


def dies_once(marker, call, verb, args):
    """Kills its own process on the first evaluation anywhere (a marker file), then evaluates."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return de.evaluate(call, verb, args)


def test_dead_worker_evaluation_is_rerun(ray_cluster, problem, tmp_path):
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marker = str(tmp_path / "died")

    def body(call, verb, args):
        return dies_once(marker, call, verb, args)

    session, plan, stats, items, kwargs = problem
    local = CandidateEvaluator("onnx", session.model, stats, items, pair_accuracy, **kwargs)
    pool = _pool(problem, resources={"num_cpus": 0.5}, task=ray.remote(body))
    plans = [None, plan, plan.with_fallback(["Gemm_1"])]
    try:
        values = [m.value for m in pool.map_metric(plans)]
    finally:
        pool.close()
    assert os.path.exists(marker)  # a worker really died
    assert values == [local.fp32_metric().value, local.metric(plans[1]).value, local.metric(plans[2]).value]


def test_unplaceable_evaluators_raise_a_cluster_error(ray_cluster, problem, monkeypatch):
    monkeypatch.setattr(dpool, "PLACEMENT_TIMEOUT_S", 2)
    with pytest.raises(rayq.ClusterError, match="no node of the cluster can run an evaluator worker"):
        _pool(problem, resources={"num_cpus": 1, "resources": {"no_such_node": 1}})


def test_bound_workers_match_pooled_tasks(ray_cluster, problem):
    """The GPU form (actors held for the search) runs the same body: same metrics, its
    latency on its node, and the actors die with the pool."""
    import ray

    plan = problem[1]
    plans = [None, plan, plan.with_fallback(["Gemm_1"])]
    pooled, bound = _pool(problem), _pool(problem, resources={"num_cpus": 0.5}, bind_processes=True)
    try:
        assert len(bound._bound) == 2 and bound.nodes == [ray.get_runtime_context().get_node_id()]
        assert [m.value for m in bound.map_metric(plans)] == [m.value for m in pooled.map_metric(plans)]
        assert all(t.median_ms > 0 for t in bound.map_latency(plans[:2]) + bound.compare_latency(plans[:2]))
        assert len(bound.describe()) == 2 and len(bound._free) == 2  # every worker handed back
        actors = [a for a, _ in bound._bound]
    finally:
        pooled.close()
        bound.close()
    deadline = time.monotonic() + 30  # ray.kill is asynchronous: a call may still get through first
    with pytest.raises(ray.exceptions.RayActorError):
        while time.monotonic() < deadline:
            ray.get(actors[0].node_id.remote(), timeout=30)
            time.sleep(0.2)


def test_unserialisable_validation_fn_is_named(ray_cluster, problem):
    import threading

    lock = threading.Lock()

    def locked_accuracy(model, items):
        with lock:
            return pair_accuracy(model, items)

    with pytest.raises(rayq.ConfigError, match="validation_fn cannot be sent to Ray workers.*num_workers=1"):
        _pool(problem, validation_fn=locked_accuracy)


def test_fewer_plans_than_workers_get_the_idle_workers_cpus(ray_cluster, problem):
    """A lone evaluation (the FP32 validation) takes W workers' CPUs and threads; a full
    map runs W single-CPU evaluations."""
    import ray

    @ray.remote
    def threads_of(call, verb, args):
        out, node = de.evaluate(call, verb, args)
        return (out, resident.resident(call.token, lambda: None, idle_s=60).threads), node

    plan = problem[1]
    pool = _pool(problem, task=threads_of)
    try:
        assert [t for _, t in pool.map_metric([None])] == [2]
        assert [t for _, t in pool.map_metric([plan, plan])] == [1, 1]
    finally:
        pool.close()
