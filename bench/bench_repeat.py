"""Repeated searches and a sweep in one job: what a notebook session or ``rayq sweep``
pays per search once Ray is up, against an anchor commit, in one run.

    python bench/bench_repeat.py --anchor a7af0de          # rayq at HEAD vs a7af0de

Each round runs, once for the anchor (a ``git worktree`` of ``--anchor``) and once
for this checkout, in alternating fresh driver processes on a local Ray with
``--cpus`` CPUs: ``--searches`` back-to-back searches of ``configs/search_digits.yaml``
(``num_workers`` = all CPUs, as in a notebook), then ``configs/sweep.yaml`` through
``run_sweep`` (2 searches at once, each with all CPUs: the Python API's default).
Every search and sweep starts with an empty statistics cache and output. Reported:
the median over rounds of the per-search wall time (first search and later ones
apart) and of the sweep's wall time, and the ratio this checkout / anchor.
Results go to ``--out`` (JSON) and next to it as Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(args: argparse.Namespace) -> int:
    import rayq
    from rayq.api.config import load
    from rayq.api.search import search_from_config
    from rayq.api.sweep import run_sweep

    work = tempfile.mkdtemp(prefix="rayq-bench-repeat-")
    rayq.init(num_cpus=args.cpus, include_dashboard=False)
    searches = []
    cfg = load(os.path.join(args.repo, "configs", "search_digits.yaml"))
    for i in range(args.searches):
        os.environ["RAYQ_CACHE_DIR"] = os.path.join(work, f"cache{i}")
        t = time.perf_counter()
        search_from_config(cfg, output=os.path.join(work, f"search{i}"), num_workers=args.cpus)
        searches.append(time.perf_counter() - t)
    sweep = load(os.path.join(args.repo, "configs", "sweep.yaml"))
    sweep = dataclasses.replace(sweep, output=os.path.join(work, "sweep"))
    os.environ["RAYQ_CACHE_DIR"] = os.path.join(work, "cache-sweep")
    t = time.perf_counter()
    table = run_sweep(sweep)
    sweep_s = time.perf_counter() - t
    rayq.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"rayq": os.path.dirname(rayq.__file__), "searches_s": searches, "sweep_s": sweep_s,
                      "sweep_status": list(table.status), "sweep_search_s": list(table.search_seconds)}))
    return 0


def _run(repo: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=repo, RAYQ_PROGRESS="off")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--repo", repo, "--cpus", str(args.cpus),
           "--searches", str(args.searches)]
    out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise RuntimeError(f"benchmark child failed in {repo}:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["rayq"].startswith(repo):
        raise RuntimeError(f"the child imported rayq from {result['rayq']}, not {repo}")
    return result


def _summary(runs: list[dict]) -> dict:
    med = statistics.median
    return {"first_search_s": med(r["searches_s"][0] for r in runs),
            "later_search_s": med(s for r in runs for s in r["searches_s"][1:]),
            "sweep_s": med(r["sweep_s"] for r in runs)}


def _commit(repo: str, rev: str = "HEAD") -> str:
    return subprocess.run(["git", "-C", repo, "rev-parse", "--short=12", rev], capture_output=True, text=True,
                          check=True).stdout.strip()


def markdown(out: dict) -> str:
    m = out["meta"]
    lines = [f"{m['cpus']} CPUs (local Ray), {m['searches']} searches + 1 sweep per round, {m['rounds']} rounds, "
             f"medians; anchor {m['anchor']}, current {m['current']}; {m['date']}.", "",
             "| | anchor | current | current / anchor |", "|---|---|---|---|"]
    for key, label in (("first_search_s", "first search of the job (s)"),
                       ("later_search_s", "each later search (s)"), ("sweep_s", "sweep of 2 models (s)")):
        a, c = out["anchor"][key], out["current"][key]
        lines.append(f"| {label} | {a:.2f} | {c:.2f} | {c / a:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchor", default="a7af0de", help="commit to compare against")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--searches", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--out", default="bench/results/repeat.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--repo", default=REPO, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    anchor_dir = tempfile.mkdtemp(prefix="rayq-anchor-")
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", anchor_dir, args.anchor], check=True,
                   capture_output=True)
    try:
        runs: dict[str, list] = {"anchor": [], "current": []}
        for r in range(args.rounds):
            for name, repo in (("anchor", anchor_dir), ("current", REPO)):
                runs[name].append(_run(repo, args))
                print(f"round {r + 1} {name}: searches {[round(s, 2) for s in runs[name][-1]['searches_s']]} s, "
                      f"sweep {runs[name][-1]['sweep_s']:.2f} s", flush=True)
    finally:
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", anchor_dir], capture_output=True)
    meta = {"anchor": _commit(REPO, args.anchor), "current": _commit(REPO), "cpus": args.cpus,
            "searches": args.searches, "rounds": args.rounds,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    out = {"meta": meta, "anchor": _summary(runs["anchor"]), "current": _summary(runs["current"]), "runs": runs}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    md = markdown(out)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
