"""Where the statistics cache lives: RAYQ_CACHE_DIR, else the platform's user cache folder."""

from __future__ import annotations

import sys

import pytest

from rayq.pipeline.cache import default_dir


def test_env_var_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("RAYQ_CACHE_DIR", str(tmp_path / "mine"))
    assert default_dir() == str(tmp_path / "mine")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG is the Linux convention")
def test_platform_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("RAYQ_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_dir() == str(tmp_path / "xdg" / "rayq" / "stats")
