"""rayq's log lines and progress bars: one level, no collisions, readable numbers."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rayq
from rayq import logs
from rayq.api import progress
from rayq.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
LONG = 0.049130499974125996


@pytest.fixture
def rayq_logger(monkeypatch):
    """rayq's handler on (as with no logging configured), level restored afterwards."""
    logger = logging.getLogger("rayq")
    monkeypatch.setattr(logs.HANDLER, "forced", True)
    monkeypatch.setattr(logger, "propagate", False)
    level = logger.level
    yield logger
    logger.setLevel(level)


def _segments(text: str) -> list[str]:
    """What a terminal keeps of each line: the part after the last carriage return."""
    return [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line.split("\r")[-1]).rstrip() for line in text.split("\n")]


def test_plain_python_in_a_non_tty_prints_info_with_short_floats():
    code = (
        "import logging, rayq; logging.getLogger('rayq.tuning').info('trial 3: latency=%s ms', "
        f"{LONG!r}); logging.getLogger('rayq.x').debug('hidden')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(logs.ENV_VAR, None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stderr.splitlines() == ["rayq: trial 3: latency=0.04913 ms"]


def test_env_var_sets_the_level_at_import():
    code = "import logging, rayq; print(logging.getLogger('rayq').level)"
    env = {**os.environ, "PYTHONPATH": str(ROOT), logs.ENV_VAR: "debug"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str(logging.DEBUG)


def test_set_log_level_silences_lines_and_bars(rayq_logger, capsys, monkeypatch):
    monkeypatch.setenv("RAYQ_PROGRESS", "bar")
    rayq.set_log_level("WARNING")
    with progress.Progress("calibration", total=4) as bar:
        assert bar._bar is None  # no bar above INFO
        for _ in range(4):
            bar.update(1)
    logging.getLogger("rayq.x").info("hidden")
    logging.getLogger("rayq.x").warning("shown")
    assert capsys.readouterr().err.splitlines() == ["rayq: warning: shown"]
    rayq.set_log_level(logging.INFO)
    assert rayq_logger.level == logging.INFO
    with pytest.raises(ConfigError, match="LOUD"):
        rayq.set_log_level("LOUD")


def test_log_lines_never_break_the_bar(rayq_logger, capsys, monkeypatch):
    monkeypatch.setenv("RAYQ_PROGRESS", "bar")
    rayq.set_log_level("INFO")
    with progress.Progress("search", total=3, unit="trial") as bar:
        assert bar._bar is not None
        for i in range(3):
            bar.update(1)
            bar.set_postfix(f"trial {i}")
            logging.getLogger("rayq.tuning.driver").info("trial %d: latency %s ms", i, LONG)
    segments = _segments(capsys.readouterr().err)
    for i in range(3):  # each log line stands alone: no bar text before or after it on its line
        assert f"rayq: trial {i}: latency 0.04913 ms" in segments
    assert not [s for s in segments if "trial" in s and "latency" in s and not s.startswith("rayq: trial")]
    assert any(s.startswith("rayq: search: 3/3 trial in") for s in segments)  # one summary line per phase


def test_one_bar_at_a_time(rayq_logger, monkeypatch):
    monkeypatch.setenv("RAYQ_PROGRESS", "bar")
    with progress.Progress("sweep", total=2, unit="model") as outer:
        with progress.Progress("calibration", total=2) as inner:
            assert outer._bar is not None and inner._bar is None
    with progress.Progress("search", total=1) as again:
        assert again._bar is not None


def test_sweep_lines_name_their_model(rayq_logger, capsys):
    with logs.log_context("digits_mixed"):
        logging.getLogger("rayq.tuning.selection").info("runoff: %d rounds", 3)
    logging.getLogger("rayq.api.sweep").info("done")
    assert capsys.readouterr().err.splitlines() == ["rayq: [digits_mixed] runoff: 3 rounds", "rayq: done"]


def test_kernel_without_ipywidgets_gets_text_not_a_broken_widget(rayq_logger, capsys, monkeypatch):
    monkeypatch.delenv("RAYQ_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "_in_kernel", lambda: True)
    monkeypatch.setattr(progress, "_has_widgets", lambda: False)
    monkeypatch.setattr(progress, "_hinted", [False])
    with progress.Progress("calibration", total=10) as bar:
        assert bar._bar is None
        for _ in range(10):
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert "rayq[notebook]" in lines[0]
    assert lines[-1] == "rayq: calibration: 10/10 batch"
    assert len(lines) <= 12 and all(line.startswith("rayq: ") for line in lines)


def test_application_logging_config_takes_over(monkeypatch, capsys):
    """With logging configured by the application, rayq's own handler stays silent (no duplicates)."""
    monkeypatch.setattr(logs.HANDLER, "forced", False)
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("APP %(name)s %(message)s"))
    monkeypatch.setattr(root, "handlers", [handler])
    logging.getLogger("rayq.x").info("once")
    assert capsys.readouterr().err.splitlines() == ["APP rayq.x once"]
