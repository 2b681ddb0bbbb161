"""Environment of a run: CPU and ISA flags, cores, load, tool versions, git commit."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .jobs import BENCH, RESULTS, _git, job_env, parse_cpus

VERSIONED = ("rayq", "ray", "onnxruntime", "openvino", "optuna", "nncf", "onnx", "numpy")
#: /proc/cpuinfo flags that decide which int8 kernels ONNX Runtime and OpenVINO use.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


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
    return {
        "model": model,
        "isa": {f: f in flags for f in ISA_FLAGS},
        "isa_summary": " ".join(present) or "none of " + "/".join(ISA_FLAGS),
        "logical_cpus": os.cpu_count(),
        "physical_cores": len(cores) or None,
    }


def versions(env: Mapping[str, str] | None = None) -> dict:
    """Installed versions of :data:`VERSIONED` (``None`` if missing) and where rayq is
    imported from, as a job with ``env`` would see them (nothing is imported)."""
    code = (
        "import importlib.metadata as m, importlib.util as u, json, sys\n"
        "def v(n):\n    try:\n        return m.version(n)\n"
        "    except m.PackageNotFoundError:\n        return None\n"
        f"d = {{n: v(n) for n in {VERSIONED!r}}}\n"
        "s = u.find_spec('rayq')\n"
        "d['rayq_path'] = s.submodule_search_locations[0] if s else None\n"
        "d['python'] = sys.version.split()[0]\nprint(json.dumps(d))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=str(BENCH),
        env=dict(env or job_env()),
        timeout=60,
        check=False,
    )
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-500:]}


def git_state() -> dict:
    """Commit (12 hex) of this checkout and whether ``rayq/`` or ``bench/`` have uncommitted changes."""
    return {
        "commit": _git("rev-parse", "--short=12", "HEAD") or None,
        "dirty": bool(_git("status", "--porcelain", "rayq", "bench")),
    }


def environment(
    *, cpus: Sequence[int] | str | None = None, env: Mapping[str, str] | None = None, rayq_source: str = "working tree"
) -> dict:
    """Everything a result needs to be read later: CPU, cores used, load, versions, commit, date."""
    used = parse_cpus(cpus) if cpus is None or isinstance(cpus, str) else list(cpus)
    return {
        "cpu": cpu_info(),
        "cpus_used": used,
        "load_avg_before": list(os.getloadavg()),
        "versions": versions(env),
        "git": git_state(),
        "rayq_source": rayq_source,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def describe(env: Mapping[str, Any]) -> str:
    """One line for a Markdown table's caption."""
    cpu, v = env.get("cpu", {}), env.get("versions", {})
    tools = ", ".join(f"{k} {v[k]}" for k in VERSIONED if v.get(k))
    return (
        f"{cpu.get('model', '?')} ({cpu.get('isa_summary', '?')}), {len(env.get('cpus_used', []))} of "
        f"{cpu.get('logical_cpus', '?')} CPUs; {tools}; commit {env.get('git', {}).get('commit')}"
        f"{' (dirty)' if env.get('git', {}).get('dirty') else ''}; {env.get('date', '?')}; load "
        f"{_fmt_load(env.get('load_avg_before'))} -> {_fmt_load(env.get('load_avg_after') or os.getloadavg())}"
    )


def _fmt_load(load: Sequence[float] | None) -> str:
    return "?" if not load else f"{load[0]:.1f}"


def write_results(
    name: str,
    results: Any,
    *,
    env: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    markdown: str | None = None,
    out: Path | str | None = None,
) -> Path:
    """Write ``{benchmark, environment, config, results, markdown}`` to ``out`` (default
    ``bench/results/<name>.json``), replacing the previous run; print the Markdown."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    env = dict(env, load_avg_after=list(os.getloadavg()))
    payload = {
        "benchmark": name,
        "environment": env,
        "config": _jsonable(config or {}),
        "results": results,
        "markdown": markdown,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    if markdown:
        print(markdown)
    print(f"wrote {path}", flush=True)
    return path


def _jsonable(config: Mapping[str, Any]) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in config.items() if not callable(v)}
