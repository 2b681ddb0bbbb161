"""The local Ray that rayq starts: reachable from this machine only, token auth on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

psutil = pytest.importorskip("psutil")

# Run in a fresh process: the test session's shared cluster must not be the one looked at.
PROBE = textwrap.dedent("""
    import json, os, time
    import psutil, ray
    import rayq
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    rayq.init(num_cpus=1, include_dashboard=False)
    try:
        worker = ray.get(ray.remote(lambda: os.getpid()).remote())  # at least one worker process
        time.sleep(1.0)  # agents finish binding
        listening = []
        for proc in psutil.Process().children(recursive=True):
            try:
                for conn in proc.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        listening.append([proc.name(), conn.laddr.ip, conn.laddr.port])
            except psutil.Error:
                pass
        print(json.dumps({"listening": listening, "worker": worker, "token_auth": is_token_auth_enabled(),
                          "gcs": ray.get_runtime_context().gcs_address}))
    finally:
        rayq.shutdown()
""")


def _loopback(ip: str) -> bool:
    return ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def test_local_ray_listens_on_loopback_only_with_token_auth():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    names = {name for name, _, _ in report["listening"]}
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), report
    exposed = [s for s in report["listening"] if not _loopback(s[1])]
    assert not exposed, f"Ray processes listen beyond loopback: {exposed}"
    assert report["gcs"].startswith("127.0.0.1:")
    assert report["token_auth"], "Ray's token authentication must stay on"
