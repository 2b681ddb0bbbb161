"""Shared fixtures: one local Ray cluster per session, and an isolated statistics cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory):
    """Module- and session-scoped fixtures never touch the user's ``~/.cache/rayq``."""
    old = os.environ.get("RAYQ_CACHE_DIR")
    os.environ["RAYQ_CACHE_DIR"] = str(tmp_path_factory.mktemp("rayq-cache-session"))
    yield
    if old is None:
        os.environ.pop("RAYQ_CACHE_DIR", None)
    else:
        os.environ["RAYQ_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def rayq_cache_dir(tmp_path, monkeypatch) -> Path:
    """A fresh, empty statistics cache directory for every test (``RAYQ_CACHE_DIR``)."""
    path = tmp_path / "rayq-cache"
    monkeypatch.setenv("RAYQ_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """One small local Ray cluster (2 CPUs, no dashboard) shared by every Ray test.

    Yields the cluster's resources. Never ``ray stop``: other processes on the
    machine may run their own Ray clusters.
    """
    import rayq

    try:
        resources = rayq.init(num_cpus=2, include_dashboard=False)
    except rayq.ClusterError:  # a loaded machine can time a node start out: one more try
        rayq.shutdown()
        resources = rayq.init(num_cpus=2, include_dashboard=False)
    yield resources
    rayq.shutdown()
