"""A Ray calibration worker SIGKILLed in the middle of a chunk, from outside, during a real
``rayq quantize --num-workers 2 -q``: the command still succeeds, the model is
bit-identical to an undisturbed run's, and stdout holds only rayq's own line (Ray's
"worker died" and "task will be retried" lines go to stderr).

The in-process variant (a worker that ``os._exit``s inside a chunk, statistics compared
array by array) is tests/distributed/test_collect.py::test_dead_worker_chunks_are_rerun_and_nothing_is_lost.
"""

from __future__ import annotations

from .conftest import only_rayq_lines, rayq_env, run_rayq


def test_killed_calibration_worker_gives_the_same_model_and_clean_stdout(slow_cnn, tmp_path):
    model, calib = slow_cnn
    env = rayq_env(tmp_path)
    base = ["quantize", str(model), "--data", str(calib), "--subset-size", "256", "--num-workers", "2", "-q"]
    killed_run, killed, seen = run_rayq([*base, "-o", str(tmp_path / "killed.onnx")], env, kill="ray::calibrate_chunk")
    assert killed_run.returncode == 0, killed_run.stderr[-3000:]
    assert killed, f"no calibration worker was seen to kill; Ray processes seen: {sorted(seen)}"
    assert "ray::calibrate_chunk" in seen
    only_rayq_lines(killed_run.stdout, "quantize")
    assert "Token authentication" not in killed_run.stderr  # -q silences Ray's banner too

    env["RAYQ_CACHE_DIR"] = str(tmp_path / "cache2")  # calibrate again, not from the cache
    clean_run, _, _ = run_rayq([*base, "-o", str(tmp_path / "clean.onnx")], env)
    assert clean_run.returncode == 0, clean_run.stderr[-3000:]
    only_rayq_lines(clean_run.stdout, "quantize")
    assert (tmp_path / "killed.onnx").read_bytes() == (tmp_path / "clean.onnx").read_bytes()
