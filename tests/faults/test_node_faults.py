"""The worker node of a real 2-node Ray cluster (two ``ray start`` on this machine,
loopback, token auth) is SIGKILLed, all its processes at once, while a ``rayq search``
driver connected to the head calibrates on it, or while it validates candidates: the
search still finishes, with result.json written, on the surviving head node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from cluster.test_two_node_job import _pgids, _start, local_head, token_env

from .conftest import ROOT, cmdline, digits_search

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture()
def cluster_with_worker_group(tmp_path):
    """(GCS address, env, process group of the worker node)."""
    env = token_env(
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        RAYQ_CACHE_DIR=str(tmp_path / "cache"),
        RAYQ_PROGRESS="off",
    )
    with local_head("faults", env, ["--num-cpus=1", "--include-dashboard=false"]) as (gcs, temp_dir):
        head = _pgids(f"127.0.0.1:{gcs}") | _pgids(temp_dir)
        _start(
            [f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"], env
        )
        worker = (_pgids(f"127.0.0.1:{gcs}") | _pgids(temp_dir)) - head
        assert len(worker) == 1, worker
        yield f"127.0.0.1:{gcs}", env, worker.pop()


def _node_processes(pgid: int) -> list[psutil.Process]:
    """The worker node's processes: its ``ray start`` process group and everything below
    its raylet (workers need not stay in the group)."""
    procs = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                procs.append(proc)
                if "raylet" in cmdline(proc).split(" ")[0]:
                    procs.extend(proc.children(recursive=True))
        except (psutil.Error, ProcessLookupError):
            continue
    return procs


def _kill_node(pgid: int) -> None:
    """SIGKILL the whole node at once, as a machine failure would."""
    procs = _node_processes(pgid)
    os.killpg(pgid, signal.SIGKILL)
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass


@pytest.mark.parametrize("moment", ["ray::calibrate_chunk", "ray::evaluate"], ids=["mid-calibration", "mid-search"])
def test_search_finishes_when_the_worker_node_dies(cluster_with_worker_group, tmp_path, moment):
    address, env, worker_group = cluster_with_worker_group
    out = tmp_path / "out"
    args = [sys.executable, "-m", "rayq", *digits_search(out, subset_size=256), "--address", address]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 300
        while not any(cmdline(p).startswith(moment) for p in _node_processes(worker_group)):
            assert proc.poll() is None, (
                f"the search ended before {moment} ran on the worker node: " + proc.communicate()[1][-3000:]
            )
            assert time.monotonic() < deadline, f"{moment} never ran on the worker node"
            time.sleep(0.02)
        _kill_node(worker_group)  # the whole node: raylet, agents, workers
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode in (0, 3), stderr[-3000:]  # 3: not significantly faster than FP32
    result = json.loads((out / "result.json").read_text())
    assert result["status"] in ("met", "no_speedup")
    assert stdout.startswith("rayq search: ")
