"""Early stopping of hopeless candidates, end to end: real ONNX Runtime, Optuna and Ray.

The sensitive MLP with 2400 validation items at ``max_drop=0.01``: its INT8 candidates
lose 2-3 points, so the chunked validation stops them after 25 % or 50 % of the items;
the answer is the one a search without early stopping gives.
"""

from __future__ import annotations

import numpy as np
import optuna
import pytest

import rayq
from rayq.api.session import ModelSession
from rayq.core.early import EarlyStop
from rayq.core.plan import PRESETS, QuantPlan
from rayq.pipeline.candidate import CandidateEvaluator
from rayq.pipeline.validation import run_validation
from rayq.testing.metrics import pair_accuracy
from rayq.testing.models import labeled_inputs, sensitive_mlp
from rayq.tuning import selection

N_VAL = 2400
MAX_DROP = 0.01


def accuracy_only(model, items):
    """The metric alone (no per-item values): chunked validation is not exact."""
    return pair_accuracy(model, items)[0]


@pytest.fixture(scope="module")
def task():
    model = sensitive_mlp()
    x, y = labeled_inputs(model, 300 + N_VAL)
    return model, x[:300], list(zip(x[300:], y[300:]))


@pytest.fixture()
def short_runoff(monkeypatch):
    monkeypatch.setattr(selection, "RUNOFF_SECONDS", 1.0)


def _search(task, early_stop: bool, num_workers: int, fn=pair_accuracy, storage=None):
    model, calib, val = task
    return rayq.search(
        model,
        calib,
        val,
        fn,
        max_drop=MAX_DROP,
        num_workers=num_workers,
        n_trials=12,
        early_stop=early_stop,
        estimators=("mean_minmax", "minmax"),
        storage=storage,
    )


def test_hopeless_candidates_stop_early_and_the_answer_is_unchanged(task, short_runoff, ray_cluster, tmp_path):
    journal = str(tmp_path / "study.journal")
    stopped = _search(task, True, 2, storage=journal)  # on Ray: the worker tasks run the chunked validation
    whole = _search(task, False, 1)
    assert stopped.plan.key() == whole.plan.key() and stopped.status == whole.status == "budget not met"
    assert stopped.drop == pytest.approx(whole.drop)
    f, g = stopped.trials, whole.trials
    assert f["plan_key"].tolist() == g["plan_key"].tolist()  # the sampler took the same path
    assert not g["early_stopped"].any() and (g["validation_items_saved"] == 0).all()
    # the study keeps what the search saw: partial metrics, items saved, no latency
    study = optuna.load_study(
        study_name=stopped.study_name,
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal)),
    )
    early = [t for t in study.trials if t.user_attrs.get("early_stopped")]
    assert len(early) >= 2, [(t.number, t.user_attrs.get("drop")) for t in study.trials]
    for t in early:
        assert t.user_attrs["validation_items_saved"] in (N_VAL - N_VAL // 4, N_VAL // 2)
        assert t.user_attrs["latency_ms"] is None and t.system_attrs["constraints"][0] > 0  # infeasible
        assert t.number >= len(PRESETS)  # the preset seeds (the first trials) are validated whole
    # no trial met the budget, so the stopped ones were validated whole for the answer:
    # the trials table then holds their full drops (those of the run without early stopping)
    full = g.set_index("number")
    rows = f.set_index("number").loc[[t.number for t in early]]
    assert rows["early_stopped"].all() and (rows["validation_items_saved"] == 0).all()
    assert np.allclose(rows["drop"], full.loc[rows.index, "drop"]) and (rows["drop"] > MAX_DROP).all()


def test_no_early_stop_without_per_item_values(task, short_runoff):
    result = _search(task, True, 1, fn=accuracy_only)
    assert not result.trials["early_stopped"].any()


def test_chunked_validation_equals_whole_validation_when_not_stopped(task):
    model, calib, val = task
    base = QuantPlan()
    session = ModelSession(model, calib, subset_size=300)
    stats = session.statistics(base, histograms=True, num_workers=1, use_cache=False)
    ev = CandidateEvaluator(
        session.backend.name,
        session.model,
        stats,
        val,
        pair_accuracy,
        runtime="onnxruntime",
        calibration_batches=session.batches,
    )
    fp32 = ev.fp32_metric()
    loose = EarlyStop(fp32.per_item, fp32.value, max_drop=1.0, seed=5)  # never stops
    chunked = ev.metric(base, stop=loose)
    whole = ev.metric(base)
    assert not chunked.early_stopped and chunked.items_seen == N_VAL
    assert chunked.value == pytest.approx(whole.value, abs=1e-12)
    np.testing.assert_array_equal(chunked.per_item, whole.per_item)
    tight = EarlyStop(fp32.per_item, fp32.value, max_drop=0.0, seed=5)  # full INT8 loses ~10 points
    cut = ev.metric(base, stop=tight)
    assert cut.early_stopped and cut.items_seen == N_VAL // 4 and cut.per_item is None
    assert run_validation(pair_accuracy, ev.compiled(ev.build(base), 0), val).value == pytest.approx(whole.value)


def test_a_rerun_reads_the_early_stops_back_from_the_study(task, short_runoff, tmp_path):
    journal = str(tmp_path / "study.journal")
    first = _search(task, True, 1, storage=journal)
    again = _search(task, True, 1, storage=journal)  # the study is complete: nothing is validated again
    assert again.plan.key() == first.plan.key()
    cols = ["number", "plan_key", "early_stopped", "validation_items_saved", "drop", "feasible"]
    assert again.trials[cols].equals(first.trials[cols])
    study = optuna.load_study(
        study_name=again.study_name,
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal)),
    )
    assert len(study.trials) == 12
    assert sum(bool(t.user_attrs.get("validation_items_saved")) for t in study.trials) >= 2


def true_class_probability_items(model, data):
    """The digits metric that INT8 noise moves (tests/e2e/digits_metric.py), with per-item values."""
    images = np.stack([np.asarray(item["input"], np.float32) for item in data])
    labels = np.array([int(item["label"]) for item in data])
    logits = np.asarray(model(images)[0], np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    per_item = probs[np.arange(len(labels)), labels]
    return float(per_item.mean()), per_item


@pytest.mark.slow
def test_candidates_that_cannot_beat_the_incumbent_are_skipped_and_the_answer_is_unchanged(short_runoff):
    """The digits CNN at max_drop 0.0002 (``quantize_with_accuracy_control``'s search: one
    finalist): once a small top-k meets the budget, the larger top-k candidates of the
    next generation are not validated; same trials, same answer as without skipping."""
    from pathlib import Path

    digits = Path(__file__).resolve().parents[2] / "examples" / "digits"
    runs = [
        rayq.search(
            str(digits / "digits_cnn.onnx"),
            str(digits / "calibration.npz"),
            str(digits / "validation.npz"),
            true_class_probability_items,
            max_drop=0.0002,
            num_workers=1,
            n_trials=None,
            explore=False,
            finalists=1,
            early_stop=es,
            subset_size=64,
        )
        for es in (True, False)
    ]
    skipping, whole = runs
    assert skipping.plan.key() == whole.plan.key() and skipping.status == whole.status
    f, g = skipping.trials, whole.trials
    assert f["plan_key"].tolist() == g["plan_key"].tolist()
    cheaper_feasible = g[g["feasible"] & g["int8"]]["cost"].min()
    skipped = f[f["early_stopped"] & (f["cost"] > cheaper_feasible)]
    assert len(skipped) >= 1
    if skipping.status == "met":  # not validated: no metric, every item saved; never the answer
        assert skipped["metric"].isna().all() and (skipped["validation_items_saved"] == 400).all()
        assert not skipped["chosen"].any()
    else:  # no_speedup (e.g. on a loaded machine): validated whole before the most accurate was chosen
        assert skipped["metric"].notna().all() and (skipped["validation_items_saved"] == 0).all()
