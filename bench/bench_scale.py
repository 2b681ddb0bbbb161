"""Scale benchmark: calibration and the ranking phase of the search with W workers.

    python bench/bench_scale.py --workers 1,2                  # this 2-core machine
    python bench/bench_scale.py --workers 1,2,4,8,16 --gpu-check   # a 16-core node with a GPU
    python bench/bench_scale.py --quick                           # W=1, 64 items: checks the entry point

For each W it times, on a local Ray with ``max(W)`` CPUs:

- **calibration**: ``collect_distributed`` with W single-threaded workers, three ways:
  *cold*, from a fresh driver process (a new Ray job, as ``ray job submit`` makes: its
  worker processes start inside the timed call, plus model load and session builds);
  *new job, workers started early*, the same, but as ``rayq.quantize`` runs it: the
  job's workers are started before the model and data load, and the call after;
  *warm call*, a later call in the same job (pooled worker processes reused; model
  load and session builds still included: the next model of a sweep); and the *pass*
  alone, with the model resident and sessions built;
- **ranking**: the ranking phase of the accuracy-control search (every fallback group
  validated once, plus the INT8 reference) as W evaluation tasks on warm workers.

W=1 is also one Ray worker (no in-process shortcut), so the ratio measures Ray scaling only.
speedup(W) = time(W=1) / time(W); efficiency = speedup / W. The best of ``--repeats``
is kept. ``--gpu-check`` also runs 2 evaluation tasks with ``num_gpus=0.5`` and
records where they landed, which GPU Ray gave them and which ONNX Runtime providers
they validate with (CUDA, or CPU with a warning when only the CPU build is installed).
Results: ``bench/results/scale.json`` (``harness.write_results``; the device run is kept
as ``scale_device.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import harness
import numpy as np

sys.path.insert(0, str(harness.REPO))
LOOPBACK = "127.0.0.1"


def _calibrate_once(model_bytes, batches, spec, w) -> tuple[float, float]:
    """(warm call, pass alone) seconds with W workers in this driver's job."""
    from rayq.distributed import collect as dc

    t0 = time.perf_counter()
    dc.collect_distributed("onnx", model_bytes, batches, spec, num_workers=w, resources={"num_cpus": 1})
    call = time.perf_counter() - t0
    # the pass alone: same workers, models resident and sessions built by a first pass
    shards = dc.ShardedCalibration(
        "onnx", model_bytes, batches=batches, spec=spec, num_workers=w, resources={"num_cpus": 1}
    )
    shards.run_pass()
    t0 = time.perf_counter()
    shards.run_pass()
    return call, time.perf_counter() - t0


def _cold_call(address: str, w: int, args, early: bool) -> float:
    """One calibration call from a fresh driver (a new Ray job, as ``ray job submit``
    makes). ``early=False``: the job's worker processes start inside the timed call;
    ``early=True``: as ``rayq.quantize`` runs it, they are started before the model and
    data load (``start_workers_early``), and the call is timed after loading."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child-cold",
        str(w),
        "--address",
        address,
        "--model",
        args.model,
        "--samples",
        str(args.samples),
    ] + (["--child-early"] if early else [])
    tag = "early" if early else "cold"
    # rayq's local Ray listens on 127.0.0.1 only; a second driver must not map loopback to
    # the machine's address (Ray reads this variable at import time)
    env = harness.job_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    res = harness.run_job(cmd, log=harness.WORK / "scale" / f"{tag}_w{w}.log", timeout=900, env=env)
    if "error" in res:
        raise RuntimeError("cold-call driver failed: " + "\n".join(res["log_tail"]))
    return res["result"]["seconds"]


def _problem(model_name: str, samples: int):
    """(model, input shape, description, calibration array): deterministic for a given seed."""
    from rayq.testing.models import resnet50_like, resnet_like

    if model_name == "small":
        model, shape = resnet_like(input_shape=(3, 64, 64), widths=(32, 64, 128), blocks_per_stage=3), (3, 64, 64)
        desc = "resnet_like 3x64x64, widths 32/64/128, 3 blocks per stage"
    else:
        model, shape = resnet50_like(), (3, 224, 224)
        desc = "resnet50_like 3x224x224 (random weights)"
    calib = np.random.default_rng(0).normal(size=(samples, *shape)).astype(np.float32)
    return model, shape, desc, calib


def _calibration_setup(model, calib, samples):
    from rayq.api.session import ModelSession
    from rayq.core.plan import QuantPlan
    from rayq.pipeline.build import placement_for
    from rayq.pipeline.calibrate import stat_spec

    session = ModelSession(model, calib, subset_size=samples)
    spec = stat_spec(
        session.graph, placement_for(session.graph, QuantPlan.create()), histograms=False, smooth_quant=False
    )
    return session, spec


def _child_cold(args) -> int:
    import rayq
    from rayq.api.session import start_workers_early
    from rayq.distributed import collect as dc

    if args.child_early:
        rayq.init(address=args.address, _node_ip_address=LOOPBACK)
        start_workers_early(args.child_cold, {"num_cpus": 1}, subset_size=args.samples)
    model, _, _, calib = _problem(args.model, args.samples)
    session, spec = _calibration_setup(model, calib, args.samples)
    model_bytes = session.backend.to_bytes(session.model)
    rayq.init(address=args.address, _node_ip_address=LOOPBACK)  # (already connected when early)
    t0 = time.perf_counter()
    dc.collect_distributed(
        "onnx", model_bytes, session.batches, spec, num_workers=args.child_cold, resources={"num_cpus": 1}
    )
    harness.emit({"seconds": time.perf_counter() - t0})
    rayq.shutdown()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_common_args(ap)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--samples", type=int, default=2048, help="calibration items")
    ap.add_argument("--validation", type=int, default=512, help="validation items for the ranking")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats per W (best is kept)")
    ap.add_argument(
        "--model",
        choices=("small", "resnet50"),
        default="small",
        help="small: resnet_like 3x64x64 (35 groups); resnet50: resnet50_like 3x224x224",
    )
    ap.add_argument("--phases", default="calibration,ranking")
    ap.add_argument("--gpu-check", action="store_true")
    ap.add_argument("--commit", default=None, help="rayq commit to record (a copy without .git: the device)")
    ap.add_argument("--child-cold", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--address", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-early", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_cold:
        return _child_cold(args)
    if args.quick:
        args.workers, args.samples, args.validation, args.repeats = "1", 64, 32, 1
    env = harness.environment(cpus=args.cpus)
    if args.commit:
        env["git"]["commit"] = args.commit

    import onnxruntime as ort
    import ray

    import rayq
    from rayq.core.plan import QuantPlan
    from rayq.distributed.eval_pool import RayEvaluatorPool
    from rayq.pipeline.build import placement_for
    from rayq.pipeline.calibrate import collect_local
    from rayq.testing.metrics import pair_accuracy
    from rayq.tuning.control import score_groups

    model, shape, model_desc, calib = _problem(args.model, args.samples)
    phases = set(args.phases.split(","))
    xv = np.random.default_rng(1).normal(size=(args.validation, *shape)).astype(np.float32)
    yv = ort.InferenceSession(model.SerializeToString()).run(None, {"input": xv})[0].argmax(1)
    items = list(zip(xv, yv))
    workers = [int(w) for w in args.workers.split(",")]
    t0 = time.perf_counter()
    rayq.init(num_cpus=max(workers), include_dashboard=False)
    ray_start_s = time.perf_counter() - t0
    address = ray.get_runtime_context().gcs_address
    session, spec = _calibration_setup(model, calib, args.samples)
    plan = QuantPlan.create()
    ops = placement_for(session.graph, plan).ops
    model_bytes = session.backend.to_bytes(session.model)
    stats = collect_local(session.backend, session.model, session.batches, spec) if "ranking" in phases else None
    rows = []
    nan = float("nan")
    for w in workers:
        cal = (
            [_calibrate_once(model_bytes, session.batches, spec, w) for _ in range(args.repeats)]
            if "calibration" in phases
            else [(nan, nan)]
        )
        cold = [_cold_call(address, w, args, False) for _ in range(args.repeats)] if "calibration" in phases else [nan]
        early = [_cold_call(address, w, args, True) for _ in range(args.repeats)] if "calibration" in phases else [nan]
        rank, pool_start_s = [nan], nan
        if "ranking" in phases:
            t0 = time.perf_counter()
            pool = RayEvaluatorPool(
                num_workers=w,
                resources={"num_cpus": 1},
                backend_name="onnx",
                model=model_bytes,
                stats=stats,
                items=items,
                validation_fn=pair_accuracy,
                kwargs={"runtime": "onnxruntime", "threads": 1},
            )
            rank = []
            try:
                pool.map_metric([plan] * w)  # warm the workers (evaluator resident in each process)
                pool_start_s = time.perf_counter() - t0
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    score_groups(pool, plan, ops, None, use_metric=True)
                    rank.append(time.perf_counter() - t)
            finally:
                pool.close()
        row = {
            "workers": w,
            "calibration_cold_s": min(cold),
            "calibration_early_s": min(early),
            "calibration_s": min(c[0] for c in cal),
            "calibration_pass_s": min(c[1] for c in cal),
            "ranking_s": min(rank),
            "evaluator_pool_start_s": pool_start_s,
            "calibration_cold_all_s": cold,
            "calibration_early_all_s": early,
            "calibration_all_s": [c[0] for c in cal],
            "ranking_all_s": rank,
        }
        rows.append(row)
        print(
            f"W={w}: calibration new job {row['calibration_cold_s']:.2f}s (workers started early "
            f"{row['calibration_early_s']:.2f}s), warm {row['calibration_s']:.2f}s, "
            f"pass {row['calibration_pass_s']:.2f}s; ranking {row['ranking_s']:.2f}s ({len(ops)} groups)",
            flush=True,
        )
    gpu = _gpu_check(RayEvaluatorPool, model_bytes, stats, items, pair_accuracy) if args.gpu_check else None
    rayq.shutdown()
    base = rows[0]
    for r in rows:
        for k in ("calibration_cold", "calibration_early", "calibration", "calibration_pass", "ranking"):
            r[f"{k}_speedup"] = base[f"{k}_s"] / r[f"{k}_s"] * base["workers"]
            r[f"{k}_efficiency"] = r[f"{k}_speedup"] / r["workers"]
    meta = {
        "model": model_desc,
        "phases": sorted(phases),
        "samples": args.samples,
        "batches": len(session.batches),
        "validation_items": args.validation,
        "groups": len(ops) if "ranking" in phases else None,
        "repeats": args.repeats,
        "ray_start_s": ray_start_s,
    }
    out = {"meta": meta, "rows": rows, "gpu_check": gpu}
    harness.write_results(
        "scale", out, env=env, config=vars(args), markdown=markdown(out, env), out=harness.output_path(args, "scale")
    )
    return 0


def _gpu_check(pool_cls, model_bytes, stats, items, fn) -> dict:
    import logging

    import ray

    records: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logging.getLogger("rayq").addHandler(Grab())
    gpus = ray.cluster_resources().get("GPU", 0)
    if not gpus:
        return {"cluster_gpus": 0, "note": "no GPU in this cluster"}
    pool = pool_cls(
        num_workers=2,
        resources={"num_cpus": 1, "num_gpus": 0.5},
        backend_name="onnx",
        model=model_bytes,
        stats=stats,
        items=items[:64],
        validation_fn=fn,
        kwargs={"runtime": "onnxruntime", "threads": 1},
    )
    try:
        from rayq.core.plan import QuantPlan

        metric = pool.map_metric([QuantPlan.create()])[0]
        return {
            "cluster_gpus": gpus,
            "actors": pool.describe(),
            "int8_metric": metric.value,
            "driver_warnings": records,
        }
    finally:
        pool.close()


def markdown(out: dict, env: dict) -> str:
    m = out["meta"]
    lines = [
        f"{harness.describe(env)}. Model: {m['model']}; "
        f"{m['samples']} calibration items ({m['batches']} batches), {m['validation_items']} validation items, "
        f"{m['groups']} fallback groups; best of {m['repeats']}.",
        "",
        "Each cell: seconds, then speedup over W=1 and (efficiency = speedup / W).",
        "",
        "| W | calibration, new job (cold) | new job, workers started early | calibration, warm call "
        "| calibration pass | ranking |",
        "|---|---|---|---|---|---|",
    ]

    def cell(r, k):
        return f"{r[k + '_s']:.2f} s, {r[k + '_speedup']:.2f}x ({r[k + '_efficiency']:.2f})"

    for r in out["rows"]:
        lines.append(
            f"| {r['workers']} | {cell(r, 'calibration_cold')} | {cell(r, 'calibration_early')} | "
            f"{cell(r, 'calibration')} | "
            f"{cell(r, 'calibration_pass')} | {cell(r, 'ranking')} |"
        )
    g = out.get("gpu_check")
    if g:
        lines += ["", f"GPU check: {json.dumps(g)}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
