"""Fixtures of the CLI tests: the bundled digits example, an isolated cache, a small Ray."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
MODEL = DIGITS / "digits_cnn.onnx"
CALIBRATION = DIGITS / "calibration.npz"
VALIDATION = DIGITS / "validation.npz"
#: ``rayq search`` on the bundled digits example, by flags (add budget, trials, output)
SEARCH_DIGITS = (
    "search",
    str(MODEL),
    "--data",
    str(CALIBRATION),
    "--validation",
    str(VALIDATION),
    "--validation-fn",
    "examples.digits.metric:accuracy",
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Own statistics cache, no progress bars, the repository root as working directory."""
    monkeypatch.setenv("RAYQ_CACHE_DIR", str(tmp_path_factory.mktemp("rayq-cache")))
    monkeypatch.setenv("RAYQ_PROGRESS", "off")
    monkeypatch.chdir(ROOT)


@pytest.fixture(autouse=True)
def _repo_examples(monkeypatch):
    """Make ``examples`` the repository's package, as for a user in the repository root.

    Under pytest, ``tests/`` is on ``sys.path`` ahead of the root and
    ``tests/examples/__init__.py`` shadows the top-level ``examples`` package, so
    ``examples.digits.metric:accuracy`` would not import.
    """
    monkeypatch.syspath_prepend(str(ROOT))
    for name in [m for m in sys.modules if m == "examples" or m.startswith("examples.")]:
        monkeypatch.delitem(sys.modules, name)


def one_error_line(stderr: str) -> str:
    """The single ``rayq: error:`` line of a failed run made with ``-q`` (warnings aside)."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("rayq: warning:")]
    assert "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("rayq: error: "), stderr
    return lines[0]
