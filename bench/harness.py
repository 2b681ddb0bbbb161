"""The one harness every benchmark under ``bench/`` is built on.

What it gives a benchmark script:

* **Jobs** -- :func:`run_job` runs one command in a fresh process (optionally pinned to
  CPUs), with a timeout that kills its whole process group, and returns its wall time,
  CPU seconds, peak RSS, exit code, log path, the 1-minute load average before and after,
  and the result the job printed with :func:`emit` (a ``RESULT {json}`` line). A job is
  usually the benchmark script itself with a hidden sub-command. :func:`job_env` is the
  environment for it: ``PYTHONPATH`` = the rayq tree under test (+ ``bench/``), no
  ``RAY_ADDRESS`` (every job starts its own private Ray); :func:`checkout` freezes a git
  ref into a directory (``git archive``), so a long run is immune to edits of the tree.
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

This module imports only the standard library at import time (rayq is imported lazily
by :func:`interleaved_latency`), so orchestrators stay small and jobs pick the rayq
tree they are given.

Example (a benchmark with a job and an A/B pair)::

    import argparse, sys, time
    import harness

    def job(args):                       # runs in a fresh process
        t0 = time.perf_counter()
        ...                              # the measured work
        harness.emit({"seconds": time.perf_counter() - t0})

    def main(argv=None):
        ap = argparse.ArgumentParser(description="my benchmark")
        harness.add_common_args(ap)
        ap.add_argument("--job", action="store_true", help=argparse.SUPPRESS)
        args = ap.parse_args(argv)
        if args.job:
            return job(args)
        env = harness.environment(cpus=args.cpus)
        cmd = [sys.executable, __file__, "--job"]
        pairs = harness.alternate(
            {"off": lambda: harness.run_job(cmd, log=harness.WORK / "off.log"),
             "on": lambda: harness.run_job(cmd + ["--on"], log=harness.WORK / "on.log")},
            pairs=3, value=lambda r: r["result"]["seconds"])
        harness.write_results("mine", pairs.to_dict(), env=env, config=vars(args),
                              out=harness.output_path(args, "mine"))
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
WORK = BENCH / ".cache"
RESULT_PREFIX = "RESULT "
VERSIONED = ("rayq", "ray", "onnxruntime", "openvino", "optuna", "nncf", "onnx", "numpy")
#: /proc/cpuinfo flags that decide which int8 kernels ONNX Runtime and OpenVINO use.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


# ------------------------------------------------------------------------------ arguments


def parse_cpus(text: str | None) -> list[int]:
    """``"0-3,6"`` -> ``[0, 1, 2, 3, 6]``; ``None``/empty -> this process's affinity."""
    if not text:
        return sorted(os.sched_getaffinity(0))
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """``--out``, ``--quick``, ``--cpus`` and ``--job-timeout``, the same in every benchmark."""
    ap.add_argument("--out", type=Path, default=None,
                    help="result JSON (default: bench/results/<name>.json; with --quick bench/.cache/quick/)")
    ap.add_argument("--quick", action="store_true",
                    help="smallest sizes: a smoke test of the entry point (never overwrites bench/results/)")
    ap.add_argument("--cpus", default=None, help="CPU ids the jobs are pinned to, e.g. 0-1 (default: all of ours)")
    ap.add_argument("--job-timeout", type=float, default=3600, help="seconds before a job is killed")


def output_path(args: argparse.Namespace, name: str) -> Path:
    """Where ``name``'s result goes: ``--out``, else ``results/`` (``.cache/quick/`` with ``--quick``)."""
    if getattr(args, "out", None):
        return Path(args.out).resolve()
    return (WORK / "quick" if getattr(args, "quick", False) else RESULTS) / f"{name}.json"


# ------------------------------------------------------------------------------ jobs


def emit(result: Mapping[str, Any]) -> None:
    """Print a job's result as the ``RESULT {json}`` line :func:`run_job` reads back."""
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)


def parse_result(text: str) -> dict | None:
    """The last ``RESULT {json}`` line of a job's output, or ``None``."""
    for line in reversed(text.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return None


def job_env(tree: Path | str = REPO, **extra: str) -> dict[str, str]:
    """Environment for a job: rayq from ``tree`` (then ``bench/``) first on ``PYTHONPATH``,
    unbuffered output, progress as log lines, and no ``RAY_ADDRESS`` (a private Ray)."""
    path = [str(tree), str(BENCH), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p), PYTHONUNBUFFERED="1",
               RAYQ_PROGRESS="log")
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def run_job(cmd: Sequence[str], *, log: Path | str, timeout: float | None = None, cpus: Sequence[int] | None = None,
            env: Mapping[str, str] | None = None, cwd: Path | str | None = None, quiet: bool = False) -> dict:
    """Run ``cmd`` in a fresh process (its own session, pinned to ``cpus``), output to ``log``.

    Returns ``wall_s``, ``cpu_s`` (user+sys of the job and the children it reaped),
    ``peak_rss_mb`` (largest RSS among them), ``returncode``, ``timed_out``, ``log``,
    ``load1_before``/``load1_after`` and ``result`` (its :func:`emit` line, or ``None``);
    on failure also ``error`` and ``log_tail``. Never raises for a failed job."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    pin = (lambda: os.sched_setaffinity(0, list(cpus))) if cpus else None
    load_before, start = os.getloadavg()[0], time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=dict(env or job_env()),
                                cwd=str(cwd or REPO), start_new_session=True, preexec_fn=pin)
        fired = threading.Event()
        timer = threading.Timer(timeout, _kill_group, (proc.pid, fired)) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C or an error here: the job has its own session, end it too
            _kill_group(proc.pid, fired)
            raise
        finally:
            if timer:
                timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    job = {"wall_s": time.perf_counter() - start, "cpu_s": usage.ru_utime + usage.ru_stime,
           "peak_rss_mb": usage.ru_maxrss / 1024, "returncode": proc.returncode, "timed_out": fired.is_set(),
           "log": str(log), "load1_before": load_before, "load1_after": os.getloadavg()[0],
           "result": parse_result(text)}
    if proc.returncode != 0 or job["result"] is None:
        job["error"] = "timed out" if fired.is_set() else f"exit code {proc.returncode}"
        job["log_tail"] = text.splitlines()[-25:]
        if not quiet:
            print(f"  FAILED ({job['error']}): {' '.join(map(str, cmd))[:200]}; see {log}", flush=True)
    return job


def _kill_group(pid: int, fired: threading.Event) -> None:
    fired.set()
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def checkout(ref: str, root: Path | str = WORK / "trees") -> Path:
    """The tree of git ``ref`` as a directory (``git archive``, cached by commit): a
    frozen rayq to put first on a job's ``PYTHONPATH`` (:func:`job_env`)."""
    sha = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    if not sha:
        raise SystemExit(f"not a commit here: {ref!r}")
    dest = Path(root) / sha[:12]
    if not (dest / "rayq" / "__init__.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def first_attr(*names: str) -> Any:
    """``module:attr`` from the first of ``names`` that imports: a benchmark that runs
    rayq at another commit (an anchor tree) finds names that moved between commits.

    Example:
        >>> first_attr("no.such.module:x", "os.path:join") is os.path.join
        True
    """
    import importlib

    for name in names:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {names} can be imported")


# ------------------------------------------------------------------------------ environment


def cpu_info(cpuinfo: str | None = None) -> dict:
    """CPU model, ISA flags (:data:`ISA_FLAGS`), logical and physical cores, from ``/proc/cpuinfo``."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags, cores = platform.processor() or platform.machine(), set(), set()
    phys = core = None
    for line in cpuinfo.splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "model name":
            model = value
        elif key == "flags":
            flags = set(value.split())
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
            cores.add((phys, core))
    present = [f for f in ISA_FLAGS if f in flags]
    return {"model": model, "isa": {f: f in flags for f in ISA_FLAGS},
            "isa_summary": " ".join(present) or "none of " + "/".join(ISA_FLAGS),
            "logical_cpus": os.cpu_count(), "physical_cores": len(cores) or None}


def versions(env: Mapping[str, str] | None = None) -> dict:
    """Installed versions of :data:`VERSIONED` (``None`` if missing) and where rayq is
    imported from, as a job with ``env`` would see them (nothing is imported)."""
    code = ("import importlib.metadata as m, importlib.util as u, json, sys\n"
            "def v(n):\n    try:\n        return m.version(n)\n    except m.PackageNotFoundError:\n        return None\n"
            f"d = {{n: v(n) for n in {VERSIONED!r}}}\n"
            "s = u.find_spec('rayq'); d['rayq_path'] = s.submodule_search_locations[0] if s else None\n"
            "d['python'] = sys.version.split()[0]\nprint(json.dumps(d))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(BENCH),
                         env=dict(env or job_env()), timeout=60)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-500:]}


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def git_state() -> dict:
    """Commit (12 hex) of this checkout and whether ``rayq/`` or ``bench/`` have uncommitted changes."""
    return {"commit": _git("rev-parse", "--short=12", "HEAD") or None,
            "dirty": bool(_git("status", "--porcelain", "rayq", "bench"))}


def environment(*, cpus: Sequence[int] | str | None = None, env: Mapping[str, str] | None = None,
                rayq_source: str = "working tree") -> dict:
    """Everything a result needs to be read later: CPU, cores used, load, versions, commit, date."""
    used = parse_cpus(cpus) if cpus is None or isinstance(cpus, str) else list(cpus)
    return {"cpu": cpu_info(), "cpus_used": used, "load_avg_before": list(os.getloadavg()),
            "versions": versions(env), "git": git_state(), "rayq_source": rayq_source,
            "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}


def describe(env: Mapping[str, Any]) -> str:
    """One line for a Markdown table's caption."""
    cpu, v = env.get("cpu", {}), env.get("versions", {})
    tools = ", ".join(f"{k} {v[k]}" for k in VERSIONED if v.get(k))
    return (f"{cpu.get('model', '?')} ({cpu.get('isa_summary', '?')}), {len(env.get('cpus_used', []))} of "
            f"{cpu.get('logical_cpus', '?')} CPUs; {tools}; commit {env.get('git', {}).get('commit')}"
            f"{' (dirty)' if env.get('git', {}).get('dirty') else ''}; {env.get('date', '?')}; load "
            f"{_fmt_load(env.get('load_avg_before'))} -> {_fmt_load(env.get('load_avg_after') or os.getloadavg())}")


def _fmt_load(load: Sequence[float] | None) -> str:
    return "?" if not load else f"{load[0]:.1f}"


# ------------------------------------------------------------------------------ timing


def interleaved_latency(runners: Mapping[str, Callable[[Any], Any]], feeds: Any, *, runs: int = 30,
                        warmup: int = 5, block: int = 10) -> dict[str, dict]:
    """Batch latency of every runner, timed against each other with the library's
    :func:`rayq.pipeline.latency.time_rounds`: ``ceil(runs / block)`` rounds, each giving
    every runner a turn of ``warmup`` untimed then ``block`` timed calls, in an order
    rotating by round. Per runner (ms): ``median_ms``, ``q1_ms``, ``q3_ms``, ``min_ms``,
    ``runs``, ``times_ms`` and ``rounds_ms`` (each round's median, aligned across runners:
    :func:`paired_ratio`)."""
    from rayq.pipeline.latency import time_rounds

    names = list(runners)
    block = max(1, min(block, runs))
    rounds = time_rounds([runners[n] for n in names], feeds, warmup=warmup, rounds=math.ceil(runs / block),
                         block=block)
    out = {}
    for name, per_round in zip(names, rounds):
        times = [t for r in per_round for t in r]
        out[name] = dict(summarize(times), times_ms=times, rounds_ms=[statistics.median(r) for r in per_round])
    return out


def summarize(times: Sequence[float]) -> dict:
    """Median, quartiles, minimum and count of ``times``."""
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median_ms": statistics.median(times), "q1_ms": q[0], "q3_ms": q[2], "min_ms": min(times),
            "runs": len(times)}


def paired_ratio(a: Sequence[float] | None, b: Sequence[float] | None) -> float | None:
    """Median over aligned samples of ``a[i] / b[i]`` (``None`` when either is missing)."""
    if not a or not b:
        return None
    return statistics.median(x / y for x, y in zip(a, b))


@dataclass
class Pairs:
    """Two sides run as alternating A/B pairs (:func:`alternate`)."""

    a: str
    b: str
    values: dict[str, list[float]]
    order: list[str]
    results: dict[str, list[Any]] = field(default_factory=dict)

    def median(self, side: str) -> float:
        return statistics.median(self.values[side])

    @property
    def ratios(self) -> list[float]:
        """``b / a`` of each pair."""
        return [y / x for x, y in zip(self.values[self.a], self.values[self.b])]

    @property
    def ratio_median(self) -> float:
        return statistics.median(self.ratios)

    def summary(self, value: Callable[[Any], float]) -> dict:
        """Each side's median of ``value(result)`` and the median of the per-pair ratios b/a."""
        va, vb = ([float(value(r)) for r in self.results[s]] for s in (self.a, self.b))
        return {self.a: statistics.median(va), self.b: statistics.median(vb), "ratio_median": paired_ratio(vb, va)}

    def to_dict(self) -> dict:
        return {"sides": [self.a, self.b], "order": self.order, "values": self.values,
                "median": {s: self.median(s) for s in (self.a, self.b)}, "ratios": self.ratios,
                "ratio_median": self.ratio_median, "ratio": f"{self.b} / {self.a}"}


def alternate(sides: Mapping[str, Callable[[], Any]], pairs: int, *, value: Callable[[Any], float] = float,
              on_result: Callable[[str, int, Any], None] | None = None) -> Pairs:
    """Run the two callables of ``sides`` ``pairs`` times each, alternating the order
    (pair 0: A then B, pair 1: B then A, ...) so neither always runs second. ``value``
    turns a call's return into the measured number; ``on_result(side, pair, result)`` is
    called after each call (progress output)."""
    (a, run_a), (b, run_b) = sides.items()
    out = Pairs(a, b, {a: [], b: []}, [], {a: [], b: []})
    for i in range(pairs):
        for side, run in ((a, run_a), (b, run_b)) if i % 2 == 0 else ((b, run_b), (a, run_a)):
            result = run()
            out.order.append(side)
            out.results[side].append(result)
            out.values[side].append(float(value(result)))
            if on_result:
                on_result(side, i, result)
    return out


# ------------------------------------------------------------------------------ runners and output error

Runner = Callable[[Any], Any]


def ort_runner(path: str, threads: int) -> Runner:
    """An ONNX Runtime session for ``path``, returning the first output: the settings of
    rayq's own runner (sequential, all graph optimisations, ``threads`` intra-op, 1 inter-op)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    first = sess.get_outputs()[0].name
    return lambda feeds: sess.run([first], feeds)[0]


def ov_runner(path: str, threads: int) -> Runner:
    """An OpenVINO CPU compiled model for ``path`` (.onnx or .xml), first output (f32 precision hint)."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()
    out = compiled.outputs[0]
    return lambda feeds: np.array(request.infer(feeds)[out])


RUNTIMES: dict[str, Callable[[str, int], Runner]] = {"ort": ort_runner, "ov": ov_runner}


def outputs(run: Runner, inputs: Sequence[Any]) -> Any:
    """First output for every held-out input, stacked along axis 0 (as float64)."""
    import numpy as np

    return np.concatenate([np.asarray(run(x), dtype=np.float64) for x in inputs], axis=0)


def nmse(ref: Any, got: Any) -> float:
    """Mean over samples of ``||got - ref||^2 / ||ref||^2``."""
    import numpy as np

    ref, got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    return float((((got - ref) ** 2).sum(1) / np.maximum((ref ** 2).sum(1), 1e-30)).mean())


def mean_cosine(ref: Any, got: Any) -> float:
    """Mean row cosine similarity (rows = samples, flattened)."""
    import numpy as np

    ref, got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-30)
    return float(cos.mean())


# ------------------------------------------------------------------------------ results


def write_results(name: str, results: Any, *, env: Mapping[str, Any], config: Mapping[str, Any] | None = None,
                  markdown: str | None = None, out: Path | str | None = None) -> Path:
    """Write ``{benchmark, environment, config, results, markdown}`` to ``out`` (default
    ``bench/results/<name>.json``), replacing the previous run; print the Markdown."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    env = dict(env, load_avg_after=list(os.getloadavg()))
    payload = {"benchmark": name, "environment": env, "config": _jsonable(config or {}), "results": results,
               "markdown": markdown}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    if markdown:
        print(markdown)
    print(f"wrote {path}", flush=True)
    return path


def _jsonable(config: Mapping[str, Any]) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in config.items() if not callable(v)}
