"""Accuracy-controlled INT8: ``nncf.quantize_with_accuracy_control`` vs
``rayq.quantize_with_accuracy_control``, side by side on the same cores.

    python bench/bench_qwac.py --pairs 3                # what bench/README.md reports (~25 min, 2 cores)
    python bench/bench_qwac.py                          # one run of each (~20 min)
    python bench/bench_qwac.py --budgets 0.02 --steps naive,qwac,measure,report
    python bench/bench_qwac.py --steps measure,report   # re-measure the saved models

Model: ``bench/qwac_model.py`` (default ``--arch minilm``: all-MiniLM-L6-v2 + a
logistic-regression head, 15-class synthetic sentence task, 600 validation sentences;
made on first use into ``bench/.cache/qwac``). Backend: ONNX for both tools (NNCF 3.x
supports accuracy control for ONNX models), runtime ONNX Runtime (CPU). Both tools get
``preset="mixed"`` (asymmetric activations) and otherwise default parameters: with the
default ``performance`` preset the LayerNorm outputs get signed INT8 activations, which
ONNX Runtime on x86 cannot run as integer MatMuls, so every INT8 MiniLM is slower than
FP32 (``--preset default`` runs that variant).

Steps:

1. ``naive``: ``nncf.quantize`` and ``rayq.quantize`` with default parameters (each in a
   fresh process); their accuracy is measured in step 3: the drop the budget has to win back.
2. ``qwac``: for every budget (``--budgets``, absolute drop), NNCF then rayq, each in a
   fresh process pinned to ``--cpus``: ``quantize_with_accuracy_control`` with the same
   calibration items (300), validation items (all 600), validation function
   (``qwac_model.accuracy``: top-1 with per-item values) and default parameters.
   rayq: ``num_workers=2`` (evaluator actors on a private local Ray it starts) and a cold
   statistics cache (``RAYQ_CACHE_DIR`` = a new empty temp dir). The timed region is the
   call alone (model and data loading, imports and saving are outside it; the process
   time, Ray start-up included, is recorded too).
3. ``measure``: one fresh process (imports neither tool) loads FP32 and every result
   model and, with the same code for all: top-1 on the full validation set (ONNX Runtime,
   2 threads); batch-1 latency (ONNX Runtime, ``--threads`` intra-op threads, sequential
   execution, no spin-waiting; then OpenVINO CPU reading the same QDQ ONNX files, as
   information), all models interleaved round by round, ``--warmup`` runs each, then the
   median (and IQR) of ``--runs`` (>= 30) timed runs each; and the number of quantizable
   ops (MatMul/Gemm/Conv) left FP32 (an op is INT8 when all its data inputs come from
   DequantizeLinear, looking through data-movement ops).
4. ``report``: targets per budget, PASS/MISS: both results within budget; rayq wall time
   <= 0.4x NNCF's (median of the per-pair ratios); rayq model latency <= NNCF model
   latency on ONNX Runtime and on OpenVINO (medians over the pairs). The validation
   function counts its calls and items (both tools, in every process they use). Markdown
   table to stdout, everything to ``--out`` (JSON, :func:`harness.write_results`'s layout:
   ``results`` holds the steps' output, ``environment`` the machine of the runs).

Jobs are run by :func:`harness.run_job` (fresh process, pinned, process-group timeout);
latency is :func:`harness.interleaved_latency` (rayq's own interleaved timing).

Other engineers' work on the same machine shows up as load: the 1-minute load average
is recorded before and after every job.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness

BENCH = harness.BENCH
TOOLS = ("nncf", "rayq")
QUANTIZABLE = ("MatMul", "Gemm", "Conv", "ConvTranspose")
MOVEMENT = (
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "MaxPool",
    "Slice",
    "Gather",
    "Split",
    "Identity",
    "Concat",
)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--arch", default="minilm", help="model of bench/qwac_model.py")
    ap.add_argument("--budgets", default="0.01,0.02", help="max_drop values (absolute)")
    ap.add_argument(
        "--model-type",
        default="none",
        choices=("none", "transformer"),
        help="model_type for both tools (default: none, the tools' default)",
    )
    ap.add_argument(
        "--preset",
        default="mixed",
        choices=("default", "performance", "mixed"),
        help="preset for both tools (default: mixed, see the module docstring; 'default': "
        "the tools' default for the model type)",
    )
    ap.add_argument("--workers", type=int, default=2, help="rayq num_workers")
    ap.add_argument(
        "--pairs",
        "--repeats",
        dest="repeats",
        type=int,
        default=1,
        help="pairs of fresh-process runs (NNCF then rayq, alternately) per budget; medians",
    )
    ap.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO latency column")
    ap.add_argument("--runs", type=int, default=100, help="timed latency runs per model (>= 30)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for latency")
    ap.add_argument("--cpus", default=None, help="CPU ids for every job, e.g. 0-1 (default: this process's)")
    ap.add_argument("--steps", default="naive,qwac,measure,report")
    ap.add_argument("--work", type=Path, default=BENCH / ".cache" / "qwac")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default: bench/results/qwac.json)")
    ap.add_argument("--job-timeout", type=float, default=7200, help="seconds before a job is killed")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="reuse the result of a job that already finished in --work (e.g. after a crash)",
    )
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tool", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--max-drop", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--models", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.preset == "default":
        args.preset = None
    if args.model_type == "none":
        args.model_type = None
    if args.runs < 30:
        ap.error("--runs must be >= 30")
    args.budgets = [float(b) for b in args.budgets.split(",")]
    args.cpu_list = harness.parse_cpus(args.cpus)
    args.out = harness.output_path(args, "qwac")
    return args


def _load1() -> float:
    return os.getloadavg()[0]


# ------------------------------------------------------------------------------ jobs


def _task(args):
    sys.path.insert(0, str(BENCH))
    import qwac_model

    return qwac_model, qwac_model.load_task(args.arch, args.work)


def job_quantize(args) -> dict:
    """``naive`` or ``qwac`` for one tool, in this (fresh) process."""
    import logging

    t0 = time.perf_counter()
    import numpy as np  # noqa: F401
    import onnx

    if args.tool == "nncf":
        import nncf
    else:
        import rayq
    import_s = time.perf_counter() - t0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    qwac_model, task = _task(args)
    model = onnx.load(str(task["model"]))
    inputs = task["inputs"]
    counts = Path(args.json).with_suffix(".validations")
    counts.unlink(missing_ok=True)
    accuracy = counted_validation(qwac_model.accuracy, str(counts))
    mt = args.model_type
    start = time.perf_counter()
    if args.tool == "nncf":
        cal = nncf.Dataset(task["calibration"], lambda it: {k: it[k][None] for k in inputs})
        kw = dict(
            subset_size=300,
            model_type=nncf.ModelType.TRANSFORMER if mt else None,
            preset=nncf.QuantizationPreset(args.preset) if args.preset else None,
        )
        if args.job == "naive":
            q = nncf.quantize(model, cal, **kw)
        else:
            q = nncf.quantize_with_accuracy_control(
                model,
                cal,
                nncf.Dataset(task["validation"]),
                accuracy,
                max_drop=args.max_drop,
                drop_type=nncf.DropType.ABSOLUTE,
                **kw,
            )
    else:
        kw = dict(subset_size=300, model_type=mt, preset=args.preset)
        if args.job == "naive":
            q = rayq.quantize(model, task["calibration"], num_workers=1, cache=False, **kw)
        else:
            q = rayq.quantize_with_accuracy_control(
                model,
                task["calibration"],
                task["validation"],
                accuracy,
                max_drop=args.max_drop,
                drop_type="absolute",
                num_workers=args.workers,
                **kw,
            )
    wall = time.perf_counter() - start
    out = Path(args.models)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(q, str(out))
    sizes = [int(x) for x in counts.read_text().split()] if counts.exists() else []
    return {
        "tool": args.tool,
        "job": args.job,
        "max_drop": args.max_drop,
        "wall_s": wall,
        "import_s": import_s,
        "model": str(out),
        "rayq_cache_dir": os.environ.get("RAYQ_CACHE_DIR"),
        "validation_calls": len(sizes),
        "validation_items": sum(sizes),
        "full_validations": sum(n == len(task["validation"]) for n in sizes),
    }


def counted_validation(fn, path: str):
    """``fn`` that appends the number of items of every call to ``path`` (one line per
    call; works in Ray workers and NNCF's ranking workers alike)."""

    def validate(model, data):
        items = list(data)
        out = fn(model, items)
        with open(path, "a") as f:
            f.write(f"{len(items)}\n")
        return out

    return validate


def _walk_to_dq(name: str, producers: dict, depth: int = 0) -> bool:
    node = producers.get(name)
    if node is None or depth > 8:
        return False
    if node.op_type == "DequantizeLinear":
        return True
    if node.op_type in MOVEMENT and node.input:
        return all(_walk_to_dq(i, producers, depth + 1) for i in node.input[:1] if i)
    return False


def int8_summary(model) -> dict:
    """Quantizable ops (MatMul/Gemm/Conv) and which of them run FP32 (a data input not
    fed by DequantizeLinear, looking through data-movement ops)."""
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    fp32 = []
    ops = [n for n in g.node if n.op_type in QUANTIZABLE]
    for n in ops:
        data = [i for i in n.input[:2] if i]
        if not all(_walk_to_dq(i, producers) for i in data):
            fp32.append(n.name or n.output[0])
    return {
        "quantizable_ops": len(ops),
        "fp32_ops": len(fp32),
        "fp32_op_names": fp32,
        "quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in g.node),
    }


def _interleaved(runners: dict, feeds, runs: int, warmup: int) -> dict[str, dict]:
    """:func:`harness.interleaved_latency` (rayq's interleaved timing), summarised as median/IQR."""
    return {
        name: {"median_ms": r["median_ms"], "iqr_ms": r["q3_ms"] - r["q1_ms"], "min_ms": r["min_ms"], "runs": r["runs"]}
        for name, r in harness.interleaved_latency(runners, feeds, runs=runs, warmup=warmup).items()
    }


def job_measure(args) -> dict:
    """Accuracy, op summary and interleaved batch-1 latency (ONNX Runtime; OpenVINO
    reading the same QDQ ONNX files as a second opinion) of every distinct model."""
    import hashlib

    import numpy as np
    import onnx
    import onnxruntime as ort

    qwac_model, task = _task(args)
    paths = dict(item.split("=", 1) for item in args.models.split(","))
    digests = {name: hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] for name, path in paths.items()}
    first: dict[str, str] = {}
    for name, d in digests.items():
        first.setdefault(d, name)
    unique = {name: paths[name] for name in first.values()}
    out: dict[str, dict] = {}
    ort_runners, ov_runners = {}, {}
    item = task["validation"][0]
    feeds = {k: np.asarray(item[k])[None] for k in task["inputs"]}
    core = None
    if not args.no_openvino:
        import openvino as ov

        core = ov.Core()
    for name, path in unique.items():
        model = onnx.load(path)
        acc, _ = qwac_model.accuracy(model, task["validation"])
        out[name] = {
            "path": path,
            "sha256": digests[name],
            "top1": acc,
            "bytes": os.path.getsize(path),
            **int8_summary(model),
        }
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # No spin-waiting: with several sessions in one process, the idle spinning threads of
        # the model timed just before steal the cores of the one being timed (measured here:
        # FP32 31.8 ms interleaved with spinning vs 6.4 ms without; 5.6 ms alone).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        ort_runners[name] = lambda f, s=sess: s.run(None, f)
        if core is not None:
            try:
                compiled = core.compile_model(
                    path, "CPU", {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY"}
                )
            except Exception as exc:  # an OpenVINO failure must not cost the ORT numbers
                msg = str(exc).strip().splitlines()
                out[name]["ov_error"] = next(
                    (x for x in msg if "CALLBACK HAS THROWN" in x or "Check" in x), msg[0] if msg else repr(exc)
                )[:400]
                continue
            req = compiled.create_infer_request()
            ov_runners[name] = lambda f, r=req: r.infer(f)
    for name, lat in _interleaved(ort_runners, feeds, args.runs, args.warmup).items():
        out[name].update(
            latency_ms=lat["median_ms"],
            latency_iqr_ms=lat["iqr_ms"],
            latency_min_ms=lat["min_ms"],
            latency_runs=lat["runs"],
        )
    if ov_runners:
        for name, lat in _interleaved(ov_runners, feeds, args.runs, args.warmup).items():
            out[name].update(ov_latency_ms=lat["median_ms"], ov_latency_iqr_ms=lat["iqr_ms"])
    for name, d in digests.items():  # duplicates share the measurement
        if name not in out:
            out[name] = {**out[first[d]], "same_as": first[d]}
    versions = {"onnxruntime": ort.__version__}
    if core is not None:
        versions["openvino"] = ov.__version__
    return {
        "models": out,
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "ort_version": ort.__version__,
        "versions": versions,
    }


def run_job(args, job: str, name: str, extra: list[str], env_extra: dict | None = None) -> dict:
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result_path = args.work / "jobs" / f"{name}.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    if args.resume and result_path.exists():
        print(f"  {name}: reusing {result_path}", flush=True)
        return {"log": str(logs / f"{name}.log"), "reused": True, **json.loads(result_path.read_text())}
    result_path.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--job",
        job,
        "--arch",
        args.arch,
        "--work",
        str(args.work),
        "--json",
        str(result_path),
        "--threads",
        str(args.threads),
        "--runs",
        str(args.runs),
        "--warmup",
        str(args.warmup),
        "--workers",
        str(args.workers),
        *extra,
    ]
    if args.no_openvino:
        cmd.append("--no-openvino")
    if args.model_type:
        cmd += ["--model-type", args.model_type]
    cmd += ["--preset", args.preset or "default"]  # the job's own default is mixed
    job_ = harness.run_job(
        cmd,
        log=logs / f"{name}.log",
        timeout=args.job_timeout,
        cpus=args.cpu_list,
        env=harness.job_env(**(env_extra or {})),  # rayq starts its own private local Ray
    )
    meta = {
        "process_s": job_["wall_s"],
        "process_cpu_s": job_["cpu_s"],
        "peak_rss_mb": job_["peak_rss_mb"],
        "load1_before": job_["load1_before"],
        "load1_after": job_["load1_after"],
        "log": job_["log"],
    }
    if "error" in job_:
        return {"error": job_["error"], "log_tail": job_["log_tail"], **meta}
    result = {**job_["result"], **meta}
    result_path.write_text(json.dumps(result, indent=2))  # with its process time and load, for --resume
    return result


def _parse_log(path: str, tool: str) -> dict:
    """What the tools say about their own run (reverted ops, trials)."""
    import re

    text = Path(path).read_text(errors="replace")
    info: dict = {}
    if tool == "nncf":
        m = re.findall(r"(\d+) out of (\d+) were reverted", text)
        if m:
            info["reported_fp32_ops"], info["reported_quantized_ops"] = int(m[-1][0]), int(m[-1][1])
        info["iterations"] = len(re.findall(r"Reverted \d+ operations", text))
        info["rankings"] = 1 + len(re.findall(r"Re-calculating ranking scores", text)) if info["iterations"] else 0
        m = re.findall(r"Number of parallel workers to rank quantized operations: (\d+)", text)
        if m:
            info["ranking_workers"] = int(m[-1])
        if "could not achieve the required accuracy drop" in text:
            info["note"] = "NNCF: could not achieve the required accuracy drop"
    else:
        m = re.findall(
            r"rayq\.search: (.+?) in ([\d.]+)s: metric ([\d.]+) \(FP32 ([\d.]+), drop (-?[\d.]+)\), "
            r"([\d.]+) ms \(FP32 ([\d.]+) ms(?:, .*?)?\), (\d+) layers FP32, (\d+) trials",
            text,
        )
        if m:
            s = m[-1]
            info.update(
                status=s[0],
                reported_metric=float(s[2]),
                reported_drop=float(s[4]),
                reported_latency_ms=float(s[5]),
                reported_fp32_ops=int(s[7]),
                trials=int(s[8]),
            )
        if "accuracy budget not met" in text:
            info["note"] = "rayq: accuracy budget not met"
    return info


# ------------------------------------------------------------------------------ driver


def environment(args) -> dict:
    """:func:`harness.environment` for the CPUs the jobs run on."""
    return harness.environment(cpus=args.cpu_list)


def _load_saved(path: Path) -> dict:
    """The steps' output of an earlier run (``results`` of a harness result file), with its environment."""
    saved = json.loads(path.read_text())
    if saved.get("benchmark") != "qwac":  # written before the harness layout
        return saved
    return dict(saved["results"], environment=saved["environment"])


def _write(args, res: dict) -> None:
    results = {k: v for k, v in res.items() if k not in ("environment", "markdown")}
    harness.write_results(
        "qwac", results, env=res["environment"], config=vars(args), markdown=res.get("markdown"), out=args.out
    )


def _model_path(args, tool: str, budget: float | None, rep: int = 0) -> Path:
    tag = "naive" if budget is None else f"qwac{budget:g}_r{rep}"
    return args.work / "models" / f"{tool}_{tag}.onnx"


def _pf(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _lat(v: dict, key: str = "latency_ms") -> str:
    if v.get(key) is None:
        return "fails to compile" if key.startswith("ov_") and v.get("ov_error") else "n/a"
    iqr = v.get(key.replace("_ms", "_iqr_ms"))
    return f"{v[key]:.2f}" + (f" ({iqr:.2f})" if iqr is not None else "")


WALL_TARGET = 0.4


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def report(res: dict) -> str:
    """Markdown tables and the targets (stored in ``res["targets"]``)."""
    meas = res.get("measure", {})
    m = meas.get("models", {})
    fp32 = m.get("fp32", {})
    base = fp32.get("top1")
    lines = []
    if base is None:
        return "no measurements (run the measure step)"
    ov = "ov_latency_ms" in fp32
    lines += [
        f"FP32: top-1 {base:.4f} on {res['task'].get('validation_samples', '?')} validation items; batch-1 "
        f"latency ONNX Runtime {_lat(fp32)} ms"
        + (f", OpenVINO {_lat(fp32, 'ov_latency_ms')} ms" if ov else "")
        + f" (median (IQR) of {meas['runs']} interleaved runs, {meas['threads']} threads)",
        "",
    ]
    naive = [(t, m.get(f"{t}_naive")) for t in TOOLS]
    if any(v for _, v in naive):
        lines += [
            "| naive INT8 | top-1 | drop (points) | ORT latency ms | OV latency ms | FP32 MatMul/Gemm |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for t, v in naive:
            if v:
                lines.append(
                    f"| {t}.quantize | {v['top1']:.4f} | {100 * (base - v['top1']):.2f} | {_lat(v)} | "
                    f"{_lat(v, 'ov_latency_ms')} | {v['fp32_ops']}/{v['quantizable_ops']} |"
                )
        lines.append("")
    lines += [
        "| max_drop | tool | wall s (median; all runs) | process s | top-1 | drop (points) | within budget | "
        "ORT latency ms (IQR) | OV latency ms | FP32 MatMul/Gemm (bench count) | ops reverted (tool's log) | "
        "notes |",
        "| ---: | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    targets = []
    for b in res["budgets"]:
        key = f"{b:g}"
        row = {}
        for t in TOOLS:
            q = res["qwac"].get(key, {}).get(t, {})
            runs = q.get("runs", [q]) if q else []
            models = [m.get(f"{t}_qwac{key}_r{i}") for i in range(len(runs))]
            mm = models[0] if models else None
            if not q or "wall_s" not in q or not mm:
                lines.append(f"| {b:g} | {t} | FAILED | | | | | | | | | {q.get('error', 'not run')} |")
                row[t] = None
                continue
            info = q.get("log_info", {})
            oks = [base - x["top1"] <= b + 1e-9 for x in models if x]
            drop = base - mm["top1"]
            notes = []
            if "trials" in info:
                notes.append(f"{info['trials']} trials")
            if "iterations" in info:
                notes.append(f"{info['iterations']} revert iteration(s), {info.get('rankings', 0)} ranking(s)")
            if info.get("note"):
                notes.append(info["note"])
            others = [
                x
                for x in models[1:]
                if x
                and x.get("same_as") != f"{t}_qwac{key}_r0"
                and (x["top1"], x["fp32_op_names"]) != (mm["top1"], mm["fp32_op_names"])
            ]
            if len(models) > 1:
                notes.append(
                    "all runs: same top-1 and FP32 ops"
                    if not others
                    else "other runs: "
                    + ", ".join(
                        f"top-1 {x['top1']:.4f} / {x['latency_ms']:.2f} ms / {x['fp32_ops']} FP32" for x in others
                    )
                )
            walls = ", ".join(f"{w:.0f}" for w in q.get("wall_s_all", [q["wall_s"]]))
            lines.append(
                f"| {b:g} | {t} | {q['wall_s']:.1f} ({walls}) | {q['process_s'] or float('nan'):.1f} | "
                f"{mm['top1']:.4f} | "
                f"{100 * drop:.2f} | {_pf(all(oks))} | {_lat(mm)} | {_lat(mm, 'ov_latency_ms')} | "
                f"{mm['fp32_ops']}/{mm['quantizable_ops']} | {info.get('reported_fp32_ops', '?')} | "
                f"{'; '.join(notes)} |"
            )
            oks_ov = [x.get("ov_latency_ms") for x in models if x]
            row[t] = {
                "ok": all(oks),
                "wall": q["wall_s"],
                "lat": mm["latency_ms"],
                "ov": mm.get("ov_latency_ms"),
                "walls": [x.get("wall_s") for x in runs],
                "ovs": oks_ov,
                "lats": [x.get("latency_ms") for x in models if x],
                "calls": _median([x.get("validation_calls") for x in runs]),
                "items": _median([x.get("validation_items") for x in runs]),
                "full": _median([x.get("full_validations") for x in runs]),
            }
        n, r = row.get("nncf"), row.get("rayq")
        both = (n["ok"] and r["ok"]) if n and r else None
        pair = [a / b for a, b in zip(r["walls"], n["walls"]) if a and b] if n and r else []
        speed = statistics.median(pair) if pair else None
        lat = _median([a / b for a, b in zip(r["lats"], n["lats"]) if a and b]) if n and r else None
        ovr = _median([a / b for a, b in zip(r["ovs"], n["ovs"]) if a and b]) if n and r else None
        targets.append(
            {
                "max_drop": b,
                "pairs": len(pair),
                "both_within_budget": _pf(both),
                "wall_ratio": speed,
                "wall_ratios": pair,
                "wall_target": _pf(speed <= WALL_TARGET if speed is not None else None),
                "latency_ratio": lat,
                "latency_target": _pf(lat <= 1.0 if lat is not None else None),
                "openvino_latency_ratio": ovr,
                "openvino_target": _pf(ovr <= 1.0 if ovr is not None else None),
                "validations": {
                    t: {k: row[t][k] for k in ("calls", "items", "full")} if row.get(t) else None for t in TOOLS
                },
            }
        )
    lines += [
        "",
        (
            f"| max_drop | pairs | both within budget | rayq/NNCF wall time, median of pairs (target <= "
            f"{WALL_TARGET}) | validation calls / items / full, NNCF | same, rayq | rayq/NNCF latency ORT "
            "(target <= 1.0) | same, OpenVINO (target <= 1.0) |"
        ),
        "| ---: | ---: | --- | --- | --- | --- | --- | --- |",
    ]
    for t in targets:
        w = (
            f"{t['wall_ratio']:.2f}x {t['wall_target']} ({', '.join(f'{x:.2f}' for x in t['wall_ratios'])})"
            if t["wall_ratio"] is not None
            else "n/a"
        )
        lt = f"{t['latency_ratio']:.2f}x {t['latency_target']}" if t["latency_ratio"] is not None else "n/a"
        o = (
            f"{t['openvino_latency_ratio']:.2f}x {t['openvino_target']}"
            if t["openvino_latency_ratio"] is not None
            else "n/a"
        )
        v = {
            k: (f"{x['calls']:g} / {x['items']:g} / {x['full']:g}" if x and x["calls"] is not None else "n/a")
            for k, x in t["validations"].items()
        }
        lines.append(
            f"| {t['max_drop']:g} | {t['pairs']} | {t['both_within_budget']} | {w} | {v['nncf']} | "
            f"{v['rayq']} | {lt} | {o} |"
        )
    res["targets"] = targets
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.job:
        fn = job_measure if args.job == "measure" else job_quantize
        result = fn(args)
        args.json.write_text(json.dumps(result, indent=2))
        harness.emit(result)  # the line harness.run_job reads back
        return 0
    steps = set(args.steps.split(","))
    res = _load_saved(args.out) if args.out.exists() and "naive" not in steps else {}
    res.update(
        arch=args.arch, budgets=args.budgets, model_type=args.model_type, preset=args.preset, workers=args.workers
    )
    res.setdefault("qwac", {})
    res.setdefault("naive", {})
    if steps & {"naive", "qwac"} or "environment" not in res:
        res["environment"] = environment(args)  # as of the runs, not of a later report
    sys.path.insert(0, str(BENCH))
    import qwac_model

    qwac_model.load_task(args.arch, args.work)  # make the model first (not timed)
    res["task"] = json.loads((args.work / f"{args.arch}.json").read_text())
    print(
        f"model {args.arch}: {res['task'].get('val_top1_onnxruntime')} FP32 top-1; cpus {args.cpu_list}; "
        f"load {_load1():.2f}",
        flush=True,
    )
    if "naive" in steps:
        for tool in TOOLS:
            r = run_job(
                args,
                "naive",
                f"naive_{tool}",
                ["--tool", tool, "--models", str(_model_path(args, tool, None))],
                {"RAYQ_CACHE_DIR": tempfile.mkdtemp(prefix="rayq-qwac-cache-")},
            )
            res["naive"][tool] = r
            print(f"  naive {tool}: {r.get('wall_s', float('nan')):.1f}s", flush=True)
    if "qwac" in steps:
        for b in args.budgets:
            runs: dict[str, list] = {t: [] for t in TOOLS}
            for rep in range(args.repeats):
                for tool in TOOLS:
                    cache = tempfile.mkdtemp(prefix="rayq-qwac-cache-")  # cold rayq statistics cache
                    r = run_job(
                        args,
                        "qwac",
                        f"qwac_{tool}_{b:g}_r{rep}",
                        ["--tool", tool, "--max-drop", str(b), "--models", str(_model_path(args, tool, b, rep))],
                        {"RAYQ_CACHE_DIR": cache},
                    )
                    if "log" in r:
                        r["log_info"] = _parse_log(r["log"], tool)
                    runs[tool].append(r)
                    print(
                        f"  qwac max_drop={b:g} {tool} run {rep + 1}/{args.repeats}: "
                        + (
                            f"{r['wall_s']:.1f}s (process {r.get('process_s', math.nan):.1f}s, load "
                            f"{r.get('load1_before', math.nan):.1f}->{r.get('load1_after', math.nan):.1f})"
                            if "wall_s" in r
                            else "FAILED"
                        ),
                        flush=True,
                    )
            for tool, rs in runs.items():
                ok = [r for r in rs if "wall_s" in r]
                summary = dict(ok[0]) if ok else dict(rs[0])
                if ok:
                    summary["wall_s"] = statistics.median(r["wall_s"] for r in ok)
                    summary["process_s"] = _median([r.get("process_s") for r in ok])
                    summary["wall_s_all"] = [r["wall_s"] for r in ok]
                summary["runs"] = rs
                res["qwac"].setdefault(f"{b:g}", {})[tool] = summary
            _write(args, res)
    if "measure" in steps:
        models = {"fp32": args.work / f"{args.arch}.onnx"}
        for tool in TOOLS:
            for b in [None, *args.budgets]:
                for rep in range(1 if b is None else args.repeats):
                    p = _model_path(args, tool, b, rep)
                    if p.exists():
                        models[p.stem] = p
        res["measure"] = run_job(
            args, "measure", "measure", ["--models", ",".join(f"{k}={v}" for k, v in models.items())]
        )
    if "report" in steps:
        res["markdown"] = report(res) + "\n\n" + harness.describe(res["environment"])
    _write(args, res)  # prints the Markdown
    return 0


if __name__ == "__main__":
    sys.exit(main())
