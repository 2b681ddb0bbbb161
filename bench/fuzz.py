"""Run the graph fuzzer over many seeds and count outcomes by failure class.

Unlike the hypothesis test (``tests/fuzz/test_graph_fuzz.py``, which stops at the first
failure and shrinks it), this keeps going and reports every class with its first seeds, so
one run maps what breaks. Cases run in a worker process; when a runtime kills it (OpenVINO
segfaults on some INT8 graphs), the seed counts as ``process_died:<signal>`` and a new worker
goes on with the next seed. ``--pytest`` instead runs the hypothesis test's long profile.

Usage:
    python bench/fuzz.py --n 500                    # stable storage modes -> bench/results/fuzz.json
    python bench/fuzz.py --quick                    # 5 seeds: checks the entry point
    python bench/fuzz.py --n 500 --storages all     # plus Constant / FP16+Cast weights
    python bench/fuzz.py --pytest                   # RAYQ_FUZZ_PROFILE=long pytest tests/fuzz
    python bench/fuzz.py --seed 123 --show          # one case: the model, options and outcome
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

import harness
import onnx

from rayq.testing.fuzz import ALL_STORAGES, STABLE_STORAGES, RandomChooser, random_case
from rayq.testing.fuzz_check import check_case, draw_options


def run_seed(seed: int, storages) -> tuple:
    chooser = RandomChooser(seed)
    case = random_case(chooser, storages=storages)
    options = draw_options(chooser)
    return case, options, check_case(case, options)


def _worker(seeds, storages, show: bool) -> int:
    """Run ``seeds``; print ``{"start": seed}`` before and one result row after each."""
    for seed in seeds:
        print(json.dumps({"start": seed}), flush=True)
        case, options, outcome = run_seed(seed, storages)
        if show:
            print(onnx.printer.to_text(case.model.graph), options, outcome, sep="\n", file=sys.stderr)
        kind = outcome.kind if outcome.skipped is None else f"{outcome.kind} (ORT only: {outcome.skipped})"
        print(
            json.dumps(
                {
                    "seed": seed,
                    "kind": kind,
                    "detail": outcome.detail,
                    "nmse": outcome.nmse,
                    "case": case.describe(),
                    "options": options,
                    "quantizers": outcome.quantizers,
                }
            ),
            flush=True,
        )
    return 0


def _rows(start: int, stop: int, storages: str):
    """Result rows of seeds ``start..stop-1`` from worker processes, restarted after a crash."""
    while start < stop:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            "--start",
            str(start),
            "--n",
            str(stop - start),
            "--storages",
            storages,
        ]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=harness.job_env()
        )
        current = None
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            if "start" in row:
                current = row["start"]
                continue
            current = None
            start = row["seed"] + 1
            yield row
        code = proc.wait()
        if current is not None:
            yield {"seed": current, "kind": f"process_died:{code}", "detail": "the worker process died"}
            start = current + 1


def markdown(
    counts: collections.Counter, examples: dict, total: int, quantized: int, seconds: float, storages: str, env: dict
) -> str:
    lines = [
        f"{harness.describe(env)}.",
        "",
        f"{total} cases in {seconds:.0f} s ({storages} storages), {quantized} with at least one activation quantizer.",
        "",
        "| outcome | cases | first seeds |",
        "|---|---|---|",
    ]
    for kind, n in counts.most_common():
        seeds = ", ".join(str(e[0]) for e in examples.get(kind, [])[:3])
        lines.append(f"| {kind} | {n} | {seeds} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_common_args(ap)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--storages", choices=("stable", "all"), default="stable")
    ap.add_argument("--seed", type=int, help="run this one seed and print it")
    ap.add_argument("--show", action="store_true")
    ap.add_argument("--pytest", action="store_true", help="run the hypothesis long profile instead")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.pytest:
        env = dict(os.environ, RAYQ_FUZZ_PROFILE="long")
        return subprocess.call(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/fuzz",
                "--hypothesis-show-statistics",
            ],
            env=env,
        )
    storages = ALL_STORAGES if args.storages == "all" else STABLE_STORAGES
    if args.worker or args.seed is not None:
        return _worker(
            [args.seed] if args.seed is not None else range(args.start, args.start + args.n), storages, args.show
        )
    if args.quick:
        args.n = 5
    env = harness.environment()
    counts, examples, worst, t0 = collections.Counter(), collections.defaultdict(list), [], time.time()
    quantized = 0
    for row in _rows(args.start, args.start + args.n, args.storages):
        counts[row["kind"]] += 1
        quantized += row.get("quantizers", 0) > 0
        if row.get("nmse"):
            worst.append(max(row["nmse"].values()))
        if not row["kind"].startswith("pass"):
            examples[row["kind"]].append((row["seed"], row.get("detail", ""), row.get("case", ""), row.get("options")))
            print(f"seed {row['seed']}: {row['kind']}: {row.get('detail', '')}", flush=True)
    seconds = time.time() - t0
    for kind, n in counts.most_common():
        print(f"{n:6d}  {kind}")
        for seed, detail, describe, options in examples[kind][:3]:
            print(f"          seed {seed}: {detail} | {describe} | {options}")
    worst.sort()
    nmse = {"median": worst[len(worst) // 2], "max": worst[-1]} if worst else None
    if nmse:  # OpenVINO's is unbounded on activation MatMuls without VNNI
        print(f"worst-runtime NMSE over passing cases: median {nmse['median']:.3g}, max {nmse['max']:.3g}")
    harness.write_results(
        "fuzz",
        {
            "cases": sum(counts.values()),
            "quantized": quantized,
            "seconds": seconds,
            "counts": dict(counts),
            "examples": examples,
            "worst_nmse": nmse,
        },
        env=env,
        config=vars(args),
        out=harness.output_path(args, "fuzz"),
        markdown=markdown(counts, examples, sum(counts.values()), quantized, seconds, args.storages, env),
    )
    return 0 if all(k.startswith(("pass", "rayq_error", "skipped")) for k in counts) else 1


if __name__ == "__main__":
    sys.exit(main())
