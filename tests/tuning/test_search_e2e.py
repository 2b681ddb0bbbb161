"""End-to-end accuracy-controlled search: real ONNX Runtime, real Optuna, real local Ray."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import optuna
import pytest

import rayq
from rayq.testing.metrics import pair_accuracy
from rayq.testing.models import labeled_inputs, sensitive_mlp

MAX_DROP = 0.05  # full INT8 drops ~0.10; keeping Gemm_1 in FP32 drops ~0.03
#: Within the budget; whether INT8 is significantly faster than FP32 depends on the CPU.
WITHIN_BUDGET = ("met", "no_speedup")


# importable on Ray workers (a function of this test module would not be)
accuracy = pair_accuracy


def nncf_style_accuracy(model, items):
    """Exactly what an NNCF user writes for an ONNX model: an ORT session of the proto."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.stack([np.asarray(it[0], np.float32) for it in items])
    y = np.array([int(it[1]) for it in items])
    return float((sess.run(None, {"input": x})[0].argmax(1) == y).mean())


@pytest.fixture(scope="module")
def task():
    model = sensitive_mlp()
    x, y = labeled_inputs(model, 600)
    return model, x[:300], list(zip(x[300:], y[300:]))


def full_accuracy(model, val) -> float:
    return accuracy(lambda feeds: ort.InferenceSession(model.SerializeToString()).run(None, feeds), val)[0]


def test_unconstrained_int8_is_over_budget(task):
    model, calib, val = task
    q = rayq.quantize(model, calib, num_workers=1)
    assert full_accuracy(model, val) - full_accuracy(q, val) > MAX_DROP


def test_search_returns_model_within_budget(task, tmp_path):
    model, calib, val = task
    result = rayq.search(
        model, calib, val, accuracy, max_drop=MAX_DROP, num_workers=1, n_trials=8, output=str(tmp_path / "run")
    )
    assert result.status in WITHIN_BUDGET
    # re-validate the returned model independently on the full validation set
    assert full_accuracy(model, val) - full_accuracy(result.model, val) <= MAX_DROP
    # at most the sensitive layer stays FP32 (a real INT8 model); another estimator or bias
    # correction may bring the fully quantized model within budget too
    assert set(result.plan.fallback) <= {"Gemm_1"} and len(result.plan.fallback) < result.n_quantizable
    assert result.ranking[0] == "Gemm_1"  # the layer fed by the outlier channel ranks first
    assert result.speedup_low <= result.speedup <= result.speedup_high
    assert (result.status == "met") == (result.speedup_low > 1 + result.speedup_margin)
    for name in ("trials.parquet", "result.json", "pareto.png", "model.onnx", "study.journal"):
        assert (tmp_path / "run" / name).exists(), name
    import json

    import pandas as pd

    trials = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    assert len(trials) == len(result.trials) >= 8
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    chosen = trials[trials.chosen]
    assert chosen["number"].tolist() == [saved["chosen_trial"]] == [result.chosen_trial]
    assert chosen["plan_key"].item() == saved["plan_key"] == result.plan.key()
    assert chosen["speedup_low"].item() == pytest.approx(saved["speedup_low"])
    assert saved["latency_settings"]["runtime"] == "onnxruntime" and saved["latency_settings"]["cpu"]
    # the per-layer sensitivity report: the ranking with its scores, as a table, a plot and in the study
    sens = pd.read_parquet(tmp_path / "run" / "sensitivity.parquet")
    assert sens["layer"].tolist() == result.ranking == result.sensitivity["layer"].tolist()
    top = sens.iloc[0]
    assert (top["rank"], top["layer"], top["basis"]) == (1, "Gemm_1", "metric")
    assert bool(top["fallback"]) == ("Gemm_1" in result.plan.fallback)
    assert top["score"] > 0 and top["score"] == sens["score"].max()
    assert (tmp_path / "run" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    study = optuna.load_study(
        study_name=result.study_name,
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "run" / "study.journal"))
        ),
    )
    stored = json.loads(study.user_attrs["rayq.ranking"])
    assert stored["basis"] == "metric"
    assert stored["groups"][0] == {"name": "Gemm_1", "score": pytest.approx(top["score"])}
    loaded = rayq.SearchResult.load(str(tmp_path / "run"))
    pd.testing.assert_frame_equal(loaded.sensitivity, result.sensitivity, check_dtype=False)
    assert loaded.trials["fallback"].tolist() == result.trials["fallback"].tolist()


def test_one_and_two_workers_give_the_same_plan(task, ray_cluster):
    model, calib, val = task
    plans = [
        rayq.search(model, calib, val, accuracy, max_drop=MAX_DROP, num_workers=n, n_trials=6, seed=3).plan
        for n in (1, 2)
    ]
    assert plans[0] == plans[1]


class Crash(BaseException):
    """Stands in for the driver being killed (not an Exception: nothing may swallow it)."""


def test_resume_after_crash_does_not_rerun_finished_trials(task, tmp_path):
    model, calib, val = task
    calls = {"n": 0, "limit": 9}

    def flaky(m, items):
        calls["n"] += 1
        if calls["n"] > calls["limit"]:
            raise Crash()
        return accuracy(m, items)

    out = str(tmp_path / "run")

    def search():  # the same command both times; one call per validation (no chunks)
        return rayq.search(
            model,
            calib,
            val,
            flaky,
            max_drop=MAX_DROP,
            num_workers=1,
            n_trials=12,
            output=out,
            study_name="resume",
            early_stop=False,
        )

    with pytest.raises(Crash):
        search()
    study = optuna.load_study(
        study_name="resume",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(f"{out}/study.journal")),
    )
    done = {t.number: t.user_attrs["plan_key"] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert done, "some trials finished before the crash"
    calls.update(n=0, limit=10**9)
    result = search()
    rows = result.trials.set_index("number")
    for number, key in done.items():
        assert rows.loc[number, "plan_key"] == key
    # FP32 validation + the new trials only: finished trials are not validated again
    new_trials = len(result.trials[result.trials.status.isin(["ok", "failed"])]) - len(done)
    assert calls["n"] <= 2 + new_trials
    again = dict(calls)
    calls["n"] = 0
    rayq.search(
        model, calib, val, flaky, max_drop=MAX_DROP, num_workers=1, n_trials=12, output=out, study_name="resume"
    )
    assert calls["n"] == 1, f"a finished search re-ran {calls['n'] - 1} validations (first resume: {again})"


def test_failing_validation_is_recorded_not_fatal(task):
    model, calib, val = task

    def picky(m, items):
        qdq = sum(n.op_type == "QuantizeLinear" for n in m.graph.node)
        if qdq == 2:
            raise RuntimeError("cannot validate this candidate")
        if qdq == 1:
            return float("nan")
        return accuracy(m, items)

    result = rayq.search(model, calib, val, picky, max_drop=MAX_DROP, num_workers=1, n_trials=6)
    failed = result.trials[result.trials.status == "failed"]
    assert len(failed) >= 1
    assert failed.error.str.contains("cannot validate this candidate|nan", case=False).all()
    # only all-FP32 plans could be validated: that is no INT8 answer
    assert result.status == "budget not met" and "no INT8 trial met the accuracy budget" in result.message


def test_quantize_with_accuracy_control_accepts_nncf_validation_fn(task):
    model, calib, val = task
    q = rayq.quantize_with_accuracy_control(model, calib, val, nncf_style_accuracy, max_drop=MAX_DROP, num_workers=1)
    assert full_accuracy(model, val) - full_accuracy(q, val) <= MAX_DROP
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) > 0  # a real INT8 model


def test_quantize_with_accuracy_control_warns_when_mostly_fp32_or_not_faster(caplog):
    """NNCF's contract returns the restored model as it is; rayq says what it is."""
    from rayq.api.accuracy_control import _warn_restored
    from rayq.testing.results import search_result

    def result(fallback, status, low, high):
        return search_result(fallback, status, low=low, high=high, n_quantizable=4)

    with caplog.at_level("WARNING", logger="rayq"):
        _warn_restored(result(("a", "b", "c"), "met", 1.2, 1.4), 4)
    assert "3 of 4 quantizable layers went back to FP32" in caplog.text and "not significantly" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="rayq"):
        _warn_restored(result(("a",), "no_speedup", 0.9, 1.05), 4)
    assert "not significantly faster than FP32 on openvino (0.9" in caplog.text
    assert "went back" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="rayq"):
        _warn_restored(result(("a",), "met", 1.2, 1.4), 4)
    assert caplog.text == ""


def test_fp32_validation_failure_is_a_clear_error(task):
    model, calib, val = task

    def broken(m, items):
        raise ValueError("labels missing")

    with pytest.raises(rayq.SearchError, match="labels missing"):
        rayq.search(model, calib, val, broken, num_workers=1, n_trials=2)
