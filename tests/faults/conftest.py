"""Helpers of the fault tests: run ``rayq`` in a child process, watch and kill its Ray workers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"


def digits_search(out: Path, *, subset_size: int = 64) -> list[str]:
    """``rayq`` arguments of a short search on the bundled digits example (2 workers,
    4 trials, quiet), the run the fault tests disturb."""
    return [
        "search",
        str(DIGITS / "digits_cnn.onnx"),
        "--data",
        str(DIGITS / "calibration.npz"),
        "--validation",
        str(DIGITS / "validation.npz"),
        "--validation-fn",
        "examples.digits.metric:accuracy",
        "-o",
        str(out),
        "--num-workers",
        "2",
        "--n-trials",
        "4",
        "--subset-size",
        str(subset_size),
        "-q",
    ]


@pytest.fixture(scope="session")
def slow_cnn(tmp_path_factory) -> tuple[Path, Path]:
    """A CNN and 256 calibration items big enough that a calibration chunk takes a while
    on 2 cores, so a worker can be killed in the middle of one."""
    from rayq.testing.models import resnet_like

    folder = tmp_path_factory.mktemp("slow_cnn")
    onnx.save(resnet_like(input_shape=(3, 64, 64), widths=(32, 64), blocks_per_stage=2), folder / "cnn.onnx")
    x = np.random.default_rng(0).normal(size=(256, 3, 64, 64)).astype(np.float32)
    np.savez(folder / "calib.npz", input=x)
    return folder / "cnn.onnx", folder / "calib.npz"


def rayq_env(tmp_path: Path) -> dict:
    env = {
        **os.environ,
        "RAYQ_CACHE_DIR": str(tmp_path / "cache"),
        "RAYQ_PROGRESS": "off",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("RAY_ADDRESS", None)
    return env


def ray_children(pid: int) -> list[psutil.Process]:
    """Every process below ``pid`` (raylet, gcs_server, agents, workers)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


@dataclass
class Killer:
    """Kills the first Ray worker of ``pid`` whose process title starts with ``title``
    (Ray names a busy worker ``ray::<task name>``), once, from a background thread."""

    pid: int
    title: str
    killed: list = field(default_factory=list)
    seen: set = field(default_factory=set)

    def start(self) -> Killer:
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _watch(self) -> None:
        while not self.killed and psutil.pid_exists(self.pid):
            for proc in ray_children(self.pid):
                title = cmdline(proc)
                self.seen.add(title.split(" ")[0])
                if title.startswith(self.title):
                    try:
                        proc.kill()
                        self.killed.append(proc.pid)
                    except psutil.Error:
                        continue
                    return
            time.sleep(0.01)


def run_rayq(args: list[str], env: dict, *, kill: str | None = None, timeout: float = 300.0):
    """Run ``rayq ARGS``; with ``kill``, SIGKILL one worker running that task mid-run.
    Returns (completed process, killed pids, the process titles of its children).
    A local Ray that times out starting on a loaded machine gets up to two more tries."""
    for _ in range(3):
        done = _run_once(args, env, kill, timeout)
        if done[0].returncode == 0 or "timed out during startup" not in done[0].stderr:
            break
    return done


def _run_once(args: list[str], env: dict, kill: str | None, timeout: float):
    proc = subprocess.Popen(
        [sys.executable, "-m", "rayq", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    killer = Killer(proc.pid, kill).start() if kill else None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"rayq {' '.join(args)} did not finish in {timeout} s: {err[-2000:]}")
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done, (killer.killed if killer else []), (killer.seen if killer else set())


RAY_MARKERS = ("(raylet)", "ray::", "Token authentication", "retries remaining", "\x1b[", "(pid=", "INFO ", "WARNING ")


def only_rayq_lines(stdout: str, command: str) -> None:
    """Machine-readable stdout: rayq's own summary (a ``rayq COMMAND:`` line, then
    indented lines), nothing from Ray."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines and lines[0].startswith(f"rayq {command}: "), stdout[-3000:]
    assert all(line.startswith("  ") for line in lines[1:]), stdout[-3000:]
    assert not [m for m in RAY_MARKERS if m in stdout], stdout[-3000:]
