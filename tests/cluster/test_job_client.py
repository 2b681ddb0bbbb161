"""``rayq.submit`` / ``rayq.attach`` end to end against a real one-node Ray cluster started
with ``ray start --head`` on loopback, token authentication on: submit a digits search
from the project folder, follow its logs and progress events, wait, load the result,
reattach from a second client object by job id."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rayq
from rayq import events
from tests.cluster.test_two_node_job import _free_port, local_head, token_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.cluster, pytest.mark.slow]
RAY_CLIENT = [""]  # the head's Ray Client address, set by the fixture


@pytest.fixture(scope="module")
def head_node():
    """One node (2 CPUs), dashboard and job server on 127.0.0.1, RAY_AUTH_MODE=token."""
    dash, agent, client = (_free_port() for _ in range(3))
    with local_head(
        "jobs",
        token_env(),
        [
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={agent}",
            f"--ray-client-server-port={client}",
        ],
    ):
        RAY_CLIENT[0] = f"ray://127.0.0.1:{client}"
        yield _wait_for_job_server(f"http://127.0.0.1:{dash}")


def _wait_for_job_server(address: str) -> str:
    os.environ["RAY_AUTH_MODE"] = "token"  # the Jobs SDK sends the token only with this
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                rayq.attach("rayq-no-such-job", address=address)
            except rayq.ClusterError as exc:
                if "does not exist" in str(exc):  # the job server answered
                    return address
                if time.monotonic() > deadline:
                    raise
            time.sleep(2)
    finally:
        os.environ.pop("RAY_AUTH_MODE", None)


def test_submit_follow_wait_result_attach(head_node, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.chdir(ROOT)  # a notebook in the project folder: working_dir defaults to it
    out = tmp_path / "out"
    job = rayq.submit(
        "configs/search_digits.yaml",
        address=head_node,
        output=str(out),
        n_trials=2,
        num_workers=2,
        subset_size=64,
        env_vars={"PYTHONPATH": str(ROOT), "RAYQ_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert job.job_id.startswith("rayq-search-") and job.output == str(out)

    lines = list(job.logs(follow=True, poll=0.5))  # ends when the job has ended
    status = job.wait(timeout=10)
    seen = [e for e in map(events.parse, lines) if e is not None]
    assert status in ("SUCCEEDED", "FAILED"), "\n".join(lines[-40:])
    phases = {(e["phase"], e["state"]) for e in seen}
    assert {
        ("calibration", "start"),
        ("calibration", "end"),
        ("search", "start"),
        ("search", "end"),
        ("search", "result"),
    } <= phases, sorted(phases)
    trials = [e for e in seen if e["phase"] == "search" and e["state"] in ("update", "end")]
    assert trials[-1]["n"] == trials[-1]["total"] == 2

    result = job.result(timeout=10)
    assert isinstance(result, rayq.SearchResult)
    # exit code 3 (a FAILED job) means "within budget but not significantly faster"
    assert (status == "SUCCEEDED") == (result.status == "met"), (status, result.status)
    assert result.status in ("met", "no_speedup") and result.drop <= 0.01 and len(result.trials) >= 2
    assert (out / "result.json").is_file() and not list(ROOT.glob("rayq-job-*.yaml"))

    again = rayq.attach(job.job_id, address=head_node)  # a second client, as from another kernel
    assert (again.job_id, again.command, again.output) == (job.job_id, "search", str(out))
    assert again.status() == status and again.result().plan == result.plan
    assert "rayq search:" in again.logs() and len(again.logs(tail=3).splitlines()) == 3
    with caplog.at_level(logging.INFO, logger="rayq"):
        assert again.watch(poll=0.2) == status  # replays the events of a finished job
    assert any(r.getMessage().startswith("search: 2/2 trial") for r in caplog.records), caplog.text
    assert again.stop() is False  # already ended


def test_a_client_without_token_mode_gets_a_clear_error(head_node, tmp_path):
    # Ray reads RAY_AUTH_MODE once per process: ask from a fresh one without it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path))  # no ~/.ray/auth_token either
    code = (
        f"import rayq\ntry:\n    rayq.attach('x', address={head_node!r})\nexcept rayq.ClusterError as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "refused this client" in out.stdout and "export RAY_AUTH_MODE=token" in out.stdout, out
    assert len(out.stdout.strip().splitlines()) == 1, out.stdout  # one line, not Ray's paragraph


def test_a_failing_job_reports_its_logs(head_node, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work / "examples")
    (work / "examples" / "digits" / "validation.npz").write_bytes(b"not an npz file")
    job = rayq.submit(
        str(ROOT / "configs" / "search_digits.yaml"),
        address=head_node,
        working_dir=str(work),
        output=str(tmp_path / "out"),
        n_trials=1,
        env_vars={"PYTHONPATH": str(ROOT)},
    )
    with pytest.raises(rayq.SearchError, match="ended FAILED without a readable result") as info:
        job.result(timeout=120)
    assert "rayq: error:" in str(info.value)  # the CLI's one-line error, from the job's logs


RAY_CLIENT_SCRIPT = """
import ray, rayq
rayq.init({address!r}{extra})
@ray.remote
def where():
    import my_metrics  # only in the client's current directory
    return my_metrics.__name__
try:
    print("imported", ray.get(where.remote()))
except Exception as exc:
    print("failed:", "no module my_metrics" if "No module named 'my_metrics'" in str(exc) else exc)
"""


@pytest.mark.parametrize(
    "extra, expected", [("", "imported my_metrics"), (", runtime_env={}", "failed: no module my_metrics")]
)
def test_ray_client_uploads_the_current_directory_by_default(head_node, tmp_path, extra, expected):
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_metrics.py").write_text("def accuracy(model, items):\n    return 1.0\n")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(ROOT)}
    code = RAY_CLIENT_SCRIPT.format(address=RAY_CLIENT[0], extra=extra)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True, timeout=180
    )
    assert expected in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
