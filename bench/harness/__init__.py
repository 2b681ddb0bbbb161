"""The one harness every benchmark under ``bench/`` is built on (``import harness``
from a script in ``bench/``).

What it gives a benchmark script:

* **Jobs** -- :func:`run_job` runs one command in a fresh process (optionally pinned to
  CPUs), with a timeout that kills its whole process group, and returns its wall time,
  CPU seconds, peak RSS, exit code, log path, the 1-minute load average before and after,
  and the result the job printed with :func:`emit` (a ``RESULT {json}`` line). A job is
  usually the benchmark script itself with a hidden sub-command. :func:`job_env` is the
  environment for it: ``PYTHONPATH`` = the rayq tree under test (+ ``bench/``), no
  ``RAY_ADDRESS`` (every job starts its own private Ray); :func:`checkout` freezes a git
  ref into a directory (``git archive``), so a long run is immune to edits of the tree;
  :func:`first_attr` finds a rayq name that moved between commits (anchor trees).
* **Environment** -- :func:`environment`: CPU model, the ISA flags that decide int8
  kernels (AVX2, AVX-512, VNNI, AMX), logical and physical cores, the CPUs used, the
  load average, versions of rayq/ray/onnxruntime/openvino/optuna/nncf/onnx/numpy (read
  in a subprocess with the jobs' environment, without importing them), the git commit.
* **Runners** -- :data:`RUNTIMES` (``ort``/``ov``: one session per model file with the
  settings rayq measures with), :func:`outputs`, :func:`nmse`, :func:`mean_cosine`.
* **Timing** -- :func:`interleaved_latency` times several models against each other with
  the library's own interleaved timing (:func:`rayq.pipeline.latency.time_rounds`:
  rotating turns of warm-up + a block of timed calls), so the benchmark measures exactly
  as a search does; :func:`paired_ratio` is the median of per-round ratios.
  :func:`alternate` runs two sides (before/after, on/off, anchor/current) as A/B pairs in
  alternating order (AB, BA, AB, ...) and reports each side's median and the median of
  the per-pair ratios: the machines here are shared and noisy, ratios of neighbours are
  what survives the noise.
* **Results** -- :func:`write_results` writes ``bench/results/<name>.json``: only the
  latest run, with its environment (load average after, added at write time), config,
  results and the Markdown table; history lives in git. :func:`add_common_args` adds the
  conventional flags (``--out``, ``--quick``, ``--cpus``, ``--job-timeout``); ``--quick``
  (the smallest sizes, a smoke test of the entry point) writes under ``bench/.cache/quick/``
  so it never overwrites a published result.

The package imports only the standard library at import time (rayq is imported lazily
by :func:`interleaved_latency`), so orchestrators stay small and jobs pick the rayq
tree they are given.

Example (a benchmark with a job and an A/B pair)::

    import argparse, sys, time
    import harness

    def job(args):                       # runs in a fresh process
        t0 = time.perf_counter()
        ...                              # the measured work, with or without args.on
        harness.emit({"seconds": time.perf_counter() - t0})

    def main(argv=None):
        ap = argparse.ArgumentParser(description="my benchmark")
        harness.add_common_args(ap)
        ap.add_argument("--job", action="store_true", help=argparse.SUPPRESS)
        ap.add_argument("--on", action="store_true", help="the option under test")
        args = ap.parse_args(argv)
        if args.job:
            return job(args)
        env = harness.environment(cpus=args.cpus)
        cmd = [sys.executable, __file__, "--job"]
        pairs = harness.alternate(          # off, on, on, off, off, on
            {"off": lambda: harness.run_job(cmd, log=harness.WORK / "mine" / "off.log", cpus=[0, 1]),
             "on": lambda: harness.run_job(cmd + ["--on"], log=harness.WORK / "mine" / "on.log")},
            pairs=3, value=lambda job: job["result"]["seconds"])
        # pairs.median("on"), pairs.ratio_median (on / off, the median of the 3 pairs' ratios)
        harness.write_results("mine", pairs.to_dict(), env=env, config=vars(args),
                              out=harness.output_path(args, "mine"))

    # timing models against each other (ms), as rayq's search times candidates:
    lat = harness.interleaved_latency({"fp32": run_fp32, "int8": run_int8}, feeds, runs=100)
    harness.paired_ratio(lat["int8"]["rounds_ms"], lat["fp32"]["rounds_ms"])
"""

from .environment import (
    ISA_FLAGS,
    VERSIONED,
    cpu_info,
    describe,
    environment,
    git_state,
    versions,
    write_results,
)
from .jobs import (
    BENCH,
    REPO,
    RESULT_PREFIX,
    RESULTS,
    WORK,
    add_common_args,
    checkout,
    emit,
    first_attr,
    job_env,
    output_path,
    parse_cpus,
    parse_result,
    run_job,
)
from .timing import (
    RUNTIMES,
    Pairs,
    Runner,
    alternate,
    interleaved_latency,
    mean_cosine,
    nmse,
    ort_runner,
    outputs,
    ov_runner,
    paired_ratio,
    summarize,
)

__all__ = [
    "BENCH",
    "ISA_FLAGS",
    "REPO",
    "RESULTS",
    "RESULT_PREFIX",
    "RUNTIMES",
    "VERSIONED",
    "WORK",
    "Pairs",
    "Runner",
    "add_common_args",
    "alternate",
    "checkout",
    "cpu_info",
    "describe",
    "emit",
    "environment",
    "first_attr",
    "git_state",
    "interleaved_latency",
    "job_env",
    "mean_cosine",
    "nmse",
    "ort_runner",
    "output_path",
    "outputs",
    "ov_runner",
    "paired_ratio",
    "parse_cpus",
    "parse_result",
    "run_job",
    "summarize",
    "versions",
    "write_results",
]
