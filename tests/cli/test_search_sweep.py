"""``rayq search`` and ``rayq sweep`` through the CLI entry point (in-process)."""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import replace

import pandas as pd
import pytest

from rayq.cli.main import main

from .conftest import SEARCH_DIGITS

DIGITS = "examples/digits"


def _write(path, text: str):
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture()
def in_repo(monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])


def test_search_by_flags_writes_artifacts(tmp_path, in_repo, capsys):
    out = tmp_path / "s"
    code = main(
        [
            *SEARCH_DIGITS,
            "--max-drop",
            "0.01",
            "--n-trials",
            "4",
            "--num-workers",
            "1",
            "--subset-size",
            "64",
            "--output",
            str(out),
        ]
    )
    result = json.loads((out / "result.json").read_text())
    # INT8 on the digits CNN may or may not be significantly faster than FP32 on this CPU
    assert (code, result["status"]) in ((0, "met"), (3, "no_speedup"))
    captured = capsys.readouterr()
    printed = captured.out
    assert f"rayq search: {result['status']}" in printed and "x FP32 (95% CI " in printed
    # log lines name final locations (never the deleted staging folder) and carry short numbers
    assert ".rayq-staging" not in captured.err and "pareto.png" in captured.err and f"to {out}" in captured.err
    assert not re.search(r"\d\.\d{7,}", captured.err), captured.err
    assert result["drop"] <= 0.01 and result["speedup_low"] <= result["speedup"] <= result["speedup_high"]
    assert len(result["fallback"]) < result["n_quantizable"]  # never an all-FP32 "INT8" answer
    if code == 3:
        assert "no candidate within the budget is significantly faster" in printed
    assert len(pd.read_parquet(out / "trials.parquet")) == result["n_trials"] >= 4
    for name in ("model.onnx", "pareto.png", "config.yaml", "study.journal"):
        assert (out / name).exists(), name


def test_search_config_errors_are_one_line_exit_2(tmp_path, in_repo, capsys):
    cfg = _write(
        tmp_path / "bad.yaml",
        f"""\
        command: search
        model: {DIGITS}/digits_cnn.onnx
        calibration: {DIGITS}/calibration.npz
        validation: {DIGITS}/validation.npz
        validation_fn: "os.system('echo pwned')"
        """,
    )
    assert main(["search", "--config", cfg]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "module:function" in err[0]


def test_sweep_records_failures_and_resumes(tmp_path, in_repo, capsys):
    out = tmp_path / "sweep"
    cfg = _write(
        tmp_path / "sweep.yaml",
        f"""\
        command: sweep
        output: {out}
        max_concurrent: 2
        defaults:
          calibration: {DIGITS}/calibration.npz
          validation: {DIGITS}/validation.npz
          validation_fn: examples.digits.metric:accuracy
          n_trials: 3
          num_workers: 1
          subset_size: 64
        models:
          - model: {DIGITS}/digits_cnn.onnx
            name: good
          - model: {tmp_path}/missing.onnx
            name: broken
        """,
    )
    assert main(["sweep", "--config", cfg]) == 1  # one model failed, the other finished
    err = capsys.readouterr().err
    assert "rayq: [good] trial 0 (seed)" in err and "rayq: error: [broken] sweep: failed:" in err
    written = (out / "good" / "config.yaml").read_text()  # each model's own effective config
    assert "command: search" in written and f"output: {out}/good" in written
    assert "command: sweep" in (out / "config.yaml").read_text()  # and the sweep's own
    table = pd.read_parquet(out / "summary.parquet").set_index("name")
    assert table.loc["good", "status"] in ("met", "no_speedup")
    assert table.loc["broken", "status"] == "error" and "does not exist" in table.loc["broken", "error"]
    assert f"| good | {table.loc['good', 'status']} |" in (out / "summary.md").read_text()
    assert not list(out.glob(".rayq*"))  # lock released, no staging left
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "rayq sweep at" in capsys.readouterr().out
    mtime = (out / "good" / "result.json").stat().st_mtime
    main(["sweep", "--config", cfg])
    assert (out / "good" / "result.json").stat().st_mtime == mtime  # finished model skipped on rerun


def test_search_not_faster_than_fp32_exits_3_with_a_plain_message(tmp_path, in_repo, capsys, monkeypatch):
    """Exit codes follow result.status (pure CLI logic: the search itself is faked)."""
    import rayq.api.search
    from rayq.testing.results import search_result

    def fake(cfg, status, low):
        return search_result(
            ("a",), status, low=low, high=low + 0.1, chosen_trial=4, n_quantizable=10, message=f"because {status}"
        )

    for status, low, code in (("no_speedup", 0.95, 3), ("met", 1.2, 0), ("budget not met", 1.2, 3)):
        monkeypatch.setattr(rayq.api.search, "search_from_config", lambda cfg, s=status, lo=low: fake(cfg, s, lo))
        assert main(list(SEARCH_DIGITS)) == code
        printed = capsys.readouterr().out
        assert f"rayq search: {status}" in printed and f"x FP32 (95% CI {low:.2f}-{low + 0.1:.2f})" in printed
        assert "(trial 4)" in printed and "FP32 layers: a (1 of 10)" in printed
        assert (f"because {status}" in printed) == (status != "met")


def test_an_explicit_preset_restricts_the_searched_presets():
    """The shipped sweep's ``preset: mixed`` entry searches the mixed preset only."""
    from rayq.api import config as rayq_config
    from rayq.api.search import search_presets
    from rayq.api.sweep import expand

    cfg = rayq_config.load("configs/sweep.yaml", command="sweep")
    searched = {name: search_presets(c.preset, c.presets) for name, c in expand(cfg)}
    assert searched == {"digits_performance": ("performance", "mixed"), "digits_mixed": ("mixed",)}
    wide = replace(cfg, defaults={**cfg.defaults, "presets": ["performance", "mixed"]})
    searched = {name: search_presets(c.preset, c.presets) for name, c in expand(wide)}
    assert searched["digits_mixed"] == ("mixed",)  # the defaults' list does not widen an entry's preset
