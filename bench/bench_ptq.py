"""rayq vs NNCF post-training INT8 quantization, side by side on one machine.

    python bench/bench_ptq.py [--models resnet50,minilm] [--backends onnx,openvino]
                              [--samples 300] [--runs 100] [--threads 2] [--rayq-commit HEAD]
    python bench/bench_ptq.py --quick          # ResNet-50 ONNX, 8 items: checks the entry point

For every (model, backend) row, on the same cores and the same calibration items:

1. quantize with NNCF, with rayq's default (``num_workers=None``) and with rayq in-process
   (``num_workers=1``); each in a fresh pinned process (``ptq_jobs.py quantize``: imports
   and Ray start-up are paid every time), rayq with ``cache=False``. The timed region is
   the ``quantize`` call (ONNX backend: plus ``onnx.load`` for NNCF, since rayq is given
   the path); imports and saving are recorded apart. ``--quant-repeats R`` repeats the
   three (interleaved) and keeps the medians.
2. measure, in one fresh process per row (``ptq_jobs.py measure``, see its docstring):
   batch-1 latency of FP32, NNCF INT8 and rayq INT8 timed against each other with rayq's
   interleaved timing, on ONNX Runtime (ONNX rows) and OpenVINO (both rows; OpenVINO
   reads the QDQ ONNX files), and the output error of each INT8 model vs FP32 on
   held-out inputs (NMSE; cosine for MiniLM).
3. report ratios rayq/NNCF with PASS/MISS against the targets: quantize time <= 0.5x,
   INT8 latency <= 1.0x on every runtime, NMSE <= 1.5x (``bench/results/ptq.json``, the
   Markdown table in it and on stdout).

Models: ``resnet50`` (``rayq.testing.models.resnet50_like``, random weights, random
normal calibration images, seed 0, held-out seed 1) and ``minilm`` (all-MiniLM-L6-v2,
exported by ``bench/export_minilm.py``, ``model_type="transformer"`` for both tools).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import harness

BENCH = harness.BENCH
JOBS = BENCH / "ptq_jobs.py"
VARIANTS = (("nncf", "nncf", None), ("rayq_ray", "rayq", "ray"), ("rayq_inproc", "rayq", "1"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    harness.add_common_args(ap)
    ap.add_argument("--models", default="resnet50,minilm")
    ap.add_argument("--backends", default="onnx,openvino")
    ap.add_argument("--samples", type=int, default=300, help="calibration items (subset_size)")
    ap.add_argument("--heldout", type=int, default=50, help="held-out inputs for the output error")
    ap.add_argument("--runs", type=int, default=30, help="timed latency calls per model (>= 30)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed calls per model and turn")
    ap.add_argument("--threads", type=int, default=2, help="runtime threads for latency")
    ap.add_argument("--quant-repeats", type=int, default=1, help="fresh-process repeats per quantize")
    ap.add_argument(
        "--steps",
        default="prepare,quantize,measure,report",
        help="subset of prepare,quantize,measure,report (reuses earlier results)",
    )
    ap.add_argument("--work", type=Path, default=None, help="models, logs (default bench/.cache/ptq)")
    ap.add_argument(
        "--rayq-commit",
        default=None,
        metavar="REF",
        help="benchmark rayq as committed at REF (git archive, first on PYTHONPATH) instead of "
        "the working tree, so concurrent edits cannot change it mid-run",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-run a failed quantize job this many times (failures are kept in the JSON)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.backends, args.samples, args.heldout, args.runs, args.warmup = "resnet50", "onnx", 8, 4, 10, 2
    elif args.runs < 30:
        ap.error("--runs must be >= 30")
    args.work = (args.work or harness.WORK / ("quick/ptq" if args.quick else "ptq")).resolve()
    args.cpu_list = harness.parse_cpus(args.cpus)
    return args


def run_job(args: argparse.Namespace, job: str, log_name: str, extra: list[str]) -> dict:
    """One ``ptq_jobs.py`` job in a fresh pinned process: its result, plus process figures."""
    cmd = [
        sys.executable,
        str(JOBS),
        job,
        "--work",
        str(args.work),
        "--samples",
        str(args.samples),
        "--heldout",
        str(args.heldout),
        *extra,
    ]
    res = harness.run_job(
        cmd,
        log=args.work / "logs" / f"{log_name}.log",
        timeout=args.job_timeout,
        cpus=args.cpu_list,
        env=args.env,
        cwd=args.tree,
    )
    if "error" in res:
        return {k: res[k] for k in ("error", "log", "log_tail")} | {"process_s": res["wall_s"]}
    # CPU seconds of the job and of the descendants it reaped (Ray workers are not
    # reaped by the driver, so for rayq with Ray this is a lower bound).
    return {
        **res["result"],
        "process_s": res["wall_s"],
        "process_cpu_s": res["cpu_s"],
        "process_peak_rss_mb": res["peak_rss_mb"],
        "load1": [res["load1_before"], res["load1_after"]],
        "log": res["log"],
    }


def quantize_row(args: argparse.Namespace, model: str, backend: str) -> dict[str, dict]:
    """Every variant ``--quant-repeats`` times, interleaved; the median quantize time."""
    from ptq_jobs import output_path

    runs: dict[str, list[dict]] = {v: [] for v, _, _ in VARIANTS}
    for rep in range(args.quant_repeats):
        for variant, tool, workers in VARIANTS:
            out = output_path(args.work, model, backend, variant)
            extra = ["--model", model, "--backend", backend, "--tool", tool, "--out", str(out)]
            extra += ["--workers", workers] if workers else []
            name = f"quantize_{model}_{backend}_{variant}_{rep}"
            res, failures = run_job(args, "quantize", name, extra), []
            for attempt in range(1, args.retries + 1):
                if "error" not in res:
                    break
                failures.append({k: res.get(k) for k in ("error", "log", "log_tail")})
                print(f"  retrying {variant} (attempt {attempt + 1}) after: {res['error']}", flush=True)
                res = run_job(args, "quantize", f"{name}_retry{attempt}", extra)
            if failures:
                res["failed_attempts"] = failures
            shown = f"{res['quantize_s']:.1f}s (process {res['process_s']:.1f}s)" if "error" not in res else "FAILED"
            print(f"  quantize {model:8s} {backend:8s} {variant:12s} run {rep + 1}: {shown}", flush=True)
            runs[variant].append(res)
    return {variant: _median_run(args, model, backend, variant, results) for variant, results in runs.items()}


def _median_run(args, model: str, backend: str, variant: str, results: list[dict]) -> dict:
    from ptq_jobs import output_path

    ok = [r for r in results if "error" not in r]
    best = dict(ok[0]) if ok else dict(results[0])
    if ok:
        for key in ("quantize_s", "import_s", "process_s", "process_cpu_s"):
            if all(key in r for r in ok):
                best[key] = statistics.median(r[key] for r in ok)
        best["quantize_s_all"] = [r["quantize_s"] for r in ok]
    else:
        output_path(args.work, model, backend, variant).unlink(missing_ok=True)
    best["failures"] = [f for r in results for f in r.get("failed_attempts", [])] + [
        {k: r.get(k) for k in ("error", "log", "log_tail")} for r in results if "error" in r
    ]
    return best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.tree = harness.checkout(args.rayq_commit, args.work / "trees") if args.rayq_commit else harness.REPO
    args.env = harness.job_env(args.tree)
    source = f"git archive of {args.rayq_commit} ({args.tree.name})" if args.rayq_commit else "working tree"
    env = harness.environment(cpus=args.cpu_list, env=args.env, rayq_source=source)
    models = [m for m in args.models.split(",") if m]
    backends = [b for b in args.backends.split(",") if b]
    steps = set(args.steps.split(","))
    state_path = args.work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"rows": {}}
    for model in models if "prepare" in steps else ():
        print(f"prepare {model}", flush=True)
        res = run_job(args, "prepare", f"prepare_{model}", ["--model", model])
        if "error" in res:
            print("\n".join(res["log_tail"]))
            return 1
    for model in models:
        for backend in backends:
            row = state["rows"].setdefault(f"{model}/{backend}", {})
            if "quantize" in steps:
                row["quantize"] = quantize_row(args, model, backend)
                state_path.write_text(json.dumps(state, indent=2))
            if "measure" in steps:
                print(f"  measure  {model:8s} {backend:8s} ({args.runs} interleaved runs)", flush=True)
                row["measure"] = run_job(
                    args,
                    "measure",
                    f"measure_{model}_{backend}",
                    [
                        "--model",
                        model,
                        "--backend",
                        backend,
                        "--threads",
                        str(args.threads),
                        "--runs",
                        str(args.runs),
                        "--warmup",
                        str(args.warmup),
                    ],
                )
                state_path.write_text(json.dumps(state, indent=2))
    if "report" not in steps:
        return 0
    rows = {k: v for k, v in state["rows"].items() if k.split("/")[0] in models and k.split("/")[1] in backends}
    report = build(rows)
    config = {k: v for k, v in vars(args).items() if k not in ("env", "tree")}
    harness.write_results(
        "ptq",
        report,
        env=env,
        config=config,
        markdown=markdown(report, env, args.threads),
        out=harness.output_path(args, "ptq"),
    )
    return 0


# ------------------------------------------------------------------------------ report (pure functions)

TARGETS = {"quantize": 0.5, "latency": 1.0, "nmse": 1.5}
LABELS = {"nncf": "NNCF", "rayq_ray": "rayq (Ray, num_workers=None)", "rayq_inproc": "rayq (in-process, num_workers=1)"}


def _ratio(num, den):
    if num is None or den is None or den == 0:
        return None
    return num / den


def _verdict(ratio, target):
    if ratio is None:
        return "n/a"
    return "PASS" if ratio <= target else "MISS"


def _rayq_primary(measure: dict) -> str | None:
    lv = measure.get("latency_variants", [])
    return next((v for v in ("rayq_ray", "rayq_inproc") if v in lv), None)


def row_figures(row: dict) -> dict:
    """Absolute figures and ratios of one (model, backend) row."""
    q = row.get("quantize", {})
    m = row.get("measure", {})
    fig: dict = {
        "quantize_s": {v: r.get("quantize_s") for v, r in q.items()},
        "import_s": {v: r.get("import_s") for v, r in q.items()},
        "process_s": {v: r.get("process_s") for v, r in q.items()},
        "process_cpu_s": {v: r.get("process_cpu_s") for v, r in q.items()},
        "errors_in_jobs": {v: r.get("error") for v, r in q.items() if "error" in r},
        "latency_ms": {},
        "latency_iqr_ms": {},
        "nmse": {},
        "cosine": {},
        "ratios": {},
        "verdicts": {},
    }
    if "error" in m:
        fig["errors_in_jobs"]["measure"] = m["error"]
    fig["quantize_failures"] = {v: len(r.get("failures", [])) for v, r in q.items() if r.get("failures")}
    nncf_q = fig["quantize_s"].get("nncf")
    for v in ("rayq_ray", "rayq_inproc"):
        r = _ratio(fig["quantize_s"].get(v), nncf_q)
        fig["ratios"][f"quantize_{v}"] = r
        fig["verdicts"][f"quantize_{v}"] = _verdict(r, TARGETS["quantize"])
    fig["ratios"]["process_cpu_rayq_inproc"] = _ratio(
        fig["process_cpu_s"].get("rayq_inproc"), fig["process_cpu_s"].get("nncf")
    )
    rq = _rayq_primary(m)
    fig["rayq_measured"] = rq
    fig["samples"] = sorted({r.get("samples") for r in q.values() if r.get("samples")})
    fig["latency_runs"] = sorted({s["runs"] for d in m.get("runtimes", {}).values() for s in d["latency"].values()})
    for rt, data in m.get("runtimes", {}).items():
        lat = data["latency"]
        fig["latency_ms"][rt] = {v: s["median_ms"] for v, s in lat.items()}
        fig["latency_iqr_ms"][rt] = {v: s["q3_ms"] - s["q1_ms"] for v, s in lat.items()}
        errs = data["errors"]
        fig["nmse"][rt] = {v: e["nmse"] for v, e in errs.items() if isinstance(e, dict)}
        fig["cosine"][rt] = {v: e["cosine"] for v, e in errs.items() if isinstance(e, dict)}
        if "rayq_ray_vs_inproc_max_abs" in errs:
            fig.setdefault("rayq_ray_vs_inproc_max_abs", {})[rt] = errs["rayq_ray_vs_inproc_max_abs"]
        r = _ratio(lat.get(rq, {}).get("median_ms"), lat.get("nncf", {}).get("median_ms"))
        fig["ratios"][f"latency_{rt}"] = r
        fig.setdefault("latency_paired_ratio", {})[rt] = _paired(lat.get(rq), lat.get("nncf"))
        fig.setdefault("loadavg", {})[rt] = [data.get("loadavg_before"), data.get("loadavg_after")]
        fig["verdicts"][f"latency_{rt}"] = _verdict(r, TARGETS["latency"])
        r = _ratio(fig["nmse"][rt].get(rq), fig["nmse"][rt].get("nncf"))
        fig["ratios"][f"nmse_{rt}"] = r
        fig["verdicts"][f"nmse_{rt}"] = _verdict(r, TARGETS["nmse"])
    return fig


def _paired(a: dict | None, b: dict | None) -> float | None:
    """Median over rounds of a/b, both timed in the same round (robust to load drift);
    results written before the harness paired single calls (``times_ms``)."""
    key = "rounds_ms" if a and b and "rounds_ms" in a and "rounds_ms" in b else "times_ms"
    return harness.paired_ratio((a or {}).get(key), (b or {}).get(key))


def build(rows: dict) -> dict:
    return {"targets": TARGETS, "rows": {k: {"figures": row_figures(v), "raw": v} for k, v in rows.items()}}


def _cell(ratio, verdict) -> str:
    return "-" if ratio is None else f"{ratio:.3f} {verdict}"


def _num(x, fmt="{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def markdown(report: dict, env: dict, threads: int) -> str:
    figs = [row["figures"] for row in report["rows"].values()]
    samples = "/".join(str(x) for x in sorted({n for f in figs for n in f.get("samples", [])})) or "?"
    runs = "/".join(str(x) for x in sorted({n for f in figs for n in f.get("latency_runs", [])})) or "?"
    lines = [
        "### rayq vs NNCF: ratios rayq/NNCF (targets: quantize <= 0.5, INT8 latency <= 1.0, NMSE <= 1.5)",
        "",
        f"{harness.describe(env)}; rayq from {env['rayq_source']}; {samples} calibration items, "
        f"latency batch 1 / {threads} threads, median of {runs} interleaved runs.",
        "",
        "| model | backend | quantize time, rayq default (num_workers=None) | quantize time, rayq 1 proc "
        "| INT8 latency ORT "
        "| INT8 latency OV | NMSE ORT | NMSE OV | CPU s, rayq 1 proc (info) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in report["rows"].items():
        f = row["figures"]
        r, d = f["ratios"], f["verdicts"]
        model, backend = key.split("/")
        cells = [
            _cell(r.get(k), d.get(k))
            for k in ("quantize_rayq_ray", "quantize_rayq_inproc", "latency_ort", "latency_ov", "nmse_ort", "nmse_ov")
        ]
        for i, rt in ((2, "ort"), (3, "ov")):
            paired = f.get("latency_paired_ratio", {}).get(rt)
            if paired is not None:
                cells[i] += f" (paired {paired:.3f})"
        cpu = r.get("process_cpu_rayq_inproc")
        cells.append("-" if cpu is None else f"{cpu:.2f}")
        lines.append(f"| {model} | {backend} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Latency cells: ratio of medians (the verdict) and, in brackets, the median of per-round "
        "ratios rayq/NNCF (per-round medians, both timed in the same round). Last column: CPU seconds "
        "(user+sys) of the "
        "whole quantize process, rayq in-process / NNCF: less sensitive to other load than wall time; "
        "not a target (for rayq with Ray the actors' CPU is not visible to the driver).",
    ]
    lines += [
        "",
        "Absolute figures (quantize: seconds of the timed call, median over repeats; "
        "latency: median ms, FP32 / NNCF / rayq; NMSE vs FP32 on held-out inputs):",
        "",
        "| model | backend | quantize s NNCF / rayq default / rayq 1 proc | process s (incl. imports, "
        "Ray start/stop, save) | process CPU s NNCF / rayq 1 proc | ORT ms FP32 / NNCF / rayq "
        "| OV ms FP32 / NNCF / rayq | NMSE ORT NNCF / rayq | NMSE OV NNCF / rayq | cosine OV NNCF / rayq |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in report["rows"].items():
        f = row["figures"]
        model, backend = key.split("/")
        rq = f.get("rayq_measured")
        order = ("nncf", "rayq_ray", "rayq_inproc")
        qs = " / ".join(_num(f["quantize_s"].get(x)) for x in order)
        ps = " / ".join(_num(f["process_s"].get(x)) for x in order)
        cs = " / ".join(_num(f.get("process_cpu_s", {}).get(x)) for x in ("nncf", "rayq_inproc"))
        lat = {
            rt: " / ".join(_num(f["latency_ms"].get(rt, {}).get(x), "{:.2f}") for x in ("fp32", "nncf", rq))
            for rt in ("ort", "ov")
        }
        nm = {
            rt: " / ".join(_num(f["nmse"].get(rt, {}).get(x), "{:.2e}") for x in ("nncf", rq)) for rt in ("ort", "ov")
        }
        cos = " / ".join(_num(f["cosine"].get("ov", {}).get(x), "{:.4f}") for x in ("nncf", rq))
        lines.append(
            f"| {model} | {backend} | {qs} | {ps} | {cs} | {lat['ort']} | {lat['ov']} | {nm['ort']} "
            f"| {nm['ov']} | {cos} |"
        )
    notes = []
    for key, row in report["rows"].items():
        f = row["figures"]
        if f["errors_in_jobs"]:
            notes.append(f"- {key}: failed jobs: {f['errors_in_jobs']} (see the logs under the work dir)")
        if f.get("quantize_failures"):
            notes.append(f"- {key}: failed quantize attempts (retried; see JSON/logs): {f['quantize_failures']}")
        if f.get("rayq_ray_vs_inproc_max_abs"):
            diffs = ", ".join(f"{rt} {d:.2e}" for rt, d in f["rayq_ray_vs_inproc_max_abs"].items())
            notes.append(f"- {key}: max |rayq default output - rayq in-process output| on held-out inputs: {diffs}")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
