"""Jobs: conventional flags, a measurement in a fresh process (:func:`run_job`), its
result line (:func:`emit`), its environment (:func:`job_env`), frozen trees (:func:`checkout`)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
RESULTS = BENCH / "results"
WORK = BENCH / ".cache"
RESULT_PREFIX = "RESULT "


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
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result JSON (default: bench/results/<name>.json; with --quick bench/.cache/quick/)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smallest sizes: a smoke test of the entry point (never overwrites bench/results/)",
    )
    ap.add_argument("--cpus", default=None, help="CPU ids the jobs are pinned to, e.g. 0-1 (default: all of ours)")
    ap.add_argument("--job-timeout", type=float, default=3600, help="seconds before a job is killed")


def output_path(args: argparse.Namespace, name: str) -> Path:
    """Where ``name``'s result goes: ``--out``, else ``results/`` (``.cache/quick/`` with ``--quick``)."""
    if getattr(args, "out", None):
        return Path(args.out).resolve()
    return (WORK / "quick" if getattr(args, "quick", False) else RESULTS) / f"{name}.json"


def emit(result: Mapping[str, Any]) -> None:
    """Print a job's result as the ``RESULT {json}`` line :func:`run_job` reads back."""
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)


def parse_result(text: str) -> dict | None:
    """The last ``RESULT {json}`` line of a job's output, or ``None``."""
    for line in reversed(text.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return None


def job_env(tree: Path | str = REPO, **extra: str) -> dict[str, str]:
    """Environment for a job: rayq from ``tree`` (then ``bench/``) first on ``PYTHONPATH``,
    unbuffered output, progress as log lines, and no ``RAY_ADDRESS`` (a private Ray)."""
    path = [str(tree), str(BENCH), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p), PYTHONUNBUFFERED="1", RAYQ_PROGRESS="log")
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def run_job(
    cmd: Sequence[str],
    *,
    log: Path | str,
    timeout: float | None = None,
    cpus: Sequence[int] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    quiet: bool = False,
) -> dict:
    """Run ``cmd`` in a fresh process (its own session, pinned to ``cpus``), output to ``log``.

    Returns ``wall_s``, ``cpu_s`` (user+sys of the job and the children it reaped),
    ``peak_rss_mb`` (largest RSS among them), ``returncode``, ``timed_out``, ``log``,
    ``load1_before``/``load1_after`` and ``result`` (its :func:`emit` line, or ``None``);
    on failure also ``error`` and ``log_tail``. Never raises for a failed job."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before, start = os.getloadavg()[0], time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env or job_env()),
            cwd=str(cwd or REPO),
            start_new_session=True,
        )
        if cpus:  # before the interpreter is up, so its children inherit it
            os.sched_setaffinity(proc.pid, list(cpus))
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
    job = {
        "wall_s": time.perf_counter() - start,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "returncode": proc.returncode,
        "timed_out": fired.is_set(),
        "log": str(log),
        "load1_before": load_before,
        "load1_after": os.getloadavg()[0],
        "result": parse_result(text),
    }
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


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""
