"""Exact resume, killed at any moment: real Optuna journal storages cut after each of
their operations (what ``kill -9`` of the driver leaves), then the search run again.

The journal backend keeps its lines in memory (JSON, as a file would) so that dozens
of cuts take seconds; tests/e2e/test_search_resume.py does the same with a journal
file and a real ``rayq search`` process killed twice.
"""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import TrialState

from rayq.pipeline.candidate import CandidateMetric
from rayq.pipeline.latency import Latency
from rayq.tuning import SearchSpace
from rayq.tuning.control import RANKING_ATTR, AccuracyControl, SearchSettings
from rayq.tuning.sensitivity import decode_ranking

from .test_driver import BASE, FP32, RANKING, FakeEvaluator, driver, fake_drop, fake_latency

optuna.logging.set_verbosity(optuna.logging.ERROR)

OPS = tuple(reversed(RANKING))  # graph order: the ranking (g0 most harmful) reverses it


class MemoryJournal(BaseJournalBackend):
    """An Optuna journal backend holding its JSON lines in a list."""

    def __init__(self, lines: list[str] | None = None) -> None:
        self.lines = list(lines or [])

    def read_logs(self, log_number_from: int):
        return [json.loads(line) for line in self.lines[log_number_from:]]

    def append_logs(self, logs) -> None:
        self.lines.extend(json.dumps(log) for log in logs)

    def cut(self, n: int) -> optuna.storages.JournalStorage:
        """A storage holding this journal's first ``n`` operations."""
        return optuna.storages.JournalStorage(MemoryJournal(self.lines[:n]))


def states(storage, name="s") -> list[TrialState]:
    return [t.state for t in optuna.load_study(study_name=name, storage=storage).get_trials()]


class FakePool:
    """A deterministic evaluator pool: metric and latency by plan, output error by fallback."""

    size = 2

    def __init__(self) -> None:
        self.timed: list[list[str]] = []  # compare_latency calls (trial generations, then the runoff)
        self.scored = 0  # output errors computed (the ranking)

    def map_metric(self, plans, indices=None):
        return [
            CandidateMetric("fp32" if p is None else p.key(), FP32 if p is None else FP32 - fake_drop(p), None, 0.01)
            for p in plans
        ]

    def map_output_error(self, plans):
        self.scored += len(plans)
        return [sum(0.02 / (i + 1) for i, g in enumerate(RANKING) if g not in p.fallback) for p in plans]

    def compare_latency(self, plans):
        self.timed.append([p.key() for p in plans if p is not None])
        return [Latency(20.0 if p is None else fake_latency(p), 0.0, 0.0, 5, "onnxruntime", 1) for p in plans]

    map_latency = compare_latency


def search(storage, n_trials=14, pool=None):
    settings = SearchSettings(max_drop=0.01, n_trials=n_trials, seed=5, storage=storage, study_name="s")
    control = AccuracyControl(pool or FakePool(), BASE, OPS, SearchSpace(ranking=OPS), settings)
    best, _status, records = control.run()
    return best, records, control


def test_n_trials_is_the_total_seeds_and_candidates_included():
    for n in (1, 2, 4, 7):
        journal = MemoryJournal()
        _, records, _ = search(optuna.storages.JournalStorage(journal), n_trials=n)
        assert [r.number for r in records] == list(range(n))
        assert states(optuna.storages.JournalStorage(journal)) == [TrialState.COMPLETE] * n


def test_ranking_is_persisted_with_its_scores():
    journal = MemoryJournal()
    _, _, control = search(optuna.storages.JournalStorage(journal))
    stored = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(journal)).user_attrs
    order, scores, basis = decode_ranking(stored[RANKING_ATTR])
    assert order == list(RANKING) == control.ranking
    assert scores["g0"] == pytest.approx(0.02)
    assert basis == "output_error"


def test_killed_at_any_moment_the_search_resumes_to_the_same_answer(monkeypatch):
    from rayq.tuning import control as control_mod

    choose, runoff_from = control_mod.selection.choose, []

    def marked_choose(records, compare_latency, **kwargs):  # the final choice's timings are no trials
        runoff_from.append(len(compare_latency.__self__.timed))
        return choose(records, compare_latency, **kwargs)

    monkeypatch.setattr(control_mod.selection, "choose", marked_choose)
    journal = MemoryJournal()
    best, records, _ = search(optuna.storages.JournalStorage(journal))
    assert len(records) == 14 and {r.source for r in records} == {"seed", "sampler"}
    ranked_at = next(i for i, line in enumerate(journal.lines) if RANKING_ATTR in line) + 1
    cuts = sorted({*range(1, len(journal.lines), 4), ranked_at, ranked_at + 1})
    for cut in cuts:
        storage = journal.cut(cut)
        finished = {
            t.number: t.user_attrs.get("plan_key")
            for t in optuna.load_study(study_name="s", storage=storage).get_trials(
                states=(TrialState.COMPLETE, TrialState.FAIL)
            )
        }
        pool = FakePool()
        again, resumed, _ = search(storage, pool=pool)
        where = f"cut after {cut} of {len(journal.lines)} operations"
        assert resumed == records and again.plan == best.plan, where
        assert states(storage) == [TrialState.COMPLETE] * 14, where  # nothing waiting or running
        evaluated = [key for call in pool.timed[: runoff_from[-1]] for key in call]
        redo = {r.plan.key() for r in records if r.number not in finished} - set(finished.values())
        assert len(evaluated) == len(set(evaluated)) and set(evaluated) == redo, where
        assert (pool.scored == 0) == (cut >= ranked_at), where  # a stored ranking is never recomputed


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_killed_driver_resumes_to_the_same_study(sampler):
    seeds = [BASE.with_fallback(RANKING[:k]) for k in (10, 6, 3)]
    kwargs = dict(n_trials=11, generation_size=4, study_name="s", sampler=sampler)
    journal = MemoryJournal()
    whole = driver(FakeEvaluator(), storage=optuna.storages.JournalStorage(journal), **kwargs).run(seeds)
    for cut in range(1, len(journal.lines), 3):
        storage = journal.cut(cut)
        fake = FakeEvaluator()
        resumed = driver(fake, storage=storage, **kwargs).run(seeds)
        assert resumed.records == whole.records, f"cut after {cut} of {len(journal.lines)} operations"
        assert states(storage) == [TrialState.COMPLETE] * 11
        assert len(fake.evaluated) == len(set(fake.evaluated))
