"""Atomic publication: files renamed into place, result.json last; half runs never look complete."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pyarrow import fs as pafs

from rayq.cli.main import main
from rayq.core.plan import QuantPlan
from rayq.errors import OutputError
from rayq.storage import Location, Publication, read_marker
from rayq.storage import publish as publish_mod
from rayq.testing.models import mlp
from rayq.tuning.records import DriverOutcome, TrialRecord
from rayq.tuning.result import SearchResult

ARTIFACTS = ("model.onnx", "trials.parquet", "pareto.parquet", "pareto.png", "config.yaml")


def _result() -> SearchResult:
    recs = [
        TrialRecord(
            i,
            QuantPlan(fallback=("fc1",) * (i % 2)),
            0.9 - 0.01 * i,
            0.01 * i,
            1.0 + i,
            0.01,
            "ok",
            None,
            i < 2,
            "seed",
        )
        for i in range(3)
    ]
    outcome = DriverOutcome(recs[0], "met", recs, "study", 0.015)
    return SearchResult(
        model=mlp(),
        plan=recs[0].plan,
        status="met",
        fp32_metric=0.9,
        metric=0.9,
        drop=0.0,
        max_drop=0.015,
        drop_type="absolute",
        latency_ms=1.0,
        latency_spread_ms=0.01,
        fp32_latency_ms=2.0,
        target="onnxruntime",
        trials=outcome.trials_frame(),
        pareto=outcome.pareto(),
        wall_seconds=1.0,
        cpu_seconds=1.0,
        study_name="study",
    )


def _fail_on(monkeypatch, name: str) -> None:
    """Make renaming ``name`` into place fail, as a full disk would."""
    real = os.replace

    def replace(src, dst):
        if os.path.basename(str(dst)) == name:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(publish_mod.os, "replace", replace)


def test_save_then_load_round_trips_with_result_json_last(tmp_path):
    result = _result()
    written = result.save(str(tmp_path / "run"), files={"config.yaml": "command: search\n"})
    assert list(written)[-1] == "result.json"
    assert sorted(os.listdir(tmp_path / "run")) == sorted([*ARTIFACTS, "result.json"])  # no staging left
    loaded = SearchResult.load(f"file://{tmp_path}/run")
    assert loaded.plan == result.plan and loaded.status == "met" and len(loaded.trials) == 3
    assert loaded.model.graph.node[0].op_type == result.model.graph.node[0].op_type
    assert loaded.model_path == str(tmp_path / "run" / "model.onnx")


def test_a_run_whose_result_json_cannot_be_written_leaves_nothing_that_looks_complete(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _result().save(str(out))  # an earlier complete run in the same folder
    _fail_on(monkeypatch, "result.json")
    with pytest.raises(OutputError, match="cannot publish 'result.json'.*No space left.*incomplete"):
        _result().save(str(out), files={"config.yaml": "x\n"})
    left = os.listdir(out)
    assert "result.json" not in left  # the old marker went first: the old files were replaced
    assert not any(name.startswith(".rayq-staging-") for name in left)
    assert not set(ARTIFACTS) & set(left)  # this run's files are removed again
    with pytest.raises(OutputError, match="incomplete .result.json is missing.*rerun the same command"):
        SearchResult.load(str(out))
    monkeypatch.undo()
    assert main(["report", str(out), "-q"]) == 2
    assert "is incomplete" in capsys.readouterr().err


def test_readers_refuse_missing_and_running_outputs(tmp_path, capsys):
    with pytest.raises(OutputError, match="no search run at .* does not exist"):
        SearchResult.load(str(tmp_path / "nope"))
    from rayq.storage import OutputLock

    with OutputLock(str(tmp_path / "busy"), command="search"):
        with pytest.raises(OutputError, match=r"still running \(rayq search, host .*pid"):
            read_marker(str(tmp_path / "busy"))


def test_report_prints_a_finished_search(tmp_path, capsys):
    _result().save(str(tmp_path / "run"))
    assert main(["report", f"file://{tmp_path}/run"]) == 0
    out = capsys.readouterr().out
    assert "rayq search at file://" in out and ": met, 3 trials" in out and "Pareto front" in out


def test_publication_on_an_object_store_uses_hidden_staging_then_moves(tmp_path, monkeypatch):
    store = pafs._MockFileSystem()
    run = Location("mock://bucket/run", store, "bucket/run")
    with Publication.open(run, marker="result.json") as out:
        assert not str(out.staging).startswith(str(tmp_path))
        for name in ("a.bin", "result.json"):
            (out.staging / name).write_bytes(name.encode())
        assert out.publish(["result.json", "a.bin"]) == {
            "result.json": "mock://bucket/run/result.json",
            "a.bin": "mock://bucket/run/a.bin",
        }
    names = sorted(i.base_name for i in store.get_file_info(pafs.FileSelector("bucket/run")))
    assert names == ["a.bin", "result.json"]
    assert json.loads(b'"' + read_marker(run) + b'"') == "result.json"
    real = publish_mod.upload

    def upload(src, dest):
        if dest.name == "result.json":
            raise OSError("connection reset")
        real(src, dest)

    monkeypatch.setattr(publish_mod, "upload", upload)
    with pytest.raises(OutputError, match="connection reset"):
        with Publication.open(run, marker="result.json") as out:
            for name in ("b.bin", "result.json"):
                (out.staging / name).write_bytes(b"new")
            out.publish(["b.bin", "result.json"])
    names = sorted(i.base_name for i in store.get_file_info(pafs.FileSelector("bucket/run")))
    assert names == ["a.bin"]  # old marker removed, b.bin rolled back, no staging prefix left


def test_result_json_is_written_last(tmp_path, monkeypatch):
    order = []
    real = os.replace
    monkeypatch.setattr(publish_mod.os, "replace", lambda s, d: (order.append(Path(d).name), real(s, d)))
    _result().save(str(tmp_path / "run"))
    assert order[-1] == "result.json" and len(order) == 5
