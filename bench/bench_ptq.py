"""rayq vs NNCF post-training INT8 quantization, side by side on one machine.

    python bench/bench_ptq.py [--models resnet50,minilm] [--backends onnx,openvino]
                              [--samples 300] [--runs 30] [--threads 2]
                              [--out bench/results/ptq.json]

For every (model, backend) row, on the same cores and the same calibration items:

1. quantize with NNCF, with rayq using Ray (``num_workers=None``: a local Ray is started
   and calibration is sharded over its CPUs) and with rayq in-process (``num_workers=1``);
   each in a fresh subprocess (imports and Ray start-up are paid every time), rayq with
   ``cache=False``. The timed region is the ``quantize`` call (ONNX backend: plus
   ``onnx.load`` for NNCF, since rayq is given the path); imports and saving are recorded
   separately. ``--quant-repeats R`` repeats each of the three (interleaved) and keeps
   the median.
2. measure, in one fresh process per row that imports neither tool (``ptq_harness.py``):
   batch-1 latency of FP32, NNCF INT8 and rayq INT8 interleaved, on ONNX Runtime (ONNX
   rows) and OpenVINO (both rows; OpenVINO reads the QDQ ONNX files), and the output
   error of each INT8 model vs FP32 on held-out inputs (NMSE; cosine for MiniLM).
3. report ratios rayq/NNCF with PASS/MISS against the targets: quantize time <= 0.5x,
   INT8 latency <= 1.0x on every runtime, NMSE <= 1.5x. JSON goes to ``--out``, the
   Markdown tables next to it (``.md``) and to stdout.

Models: ``resnet50`` (``rayq.testing.models.resnet50_like``, random weights, random
normal calibration images, seed 0, held-out seed 1) and ``minilm`` (all-MiniLM-L6-v2,
exported by ``bench/export_minilm.py``, ``model_type="transformer"`` for both tools).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import ptq_report

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
JOBS = BENCH / "ptq_jobs.py"
VARIANTS = (("nncf", "nncf", None), ("rayq_ray", "rayq", "ray"), ("rayq_inproc", "rayq", "1"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--models", default="resnet50,minilm")
    ap.add_argument("--backends", default="onnx,openvino")
    ap.add_argument("--samples", type=int, default=300, help="calibration items (subset_size)")
    ap.add_argument("--heldout", type=int, default=50, help="held-out inputs for the output error")
    ap.add_argument("--runs", type=int, default=30, help="timed latency rounds (>= 30)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="runtime threads for latency")
    ap.add_argument("--quant-repeats", type=int, default=1, help="fresh-process repeats per quantize")
    ap.add_argument("--cpus", default=None,
                    help="CPU ids every subprocess is pinned to, e.g. 0-3 (default: this process's)")
    ap.add_argument("--steps", default="prepare,quantize,measure,report",
                    help="subset of prepare,quantize,measure,report (reuses earlier results)")
    ap.add_argument("--work", type=Path, default=BENCH / ".cache" / "ptq", help="models and job results")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "ptq.json")
    ap.add_argument("--job-timeout", type=int, default=3600)
    ap.add_argument("--rayq-commit", default=None, metavar="REF",
                    help="benchmark rayq as committed at REF (git archive into the work dir, put first on "
                         "PYTHONPATH) instead of the working tree, so concurrent edits cannot change it mid-run")
    ap.add_argument("--retries", type=int, default=1,
                    help="re-run a failed quantize job this many times (failures are kept in the JSON)")
    args = ap.parse_args(argv)
    if args.runs < 30:
        ap.error("--runs must be >= 30")
    args.cpus = _parse_cpus(args.cpus) if args.cpus else sorted(os.sched_getaffinity(0))
    return args


def _parse_cpus(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def rayq_snapshot(args: argparse.Namespace) -> dict[str, str]:
    """Environment for the subprocesses: PYTHONPATH to a frozen rayq when --rayq-commit is given."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not args.rayq_commit:
        return env
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{args.rayq_commit}^{{commit}}"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.strip()
    dest = args.work / "rayq-src" / sha[:12]
    if not (dest / "rayq" / "__init__.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha, "rayq"], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    env["PYTHONPATH"] = os.pathsep.join([str(dest), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["RAYQ_BENCH_COMMIT"] = sha
    env["RAYQ_BENCH_SRC"] = str(dest)  # jobs run there: Ray puts the job's cwd first on its workers' sys.path
    return env


def run_job(args: argparse.Namespace, job: str, log_name: str, extra: list[str]) -> dict:
    """Run one ``ptq_jobs.py`` job in a fresh, pinned process; return its JSON result."""
    result_path = args.work / "jobs" / f"{log_name}.json"
    log_path = args.work / "logs" / f"{log_name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(JOBS), job, "--work", str(args.work), "--samples", str(args.samples),
           "--heldout", str(args.heldout), "--json", str(result_path), *extra]
    env = args.env
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=env.get("RAYQ_BENCH_SRC", REPO),
                                preexec_fn=lambda: os.sched_setaffinity(0, args.cpus))
        timer = threading.Timer(args.job_timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        print(f"  FAILED ({proc.returncode}) {log_name}: see {log_path}", flush=True)
        return {"error": f"exit code {proc.returncode}", "log": str(log_path), "log_tail": tail,
                "process_s": wall}
    result = json.loads(result_path.read_text())
    result["process_s"] = wall
    # CPU seconds of the job and of the descendants it reaped (Ray workers are not
    # reaped by the driver, so for rayq with Ray this is a lower bound).
    result["process_cpu_s"] = usage.ru_utime + usage.ru_stime
    result["log"] = str(log_path)
    return result


def quantize_row(args: argparse.Namespace, model: str, backend: str) -> dict[str, dict]:
    """Every variant ``--quant-repeats`` times, interleaved; the median quantize time."""
    from ptq_jobs import output_path

    runs: dict[str, list[dict]] = {v: [] for v, _, _ in VARIANTS}
    for rep in range(args.quant_repeats):
        for variant, tool, workers in VARIANTS:
            out = output_path(args.work, model, backend, variant)
            extra = ["--model", model, "--backend", backend, "--tool", tool, "--out", str(out)]
            if workers:
                extra += ["--workers", workers]
            res = run_job(args, "quantize", f"quantize_{model}_{backend}_{variant}_{rep}", extra)
            failures = []
            for attempt in range(1, args.retries + 1):
                if "error" not in res:
                    break
                failures.append({k: res.get(k) for k in ("error", "log", "log_tail")})
                print(f"  retrying {variant} (attempt {attempt + 1}) after: {res['error']}", flush=True)
                res = run_job(args, "quantize", f"quantize_{model}_{backend}_{variant}_{rep}_retry{attempt}", extra)
            if failures:
                res["failed_attempts"] = failures
            shown = f"{res['quantize_s']:.1f}s (process {res['process_s']:.1f}s)" if "error" not in res else "FAILED"
            print(f"  quantize {model:8s} {backend:8s} {variant:12s} run {rep + 1}: {shown}", flush=True)
            runs[variant].append(res)
    summary = {}
    for variant, results in runs.items():
        ok = [r for r in results if "error" not in r]
        best = dict(ok[0]) if ok else dict(results[0])
        if ok:
            for key in ("quantize_s", "import_s", "process_s", "process_cpu_s"):
                if all(key in r for r in ok):
                    best[key] = statistics.median(r[key] for r in ok)
            best["quantize_s_all"] = [r["quantize_s"] for r in ok]
        best["failures"] = [f for r in results for f in r.get("failed_attempts", [])] + [
            {k: r.get(k) for k in ("error", "log", "log_tail")} for r in results if "error" in r]
        if not ok:
            output_path(args.work, model, backend, variant).unlink(missing_ok=True)
        summary[variant] = best
    return summary


def environment(args: argparse.Namespace) -> dict:
    code = ("import json, numpy, onnx, onnxruntime, openvino, ray, nncf, rayq, torch; "
            "d = {m.__name__: getattr(m, '__version__', '?') for m in "
            "(rayq, nncf, onnxruntime, openvino, onnx, ray, numpy, torch)}; d['rayq_file'] = rayq.__file__; "
            "print(json.dumps(d))")
    versions = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         cwd=BENCH, env=args.env, check=True).stdout.strip().splitlines()[-1])
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(["git", "status", "--porcelain", "rayq"], capture_output=True, text=True, cwd=REPO)
    snapshot = args.env.get("RAYQ_BENCH_COMMIT")
    return {"rayq_source": f"git archive of {snapshot}" if snapshot else "working tree",
            "rayq_commit": snapshot[:12] if snapshot else None, "rayq_file": versions.pop("rayq_file"),
            "cpu_model": fields.get("Model name", "?").strip(), "cpus_online": os.cpu_count(),
            "cpus_used": args.cpus, "python": platform.python_version(), "versions": versions,
            "git_commit": git.stdout.strip(),
            "rayq_tree_dirty": False if snapshot else bool(dirty.stdout.strip()),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work, args.out = args.work.resolve(), args.out.resolve()  # jobs may run in another cwd
    args.work.mkdir(parents=True, exist_ok=True)
    args.env = rayq_snapshot(args)
    models = [m for m in args.models.split(",") if m]
    backends = [b for b in args.backends.split(",") if b]
    steps = set(args.steps.split(","))
    state_path = args.work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"rows": {}}
    if "prepare" in steps:
        for model in models:
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
                row["measure"] = run_job(args, "measure", f"measure_{model}_{backend}",
                                         ["--model", model, "--backend", backend, "--threads", str(args.threads),
                                          "--runs", str(args.runs), "--warmup", str(args.warmup)])
                state_path.write_text(json.dumps(state, indent=2))
    if "report" not in steps:
        return 0
    env = environment(args)
    rows = {k: v for k, v in state["rows"].items() if k.split("/")[0] in models and k.split("/")[1] in backends}
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "env"}
    report = ptq_report.build(rows, env, config)
    markdown = ptq_report.markdown(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    sys.exit(main())
