"""Early stopping of hopeless candidates (issue 13, item 7): the same search with
``early_stop=True`` and ``False``, run alternately, in-process (``num_workers=1``).

    python bench/bench_early_stop.py --repeats 3 --out bench/results/early_stop.json

Tasks (both offline, bundled):

- ``mlp``: ``rayq.testing.models.sensitive_mlp`` with 2400 validation items
  (``pair_accuracy``: top-1 with per-item values), ``max_drop=0.01``, 16 trials. Its INT8
  candidates lose 2-3 points, so most are hopeless at this budget.
- ``minilm``: ``bench/qwac_model.py``'s MiniLM (600 validation items, ``qwac_model.accuracy``
  with per-item values; ``python bench/qwac_model.py`` makes it) with the search
  ``quantize_with_accuracy_control`` runs, as ``bench/bench_qwac.py`` does, on 2 Ray workers.
- ``digits``: the bundled digits CNN (``configs/search_digits.yaml``'s data) with
  ``examples.digits.metric:accuracy_per_item`` (400 items), ``max_drop=0.01``, 16 trials:
  every candidate meets the budget, so nothing can stop; it shows the cost of chunking.

Reported per task and setting: median search wall time, validation items run (trials
validated x items, minus the items saved), validation seconds (``eval_seconds`` summed),
trials stopped, and whether the chosen plan and the plans tried equal the run without
early stopping.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import rayq  # noqa: E402
from rayq.tuning import selection  # noqa: E402


def _mlp():
    from rayq.testing.metrics import pair_accuracy
    from rayq.testing.models import labeled_inputs, sensitive_mlp

    model = sensitive_mlp()
    x, y = labeled_inputs(model, 300 + 2400)
    return model, x[:300], list(zip(x[300:], y[300:])), pair_accuracy


def _digits():
    from examples.digits.metric import accuracy_per_item

    cal = np.load(REPO / "examples/digits/calibration.npz")["input"]
    return (str(REPO / "examples/digits/digits_cnn.onnx"), cal, str(REPO / "examples/digits/validation.npz"),
            accuracy_per_item)


def _minilm():
    sys.path.insert(0, str(REPO / "bench"))
    import qwac_model

    task = qwac_model.load_task("minilm")
    return str(task["model"]), task["calibration"], task["validation"], qwac_model.accuracy


TASKS = {"mlp": _mlp, "digits": _digits, "minilm": _minilm}
#: ``minilm`` runs what ``bench/bench_qwac.py`` runs: quantize_with_accuracy_control's search
#: (preset mixed, top-k candidates and bisection, no exploration) on 2 Ray workers.
QWAC = dict(n_trials=None, preset="mixed", presets=("mixed",), estimators=("mean_minmax",),
            bias_corrections=("fast",), explore=False, finalists=1, num_workers=2)


def one(task: str, early_stop: bool, n_trials: int, max_drop: float = 0.01) -> dict:
    model, cal, val, fn = TASKS[task]()
    start = time.perf_counter()
    kw = QWAC if task == "minilm" else dict(num_workers=1, n_trials=n_trials)
    r = rayq.search(model, cal, val, fn, max_drop=max_drop, early_stop=early_stop, cache=False, **kw)
    wall = time.perf_counter() - start
    f = r.trials
    fresh = f[~f["reused"]]
    n_items = len(val) if isinstance(val, list) else len(np.load(val)["label"])
    return {"task": task, "early_stop": early_stop, "max_drop": max_drop, "wall_s": wall, "status": r.status,
            "plan_key": r.plan.key(),
            "plans_tried": f["plan_key"].tolist(), "stopped": int(f["early_stopped"].sum()),
            "items_saved": int(fresh["validation_items_saved"].sum()),
            "items_run": int(len(fresh) * n_items - fresh["validation_items_saved"].sum()),
            "validation_s": float(fresh["eval_seconds"].sum())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="mlp,digits")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n-trials", type=int, default=16)
    p.add_argument("--max-drop", type=float, default=0.01)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    selection.RUNOFF_SECONDS = 5.0  # the same short runoff for both settings
    runs = []
    if "minilm" in args.tasks:  # Ray started before any timed search, so no run pays its start
        rayq.init(num_cpus=2, include_dashboard=False)
    for task in args.tasks.split(","):
        for _ in range(args.repeats):
            for early in (True, False):
                runs.append(one(task, early, args.n_trials, args.max_drop))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "plans_tried"}), flush=True)
    summary = []
    for task in args.tasks.split(","):
        on = [r for r in runs if r["task"] == task and r["early_stop"]]
        off = [r for r in runs if r["task"] == task and not r["early_stop"]]
        row = {"task": task, "wall_on_s": statistics.median(r["wall_s"] for r in on),
               "wall_off_s": statistics.median(r["wall_s"] for r in off),
               "validation_on_s": statistics.median(r["validation_s"] for r in on),
               "validation_off_s": statistics.median(r["validation_s"] for r in off),
               "items_on": on[0]["items_run"], "items_off": off[0]["items_run"], "stopped": on[0]["stopped"],
               "same_plan": all(r["plan_key"] == off[0]["plan_key"] for r in on + off),
               "same_trials": all(r["plans_tried"] == off[0]["plans_tried"] for r in on + off)}
        summary.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))
    if "minilm" in args.tasks:
        rayq.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
