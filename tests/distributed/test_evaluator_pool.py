"""Evaluator pools: Ray actors vs in-process give the same metrics; GPU requests fall
back to CPU with a warning when ONNX Runtime has no CUDA provider."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest

import rayq
from rayq.backends.onnx.runtime import ort_providers
from rayq.distributed.evaluator import LocalEvaluatorPool, RayEvaluatorPool
from rayq.pipeline.candidate import CandidateEvaluator
from rayq.session import ModelSession
from rayq.testing.metrics import pair_accuracy
from rayq.testing.models import labeled_inputs, sensitive_mlp


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a CUDA build is installed")
def test_gpu_request_without_cuda_warns_and_uses_cpu(caplog):
    with caplog.at_level(logging.WARNING):
        assert ort_providers("GPU") == ["CPUExecutionProvider"]
    assert "no CUDA provider" in caplog.text and "rayq[gpu]" in caplog.text


def test_ray_pool_matches_local_pool(ray_cluster):
    model = sensitive_mlp()
    x, y = labeled_inputs(model, 200)
    session = ModelSession(model, x[:64], subset_size=64)
    plan = rayq.QuantPlan.create()
    stats = session.statistics(plan, histograms=False, num_workers=1)
    items = list(zip(x[64:], y[64:]))
    kwargs = {"runtime": "onnxruntime", "calibration_batches": session.batches}
    local = LocalEvaluatorPool(CandidateEvaluator("onnx", session.model, stats, items, pair_accuracy, **kwargs))
    remote = RayEvaluatorPool(num_workers=2, resources=None, backend_name="onnx",
                              model_bytes=session.backend.to_bytes(session.model), stats=stats, items=items,
                              validation_fn=pair_accuracy, kwargs=kwargs)
    try:
        plans = [None, plan, plan.with_fallback(["Gemm_1"])]
        a = [m.value for m in local.map_metric(plans)]
        b = [m.value for m in remote.map_metric(plans)]
        assert a == b
        lat = remote.map_latency(plans[:2])
        assert all(np.isfinite(t.median_ms) and t.median_ms > 0 for t in lat)
        for pool in (local, remote):  # interleaved: every plan timed the same number of times
            runoff = pool.compare_latency([None, *plans[:2]])
            assert len(runoff) == 3 and len({t.repeats for t in runoff}) == 1
            assert all(np.isfinite(t.median_ms) and t.median_ms > 0 for t in runoff)
        assert remote.map_output_error([plan])[0] == pytest.approx(local.map_output_error([plan])[0])
        info = remote.describe()
        assert [i["node_id"] for i in info] == remote.node_ids
        assert all(i["gpu_ids"] == [] and i["device"] == "CPU" and i["providers"] == ["CPUExecutionProvider"]
                   for i in info)
    finally:
        remote.close()
