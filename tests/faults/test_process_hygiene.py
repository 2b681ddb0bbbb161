"""Resource hygiene of a ``rayq search`` that starts its own local Ray.

- After a normal run, no process that run started (GCS, raylet, agents, workers) is
  left: each is gone within a few seconds of the command's exit.
- Its stdout holds only rayq's own summary with ``-q``: no Ray banner, no Ray lines.
- After a SIGKILL of the driver, what it started is reaped by Ray itself: GCS and raylet
  are started with a parent-death signal and die with the driver; the agents and worker
  processes poll their raylet/parent and exit when it is gone. The test measures how
  long the last one survives and bounds it (see RELIABILITY.md for the figures).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from .conftest import ROOT, cmdline, digits_search, only_rayq_lines, ray_children, rayq_env

#: a SIGKILLed driver's processes must all be gone within this many seconds
REAP_BOUND_S = 90.0


def _search_args(out: Path) -> list[str]:
    return [sys.executable, "-m", "rayq", *digits_search(out)]


class Watcher:
    """Every descendant process of ``pid`` seen while it runs, by pid, with its title."""

    def __init__(self, pid: int) -> None:
        self.pid, self.seen, self.titles = pid, {}, set()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while psutil.pid_exists(self.pid) and psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE:
            for proc in ray_children(self.pid):
                title = cmdline(proc)[:60]  # a worker renames itself (ray::IDLE, ray::evaluate...)
                try:
                    if proc.pid not in self.seen or title:
                        self.seen[proc.pid] = (proc.create_time(), title or self.seen.get(proc.pid, (0, ""))[1])
                        self.titles.add(title.split(" ")[0])
                except psutil.Error:
                    pass
            time.sleep(0.05)

    def alive(self) -> dict[int, str]:
        """The seen processes still running (same pid and start time: not a reused pid)."""
        left = {}
        for pid, (created, title) in self.seen.items():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    left[pid] = title
            except psutil.Error:
                pass
        return left

    def wait_gone(self, bound: float) -> tuple[float, dict[int, str]]:
        start = time.monotonic()
        while self.alive() and time.monotonic() - start < bound:
            time.sleep(0.2)
        return time.monotonic() - start, self.alive()


def _env(tmp_path: Path) -> dict:
    env = rayq_env(tmp_path)
    env["RAY_AUTH_MODE"] = env.get("RAY_AUTH_MODE", "token")
    return env


def _start(tmp_path: Path) -> tuple[subprocess.Popen, Watcher]:
    proc = subprocess.Popen(
        _search_args(tmp_path / "out"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path),
        cwd=ROOT,
    )
    return proc, Watcher(proc.pid)


def test_a_normal_search_leaves_no_process_and_a_clean_stdout(tmp_path):
    for _ in range(3):  # a loaded machine can time Ray's node start out: retry
        proc, watcher = _start(tmp_path)
        try:
            out, err = proc.communicate(timeout=600)
        finally:
            proc.kill()
        if "timed out during startup" not in err:
            break
    assert proc.returncode in (0, 3), err[-3000:]  # 3: budget met, not significantly faster than FP32
    assert "ray::evaluate" in watcher.titles, watcher.titles  # Ray really ran the evaluations
    only_rayq_lines(out, "search")
    assert "Token authentication" not in err
    seconds, left = watcher.wait_gone(15.0)
    assert not left, f"processes outlived rayq search by {seconds:.0f} s: {left}"
    print(f"\n{len(watcher.seen)} Ray processes, all gone {seconds:.1f} s after rayq search exited")


def test_after_a_driver_sigkill_ray_reaps_what_it_started(tmp_path):
    proc, watcher = _start(tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not watcher.titles & {"ray::calibrate_chunk", "ray::evaluate"}:  # a worker is busy: mid-run
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no Ray worker ever ran"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    watcher.thread.join(timeout=10)
    timeline = {}
    start = time.monotonic()
    while watcher.alive() and time.monotonic() - start < REAP_BOUND_S:
        for pid, title in watcher.alive().items():
            timeline[title.split(" ")[0] + f"[{pid}]"] = time.monotonic() - start
        time.sleep(0.2)
    left = watcher.alive()
    for pid in left:  # never leave them behind, whatever the outcome
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    print("\nsurvived the driver's SIGKILL by (s):", {k: round(v, 1) for k, v in sorted(timeline.items())})
    assert not left, f"still alive {REAP_BOUND_S:.0f} s after the driver's SIGKILL: {left}"
