"""bench/harness.py: A/B pair alternation and medians, paired ratios, the interleaved
timing it borrows from rayq, environment fields, jobs and the results writer."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def harness():
    sys.path.insert(0, str(BENCH))  # bench/ scripts import it as a top-level package
    try:
        yield importlib.import_module("harness")
    finally:
        sys.path.remove(str(BENCH))


def test_alternate_swaps_the_order_every_pair_and_reports_medians(harness):
    calls = []
    values = {"a": iter([10.0, 12.0, 11.0]), "b": iter([5.0, 9.0, 4.0])}

    def side(name):
        def run():
            calls.append(name)
            return {"s": next(values[name])}

        return run

    seen = []
    pairs = harness.alternate(
        {"a": side("a"), "b": side("b")}, 3, value=lambda r: r["s"], on_result=lambda s, i, r: seen.append((s, i))
    )
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert pairs.order == calls and seen[:3] == [("a", 0), ("b", 0), ("b", 1)]
    assert pairs.values == {"a": [10.0, 12.0, 11.0], "b": [5.0, 9.0, 4.0]}
    assert pairs.median("a") == 11.0 and pairs.median("b") == 5.0
    assert pairs.ratios == pytest.approx([0.5, 0.75, 4 / 11])
    assert pairs.ratio_median == pytest.approx(0.5)  # median of per-pair ratios, not 5 / 11
    summary = pairs.summary(lambda r: r["s"] * 2)
    assert summary["a"] == 22.0 and summary["ratio_median"] == pytest.approx(0.5)
    d = pairs.to_dict()
    assert d["ratio"] == "b / a" and json.loads(json.dumps(d))["median"] == {"a": 11.0, "b": 5.0}


def test_paired_ratio_and_summarize(harness):
    assert harness.paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 1.0]) == 2.0
    assert harness.paired_ratio([], [1.0]) is None and harness.paired_ratio(None, [1.0]) is None
    s = harness.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s["median_ms"], s["min_ms"], s["runs"]) == (3.0, 1.0, 5)
    assert s["q1_ms"] <= s["median_ms"] <= s["q3_ms"]


def test_interleaved_latency_uses_rayqs_rotating_turns(harness):
    order = []
    runners = {name: (lambda feeds, n=name: order.append(n)) for name in ("x", "y", "z")}
    out = harness.interleaved_latency(runners, {}, runs=4, warmup=1, block=2)
    # ceil(4 / 2) = 2 rounds; each turn is 1 warm-up + 2 timed calls; round 2 starts with "y"
    assert order == ["x"] * 3 + ["y"] * 3 + ["z"] * 3 + ["y"] * 3 + ["z"] * 3 + ["x"] * 3
    for r in out.values():
        assert r["runs"] == 4 and len(r["times_ms"]) == 4 and len(r["rounds_ms"]) == 2
        assert r["min_ms"] <= r["median_ms"]


def test_parse_cpus_and_cpu_flags(harness):
    assert harness.parse_cpus("0-2,5") == [0, 1, 2, 5]
    assert harness.parse_cpus(None) == sorted(__import__("os").sched_getaffinity(0))
    text = (
        "processor : 0\nmodel name : Test CPU\nphysical id : 0\ncore id : 0\nflags : fpu avx2 avx512f "
        "avx512_vnni amx_tile\n\nprocessor : 1\nmodel name : Test CPU\nphysical id : 0\ncore id : 0\n"
        "flags : fpu avx2 avx512f avx512_vnni amx_tile\n"
    )
    info = harness.cpu_info(text)
    assert info["model"] == "Test CPU" and info["physical_cores"] == 1
    assert info["isa"]["avx512_vnni"] and info["isa"]["amx_tile"] and not info["isa"]["amx_int8"]
    assert info["isa_summary"] == "avx2 avx512f avx512_vnni amx_tile"


def test_environment_fields(harness):
    env = harness.environment(cpus="0")
    assert env["cpus_used"] == [0] and len(env["load_avg_before"]) == 3
    assert set(harness.VERSIONED) <= set(env["versions"]) and env["versions"]["numpy"]
    assert env["versions"]["rayq_path"] and env["cpu"]["logical_cpus"] >= 1
    assert "commit" in env["git"] and env["date"].endswith("UTC")
    assert "CPUs" in harness.describe(env)


def test_run_job_reads_the_result_line_and_reports_failures(harness, tmp_path):
    code = "import harness; print('noise'); harness.emit({'x': 1})"
    ok = harness.run_job([sys.executable, "-c", code], log=tmp_path / "ok.log", timeout=60)
    assert ok["result"] == {"x": 1} and ok["returncode"] == 0 and "error" not in ok
    assert ok["wall_s"] > 0 and ok["peak_rss_mb"] > 1
    bad = harness.run_job([sys.executable, "-c", "raise SystemExit(3)"], log=tmp_path / "bad.log", quiet=True)
    assert bad["error"] == "exit code 3" and bad["result"] is None
    slow = harness.run_job(
        [sys.executable, "-c", "import time; time.sleep(30)"], log=tmp_path / "slow.log", timeout=0.5, quiet=True
    )
    assert slow["timed_out"] and slow["error"] == "timed out" and slow["wall_s"] < 20


def test_write_results_keeps_only_the_latest_run(harness, tmp_path):
    out = tmp_path / "r" / "demo.json"
    env = {"cpu": {"model": "m"}}
    harness.write_results("demo", {"v": 1}, env=env, config={"p": Path("/x")}, out=out)
    harness.write_results("demo", {"v": 2}, env=env, markdown="| a |", out=out)
    data = json.loads(out.read_text())
    assert data["results"] == {"v": 2} and data["benchmark"] == "demo" and data["markdown"] == "| a |"
    assert len(data["environment"]["load_avg_after"]) == 3 and list(tmp_path.rglob("*.json")) == [out]


def test_output_path_never_puts_quick_runs_in_results(harness):
    import argparse

    ap = argparse.ArgumentParser()
    harness.add_common_args(ap)
    assert harness.output_path(ap.parse_args([]), "n") == harness.RESULTS / "n.json"
    assert harness.output_path(ap.parse_args(["--quick"]), "n") == harness.WORK / "quick" / "n.json"
    assert harness.output_path(ap.parse_args(["--out", "/tmp/o.json"]), "n") == Path("/tmp/o.json")
