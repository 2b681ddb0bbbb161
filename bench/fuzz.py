"""Run the graph fuzzer over many seeds and count outcomes by failure class.

Unlike the hypothesis test (``tests/fuzz/test_graph_fuzz.py``, which stops at the first
failure and shrinks it), this keeps going and reports every class with its first seeds, so
one run maps what breaks. ``--pytest`` instead runs the hypothesis test's long profile.

Usage:
    python bench/fuzz.py --n 500                    # stable storage modes
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

import onnx

from rayq.testing.fuzz import ALL_STORAGES, STABLE_STORAGES, RandomChooser, random_case
from rayq.testing.fuzz_check import check_case, draw_options


def run_seed(seed: int, storages) -> tuple:
    chooser = RandomChooser(seed)
    case = random_case(chooser, storages=storages)
    options = draw_options(chooser)
    return case, options, check_case(case, options)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--storages", choices=("stable", "all"), default="stable")
    ap.add_argument("--seed", type=int, help="run this one seed and print it")
    ap.add_argument("--show", action="store_true")
    ap.add_argument("--json", help="write the counts and examples here")
    ap.add_argument("--pytest", action="store_true", help="run the hypothesis long profile instead")
    args = ap.parse_args(argv)
    if args.pytest:
        env = dict(os.environ, RAYQ_FUZZ_PROFILE="long")
        return subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fuzz",
                                "--hypothesis-show-statistics"], env=env)
    storages = ALL_STORAGES if args.storages == "all" else STABLE_STORAGES
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.n)
    counts, examples, worst, t0 = collections.Counter(), collections.defaultdict(list), [], time.time()
    for seed in seeds:
        case, options, outcome = run_seed(seed, storages)
        counts[outcome.kind] += 1
        if outcome.nmse:
            worst.append(max(outcome.nmse.values()))
        if outcome.kind != "pass":
            examples[outcome.kind].append((seed, outcome.detail, case.describe(), options))
            print(f"seed {seed}: {outcome.kind}: {outcome.detail}", flush=True)
        if args.show:
            print(onnx.printer.to_text(case.model.graph), options, outcome, sep="\n")
    print(f"{sum(counts.values())} cases in {time.time() - t0:.0f} s ({args.storages} storages)")
    for kind, n in counts.most_common():
        print(f"{n:6d}  {kind}")
        for seed, detail, describe, options in examples[kind][:3]:
            print(f"          seed {seed}: {detail} | {describe} | {options}")
    if worst:
        worst.sort()
        print(f"NMSE over checked cases: median {worst[len(worst) // 2]:.3g}, max {worst[-1]:.3g}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"counts": counts, "examples": examples}, fh, indent=1, default=str)
    return 0 if all(k == "pass" or k.startswith(("rayq_error", "skipped")) for k in counts) else 1


if __name__ == "__main__":
    sys.exit(main())
