"""Outputs of every command: one resolution of paths and URIs, checked before any work,
one run per output folder, and sweep model names that stay inside the sweep's folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import onnx
import pytest

import rayq
from rayq.api import search as search_api
from rayq.cli.main import main

from .conftest import CALIBRATION, MODEL, ROOT, SEARCH_DIGITS, VALIDATION, one_error_line

SEARCH = [
    *SEARCH_DIGITS,
    "--n-trials",
    "2",
    "--num-workers",
    "1",
    "--subset-size",
    "32",
    "-q",
]


@pytest.fixture
def no_search_work(monkeypatch):
    """Fail the test if a search starts calibrating (or starting workers)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the search must not start for a bad output")

    monkeypatch.setattr(search_api, "ModelSession", forbidden)
    monkeypatch.setattr(search_api, "start_workers_early", forbidden)


def test_quantize_to_a_file_uri_writes_that_file_not_a_local_file_colon_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "abs" / "m.onnx"
    code = main(
        [
            "quantize",
            str(MODEL),
            "--data",
            str(CALIBRATION),
            "-o",
            f"file://{target}",
            "--num-workers",
            "1",
            "--subset-size",
            "16",
        ]
    )
    assert code == 0
    onnx.checker.check_model(onnx.load(str(target)))
    assert (target.parent / "config.yaml").is_file()
    assert not (tmp_path / "file:").exists()
    assert f"-> file://{target}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "output, fragment",
    [
        ("foo://bucket/run", "cannot open the output location 'foo://bucket/run'"),
        ("s3:/bucket/run", "missing '/'"),
        ("{file}", "is an existing file"),
        ("{file}/sub", "is a file, not a folder"),
    ],
)
def test_search_output_is_checked_before_any_work(output, fragment, tmp_path, capsys, no_search_work):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main([*SEARCH, "-o", output.format(file=blocker)]) == 2
    assert fragment in one_error_line(capsys.readouterr().err)
    assert not (ROOT / "foo:").exists() and not (ROOT / "s3:").exists()


def test_api_search_checks_output_before_any_work(tmp_path, no_search_work):
    (tmp_path / "f").write_text("x")
    with pytest.raises(rayq.OutputError, match="existing file"):
        rayq.search(str(MODEL), str(CALIBRATION), str(VALIDATION), lambda m, d: 1.0, output=str(tmp_path / "f"))


HOLD = """
import sys, time
from rayq.storage import OutputLock
OutputLock(sys.argv[1], command="search").acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_second_search_into_a_held_folder_is_refused_and_a_dead_holder_is_taken_over(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with monkeypatch.context() as m:
            m.setattr(search_api, "ModelSession", lambda *a, **k: pytest.fail("calibrated while locked out"))
            assert main([*SEARCH, "-o", str(out)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "in use by another run" in line and f"pid {holder.pid}" in line and "started" in line
        holder.send_signal(signal.SIGKILL)  # dies holding it: its lock file stays behind
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.stdout.close()
    assert (out / ".rayq.lock").exists()
    assert main([*SEARCH, "-o", str(out)]) in (0, 3)  # 3: within budget but not significantly faster (no_speedup)
    assert (out / "result.json").is_file() and (out / "config.yaml").is_file()
    assert not (out / ".rayq.lock").exists()
    assert main(["report", str(out)]) == 0
    assert "rayq search at" in capsys.readouterr().out


def test_two_searches_share_an_rdb_storage_with_different_study_names(tmp_path):
    optuna = pytest.importorskip("optuna")
    storage = f"sqlite:///{tmp_path}/studies.db"
    results, errors = {}, []

    def one(name: str) -> None:
        try:
            results[name] = rayq.search(
                str(MODEL),
                str(CALIBRATION),
                str(VALIDATION),
                _accuracy(),
                n_trials=2,
                num_workers=1,
                subset_size=32,
                storage=storage,
                study_name=name,
                output=str(tmp_path / name),
            )
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert {s.study_name for s in optuna.get_all_study_summaries(storage)} == {"a", "b"}
    for name in ("a", "b"):
        assert (tmp_path / name / "result.json").is_file() and len(results[name].trials) >= 2


def _accuracy():
    from examples.digits.metric import accuracy

    return accuracy


@pytest.mark.parametrize("name", ["../../escaped", "/abs", "a/b", "..", ".hidden", "", "x" * 101])
def test_sweep_names_that_leave_the_sweep_folder_are_rejected_before_ray(name, tmp_path, capsys, monkeypatch):
    import rayq.distributed.cluster as cluster

    monkeypatch.setattr(cluster, "init", lambda *a, **k: pytest.fail("Ray started for a bad sweep"))
    out = tmp_path / "deep" / "sweep"
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(
        textwrap.dedent(f"""\
        command: sweep
        output: {out}
        defaults:
          calibration: {CALIBRATION}
          validation: {VALIDATION}
          validation_fn: examples.digits.metric:accuracy
        models:
          - model: {MODEL}
            name: {name!r}
        """)
    )
    assert main(["sweep", "--config", str(cfg), "-q"]) == 2
    assert "must be a plain folder name" in one_error_line(capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ["sweep.yaml"]


def test_sweep_names_from_file_names_become_safe_folder_names(tmp_path):
    from rayq.api.config import SweepConfig
    from rayq.api.sweep import expand

    for stem in ("my model", "a..b", "-dash"):
        (tmp_path / f"{stem}.onnx").write_bytes(b"")
    cfg = SweepConfig(
        output=str(tmp_path / "o"),
        models=({"glob": f"{tmp_path}/*.onnx"},),
        defaults={"calibration": "c.npz", "validation": "v.npz", "validation_fn": "m:f"},
    )
    assert sorted(n for n, _ in expand(cfg)) == ["_dash", "a__b", "my_model"]


def test_quantize_to_an_object_store_uploads_and_writes_nothing_locally(tmp_path, monkeypatch, capsys):
    from pyarrow import fs as pafs

    from rayq.cli import quantize
    from rayq.storage import Location

    store = pafs._MockFileSystem()
    monkeypatch.setattr(quantize, "resolve", lambda uri: Location(uri, store, uri.split("://", 1)[1]))
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "quantize",
            str(MODEL),
            "--data",
            str(CALIBRATION),
            "-o",
            "mock://bucket/run/",
            "--num-workers",
            "1",
            "--subset-size",
            "16",
        ]
    )
    assert code == 0
    names = sorted(i.base_name for i in store.get_file_info(pafs.FileSelector("bucket/run")))
    assert names == ["config.yaml", "digits_cnn_int8.onnx"]  # no staging prefix left behind
    with store.open_input_stream("bucket/run/digits_cnn_int8.onnx") as f:
        onnx.checker.check_model(onnx.load_from_string(f.read()))
    assert os.listdir(tmp_path) == []
    assert "-> mock://bucket/run/digits_cnn_int8.onnx" in capsys.readouterr().out


def test_relative_output_of_a_ray_job_is_warned_about(tmp_path, caplog):
    from rayq.cli.common import warn_relative_job_output

    job_dir = str(tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc")
    with caplog.at_level("WARNING", logger="rayq.cli"):
        assert warn_relative_job_output("runs/x", job_dir)
    assert "Ray's temporary copy" in caplog.text and f"{job_dir}/runs/x" in caplog.text
    for output, cwd in (
        ("/abs/runs/x", job_dir),
        ("s3://bucket/x", job_dir),
        ("runs/x", str(tmp_path)),
        (None, job_dir),
    ):
        assert not warn_relative_job_output(output, cwd), (output, cwd)
