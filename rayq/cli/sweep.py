"""``rayq sweep``: many searches in one job, with a summary table."""

from __future__ import annotations

import argparse
import time

from rayq.api.config import SweepConfig
from rayq.cli.common import UNSET, build_config, ray_scope, warn_relative_job_output
from rayq.errors import ConfigError
from rayq.storage import check_free, check_output, resolve

HELP = "run the search for many models (concurrently, resumable) and summarise"
DESCRIPTION = """\
Runs one accuracy-controlled search per model (a list or glob in the config, with
shared defaults), at most --max-concurrent at a time, each with an equal share of
the cluster's CPUs. A model that fails is recorded in the summary and the others go
on. Writes summary.parquet and summary.md plus one folder per model (named by the
model's 'name': letters, digits, '_', '-', '.'); a rerun skips finished models and
resumes unfinished studies. One sweep at a time may use an output folder."""
EPILOG = """\
examples:
  rayq sweep --config configs/sweep.yaml
  ray job submit --working-dir . -- rayq sweep --config configs/sweep.yaml --output s3://bucket/sweep"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    u = argparse.SUPPRESS
    p.add_argument("--config", metavar="FILE", required=True, help="sweep YAML (see configs/sweep.yaml)")
    p.add_argument("--output", "-o", default=u, metavar="DIR_OR_URI")
    p.add_argument("--max-concurrent", type=int, default=u, help="searches at once (default 2)")
    p.add_argument("--address", default=u, help="Ray address (default: RAY_ADDRESS, else a local Ray)")


def run(args: argparse.Namespace) -> int:
    from rayq.api.sweep import expand, run_sweep
    from rayq.distributed.cluster import cluster_cpus, init

    given = vars(args)
    cfg: SweepConfig = build_config(
        "sweep", args.config, {k: given.get(k, UNSET) for k in ("output", "max_concurrent", "address")}
    )
    if not cfg.output:
        raise ConfigError("a sweep needs an output")
    warn_relative_job_output(cfg.output)
    check_output(resolve(cfg.output), folder=True)  # bad outputs and model names fail before Ray starts
    check_free(cfg.output)
    expand(cfg)
    start = time.perf_counter()
    with ray_scope(cfg.address, True):
        init(cfg.address)
        table = run_sweep(cfg, num_cpus=cluster_cpus())
    ok = int((table.status == "met").sum())
    slow = int((table.status == "no_speedup").sum())
    print(
        f"rayq sweep: {len(table)} models in {time.perf_counter() - start:.1f}s: {ok} met the budget and beat "
        f"FP32, {slow} within budget but not significantly faster, "
        f"{int((table.status == 'error').sum())} failed; summary in {cfg.output}/summary.md"
    )
    print(table.drop(columns=["output"]).to_string(index=False), flush=True)
    return 0 if (table.status != "error").all() else 1
