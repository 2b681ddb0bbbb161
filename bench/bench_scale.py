"""Scale benchmark: calibration and the ranking phase of the search with W workers.

    python bench/bench_scale.py --workers 1,2            # this 2-core machine
    python bench/bench_scale.py --workers 1,2,4,8,16     # a 16-core node

For each W it times (a) sharded calibration (W Ray actors, cold cache) and (b) the
ranking phase (every fallback group validated once, W evaluator actors), and reports
speedup = time(W=1 actor) / time(W) and efficiency = speedup / W. Results go to
``--out`` as JSON and are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--validation", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats per W (best is kept)")
    ap.add_argument("--out", default="bench/results/scale.json")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    import rayq
    from rayq.core.plan import QuantPlan
    from rayq.distributed.collect import collect_distributed
    from rayq.distributed.evaluator import RayEvaluatorPool
    from rayq.pipeline.calibrate import stat_spec
    from rayq.testing.metrics import pair_accuracy
    from rayq.pipeline.build import placement_for
    from rayq.tuning.control import score_groups
    from rayq.session import ModelSession
    from rayq.testing.models import resnet_like

    model = resnet_like(input_shape=(3, 64, 64), widths=(32, 64, 128), blocks_per_stage=2)
    rng = np.random.default_rng(0)
    calib = rng.normal(size=(args.samples, 3, 64, 64)).astype(np.float32)
    xv = rng.normal(size=(args.validation, 3, 64, 64)).astype(np.float32)
    yv = ort.InferenceSession(model.SerializeToString()).run(None, {"input": xv})[0].argmax(1)
    items = list(zip(xv, yv))
    workers = [int(w) for w in args.workers.split(",")]
    rayq.init(num_cpus=max(workers))
    session = ModelSession(model, calib, subset_size=args.samples)
    plan = QuantPlan.create()
    placement = placement_for(session.graph, plan)
    ops = placement.ops
    spec = stat_spec(session.graph, placement, histograms=False, smooth_quant=False)
    model_bytes = session.backend.to_bytes(session.model)
    rows = []
    for w in workers:
        calib_s, rank_s = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()  # W single-threaded actors, W=1 included (no in-process shortcut)
            stats, _ = collect_distributed("onnx", model_bytes, session.batches, spec, num_workers=w,
                                           resources={"num_cpus": 1})
            calib_s.append(time.perf_counter() - t)
        pool = RayEvaluatorPool(num_workers=w, resources={"num_cpus": 1}, backend_name="onnx",
                                model_bytes=model_bytes, stats=stats, items=items,
                                validation_fn=pair_accuracy, kwargs={"runtime": "onnxruntime", "threads": 1})
        try:
            pool.map_metric([plan])  # warm the actors (model compiled, data resident)
            for _ in range(args.repeats):
                t = time.perf_counter()
                score_groups(pool, plan, ops, None, None, use_metric=True)
                rank_s.append(time.perf_counter() - t)
        finally:
            pool.close()
        rows.append({"workers": w, "calibration_s": min(calib_s), "ranking_s": min(rank_s)})
        print(f"W={w}: calibration {min(calib_s):.2f}s, ranking {min(rank_s):.2f}s ({len(ops)} groups)", flush=True)
    rayq.shutdown()
    base = rows[0]
    for r in rows:
        for k in ("calibration", "ranking"):
            r[f"{k}_speedup"] = base[f"{k}_s"] / r[f"{k}_s"] * base["workers"]
            r[f"{k}_efficiency"] = r[f"{k}_speedup"] / r["workers"]
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "samples": args.samples, "validation_items": args.validation, "groups": len(ops)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    print("| W | calibration s | speedup | efficiency | ranking s | speedup | efficiency |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['calibration_s']:.2f} | {r['calibration_speedup']:.2f} | "
              f"{r['calibration_efficiency']:.2f} | {r['ranking_s']:.2f} | {r['ranking_speedup']:.2f} | "
              f"{r['ranking_efficiency']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
