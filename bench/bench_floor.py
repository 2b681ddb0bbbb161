"""Quantize time vs one pipelined FP32 pass (the physical floor), and vs NNCF.

For ResNet-50 (torchvision architecture, random weights with re-estimated BatchNorm
statistics, exported to ONNX with a dynamic batch dim, built offline into
``bench/.cache/floor``) and N calibration items (``{"input": float32[1, 3, S, S]}``,
standard normal, seed 0), one process measures, in alternating rounds (the order of the
six timings rotates every round; medians over rounds):

* the floor, one pipelined FP32 pass over the same items:
  - OpenVINO: ``compile_model(..., {"PERFORMANCE_HINT": "THROUGHPUT",
    "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": T})`` and an
    ``AsyncInferQueue`` of the optimal number of requests, one item per request
    (the measurement of issue #12);
  - ONNX Runtime: one session (``intra_op_num_threads=T``, sequential, all graph
    optimisations), items concatenated into batches of 8 (the best one-pass
    equivalent: ORT has no async queue);
  compile/session creation is inside the timed region, as rayq has to do it too;
* ``rayq.quantize(..., num_workers=1, cache=False)`` in-process: ONNX path -> the ONNX
  backend (statistics on ONNX Runtime), ``ov.convert_model(path)`` -> the OpenVINO backend;
* ``nncf.quantize`` on the same model objects and the same items (``subset_size=N``).

Usage::

    python bench/bench_floor.py --items 300 --size 224 --rounds 3     # -> bench/results/floor.json
    python bench/bench_floor.py --quick                               # 16 items, 64x64, 1 round

No Ray is started (num_workers=1). The model build needs torch/torchvision (CPU). The
result is written after every round with :func:`harness.write_results` (``environment``:
the machine; ``results``: the timings, medians and ratios); ``--cpus`` pins this process
(and the ``--before`` jobs, run by :func:`harness.run_job`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time
import types
from collections.abc import Callable

import harness
import numpy as np

CACHE = pathlib.Path(__file__).resolve().parent / ".cache" / "floor"


def build_resnet50(size: int, out: pathlib.Path = CACHE) -> pathlib.Path:
    """torchvision resnet50, random weights (seed 0), BN statistics re-estimated, ONNX opset 17."""
    path = out / f"resnet50_{size}_dyn.onnx"
    if path.exists():
        return path
    import torch

    # the installed torchvision's C extension (nms) does not load: stub its fake-kernel module
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = tvm.resnet50()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, size, size, generator=gen))
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (torch.randn(1, 3, size, size),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        do_constant_folding=True,
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path


def make_items(n: int, size: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"input": rng.standard_normal((1, 3, size, size), dtype=np.float32)} for _ in range(n)]


# ---------------------------------------------------------------- the floor


def floor_ov(path: str, items, threads: int) -> float:
    """One FP32 pass: THROUGHPUT + f32 hints, AsyncInferQueue, one item per request."""
    import openvino as ov

    t0 = time.perf_counter()
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(path),
        "CPU",
        {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads},
    )
    nreq = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    queue = ov.AsyncInferQueue(compiled, nreq)
    sink = []
    queue.set_callback(lambda req, _: sink.append(float(req.get_output_tensor(0).data[0, 0])))
    for item in items:
        queue.start_async(item)
    queue.wait_all()
    assert len(sink) == len(items)
    return time.perf_counter() - t0


def floor_ort(path: str, items, threads: int, batch: int = 8) -> float:
    """One FP32 pass: one ORT session (:func:`harness.ort_runner`, T intra-op threads),
    items in batches of ``batch``."""
    t0 = time.perf_counter()
    run = harness.ort_runner(path, threads)
    for start in range(0, len(items), batch):
        run({"input": np.concatenate([it["input"] for it in items[start : start + batch]])})
    return time.perf_counter() - t0


def floor_ort_streams(path: str, items, threads: int, batch: int = 8) -> float:
    """One FP32 pass: one ORT session of 1 intra-op thread, run from ``threads`` threads at
    once (ORT's ``run`` is thread-safe), batches of ``batch``."""
    import threading

    t0 = time.perf_counter()
    run = harness.ort_runner(path, 1)
    starts = list(range(0, len(items), batch))

    def work(mine):
        for start in mine:
            run({"input": np.concatenate([it["input"] for it in items[start : start + batch]])})

    pool = [threading.Thread(target=work, args=(starts[i::threads],)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.perf_counter() - t0


# ---------------------------------------------------------------- the tools


def rayq_quantize(model, items) -> float:
    import rayq

    t0 = time.perf_counter()
    rayq.quantize(model, items, subset_size=len(items), num_workers=1, cache=False)
    return time.perf_counter() - t0


def nncf_quantize(model_fn: Callable, items) -> float:
    import nncf

    model = model_fn()
    t0 = time.perf_counter()
    nncf.quantize(model, nncf.Dataset(items), subset_size=len(items))
    return time.perf_counter() - t0


# ---------------------------------------------------------------- driver


def rayq_subprocess(pythonpath: str, backend: str, args) -> tuple[float, float]:
    """``rayq_<backend>`` timed in a fresh process (:func:`harness.run_job`) importing rayq
    from ``pythonpath`` (an older commit, for before/after); warm-up there too. Returns
    (wall s, CPU s) of the timed call."""
    cmd = [sys.executable, __file__, "--job", f"rayq_{backend}"]
    cmd += ["--items", str(args.items), "--size", str(args.size), "--threads", str(args.threads)]
    job = harness.run_job(
        cmd,
        log=harness.WORK / "floor" / f"rayqbefore_{backend}.log",
        timeout=args.job_timeout,
        cpus=args.cpu_list,
        env=harness.job_env(pythonpath),
    )
    if "error" in job:
        raise SystemExit(f"rayqbefore_{backend} failed ({job['error']}), see {job['log']}")
    return job["result"]["wall_s"], job["result"]["cpu_s"]


def one_job(args) -> None:
    """``--job NAME``: warm up, time one job, emit its wall and CPU seconds (for rayq_subprocess)."""
    path = str(build_resnet50(args.size))
    tasks(path, make_items(8, args.size), args.threads)[args.job]()
    job = tasks(path, make_items(args.items, args.size), args.threads)[args.job]
    c0 = time.process_time()
    wall = job()
    harness.emit({"wall_s": wall, "cpu_s": time.process_time() - c0})


def tasks(path: str, items, threads: int) -> dict[str, Callable[[], float]]:
    import onnx
    import openvino as ov

    ov_model = lambda: ov.convert_model(path)  # noqa: E731  fresh model per run (neither tool may mutate)
    return {
        "floor_onnx": lambda: floor_ort(path, items, threads),
        "floor_onnx_streams": lambda: floor_ort_streams(path, items, threads),
        "floor_openvino": lambda: floor_ov(path, items, threads),
        "rayq_onnx": lambda: rayq_quantize(path, items),
        "rayq_openvino": lambda: rayq_quantize(ov_model(), items),
        "nncf_onnx": lambda: nncf_quantize(lambda: onnx.load(path), items),
        "nncf_openvino": lambda: nncf_quantize(ov_model, items),
    }


def run(args) -> dict:
    path = str(build_resnet50(args.size))
    items = make_items(args.items, args.size)
    jobs = tasks(path, items, args.threads)
    only = [j for j in jobs if not args.only or any(j.startswith(o) for o in args.only.split(","))]
    for name in only:  # untimed warm-up: imports, first compile
        tasks(path, items[:8], args.threads)[name]()
    timed: dict[str, Callable[[], tuple[float, float]]] = {n: _with_cpu(jobs[n]) for n in only}
    if args.before:
        for backend in ("onnx", "openvino"):
            timed[f"rayqbefore_{backend}"] = (lambda b: lambda: rayq_subprocess(args.before, b, args))(backend)
    names = list(timed)
    wall: dict[str, list[float]] = {j: [] for j in names}
    cpu: dict[str, list[float]] = {j: [] for j in names}
    loads = []
    env = harness.environment(cpus=args.cpu_list)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if name.startswith("nncf_") and r >= args.nncf_rounds:
                continue
            w, c = timed[name]()
            wall[name].append(w)
            cpu[name].append(c)
            print(f"round {r} {name}: {w:.2f}s wall, {c:.2f}s CPU, load {os.getloadavg()[0]:.1f}", flush=True)
        loads.append(os.getloadavg()[0])
        _write(args, env, wall, cpu, loads)  # after every round, so an interrupted run leaves its rounds
    return _write(args, env, wall, cpu, loads)


def _write(args, env: dict, wall: dict, cpu: dict, loads: list) -> dict:
    med = {j: statistics.median(v) for j, v in wall.items() if v}
    med_cpu = {j: statistics.median(v) for j, v in cpu.items() if v}
    result = {
        "model": f"resnet50 {args.size}x{args.size} (random weights, BN re-estimated, dynamic batch)",
        "items": args.items,
        "threads": args.threads,
        "rounds": args.rounds,
        "before": args.before,
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load_1min_after_round": loads,
        "wall_s": wall,
        "cpu_s": cpu,
        "median_wall_s": med,
        "median_cpu_s": med_cpu,
        "ratios": ratios(med),
        "ratios_cpu": ratios(med_cpu),
    }
    config = {k: v for k, v in vars(args).items() if k != "cpu_list"}
    harness.write_results("floor", result, env=env, config=config, out=harness.output_path(args, "floor"))
    return result


def _with_cpu(job: Callable[[], float]) -> Callable[[], tuple[float, float]]:
    """``job`` returning (its wall seconds, this process's CPU seconds meanwhile)."""

    def timed() -> tuple[float, float]:
        c0 = time.process_time()
        wall = job()
        return wall, time.process_time() - c0

    return timed


def ratios(med: dict[str, float]) -> dict:
    """rayq (and rayq before) over the floor and over NNCF, per backend. The ONNX floor is
    the faster of its two variants (one 2-thread session, or 2 single-thread streams)."""
    out = {}
    for backend in ("onnx", "openvino"):
        floors = [med[k] for k in (f"floor_{backend}", f"floor_{backend}_streams") if k in med]
        floor = min(floors) if floors else None
        row = {"floor_s": floor}
        for tool in ("rayq", "rayqbefore"):
            q, n = med.get(f"{tool}_{backend}"), med.get(f"nncf_{backend}")
            if q:
                row[f"{tool}/floor"] = q / floor if floor else None
                row[f"{tool}/nncf"] = q / n if n else None
        n = med.get(f"nncf_{backend}")
        row["nncf/floor"] = n / floor if n and floor else None
        out[backend] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nncf-rounds", type=int, default=1 << 30, help="time NNCF in the first N rounds only")
    ap.add_argument("--only", default="", help="comma-separated prefixes of floor_/rayq_/nncf_ job names")
    ap.add_argument(
        "--before",
        default="",
        help="a rayq source tree (e.g. `git archive` of an older commit): "
        "its quantize is timed too, in subprocesses (jobs rayqbefore_*)",
    )
    ap.add_argument("--job", default="", help=argparse.SUPPRESS)
    harness.add_common_args(ap)  # --out, --quick, --cpus (this process and the --before jobs), --job-timeout
    args = ap.parse_args()
    if args.job:
        return one_job(args)
    if args.quick:
        args.items, args.size, args.rounds = 16, 64, 1
    args.cpu_list = harness.parse_cpus(args.cpus)
    os.sched_setaffinity(0, args.cpu_list)
    result = run(args)
    print(
        json.dumps(
            {"median_wall_s": result["median_wall_s"], "ratios": result["ratios"], "ratios_cpu": result["ratios_cpu"]},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
