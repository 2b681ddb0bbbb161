"""Early stopping of hopeless candidates (issue 13, item 7): the same search with
``early_stop=True`` and ``False``, run as alternating pairs (``harness.alternate``),
in-process (``num_workers=1``).

    python bench/bench_early_stop.py --repeats 3                       # outlier, mlp, digits
    python bench/bench_early_stop.py --tasks minilm --repeats 1 --max-drop 0.005
    python bench/bench_early_stop.py --quick                           # mlp, 4 trials, 1 pair

Tasks (both offline, bundled):

- ``mlp``: a 16-32-4 MLP with an outlier hidden channel (``rayq.testing.with_outlier_channel``,
  gain 300, same FP32 function) and 2400 validation items (``pair_accuracy``: top-1 with
  per-item values), ``max_drop=0.01``, 16 trials. Plain INT8 loses ~11 points; a few
  plans (the second Gemm in FP32 with some estimators) meet the budget.
- ``minilm``: ``bench/qwac_model.py``'s MiniLM (600 validation items, ``qwac_model.accuracy``
  with per-item values; ``python bench/qwac_model.py`` makes it) with the search
  ``quantize_with_accuracy_control`` runs, as ``bench/bench_qwac.py`` does, on 2 Ray workers.
- ``outlier``: the bundled digits CNN with an outlier channel made on its stem
  (``rayq.testing.with_outlier_channel``, gain 300; same FP32 function): a candidate that
  keeps ``/conv2/conv2.0/Conv`` INT8 loses ~70 points, one that keeps it FP32 loses
  0-0.5 points. The shape early stopping is for: the budget is met, and many candidates
  are far from it. Validation as for ``digits``.
- ``digits``: the bundled digits CNN (``configs/search_digits.yaml``'s data) with
  ``examples.digits.metric:accuracy_per_item`` (400 items), ``max_drop=0.01``, 16 trials:
  every candidate meets the budget, so nothing can stop; it shows the cost of chunking.

Reported per task and setting: median search wall time, validation items run (trials
validated x items, minus the items saved), validation seconds (``eval_seconds`` summed),
trials stopped, and whether the chosen plan and the plans tried equal the run without
early stopping. Results: ``bench/results/early_stop.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import harness

REPO = harness.REPO
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import rayq  # noqa: E402
from rayq.tuning import selection  # noqa: E402


def _mlp():
    from rayq.testing import mlp, with_outlier_channel
    from rayq.testing.metrics import pair_accuracy
    from rayq.testing.models import labeled_inputs

    base = mlp(in_features=16, hidden=(32,), num_classes=4, op="Gemm", seed=0)
    model = with_outlier_channel(base, "Gemm_0", "Gemm_1", gain=300.0)
    x, y = labeled_inputs(model, 300 + 2400)
    return model, x[:300], list(zip(x[300:], y[300:])), pair_accuracy


def _digits():
    from examples.digits.metric import accuracy_per_item

    cal = np.load(REPO / "examples/digits/calibration.npz")["input"]
    return (
        str(REPO / "examples/digits/digits_cnn.onnx"),
        cal,
        str(REPO / "examples/digits/validation.npz"),
        accuracy_per_item,
    )


def _outlier():
    sys.path.insert(0, str(REPO / "bench"))
    import qwac_model

    _, cal, val, fn = _digits()
    return qwac_model.outlier_cnn(), cal, val, fn


def _minilm():
    sys.path.insert(0, str(REPO / "bench"))
    import qwac_model

    task = qwac_model.load_task("minilm")
    return str(task["model"]), task["calibration"], task["validation"], qwac_model.accuracy


TASKS = {"mlp": _mlp, "digits": _digits, "outlier": _outlier, "minilm": _minilm}
#: ``minilm`` runs what ``bench/bench_qwac.py`` runs: quantize_with_accuracy_control's search
#: (preset mixed, top-k candidates and bisection, no exploration) on 2 Ray workers.
QWAC = dict(
    n_trials=None,
    preset="mixed",
    presets=("mixed",),
    estimators=("mean_minmax",),
    bias_corrections=("fast",),
    explore=False,
    finalists=1,
    num_workers=2,
)


def one(task: str, early_stop: bool, n_trials: int, max_drop: float = 0.01) -> dict:
    model, cal, val, fn = TASKS[task]()
    start = time.perf_counter()
    kw = QWAC if task == "minilm" else dict(num_workers=1, n_trials=n_trials)
    r = rayq.search(model, cal, val, fn, max_drop=max_drop, early_stop=early_stop, cache=False, **kw)
    wall = time.perf_counter() - start
    f = r.trials
    fresh = f[~f["reused"]]
    n_items = len(val) if isinstance(val, list) else len(np.load(val)["label"])
    return {
        "task": task,
        "early_stop": early_stop,
        "max_drop": max_drop,
        "wall_s": wall,
        "status": r.status,
        "plan_key": r.plan.key(),
        "plans_tried": f["plan_key"].tolist(),
        "stopped": int(f["early_stopped"].sum()),
        "items_saved": int(fresh["validation_items_saved"].sum()),
        "items_run": int(len(fresh) * n_items - fresh["validation_items_saved"].sum()),
        "validation_s": float(fresh["eval_seconds"].sum()),
    }


def summarize(task: str, pairs: harness.Pairs) -> dict:
    """Medians per setting (``on``: early stopping) and whether the answers agree."""
    on, off = pairs.results["on"], pairs.results["off"]
    med = statistics.median
    return {
        "task": task,
        "wall_on_s": med(r["wall_s"] for r in on),
        "wall_off_s": med(r["wall_s"] for r in off),
        "wall_ratio_on_off": pairs.ratio_median,
        "validation_on_s": med(r["validation_s"] for r in on),
        "validation_off_s": med(r["validation_s"] for r in off),
        "items_on": on[0]["items_run"],
        "items_off": off[0]["items_run"],
        "items_saved": on[0]["items_saved"],
        "status": on[0]["status"],
        "stopped": on[0]["stopped"],
        "same_plan": all(r["plan_key"] == off[0]["plan_key"] for r in on + off),
        "same_trials": all(r["plans_tried"] == off[0]["plans_tried"] for r in on + off),
    }


def markdown(summary: list[dict], env: dict) -> str:
    lines = [
        f"{harness.describe(env)}.",
        "",
        "| task | status | stopped | items validated (on / off) | validation s, median (on / off) "
        "| wall s, median (on / off) | on/off (median of pairs) | same plan, same trials |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(
            f"| {r['task']} | {r.get('status', '')} | {r['stopped']} | {r['items_on']} / {r['items_off']} | "
            f"{r['validation_on_s']:.2f} / {r['validation_off_s']:.2f} | {r['wall_on_s']:.1f} / "
            f"{r['wall_off_s']:.1f} | {r['wall_ratio_on_off']:.2f} | "
            f"{'yes' if r['same_plan'] else 'no'}, {'yes' if r['same_trials'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_common_args(p)
    p.add_argument("--tasks", default="outlier,mlp,digits", help="of outlier,mlp,digits,minilm")
    p.add_argument("--repeats", type=int, default=3, help="on/off pairs per task")
    p.add_argument("--n-trials", type=int, default=16)
    p.add_argument("--max-drop", type=float, default=0.01)
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.repeats, args.n_trials = "mlp", 1, 4
    env = harness.environment(cpus=args.cpus)
    selection.RUNOFF_SECONDS = 5.0  # the same short runoff for both settings
    tasks = args.tasks.split(",")
    if "minilm" in tasks:  # Ray started before any timed search, so no run pays its start
        rayq.init(num_cpus=2, include_dashboard=False)
    summary, runs = [], []
    try:
        for task in tasks:
            pairs = harness.alternate(
                {
                    "off": lambda t=task: one(t, False, args.n_trials, args.max_drop),
                    "on": lambda t=task: one(t, True, args.n_trials, args.max_drop),
                },
                args.repeats,
                value=lambda r: r["wall_s"],
                on_result=lambda side, i, r: print(
                    json.dumps({k: v for k, v in r.items() if k != "plans_tried"}), flush=True
                ),
            )
            runs += pairs.results["off"] + pairs.results["on"]
            summary.append(summarize(task, pairs))
    finally:
        if "minilm" in tasks:
            rayq.shutdown()
    harness.write_results(
        "early_stop",
        {"summary": summary, "runs": runs},
        env=env,
        config=vars(args),
        markdown=markdown(summary, env),
        out=harness.output_path(args, "early_stop"),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
