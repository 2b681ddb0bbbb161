"""A real 2-node Ray cluster on this machine (loopback only, token auth on): submit
``rayq search`` through the Jobs API, wait for SUCCEEDED, check the artifacts and
that calibration shards and candidate evaluations ran on both nodes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray() -> str:
    exe = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if exe is None:
        pytest.skip("the ray CLI is not installed")
    return exe


def _start(args: list[str], env: dict) -> int:
    """Run ``ray start`` in its own session so its daemons can be stopped by group."""
    proc = subprocess.run(["setsid", _ray(), "start", *args], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.returncode


def _pgids(marker: str) -> set[int]:
    out = subprocess.run(["ps", "-ww", "-eo", "pgid,args"], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines()[1:] if marker in line}


@contextmanager
def local_head(tag: str, env: dict, args: list[str]) -> Iterator[tuple[int, str]]:
    """A ``ray start --head`` on loopback with ``args`` (token auth comes from ``env``);
    yields (GCS port, temp dir). Nodes the caller joins to it are stopped with it: only
    this cluster's process groups, never ``ray stop``."""
    temp_dir = f"/tmp/rayq-{tag}-{os.getpid()}"
    gcs = _free_port()
    before = _pgids(temp_dir) | _pgids(f"127.0.0.1:{gcs}")
    try:
        _start(
            [
                "--head",
                f"--port={gcs}",
                "--node-ip-address=127.0.0.1",
                f"--temp-dir={temp_dir}",
                "--disable-usage-stats",
                *args,
            ],
            env,
        )
        yield gcs, temp_dir
    finally:
        _stop(lambda: (_pgids(temp_dir) | _pgids(f"127.0.0.1:{gcs}")) - before)
        shutil.rmtree(temp_dir, ignore_errors=True)


def token_env(**extra: str) -> dict:
    """This process's environment with token auth on and no inherited ``RAY_ADDRESS``."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_DISABLE_USAGE_STATS": "1", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture()
def two_node_cluster(tmp_path):
    env = token_env()
    dash, agent, agent2 = (_free_port() for _ in range(3))
    with local_head(
        "2node",
        env,
        [
            "--num-cpus=1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={agent}",
        ],
    ) as (gcs, _):
        _start(
            [
                f"--address=127.0.0.1:{gcs}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=1",
                f"--dashboard-agent-listen-port={agent2}",
                '--resources={"second_node": 1}',
                "--disable-usage-stats",
            ],
            env,
        )
        yield f"http://127.0.0.1:{dash}", env


def _stop(groups) -> None:
    """SIGTERM this cluster's process groups, then SIGKILL what is left (gcs_server and
    raylet can outlive SIGTERM), like ``ray stop`` but only for these two nodes."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pending = groups()
        for pgid in pending:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while groups() and time.monotonic() < deadline:
            time.sleep(0.5)
        if not groups():
            return


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + 120
    while True:
        try:
            return JobSubmissionClient(address)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def _submit(client, **kwargs) -> str:
    deadline = time.monotonic() + 120
    while True:  # the job agent needs a few seconds after `ray start`
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def test_search_job_runs_on_both_nodes(two_node_cluster, tmp_path, monkeypatch):
    address, _env = two_node_cluster
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the Jobs SDK reads the token like the CLI does
    workdir = tmp_path / "job"
    workdir.mkdir()
    out = tmp_path / "out"
    digits = ROOT / "examples" / "digits"
    (workdir / "search.yaml").write_text(
        textwrap.dedent(f"""\
        command: search
        model: {digits / "digits_cnn.onnx"}
        calibration: {digits / "calibration.npz"}
        validation: {digits / "validation.npz"}
        validation_fn: examples.digits.metric:accuracy
        max_drop: 0.01
        n_trials: 4
        num_workers: 2
        subset_size: 128
        output: {out}
        """)
    )
    client = _client(address)
    job = _submit(
        client,
        entrypoint="rayq search --config search.yaml",
        runtime_env={
            "working_dir": str(workdir),
            "env_vars": {"PYTHONPATH": str(ROOT), "RAYQ_CACHE_DIR": str(tmp_path / "c")},
        },
    )
    deadline = time.monotonic() + 600
    while not client.get_job_status(job).is_terminal():
        assert time.monotonic() < deadline, "job did not finish in 10 minutes"
        time.sleep(2)
    logs = client.get_job_logs(job)
    result = json.loads((out / "result.json").read_text())
    # within budget; "no_speedup" (exit code 3, a FAILED job) when INT8 is not significantly
    # faster than FP32 on this machine at that moment
    assert result["status"] in ("met", "no_speedup"), logs[-3000:]
    want = "SUCCEEDED" if result["status"] == "met" else "FAILED"
    assert str(client.get_job_status(job)).endswith(want), logs[-3000:]
    for name in ("trials.parquet", "pareto.png", "model.onnx"):
        assert (out / name).exists(), name
    nodes = result["worker_nodes"]
    assert len(set(nodes["calibration"])) == 2, nodes
    assert len(set(nodes["evaluation"])) == 2, nodes
