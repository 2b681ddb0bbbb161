"""The measurement gate: a latency measurement never overlaps an evaluation started by
the same process (the concurrent searches of a sweep), and is not starved by them."""

from __future__ import annotations

import threading
import time

from rayq.pipeline.latency import MeasurementGate


def _spans(gate: MeasurementGate, plan: list[tuple[str, float, float]]) -> dict[str, tuple[float, float]]:
    """Run ``(name, start delay s, hold s)`` in threads; evaluations are named ``e*``,
    measurements ``m*``. Returns when each held the gate."""
    spans: dict[str, tuple[float, float]] = {}
    t0 = time.perf_counter()

    def run(name: str, delay: float, hold: float) -> None:
        time.sleep(delay)
        if name == "e3":  # arrives while both measurements wait (on a loaded machine sleeps alone may not order them)
            deadline = time.perf_counter() + 10
            while gate._waiting < 2 and time.perf_counter() < deadline:
                time.sleep(0.005)
        with gate.evaluating() if name.startswith("e") else gate.measuring():
            start = time.perf_counter() - t0
            time.sleep(hold)
            spans[name] = (start, time.perf_counter() - t0)

    threads = [threading.Thread(target=run, args=p) for p in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(spans) == len(plan)
    return spans


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_evaluations_overlap_but_measurements_run_alone():
    spans = _spans(
        MeasurementGate(), [("e1", 0, 0.3), ("e2", 0, 0.3), ("m1", 0.1, 0.1), ("m2", 0.1, 0.1), ("e3", 0.15, 0.1)]
    )
    assert _overlap(spans["e1"], spans["e2"])  # evaluations run together
    for m in ("m1", "m2"):
        assert all(not _overlap(spans[m], spans[o]) for o in spans if o != m), spans
    # the waiting measurements went before e3, which arrived while they waited
    assert spans["m1"][1] <= spans["e3"][0] and spans["m2"][1] <= spans["e3"][0]


def test_pools_take_the_gate(monkeypatch):
    """Both evaluator pools measure under the process gate and evaluate under its shared side."""
    from rayq.pipeline import candidate

    seen = []

    class Recorder(MeasurementGate):
        def evaluating(self):
            seen.append("evaluating")
            return super().evaluating()

        def measuring(self):
            seen.append("measuring")
            return super().measuring()

    class Ev:
        def fp32_metric(self, indices):
            return "metric"

        def latency(self, plan):
            return "latency"

        def compare_latency(self, plans):
            return ["latency"] * len(plans)

    monkeypatch.setattr(candidate, "GATE", Recorder())
    pool = candidate.LocalEvaluatorPool(Ev())
    assert pool.map_metric([None]) == ["metric"] and pool.map_latency([None]) == ["latency"]
    assert pool.compare_latency([None, None]) == ["latency", "latency"]
    assert seen == ["evaluating", "measuring", "measuring"]
