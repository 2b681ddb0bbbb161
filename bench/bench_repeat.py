"""Repeated searches and a sweep in one job: what a notebook session or ``rayq sweep``
pays per search once Ray is up, against an anchor commit, in one run.

    python bench/bench_repeat.py --anchor a7af0de          # rayq at HEAD vs a7af0de
    python bench/bench_repeat.py --quick                   # 1 pair, 1 search, no sweep

Each pair runs the anchor (``git archive`` of ``--anchor``) and this checkout in fresh
driver processes on a local Ray with ``--ray-cpus`` CPUs, in alternating order (anchor
first in even pairs, current first in odd ones: ``harness.alternate``): ``--searches``
back-to-back searches of ``configs/search_digits.yaml`` (``num_workers`` = all CPUs, as
in a notebook), then ``configs/sweep.yaml`` through ``run_sweep`` (2 searches at once,
each with all CPUs: the Python API's default). Every search and sweep starts with an
empty statistics cache and output. Reported per side: the median over pairs of the
first search's wall time, of each later search's, and of the sweep's; and the median of
the per-pair ratios current / anchor. Results: ``bench/results/repeat.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time

import harness


def _child(args: argparse.Namespace) -> int:
    import rayq

    # the anchor tree may predate rayq/api/ (the modules were top-level before)
    load = harness.first_attr("rayq.api.config:load", "rayq.config:load")
    search_from_config = harness.first_attr("rayq.api.search:search_from_config", "rayq.search_api:search_from_config")

    work = tempfile.mkdtemp(prefix="rayq-bench-repeat-")
    rayq.init(num_cpus=args.ray_cpus, include_dashboard=False)
    searches, sweep_s, table = [], None, None
    cfg = load(os.path.join(args.repo, "configs", "search_digits.yaml"))
    for i in range(args.searches):
        os.environ["RAYQ_CACHE_DIR"] = os.path.join(work, f"cache{i}")
        t = time.perf_counter()
        search_from_config(cfg, output=os.path.join(work, f"search{i}"), num_workers=args.ray_cpus)
        searches.append(time.perf_counter() - t)
    if not args.no_sweep:
        run_sweep = harness.first_attr("rayq.api.sweep:run_sweep", "rayq.sweep:run_sweep")

        sweep = dataclasses.replace(
            load(os.path.join(args.repo, "configs", "sweep.yaml")), output=os.path.join(work, "sweep")
        )
        os.environ["RAYQ_CACHE_DIR"] = os.path.join(work, "cache-sweep")
        t = time.perf_counter()
        table = run_sweep(sweep)
        sweep_s = time.perf_counter() - t
    rayq.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    harness.emit(
        {
            "rayq": os.path.dirname(rayq.__file__),
            "searches_s": searches,
            "sweep_s": sweep_s,
            "sweep_status": None if table is None else list(table.status),
        }
    )
    return 0


def _run(tree, args: argparse.Namespace, name: str) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--repo",
        str(tree),
        "--ray-cpus",
        str(args.ray_cpus),
        "--searches",
        str(args.searches),
    ] + (["--no-sweep"] if args.no_sweep else [])
    res = harness.run_job(
        cmd,
        log=harness.WORK / "repeat" / f"{name}.log",
        timeout=args.job_timeout,
        cpus=harness.parse_cpus(args.cpus),
        env=harness.job_env(tree),
        cwd=tree,
    )
    if "error" in res:
        raise SystemExit(f"benchmark child failed in {tree}:\n" + "\n".join(res["log_tail"]))
    if not res["result"]["rayq"].startswith(str(tree)):
        raise SystemExit(f"the child imported rayq from {res['result']['rayq']}, not {tree}")
    return res["result"]


METRICS = {
    "first_search_s": ("first search of the job (s)", lambda r: r["searches_s"][0]),
    "later_search_s": (
        "each later search (s)",
        lambda r: statistics.median(r["searches_s"][1:]) if r["searches_s"][1:] else None,
    ),
    "sweep_s": ("sweep of 2 models (s)", lambda r: r["sweep_s"]),
}


def summarize(pairs: harness.Pairs) -> dict:
    """Per metric that every run has: each side's median and the median of per-pair ratios."""
    runs = pairs.results["anchor"] + pairs.results["current"]
    return {key: pairs.summary(fn) for key, (_, fn) in METRICS.items() if all(fn(r) is not None for r in runs)}


def markdown(summary: dict, meta: dict, env: dict) -> str:
    sweep = "" if meta["no_sweep"] else " + 1 sweep"
    lines = [
        f"{harness.describe(env)}.",
        "",
        f"{meta['cpus']} CPUs (local Ray), {meta['searches']} searches{sweep} per run, {meta['pairs']} "
        f"alternating pairs, medians; anchor {meta['anchor']}, current {meta['current']}.",
        "",
        "| | anchor | current | current / anchor (median of per-pair ratios) |",
        "|---|---|---|---|",
    ]
    for key, s in summary.items():
        lines.append(f"| {METRICS[key][0]} | {s['anchor']:.2f} | {s['current']:.2f} | {s['ratio_median']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_common_args(ap)
    ap.add_argument("--anchor", default="a7af0de", help="commit to compare against")
    ap.add_argument("--pairs", "--rounds", dest="pairs", type=int, default=3, help="alternating anchor/current pairs")
    ap.add_argument("--searches", type=int, default=3)
    ap.add_argument("--no-sweep", action="store_true", help="searches only")
    ap.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray (default: the pinned CPUs)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--repo", default=str(harness.REPO), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    if args.quick:
        args.pairs, args.searches, args.no_sweep = 1, 1, True
    args.ray_cpus = args.ray_cpus or len(harness.parse_cpus(args.cpus))
    env = harness.environment(cpus=args.cpus)
    anchor = harness.checkout(args.anchor)
    runs = itertools.count()
    pairs = harness.alternate(
        {
            "anchor": lambda: _run(anchor, args, f"anchor_{next(runs)}"),
            "current": lambda: _run(harness.REPO, args, f"current_{next(runs)}"),
        },
        args.pairs,
        value=METRICS["later_search_s" if args.searches > 1 else "first_search_s"][1],
        on_result=lambda side, i, r: print(
            f"pair {i + 1} {side}: searches {[round(s, 2) for s in r['searches_s']]} s, sweep {r['sweep_s']}",
            flush=True,
        ),
    )
    summary = summarize(pairs)
    meta = {
        "anchor": anchor.name,
        "current": env["git"]["commit"],
        "cpus": args.ray_cpus,
        "searches": args.searches,
        "pairs": args.pairs,
        "no_sweep": args.no_sweep,
    }
    harness.write_results(
        "repeat",
        {"meta": meta, "summary": summary, "pairs": pairs.to_dict(), "runs": pairs.results},
        env=env,
        config=vars(args),
        markdown=markdown(summary, meta, env),
        out=harness.output_path(args, "repeat"),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
