"""A validation function whose module the Ray workers cannot import (Ray Client without
a working_dir, a module only on the driver's path) fails with a rayq error that says
how to ship the module, not with Ray's raw ``No module named ...``."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

import rayq
from rayq.api.session import ModelSession
from rayq.distributed.eval_pool import RayEvaluatorPool
from rayq.distributed.pool import translate
from rayq.testing.models import labeled_inputs, sensitive_mlp


def test_translated_errors_name_the_missing_module_and_the_fix():
    err = translate(RuntimeError("RaySystemError: System error: No module named 'examples'"), "an evaluator worker")
    assert isinstance(err, rayq.ClusterError)
    assert "cannot import module 'examples'" in str(err) and "working_dir" in str(err)
    assert "rayq.submit" in str(err) and "runtime_env" in str(err)
    other = translate(RuntimeError("boom"), "a calibration worker")
    assert str(other) == "a calibration worker failed: boom"


def test_a_driver_only_validation_module_gives_a_clear_error(ray_cluster, tmp_path, monkeypatch):
    # the module exists only on this process's sys.path, added after Ray started
    (tmp_path / "driver_only_metrics.py").write_text(
        textwrap.dedent("""\
        def accuracy(model, items):
            return 1.0
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = importlib.import_module("driver_only_metrics").accuracy
    model = sensitive_mlp()
    x, y = labeled_inputs(model, 80)
    session = ModelSession(model, x[:32], subset_size=32)
    plan = rayq.QuantPlan.create()
    stats = session.statistics(plan, histograms=False, num_workers=1)
    pool = RayEvaluatorPool(
        backend_name="onnx",
        model=session.model,
        stats=stats,
        items=list(zip(x[32:], y[32:])),
        validation_fn=fn,
        num_workers=1,
        resources=None,
        kwargs={"runtime": "onnxruntime", "calibration_batches": session.batches},
    )
    try:
        with pytest.raises(rayq.ClusterError, match="cannot import module 'driver_only_metrics'.*working_dir"):
            pool.map_metric([None])
    finally:
        pool.close()
        sys.modules.pop("driver_only_metrics", None)
