"""Search driver tests with real Optuna studies and a fake, pure-Python evaluator."""

from __future__ import annotations

import math
import time

import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from optuna.trial import TrialState

from rayq.core.plan import QuantPlan
from rayq.errors import ConfigError, SearchError
from rayq.tuning import (
    DriverOutcome,
    EvalResult,
    Evaluator,
    SearchDriver,
    SearchSpace,
    TrialRecord,
    open_storage,
    plot_pareto,
    tables,
)
from rayq.tuning.sampling import TrialSeededSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

RANKING = tuple(f"g{i}" for i in range(10))  # g0 most harmful
HARM = {g: 0.02 / (i + 1) for i, g in enumerate(RANKING)}
EST_PENALTY = {"minmax": 0.006, "mean_minmax": 0.002, "quantile": 0.0, "histogram_mse": 0.001}
BIAS_PENALTY = {"fast": 0.001, "exact": 0.0, "none": 0.004}
FP32 = 0.8
MAX_DROP = 0.01
BASE = QuantPlan()
SPACE = SearchSpace(ranking=RANKING)


def fake_drop(plan: QuantPlan) -> float:
    drop = sum(h for g, h in HARM.items() if g not in plan.fallback)
    drop += EST_PENALTY[plan.activation_estimator] + BIAS_PENALTY[plan.bias_correction]
    return drop - (0.002 if plan.preset == "mixed" else 0.0)


def fake_latency(plan: QuantPlan) -> float:
    mixed = 0.8 if plan.preset == "mixed" else 0.0
    return 10.0 + 0.5 * len(plan.fallback) + mixed + (0.3 if plan.bias_correction == "exact" else 0.0)


class FakeEvaluator:
    """Deterministic metric/latency per plan; records every plan it evaluates."""

    def __init__(self, *, reverse: bool = False, fail=None) -> None:
        self.reverse = reverse  # the "2-worker" variant evaluates in another order
        self.fail = fail or (lambda plan: None)
        self.calls: list[list[str]] = []

    @property
    def evaluated(self) -> list[str]:
        return [key for call in self.calls for key in call]

    def _one(self, plan: QuantPlan) -> EvalResult:
        try:
            problem = self.fail(plan)
            if problem == "nan":
                return EvalResult(plan.key(), math.nan, math.nan, fake_latency(plan), 0.1, "ok")
            if problem:
                raise RuntimeError(problem)
        except RuntimeError as exc:
            return EvalResult.failure(plan, f"validation raised RuntimeError: {exc}")
        drop = fake_drop(plan)
        return EvalResult(
            plan.key(), FP32 - drop, drop, fake_latency(plan), 0.05, "ok", eval_seconds=0.01, fp32_latency_ms=20.0
        )

    def evaluate(self, plans):
        self.calls.append([p.key() for p in plans])
        order = list(reversed(range(len(plans)))) if self.reverse else list(range(len(plans)))
        results = {i: self._one(plans[i]) for i in order}
        return [results[i] for i in range(len(plans))]


class CrashingEvaluator(FakeEvaluator):
    """Raises KeyboardInterrupt on the ``crash_on``-th call (1-based)."""

    def __init__(self, crash_on: int) -> None:
        super().__init__()
        self.crash_on = crash_on

    def evaluate(self, plans):
        if len(self.calls) + 1 == self.crash_on:
            self.calls.append([])
            raise KeyboardInterrupt("simulated Ctrl-C")
        return super().evaluate(plans)


def driver(evaluator, **kwargs) -> SearchDriver:
    kwargs.setdefault("max_drop", MAX_DROP)
    kwargs.setdefault("n_trials", 12)
    kwargs.setdefault("seed", 7)
    return SearchDriver(kwargs.pop("space", SPACE), BASE, evaluator, **kwargs)


def test_fake_is_an_evaluator():
    assert isinstance(FakeEvaluator(), Evaluator)


def test_best_is_cheapest_feasible_int8_plan_and_the_sampler_never_sees_latency():
    seeds = [BASE.with_fallback(RANKING[:k]) for k in (10, 7, 6)]
    outcome = driver(FakeEvaluator(), n_trials=24).run(seeds)
    assert outcome.status == "met"
    feasible = [r for r in outcome.records if r.feasible and len(r.plan.fallback) < len(RANKING)]
    assert outcome.best.feasible and len(outcome.best.plan.fallback) < len(RANKING)  # never all-FP32
    from rayq.tuning.selection import tie_key

    cheapest = min(feasible, key=lambda r: (r.cost, tie_key(r.plan, BASE)))
    assert outcome.best.plan == cheapest.plan
    assert fake_drop(outcome.best.plan) <= MAX_DROP
    assert len(outcome.records) == 24
    # the objective told to Optuna is the deterministic cost (share of layers in FP32)
    for r in outcome.records:
        assert r.cost == len(r.plan.fallback) / len(RANKING)


def test_same_best_with_one_and_two_workers():
    one = driver(FakeEvaluator(), n_trials=16, seed=3).run()
    two = driver(FakeEvaluator(reverse=True), n_trials=16, seed=3).run()
    assert one.best.plan == two.best.plan and one.best.number == two.best.number
    assert [r.plan for r in one.records] == [r.plan for r in two.records]


def test_generation_is_one_evaluate_call():
    fake = FakeEvaluator()
    driver(fake, n_trials=10, generation_size=4).run()
    assert len(fake.calls) == 3  # 4 + 4 + 2 trials
    assert all(len(c) <= 4 for c in fake.calls)


def test_resume_from_journal_does_not_reevaluate(tmp_path):
    storage = tmp_path / "study.log"
    first_fake = FakeEvaluator()
    first = driver(first_fake, n_trials=6, storage=storage, study_name="s").run()
    assert len(first.records) == 6
    fake = FakeEvaluator()
    second = driver(fake, n_trials=10, storage=str(storage), study_name="s").run()
    assert [r.number for r in second.records] == list(range(10))
    assert second.records[:6] == first.records
    assert {r.fp32_latency_ms for r in second.records if r.status == "ok"} == {20.0}  # persisted, reused
    new = second.records[6:]
    assert len(fake.evaluated) == sum(not r.reused for r in new) <= 4
    assert not set(fake.evaluated) & set(first_fake.evaluated)
    # nothing left to do: a third run evaluates nothing
    third_fake = FakeEvaluator()
    third = driver(third_fake, n_trials=10, storage=storage, study_name="s").run()
    assert third_fake.calls == [] and third.records == second.records


def _states(storage, name) -> list:
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    return [t.state for t in study.get_trials()]


def test_crash_then_resume(tmp_path):
    storage = tmp_path / "crash.journal"
    crashing = CrashingEvaluator(crash_on=3)
    with pytest.raises(KeyboardInterrupt):
        driver(crashing, n_trials=16, generation_size=4, storage=storage, study_name="c").run()
    study = optuna.load_study(study_name="c", storage=open_storage(storage))
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE] * 8 + [TrialState.RUNNING] * 4  # in flight: left running
    in_flight = [t.user_attrs["plan_key"] for t in study.get_trials()[8:]]
    fake = FakeEvaluator()
    outcome = driver(fake, n_trials=16, generation_size=4, storage=storage, study_name="c").run()
    assert not set(fake.evaluated) & set(crashing.evaluated)
    assert fake.calls[0] == list(dict.fromkeys(k for k in in_flight if k not in crashing.evaluated))
    assert [r.number for r in outcome.records] == list(range(16))  # one record per trial, same numbers
    assert _states(storage, "c") == [TrialState.COMPLETE] * 16
    whole = driver(FakeEvaluator(), n_trials=16, generation_size=4).run()
    assert [r.plan for r in outcome.records] == [r.plan for r in whole.records]


def test_trial_left_half_suggested_is_taken_over_with_its_draws(tmp_path):
    """A driver killed between two suggestions of a trial: the rerun draws the rest as it would have."""
    storage = tmp_path / "kill.log"
    driver(FakeEvaluator(), n_trials=4, storage=storage, study_name="k").run()
    study = optuna.create_study(
        study_name="k", storage=open_storage(storage), load_if_exists=True, sampler=TrialSeededSampler("tpe", 7)
    )
    study.ask().suggest_categorical("preset", list(SPACE.presets))  # then the driver died
    fake = FakeEvaluator()
    outcome = driver(fake, n_trials=8, storage=storage, study_name="k").run()
    assert [r.number for r in outcome.records] == list(range(8))
    assert _states(storage, "k") == [TrialState.COMPLETE] * 8
    whole = driver(FakeEvaluator(), n_trials=8).run()
    assert [r.plan for r in outcome.records] == [r.plan for r in whole.records]


def test_seeds_beyond_n_trials_are_not_enqueued():
    seeds = [BASE.with_fallback(RANKING[:k]) for k in (10, 8, 6, 4)]
    d = driver(FakeEvaluator(), n_trials=2)
    outcome = d.run(seeds)
    assert [r.plan for r in outcome.records] == seeds[:2]
    study = optuna.load_study(study_name=d.study_name, storage=d._storage)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2  # nothing left waiting


def test_a_smaller_budget_reads_the_first_trials_and_stray_ones_are_discarded(tmp_path):
    storage = tmp_path / "d.log"
    crashing = CrashingEvaluator(crash_on=2)
    with pytest.raises(KeyboardInterrupt):
        driver(crashing, n_trials=8, storage=storage, study_name="d").run()
    small = driver(FakeEvaluator(), n_trials=2, storage=storage, study_name="d")
    outcome = small.run([BASE.with_fallback(RANKING[:9])])
    assert [r.number for r in outcome.records] == [0, 1]
    assert small.discard_pending() == [4, 5, 6, 7]
    assert _states(storage, "d") == [TrialState.COMPLETE] * 4 + [TrialState.FAIL] * 4
    again = driver(FakeEvaluator(), n_trials=6, storage=storage, study_name="d").run()
    assert [r.number for r in again.records] == [0, 1, 2, 3, 8, 9]  # discarded trials never count


def test_failed_evaluations_are_recorded_and_search_goes_on():
    def fail(plan):
        if plan.activation_estimator == "minmax":
            return "boom"
        return "nan" if plan.bias_correction == "none" else None

    seeds = [
        BASE.with_fallback(RANKING[:8]),
        QuantPlan(activation_estimator="minmax"),
        QuantPlan(bias_correction="none", fallback=RANKING[:1]),
    ]
    outcome = driver(FakeEvaluator(fail=fail), n_trials=16).run(seeds)
    failed = [r for r in outcome.records if r.status == "failed"]
    assert {r.number for r in failed} >= {1, 2}
    by_number = {r.number: r for r in outcome.records}
    assert "boom" in by_number[1].error and by_number[1].metric is None
    assert "finite metric, drop" in by_number[2].error
    assert len(outcome.records) == 16 and not any(r.feasible for r in failed)
    assert outcome.status == "met" and outcome.best.status == "ok"
    frame = outcome.trials_frame()
    assert frame.loc[frame["number"] == 1, "error"].item() == by_number[1].error


def test_budget_not_met_reports_smallest_drop():
    space = SearchSpace(ranking=RANKING, max_fallback=2)
    outcome = driver(FakeEvaluator(), n_trials=8, space=space).run()
    assert outcome.status == "budget not met"
    ok = [r for r in outcome.records if r.status == "ok"]
    assert outcome.best.drop == min(r.drop for r in ok) and not outcome.best.feasible


def test_budget_not_met_when_everything_fails():
    outcome = driver(FakeEvaluator(fail=lambda p: "always"), n_trials=4).run()
    assert outcome.status == "budget not met" and outcome.best is None
    assert all(r.status == "failed" for r in outcome.records)


def test_seeds_are_evaluated_first_and_deduplicated():
    seeds = [
        BASE.with_fallback(RANKING[:10]),
        BASE.with_fallback(RANKING[:6]),
        BASE.with_fallback(RANKING[:6]),
        BASE.with_fallback(("g0", "g2")),
    ]  # -> top-3
    fake = FakeEvaluator()
    outcome = driver(fake, n_trials=8, generation_size=4).run(seeds)
    expected = [BASE.with_fallback(RANKING[:k]) for k in (10, 6, 3)]
    assert fake.calls[0][:3] == [p.key() for p in expected]
    assert [r.source for r in outcome.records[:4]] == ["seed", "seed", "seed", "sampler"]
    assert [r.plan for r in outcome.records[:3]] == expected


def test_duplicate_plans_are_reused_not_reevaluated():
    space = SearchSpace(
        presets=("performance",), estimators=("quantile",), bias_corrections=("fast",), ranking=("g0", "g1")
    )
    fake = FakeEvaluator()
    outcome = driver(fake, n_trials=10, space=space).run()
    assert len(fake.evaluated) == len(set(fake.evaluated)) <= 3
    assert len(outcome.records) == 10 and sum(r.reused for r in outcome.records) >= 7
    for r in outcome.records:
        assert r.latency_ms == fake_latency(r.plan)


def test_on_trial_and_nsga2():
    seen = []
    outcome = driver(FakeEvaluator(), n_trials=12, sampler="nsga2", on_trial=seen.append).run()
    assert [r.number for r in seen] == list(range(12)) and seen == outcome.records
    assert outcome.best is not None


def test_resuming_with_another_budget_is_refused(tmp_path):
    storage = tmp_path / "b.log"
    driver(FakeEvaluator(), n_trials=2, storage=storage, study_name="b").run()
    with pytest.raises(ConfigError, match="max_drop"):
        driver(FakeEvaluator(), n_trials=4, storage=storage, study_name="b", max_drop=0.02).run()


def test_evaluator_breaking_its_contract():
    class Short(FakeEvaluator):
        def evaluate(self, plans):
            return super().evaluate(plans)[:-1]

    with pytest.raises(SearchError, match="result"):
        driver(Short(), n_trials=4).run()


def test_rdb_storage_and_bad_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    first = driver(FakeEvaluator(), n_trials=4, storage=url, study_name="r").run()
    fake = FakeEvaluator()
    second = driver(fake, n_trials=4, storage=url, study_name="r").run()
    assert fake.calls == [] and second.records == first.records
    with pytest.raises(ConfigError):
        open_storage(str(tmp_path / "study.txt"))


def test_bad_arguments():
    with pytest.raises(ConfigError):
        driver(FakeEvaluator(), sampler="cmaes")
    with pytest.raises(ConfigError):
        driver(FakeEvaluator(), max_drop=-0.1)
    with pytest.raises(ConfigError):
        driver(FakeEvaluator(), generation_size=0)


def _rec(number, latency, metric, status="ok"):
    drop = FP32 - metric
    return TrialRecord(
        number,
        BASE.with_fallback(RANKING[:number]),
        metric,
        drop,
        latency,
        0.1,
        status,
        None if status == "ok" else "x",
        drop <= MAX_DROP,
        "sampler",
    )


def test_pareto_on_a_hand_made_example():
    records = [
        _rec(0, 10.0, 0.70),  # fastest: on the front
        _rec(1, 11.0, 0.70),  # dominated by 0
        _rec(2, 12.0, 0.78),  # on the front
        _rec(3, 12.0, 0.75),  # dominated by 2 (same latency, lower metric)
        _rec(4, 13.0, 0.79),  # on the front
        _rec(5, 13.0, 0.79),  # exact duplicate of 4: lowest number kept
        _rec(6, 9.0, 0.99, status="failed"),  # failed trials never count
        _rec(7, 15.0, 0.78),  # dominated by 2
    ]
    front = DriverOutcome(None, "met", records).pareto()
    assert front["number"].tolist() == [0, 2, 4]
    assert front["latency_ms"].is_monotonic_increasing and front["metric"].is_monotonic_increasing


def test_trials_frame_round_trips_through_parquet(tmp_path):
    plan = QuantPlan(model_type="transformer", smooth_quant_alpha=0.5, fallback=("g1", "g0"))
    records = [
        _rec(0, 10.0, 0.70),
        _rec(1, 9.0, 0.79, status="failed"),
        TrialRecord(2, plan, 0.79, 0.01, 12.0, None, "ok", None, True, "seed", reused=True),
    ]
    outcome = driver(FakeEvaluator(fail=lambda p: "boom" if p.preset == "mixed" else None), n_trials=6).run()
    for frame in (
        DriverOutcome(None, "met", records).trials_frame(),
        outcome.trials_frame(),
        DriverOutcome(None, "budget not met", []).trials_frame(),
    ):
        tables.write_parquet(frame, tmp_path / "t.parquet")
        back = tables.read_parquet((tmp_path / "t.parquet").read_bytes())
        pd.testing.assert_frame_equal(back, frame, check_dtype=len(frame) > 0)
        schema = pq.read_schema(tmp_path / "t.parquet")
        fallback = schema.field("fallback").type
        assert pa.types.is_list(fallback) and fallback.value_type == pa.string()
        assert pa.types.is_struct(schema.field("ignored_scope").type)
        assert pa.types.is_struct(schema.field("plan").type)
        for name in ("error", "model_type", "status", "preset"):  # never Arrow's null type
            assert schema.field(name).type == pa.string(), name
        assert "plan_json" not in schema.names
    frame = DriverOutcome(None, "met", records).trials_frame()
    assert frame.loc[2, "fallback"] == ["g0", "g1"] and frame.loc[2, "smooth_quant_alpha"] == 0.5
    assert tables.plan_of(frame.loc[2]) == plan
    tables.write_parquet(outcome.trials_frame(), tmp_path / "o.parquet")
    back = tables.read_parquet((tmp_path / "o.parquet").read_bytes())
    assert [tables.plan_of(row) for _, row in back.iterrows()] == [r.plan for r in outcome.records]
    assert {"preset", "activation_estimator", "bias_correction", "latency_spread_ms", "feasible"} <= set(frame)


def test_plot_pareto_writes_png(tmp_path):
    outcome = driver(FakeEvaluator(), n_trials=8).run()
    path = tmp_path / "pareto.png"
    fig = plot_pareto(outcome.trials_frame(), outcome.pareto(), max_drop=MAX_DROP, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes[0].lines) >= 2  # front + budget line (FP32 recovered from the frame)


def test_space_round_trip_and_covering_k():
    space = SearchSpace(smooth_quant_alphas=(None, 0.5), ranking=RANKING, max_fallback=6)
    plan = QuantPlan(preset="mixed", activation_estimator="quantile", smooth_quant_alpha=0.5, fallback=RANKING[:4])
    params = space.to_params(plan)
    assert params == {
        "preset": "mixed",
        "activation_estimator": "quantile",
        "bias_correction": "fast",
        "smooth_quant_alpha": 0.5,
        "k": 4,
    }
    assert space.from_params(params, BASE) == plan
    assert space.to_params(QuantPlan(fallback=("g3",)))["k"] == 4
    with pytest.raises(ConfigError):
        space.to_params(QuantPlan(fallback=("g7",)))  # needs k=8 > max_fallback
    with pytest.raises(ConfigError):
        space.to_params(QuantPlan(fallback=("nope",)))
    with pytest.raises(ConfigError):
        SearchSpace(presets=("fast",))
    with pytest.raises(ConfigError):
        SearchSpace(ranking=("a",), max_fallback=2)


def test_a_journal_torn_by_a_kill_while_writing_is_repaired(tmp_path):
    storage = tmp_path / "torn.journal"
    first = driver(FakeEvaluator(), n_trials=4, storage=storage, study_name="t").run()
    with open(storage, "a", encoding="utf-8") as f:
        f.write('{"op_code":4,"worker_id":"x","study_id":0,"datetime_st')  # killed mid-append
    second = driver(FakeEvaluator(), n_trials=6, storage=storage, study_name="t").run()
    assert second.records[:4] == first.records and len(second.records) == 6
    assert storage.read_text().endswith("\n")
    assert len(optuna.load_study(study_name="t", storage=open_storage(storage)).trials) == 6


def test_a_lock_left_by_a_killed_driver_does_not_stall_the_next(tmp_path):
    storage = tmp_path / "locked.journal"
    driver(FakeEvaluator(), n_trials=2, storage=storage, study_name="l").run()
    (tmp_path / "locked.journal.lock").symlink_to(storage)  # what a kill during an append leaves
    started = time.monotonic()
    outcome = driver(FakeEvaluator(), n_trials=4, storage=storage, study_name="l").run()
    assert len(outcome.records) == 4 and time.monotonic() - started < 20  # Optuna alone waits 30 s
    assert not (tmp_path / "locked.journal.lock").exists()
