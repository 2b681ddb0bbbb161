"""Same seed, same answer: the bundled digits search (configs/search_digits.yaml) run
twice with one seed on Ray and once in-process gives the same plan, and the study it
leaves is readable by optuna-dashboard (constraints, chosen trial)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest

from rayq.cli.main import main
from rayq.tuning import selection

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(selection, "RUNOFF_SECONDS", 2.0)  # keep the final timing short


def _search(out: Path, *extra: str) -> dict:
    code = main(
        [
            "search",
            "--config",
            "configs/search_digits.yaml",
            "--n-trials",
            "6",
            "--subset-size",
            "64",
            "--output",
            str(out),
            *extra,
        ]
    )
    result = json.loads((out / "result.json").read_text())
    assert (code, result["status"]) in ((0, "met"), (3, "no_speedup"))
    return result


def test_digits_search_gives_the_same_plan_with_one_seed_and_any_worker_count(tmp_path, in_repo, ray_cluster):
    runs = [_search(tmp_path / "a"), _search(tmp_path / "b"), _search(tmp_path / "one", "--num-workers", "1")]
    assert [r["plan_key"] for r in runs[1:]] == [runs[0]["plan_key"]] * 2, [r["plan"] for r in runs]
    # the sampler saw no timing: every run tried the same plans in the same order
    keys = [pd.read_parquet(tmp_path / name / "trials.parquet")["plan_key"].tolist() for name in ("a", "b", "one")]
    assert keys[0] == keys[1] == keys[2]
    assert len(runs[0]["fallback"]) < runs[0]["n_quantizable"]


def test_the_study_shows_constraints_and_the_chosen_trial_to_the_dashboard(tmp_path, in_repo):
    out = tmp_path / "s"
    result = _search(out, "--num-workers", "1", "--n-trials", "5")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    # what optuna-dashboard reads: study user attrs, and each trial's system attr "constraints" (a list)
    assert study.user_attrs["rayq.chosen_trial"] == result["chosen_trial"]
    assert study.user_attrs["rayq.choice"]["status"] == result["status"]
    trials = storage.get_all_trials(study._study_id)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    frame = pd.read_parquet(out / "trials.parquet").set_index("number")
    for t in complete:
        (value,) = t.system_attrs["constraints"]
        assert value == (0.0 if frame.loc[t.number, "feasible"] else pytest.approx(t.user_attrs["drop"] - 0.01))
        assert t.value == t.user_attrs["cost"] == frame.loc[t.number, "cost"]  # the objective is not a timing
    chosen = study.trials[result["chosen_trial"]]
    assert chosen.user_attrs["plan_key"] == result["plan_key"] and frame["chosen"].sum() == 1
    assert frame.loc[result["chosen_trial"], "chosen"]
