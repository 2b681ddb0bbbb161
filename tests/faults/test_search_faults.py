"""An evaluation worker SIGKILLed, from outside, while it validates a candidate in a real
``rayq search --num-workers 2 -q``: the search finishes, every trial has the same plan,
status and metric as in an undisturbed run, and stdout holds only rayq's summary.

The in-process variant (a worker that ``os._exit``s inside one evaluation, metrics
compared with a local pool) is
tests/distributed/test_evaluator_pool.py::test_dead_worker_evaluation_is_rerun.
"""

from __future__ import annotations

import pandas as pd

from .conftest import digits_search, only_rayq_lines, rayq_env, run_rayq

SAME = ["number", "status", "source", "feasible", "metric", "drop", "plan_key"]


def test_killed_evaluation_worker_gives_the_same_trials(tmp_path):
    env = rayq_env(tmp_path)
    killed_run, killed, seen = run_rayq(digits_search(tmp_path / "killed"), env, kill="ray::evaluate", timeout=600)
    assert killed_run.returncode in (0, 3), killed_run.stderr[-3000:]  # 3: not significantly faster than FP32
    assert killed, f"no evaluation worker was seen to kill; Ray processes seen: {sorted(seen)}"
    only_rayq_lines(killed_run.stdout, "search")

    clean_run, _, _ = run_rayq(digits_search(tmp_path / "clean"), env, timeout=600)
    assert clean_run.returncode in (0, 3), clean_run.stderr[-3000:]
    a = pd.read_parquet(tmp_path / "killed" / "trials.parquet")[SAME]
    b = pd.read_parquet(tmp_path / "clean" / "trials.parquet")[SAME]
    assert len(a) >= 4 and (a["status"] == "ok").all(), a
    pd.testing.assert_frame_equal(a, b)
