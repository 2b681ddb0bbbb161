"""End to end: ``rayq search`` on the digits example killed with SIGKILL, then run again.

A real ``python -m rayq.cli.main search`` process (in-process evaluation, a real Optuna
journal file) is killed at two moments read from its journal: right after the fallback
ranking is persisted, and with trials in flight. The same command is then run again
and compared with an uninterrupted run: the trial count, the states, the trial numbers
and plans, the ranking (reused, not recomputed), one trials.parquet row per trial.

Deliberately not compared: the plans the Optuna sampler drew after its startup trials
and the final choice. Both read measured latencies (the sampler's objective, the final
runoff), so two *uninterrupted* runs may already differ there; the tests of
tests/tuning/test_resume.py check with deterministic latencies that those agree too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
N_TRIALS = 12
COMMAND = [
    sys.executable,
    "-m",
    "rayq.cli.main",
    "search",
    str(DIGITS / "digits_cnn.onnx"),
    "--data",
    str(DIGITS / "calibration.npz"),
    "--validation",
    str(DIGITS / "validation.npz"),
    "--validation-fn",
    "tests.e2e.digits_metric:true_class_probability",
    "--max-drop",
    "0.0002",
    "--n-trials",
    str(N_TRIALS),
    "--num-workers",
    "1",
    "--seed",
    "0",
]
RANKING_ATTR = "rayq.ranking"
RUNNING, FINISHED = 0, (1, 2, 3)  # optuna TrialState values as the journal writes them


def journal_ops(path: Path) -> list[dict]:
    """The complete operations of a journal file (a line still being written is left out)."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]
    return [json.loads(line) for line in lines]


def trial_states(ops: list[dict]) -> dict[int, int]:
    """Trial id -> state, replaying a journal (one study: ids are creation order)."""
    states: dict[int, int] = {}
    for op in ops:
        if op["op_code"] == 4:
            states[len(states)] = op["state"]
        elif op["op_code"] == 6:
            states[op["trial_id"]] = op["state"]
    return states


def ranking_persisted(ops: list[dict]) -> bool:
    return any(op["op_code"] == 2 and RANKING_ATTR in op["user_attr"] for op in ops)


def trials_in_flight(ops: list[dict]) -> bool:
    states = list(trial_states(ops).values())
    return states.count(RUNNING) >= 2 and sum(s in FINISHED for s in states) >= 6


def run(out: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([*COMMAND, "-o", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    return proc


def kill_when(out: Path, env: dict, moment, timeout: float = 600.0) -> list[dict]:
    """Start the search and SIGKILL it as soon as its journal shows ``moment``."""
    journal = out / "study.journal"
    with open(out.parent / f"{out.name}.killed.log", "w") as log:
        proc = subprocess.Popen([*COMMAND, "-o", str(out)], cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + timeout
            while not moment(journal_ops(journal)):
                assert proc.poll() is None, "the search ended before the moment to kill it came"
                assert time.monotonic() < deadline, "the moment to kill the search never came"
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return journal_ops(journal)


def study_of(out: Path) -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(out / "study.journal")))
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    return {
        **os.environ,
        "RAYQ_PROGRESS": "off",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "RAYQ_CACHE_DIR": str(tmp_path_factory.mktemp("resume-cache")),
    }


@pytest.fixture(scope="module")
def uninterrupted(env, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    run(out, env)
    return out


def check_resumed(out: Path, whole: Path, at_kill: list[dict], log: str) -> None:
    study, reference = study_of(out), study_of(whole)
    trials = study.get_trials()
    assert len(trials) == N_TRIALS  # in-flight trials finished under their own numbers: no extras
    assert {t.state for t in trials} == {TrialState.COMPLETE}  # none waiting, running or failed
    assert [t.user_attrs["source"] for t in trials] == [t.user_attrs["source"] for t in reference.trials]
    seeds = [t.number for t in reference.trials if t.user_attrs["source"] == "seed"]
    assert len(seeds) >= 8  # the presets, the top-k candidates (and bisection steps)
    for n in seeds:
        assert trials[n].user_attrs["plan_key"] == reference.trials[n].user_attrs["plan_key"], n
    assert study.user_attrs[RANKING_ATTR] == reference.user_attrs[RANKING_ATTR]
    rows = pd.read_parquet(out / "trials.parquet")
    assert sorted(rows["number"]) == list(range(N_TRIALS))
    # the rerun evaluated exactly the trials that had not finished when the driver was killed
    done_at_kill = {i for i, s in trial_states(at_kill).items() if s in FINISHED}
    told = [int(line.split()[2]) for line in log.splitlines() if line.startswith("rayq: trial ")]
    assert sorted(told) == sorted(set(range(N_TRIALS)) - done_at_kill)
    result = json.loads((out / "result.json").read_text())
    assert result["n_trials"] == N_TRIALS


@pytest.mark.slow
def test_killed_after_the_ranking_is_persisted(env, uninterrupted, tmp_path):
    out = tmp_path / "run"
    at_kill = kill_when(out, env, ranking_persisted)
    assert sum(s in FINISHED for s in trial_states(at_kill).values()) < N_TRIALS
    proc = run(out, env)
    check_resumed(out, uninterrupted, at_kill, proc.stderr)
    assert "using the fallback ranking stored" in proc.stderr and "ranking 10 fallback groups" not in proc.stderr
    ops = journal_ops(out / "study.journal")
    assert sum(op["op_code"] == 2 and RANKING_ATTR in op["user_attr"] for op in ops) == 1


@pytest.mark.slow
def test_killed_with_trials_in_flight(env, uninterrupted, tmp_path):
    out = tmp_path / "run"
    at_kill = kill_when(out, env, trials_in_flight)
    in_flight = [i for i, s in trial_states(at_kill).items() if s == RUNNING]
    assert in_flight
    proc = run(out, env)
    check_resumed(out, uninterrupted, at_kill, proc.stderr)
    assert f"trial(s) {in_flight} left in flight" in proc.stderr
