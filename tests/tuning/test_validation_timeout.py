"""A validation function that never returns cannot hang a search: the call times out,
the trial fails with reason ``timeout``, its worker is replaced, and the search goes on."""

from __future__ import annotations

import time

import pytest

import rayq
from rayq.distributed import eval_pool as evaluator_mod
from rayq.errors import ConfigError, SearchError
from rayq.pipeline.validation import ValidationTimedOut, ValidationTimeout, run_validation
from rayq.testing.metrics import pair_accuracy_hanging_on_gemm1
from rayq.testing.models import labeled_inputs, sensitive_mlp


@pytest.fixture(scope="module")
def task():
    model = sensitive_mlp()
    x, y = labeled_inputs(model, 400)
    return model, x[:100], list(zip(x[100:], y[100:]))


def never_returns(model, items):
    while True:
        time.sleep(3600)


def test_automatic_timeout_is_ten_times_fp32_and_at_least_a_minute():
    t = ValidationTimeout()
    assert 60 < t.limit() < float("inf")  # the FP32 validation itself: generous but finite
    t.fp32_seconds = 0.5
    assert t.limit() == 60.0
    t.fp32_seconds = 30.0
    assert t.limit() == 300.0
    assert ValidationTimeout(2.5).limit() == 2.5
    for bad in (0, -1, True, "10"):
        with pytest.raises(ConfigError, match="validation_timeout"):
            ValidationTimeout(bad)


def test_run_validation_gives_up_after_the_timeout():
    start = time.monotonic()
    with pytest.raises(
        ValidationTimedOut,
        match=r"^timeout: validation function .*never_returns did not return "
        r"within 0.5 s",
    ):
        run_validation(never_returns, None, [1, 2], timeout=0.5)
    assert time.monotonic() - start < 5
    assert run_validation(lambda m, items: 0.5, None, [1], timeout=5).value == 0.5


def _check_search_went_on(result):
    trials = result.trials
    timed_out = trials[trials.error.fillna("").str.startswith("timeout")]
    assert len(timed_out) >= 1 and (timed_out.status == "failed").all()
    assert (trials.status == "ok").any()
    assert result.status in ("met", "no_speedup") and "Gemm_1" in result.plan.fallback


def _hanging_search(task, *, num_workers: int, validation_timeout: float):
    """A short search whose validation hangs on every plan that quantizes ``Gemm_1``."""
    model, calib, val = task
    return rayq.search(
        model,
        calib,
        val,
        pair_accuracy_hanging_on_gemm1,
        max_drop=0.05,
        num_workers=num_workers,
        n_trials=4,
        explore=False,
        validation_timeout=validation_timeout,
    )


@pytest.mark.timeout(300)
def test_in_process_search_survives_a_hanging_validation(task):
    start = time.monotonic()
    result = _hanging_search(task, num_workers=1, validation_timeout=1.0)
    _check_search_went_on(result)
    assert time.monotonic() - start < 120


@pytest.mark.timeout(300)  # a worker left hanging would block the search: fail, not hang
def test_ray_search_kills_and_replaces_the_hanging_worker(task, ray_cluster, monkeypatch):
    monkeypatch.setattr(evaluator_mod, "TASK_START_GRACE_S", 3.0)
    start = time.monotonic()
    result = _hanging_search(task, num_workers=2, validation_timeout=2.0)
    _check_search_went_on(result)
    assert "on a Ray worker, which was replaced" in " ".join(result.trials.error.dropna())
    assert time.monotonic() - start < 240
    assert not _busy_ray_workers(), "a hung validation's worker process was left running"


def _busy_ray_workers(wait_s: float = 10.0) -> list[int]:
    """Ray worker processes of this session's cluster still running a task (``ray::evaluate``):
    once the search returned, only a hung validation that was not killed would be one."""
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + wait_s
    while True:
        busy = []
        for proc in psutil.Process().children(recursive=True):
            try:
                if "ray::evaluate" in " ".join(proc.cmdline()):
                    busy.append(proc.pid)
            except psutil.Error:
                pass
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(0.5)


def test_quantize_with_accuracy_control_times_out_instead_of_hanging(task):
    model, calib, val = task
    q = rayq.quantize_with_accuracy_control(
        model, calib, val, pair_accuracy_hanging_on_gemm1, max_drop=0.01, num_workers=1, validation_timeout=1.0
    )
    assert not any(n.name.startswith("Gemm_1/") for n in q.graph.node)  # the hanging layer stayed FP32


def test_fp32_validation_timing_out_stops_the_search_clearly(task):
    model, calib, val = task
    with pytest.raises(SearchError, match="FP32 model: timeout: validation function"):
        rayq.search(model, calib, val, never_returns, num_workers=1, n_trials=2, validation_timeout=0.5)
