"""Peak memory of ``rayq.quantize`` vs the calibration-set size, and on a model over 2 GB.

Every measurement runs in a fresh subprocess (``python bench/bench_memory.py _job ...``,
started from this small orchestrator: a child starts with its parent's peak RSS as its
own ru_maxrss, so models and data are generated in other subprocesses) that reports its own
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the exact peak of
that process: in-process calibration, or the driver with Ray workers) plus, with Ray
workers, the peak RSS of every Ray worker process polled with psutil. Each tree (the
working tree, and a ``--base`` checkout such as ``git worktree add --detach
/tmp/mem-base main``) is measured in the same run, alternating, so "before" and "after"
share the machine's load.

    python bench/bench_memory.py --base main                         # CNN cases, both trees
    python bench/bench_memory.py --steps large --base main           # the > 2 GB model (needs ~14 GB free)
    python bench/bench_memory.py --quick                             # 300 items, in-process, this tree

``--base`` is a directory holding a rayq checkout or a git ref (``harness.checkout``).
Results: ``bench/results/memory.json`` (``harness.write_results``).

Cases: a small CNN on [3, 32, 32] items (12 KiB each; 30 000 items = 352 MiB) at 3 000
and 30 000 items, read from a ``.npy`` file and from a generator, with ``num_workers=1``
(in-process) and ``num_workers=2`` (local Ray, driver peak reported); and a synthetic
model of nine chained 8192x8192 MatMuls (2.25 GiB of FP32 weights in external data,
written under ``/tmp`` and deleted afterwards), quantized in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness

ROOT = harness.REPO
LARGE_DIM, LARGE_LAYERS = 8192, 9


# -- jobs (run in a subprocess) ----------------------------------------------------------


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class _WorkerPoll(threading.Thread):
    """Peak RSS of every Ray worker process (children of this machine's raylets)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                is_worker = "default_worker.py" in cmd or (proc.info["name"] or "").startswith("ray::")
                if is_worker and (str(os.getpid()) in cmd or _same_session(proc)):
                    rss = proc.info["memory_info"].rss / 2**20 if proc.info["memory_info"] else 0
                    self.peak[proc.pid] = max(self.peak.get(proc.pid, 0.0), rss)
            self.stop.wait(0.05)


def _same_session(proc) -> bool:
    """A Ray worker of the cluster this job started (its raylet descends from this process)."""
    try:
        return any(p.pid == os.getpid() for p in proc.parents())
    except Exception:
        return False


def make_cnn(path: Path) -> None:
    """A small CNN on [3, 32, 32] images (12 KiB per item): Conv(3->8, 3x3, stride 2) ->
    Relu -> GlobalAveragePool -> Flatten -> Gemm(8->10)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "cw"),
        numpy_helper.from_array(np.zeros(8, np.float32), "cb"),
        numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32) * 0.3, "gw"),
        numpy_helper.from_array(np.zeros(10, np.float32), "gb"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "cw", "cb"], ["c"], name="conv", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn32",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _cnn_data(source: str, items: int, folder: Path):
    import numpy as np

    if source == "npy":  # the calibration set on disk, as ``rayq quantize --data calib.npy`` gets it
        return str(folder / f"calib_{items}.npy")

    def gen():
        g = np.random.default_rng(0)
        for _ in range(items):
            yield g.standard_normal((1, 3, 32, 32), dtype=np.float32)

    return gen()


def job_cnn(source: str, items: int, workers: int, folder: str) -> dict:
    import rayq

    if workers > 1:
        rayq.init(num_cpus=workers, include_dashboard=False)
    poll = _WorkerPoll()
    if workers > 1:
        poll.start()
    data = _cnn_data(source, items, Path(folder))
    before = _peak_mb()
    start = time.perf_counter()
    rayq.quantize(str(Path(folder) / "cnn32.onnx"), data, subset_size=items, num_workers=workers, cache=False)
    seconds = time.perf_counter() - start
    poll.stop.set()
    out = {
        "peak_mb": _peak_mb(),
        "peak_before_mb": before,
        "seconds": seconds,
        "items_per_s": items / seconds,
        "worker_peak_mb": max(poll.peak.values(), default=0.0),
    }
    if workers > 1:
        rayq.shutdown()
    return out


def _write_cnn_inputs(folder: Path, sizes: list[int]) -> None:
    import numpy as np

    make_cnn(folder / "cnn32.onnx")
    for n in sizes:  # same items as the generator source, written in slices
        g = np.random.default_rng(0)
        out = np.lib.format.open_memmap(folder / f"calib_{n}.npy", mode="w+", dtype=np.float32, shape=(n, 1, 3, 32, 32))
        for i in range(n):
            out[i] = g.standard_normal((1, 3, 32, 32), dtype=np.float32)
        out.flush()
        del out


def make_large(folder: Path) -> Path:
    """Nine chained [8192, 8192] MatMuls, weights in external data written tensor by tensor."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    data_name = "large.onnx.data"
    rng = np.random.default_rng(0)
    inits, nodes, offset = [], [], 0
    x = "x"
    with open(folder / data_name, "wb") as f:
        for i in range(LARGE_LAYERS):
            w = rng.standard_normal((LARGE_DIM, LARGE_DIM), dtype=np.float32)
            w *= np.float32(1 / np.sqrt(LARGE_DIM))
            f.write(w.tobytes())
            t = TensorProto(
                name=f"w{i}",
                data_type=TensorProto.FLOAT,
                dims=[LARGE_DIM, LARGE_DIM],
                data_location=TensorProto.EXTERNAL,
            )
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(w.nbytes))):
                t.external_data.add(key=k, value=v)
            offset += w.nbytes
            inits.append(t)
            y = f"h{i}" if i < LARGE_LAYERS - 1 else "y"
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [y], name=f"mm{i}"))
            x = y
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", LARGE_DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", LARGE_DIM])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(folder / "large.onnx"))
    return folder / "large.onnx"


def job_large(path: str) -> dict:
    import numpy as np

    import rayq

    items = np.random.default_rng(1).standard_normal((16, 1, LARGE_DIM), dtype=np.float32)
    start = time.perf_counter()
    q = rayq.quantize(path, items, subset_size=16, num_workers=1, cache=False)
    seconds = time.perf_counter() - start
    peak_quantize = _peak_mb()
    from rayq.backends import get_backend

    out_dir = Path(path).parent / "out"
    get_backend("onnx").save(q, str(out_dir / "q.onnx"))
    model_mb = os.path.getsize(Path(path).parent / "large.onnx.data") / 2**20
    return {
        "peak_mb": peak_quantize,
        "peak_with_save_mb": _peak_mb(),
        "seconds": seconds,
        "model_mb": model_mb,
        "ratio": peak_quantize / model_mb,
    }


# -- orchestration ------------------------------------------------------------------------

CPUS: list[int] | None = None  # --cpus: every job is pinned to them


def _run_job(tree: Path, args: list[str], timeout: float = 900) -> dict:
    cache = tempfile.mkdtemp(prefix="rayq-bench-cache-")
    log = harness.WORK / "memory" / f"{'_'.join(args[:4]).replace('/', '_')}_{tree.name}.log"
    res = harness.run_job(
        [sys.executable, str(Path(__file__).resolve()), "_job", *args],
        log=log,
        timeout=timeout,
        cpus=CPUS,
        env=harness.job_env(tree, RAYQ_CACHE_DIR=cache),
        cwd=tree,
    )
    shutil.rmtree(cache, ignore_errors=True)
    return res["result"] if "error" not in res else {"error": "\n".join(res["log_tail"])[-2000:]}


def run_cnn(trees: dict[str, Path], sizes: list[int], sources: list[str], workers: list[int]) -> list[dict]:
    folder = Path(tempfile.mkdtemp(prefix="rayq-bench-cnn-", dir="/tmp"))
    rows = []
    try:
        # in a subprocess: a child inherits its parent's peak RSS as its own starting ru_maxrss,
        # so this process must stay small
        gen = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "_make_cnn", str(folder), ",".join(map(str, sizes))],
            capture_output=True,
            text=True,
            env=harness.job_env(),
        )
        if gen.returncode:
            raise SystemExit(gen.stderr)
        for w in workers:
            for source in sources:
                for n in sizes:
                    for label, tree in trees.items():
                        r = _run_job(tree, ["cnn", source, str(n), str(w), str(folder)])
                        r.update(tree=label, source=source, items=n, workers=w)
                        print(json.dumps(r), flush=True)
                        rows.append(r)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def run_large(trees: dict[str, Path]) -> list[dict]:
    folder = Path(tempfile.mkdtemp(prefix="rayq-large-", dir="/tmp"))
    rows = []
    try:
        gen = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "_make_large", str(folder)],
            capture_output=True,
            text=True,
            env=harness.job_env(),
        )
        if gen.returncode:
            raise SystemExit(gen.stderr)
        for label, tree in trees.items():
            r = _run_job(tree, ["large", str(folder / "large.onnx")], timeout=1800)
            r.update(tree=label)
            print(json.dumps(r), flush=True)
            rows.append(r)
            shutil.rmtree(folder / "out", ignore_errors=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def table(rows: list[dict]) -> str:
    """One Markdown row per measurement."""
    lines = ["| case | tree | items | peak RSS MB | items/s | worker peak MB |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('source', 'large model')} | {r['tree']} | {r.get('items', '')} | error | | |")
            continue
        case = "large model" if "model_mb" in r else f"{r['source']}, {r['workers']} worker(s)"
        lines.append(
            f"| {case} | {r['tree']} | {r.get('items', '')} | {r.get('peak_mb', float('nan')):.0f} | "
            f"{r.get('items_per_s', float('nan')):.0f} | {r.get('worker_peak_mb', 0):.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_job":
        kind, rest = argv[1], argv[2:]
        result = job_cnn(rest[0], int(rest[1]), int(rest[2]), rest[3]) if kind == "cnn" else job_large(rest[0])
        harness.emit(result)
        return
    if argv and argv[0] == "_make_cnn":
        _write_cnn_inputs(Path(argv[1]), [int(n) for n in argv[2].split(",")])
        return
    if argv and argv[0] == "_make_large":
        make_large(Path(argv[1]))
        return
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_common_args(p)
    p.add_argument("--steps", default="cnn", help="cnn,large")
    p.add_argument("--base", help="the baseline measured alongside: a rayq checkout's directory or a git ref")
    p.add_argument("--sizes", default="3000,30000")
    p.add_argument("--sources", default="npy,generator")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--trees", default="base,head", help="which of base,head to measure")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.sizes, a.sources, a.workers, a.trees = "cnn", "300", "npy", "1", "head"
    env = harness.environment(cpus=a.cpus)
    global CPUS
    CPUS = harness.parse_cpus(a.cpus)
    trees = {"base": Path(a.base) if Path(a.base).is_dir() else harness.checkout(a.base)} if a.base else {}
    trees["head"] = ROOT
    trees = {k: v.resolve() for k, v in trees.items() if k in a.trees.split(",")}
    rows: list[dict] = []
    if "cnn" in a.steps:
        rows += run_cnn(
            trees, [int(s) for s in a.sizes.split(",")], a.sources.split(","), [int(w) for w in a.workers.split(",")]
        )
    if "large" in a.steps:
        rows += run_large(trees)
    harness.write_results(
        "memory",
        rows,
        env=env,
        config=vars(a) | {"trees": {k: str(v) for k, v in trees.items()}},
        markdown=table(rows),
        out=harness.output_path(a, "memory"),
    )


if __name__ == "__main__":
    main()
