"""The job client's pure parts: building the job's config, checking working_dir, the
entrypoint, following logs and drawing progress from events. End to end against a real
cluster: tests/cluster/test_job_client.py."""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

import rayq
from rayq import events
from rayq.api import config as rayq_config
from rayq.api import submit as jobs
from rayq.api.config import SearchConfig

ROOT = Path(__file__).resolve().parents[1]
DIGITS = dict(
    model="examples/digits/digits_cnn.onnx",
    calibration="examples/digits/calibration.npz",
    validation="examples/digits/validation.npz",
    validation_fn="examples.digits.metric:accuracy",
)


def test_job_config_from_a_dict_a_yaml_path_and_a_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = jobs.job_config(DIGITS, {"n_trials": 3}, "runs/x")
    assert isinstance(cfg, SearchConfig) and cfg.n_trials == 3
    assert cfg.output == str(tmp_path / "runs" / "x")  # not inside Ray's working-dir copy
    from_yaml = jobs.job_config(ROOT / "configs" / "search_digits.yaml", {"n_trials": 2}, "s3://b/run")
    assert (from_yaml.n_trials, from_yaml.output, from_yaml.address) == (2, "s3://b/run", None)
    again = jobs.job_config(from_yaml, {"seed": 5}, None)
    assert again.seed == 5 and again.output == "s3://b/run"
    assert rayq_config.from_dict(__import__("yaml").safe_load(rayq_config.dump(again))) == again


@pytest.mark.parametrize(
    "config, fields, output, message",
    [
        (DIGITS, {}, None, "needs an output"),
        ({**DIGITS, "validation_fn": len}, {}, "o", "'package.module:function' string"),
        (DIGITS, {"no_such_field": 1}, "o", "no_such_field"),
        (42, {}, "o", "not int"),
        (
            {"command": "quantize", "model": "m.onnx", "calibration": "c.npz", "output": "o"},
            {},
            None,
            "'search' or 'sweep'",
        ),
    ],
)
def test_job_config_rejects_what_a_job_cannot_run(config, fields, output, message):
    with pytest.raises(rayq.ConfigError, match=message):
        jobs.job_config(config, fields, output)


def test_inputs_and_validation_module_must_be_in_working_dir(tmp_path, caplog):
    cfg = jobs.job_config(DIGITS, {}, "/o")
    jobs._check_inputs(cfg, str(ROOT))  # the project folder has both
    with pytest.raises(rayq.ConfigError, match="does not exist in working_dir"):
        jobs._check_inputs(cfg, str(tmp_path))
    absolute = jobs.job_config(
        {**DIGITS, **{k: str(ROOT / v) for k, v in DIGITS.items() if k != "validation_fn"}}, {}, "/o"
    )
    jobs._check_inputs(absolute, str(tmp_path))  # importable here (the project is on sys.path): a warning
    assert "module 'examples' is not in working_dir" in caplog.text and "installed on the cluster" in caplog.text
    missing = dataclasses.replace(absolute, validation_fn="no_such_package_xyz.metric:accuracy")
    with pytest.raises(rayq.ConfigError, match="'no_such_package_xyz' is neither in working_dir.*rayq.submit"):
        jobs._check_inputs(missing, str(tmp_path))
    with pytest.raises(rayq.ConfigError, match="not a folder"):
        jobs._working_dir(str(tmp_path / "missing"))


def test_entrypoint_writes_the_config_from_the_environment_and_runs_the_cli(tmp_path):
    cmd = jobs.entrypoint("search", "rayq-search-1")
    assert cmd.endswith("rayq search --config rayq-job-rayq-search-1.yaml")
    text = "model: 'a b.onnx'\nnote: \"$(touch pwned)\" `x` ;\n"
    shell = cmd.split(" && ")[0]  # the printf part, run by the shell as Ray does
    subprocess.run(["sh", "-c", shell], cwd=tmp_path, env={**os.environ, jobs.CONFIG_ENV: text}, check=True)
    assert (tmp_path / "rayq-job-rayq-search-1.yaml").read_text() == text + "\n"
    assert not (tmp_path / "pwned").exists()
    assert shlex.split(cmd)[-3:] == ["search", "--config", "rayq-job-rayq-search-1.yaml"]


class _Api:
    """A job server double: logs grow by one chunk per poll, then the job ends."""

    address = "http://127.0.0.1:1"

    def __init__(self, chunks: list[str]) -> None:
        self.chunks, self.polls = chunks, 0

    def status(self, job_id: str) -> str:
        self.polls += 1
        return "SUCCEEDED" if self.polls >= len(self.chunks) else "RUNNING"

    def logs(self, job_id: str) -> str:
        return "".join(self.chunks[: max(self.polls, 1)])


def _event(**fields) -> str:
    import json

    return events.PREFIX + json.dumps(fields) + "\n"


def test_follow_yields_whole_lines_until_the_job_ends():
    job = jobs.SearchJob("j", _Api(["a\nb", "c\n", "d\ne"]))
    assert list(job.logs(follow=True, poll=0)) == ["a", "bc", "d", "e"]
    assert jobs.SearchJob("j", _Api(["x\ny\nz\n"])).logs(tail=2) == "y\nz"


def test_watch_draws_one_bar_per_phase_from_events(monkeypatch):
    made = []

    class Bar:
        def __init__(self, desc, total=None, unit="step"):
            self.desc, self.total, self.unit, self.n, self.postfix, self.closed = desc, total, unit, 0, "", False
            made.append(self)

        def update(self, n):
            self.n += n

        def set_postfix(self, text):
            self.postfix = text

        def close(self):
            self.closed = True

    chunks = [
        _event(phase="calibration", state="start", n=0, total=4, unit="batch"),
        "rayq: a plain log line\n" + _event(phase="calibration", state="end", n=4, total=4),
        _event(phase="search", state="start", n=0, total=2, unit="trial")
        + _event(phase="search", state="update", n=2, total=2, postfix="trial 1: ok")
        + _event(phase="search", model="m2", state="start", n=0, total=3, unit="trial"),
    ]
    bars: dict = {}
    for ev in jobs.SearchJob("j", _Api(chunks)).events(poll=0):
        jobs._show(bars, ev, Bar)
    assert [(b.desc, b.total, b.unit, b.n, b.closed) for b in made] == [
        ("calibration", 4, "batch", 4, True),
        ("search", 2, "trial", 2, False),
        ("m2: search", 3, "trial", 0, False),
    ]
    assert made[1].postfix == "trial 1: ok" and list(bars) == ["search", "m2: search"]


def test_wait_times_out_with_a_rayq_error():
    api = _Api(["x"] * 1000)
    with pytest.raises(jobs.JobTimeoutError, match="still RUNNING after 0.05s") as info:
        jobs.SearchJob("j", api).wait(timeout=0.05, poll=0.01)
    assert isinstance(info.value, rayq.ClusterError) and isinstance(info.value, TimeoutError)


def test_a_sweep_result_is_its_summary_table(tmp_path):
    import pandas as pd

    pd.DataFrame({"name": ["a", "b"], "status": ["met", "error"]}).to_parquet(tmp_path / "summary.parquet")
    table = jobs._load("sweep", str(tmp_path))
    assert list(table.name) == ["a", "b"] and list(table.status) == ["met", "error"]
    with pytest.raises(rayq.OutputError, match="no sweep summary"):
        jobs._load("sweep", str(tmp_path / "missing"))
    with pytest.raises(rayq.OutputError):
        jobs._load("search", str(tmp_path))  # no result.json


def test_a_failed_job_does_not_return_an_older_runs_result(tmp_path):
    import json

    (tmp_path / "result.json").write_text(json.dumps({"status": "met"}))
    os.utime(tmp_path / "result.json", (1_000_000, 1_000_000))  # 1970: long before the job

    class Failed(_Api):
        def status(self, job_id):
            return "FAILED"

        def info(self, job_id):
            return {"start_time": int(time.time() * 1000), "metadata": {}}

    job = jobs.SearchJob("j", Failed(["rayq: error: validation data unreadable\n"]), output=str(tmp_path))
    with pytest.raises(rayq.SearchError, match="(?s)before the job started, by an earlier run.*validation data"):
        job.result()
    os.utime(tmp_path / "result.json")  # written now, by this job, but incomplete (no trials.parquet)
    with pytest.raises(rayq.SearchError, match="ended FAILED without a readable result"):
        job.result()
