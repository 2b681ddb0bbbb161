"""``rayq search`` and ``rayq sweep`` through the CLI entry point (in-process)."""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest

from rayq.cli.main import main

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
    code = main(["search", f"{DIGITS}/digits_cnn.onnx", "--data", f"{DIGITS}/calibration.npz",
                 "--validation", f"{DIGITS}/validation.npz", "--validation-fn", "examples.digits.metric:accuracy",
                 "--max-drop", "0.01", "--n-trials", "4", "--num-workers", "1", "--subset-size", "64",
                 "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rayq search: met" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "met" and result["drop"] <= 0.01
    assert len(pd.read_parquet(out / "trials.parquet")) == result["n_trials"] >= 4
    for name in ("model.onnx", "pareto.png", "config.yaml", "study.journal"):
        assert (out / name).exists(), name


def test_search_config_errors_are_one_line_exit_2(tmp_path, in_repo, capsys):
    cfg = _write(tmp_path / "bad.yaml", f"""\
        command: search
        model: {DIGITS}/digits_cnn.onnx
        calibration: {DIGITS}/calibration.npz
        validation: {DIGITS}/validation.npz
        validation_fn: "os.system('echo pwned')"
        """)
    assert main(["search", "--config", cfg]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "module:function" in err[0]


def test_sweep_records_failures_and_resumes(tmp_path, in_repo, capsys):
    out = tmp_path / "sweep"
    cfg = _write(tmp_path / "sweep.yaml", f"""\
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
        """)
    assert main(["sweep", "--config", cfg]) == 1  # one model failed, the other finished
    table = pd.read_parquet(out / "summary.parquet").set_index("name")
    assert table.loc["good", "status"] == "met"
    assert table.loc["broken", "status"] == "error" and "does not exist" in table.loc["broken", "error"]
    assert "| good | met |" in (out / "summary.md").read_text()
    assert not list(out.glob(".rayq*"))  # lock released, no staging left
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "rayq sweep at" in capsys.readouterr().out
    mtime = (out / "good" / "result.json").stat().st_mtime
    main(["sweep", "--config", cfg])
    assert (out / "good" / "result.json").stat().st_mtime == mtime  # finished model skipped on rerun
