"""Peak memory and wall time of ``rayq.quantize(..., num_workers=2)`` on an ONNX model over
2 GB (external data), on a local Ray and on a 2-node loopback cluster.

Such a model cannot be one protobuf message: it reaches the workers as files
(:mod:`rayq.distributed.shipping`), by the driver's folder when every node is on the
driver's host. The model is ``LAYERS`` chained [8192, 8192] MatMuls (8 layers: 2.0 GiB
of FP32 weights, just over protobuf's 2 GB limit), generated under ``/tmp`` by
``bench_memory.make_large`` and deleted afterwards. Each case runs in a fresh
subprocess that reports its own peak RSS (``ru_maxrss``) and polls the peak RSS of
every Ray worker process of its cluster.

    python bench/bench_large_workers.py --nodes 1,2 [--layers 8] [--what calibrate|quantize]
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

ROOT = Path(__file__).resolve().parents[1]


class _Poll(threading.Thread):
    """Peak RSS (MB) of the Ray worker processes under a raylet whose command line
    contains ``marker``, or that descend from this process (``marker`` None)."""

    def __init__(self, marker: str | None) -> None:
        super().__init__(daemon=True)
        self.marker, self.peak, self.stop = marker, {}, threading.Event()

    def _ours(self, proc) -> bool:
        """A worker's own command line becomes its title (``ray::calibrate_chunk``): its
        raylet (a parent) is the one that names the cluster."""
        import psutil

        try:
            parents = proc.parents()
            if self.marker is None:
                return any(p.pid == os.getpid() for p in parents)
            return any(self.marker in " ".join(p.cmdline()) for p in parents)
        except psutil.Error:
            return False

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                if (
                    ("default_worker.py" in cmd or (proc.info["name"] or "").startswith("ray::"))
                    and self._ours(proc)
                    and proc.info["memory_info"]
                ):
                    self.peak[proc.pid] = max(self.peak.get(proc.pid, 0.0), proc.info["memory_info"].rss / 2**20)
            self.stop.wait(0.05)


def job(what: str, path: str, address: str | None, marker: str | None) -> dict:
    import numpy as np

    import rayq

    rayq.init(address, **({} if address else {"num_cpus": 2}))
    poll = _Poll(marker)
    poll.start()
    items = np.random.default_rng(1).standard_normal((16, 1, 8192), dtype=np.float32)
    start = time.perf_counter()
    if what == "quantize":
        rayq.quantize(path, items, subset_size=16, num_workers=2, cache=False)
    else:  # calibration only: the part that ships the model to the workers
        from rayq.api.session import ModelSession

        session = ModelSession(path, items, subset_size=16, batch_size=1)
        session.statistics(rayq.QuantPlan.create(), histograms=False, num_workers=2, use_cache=False)
        assert len(session.info.node_ids) == (2 if address else 1), session.info.node_ids
    seconds = time.perf_counter() - start
    poll.stop.set()
    poll.join()
    model_mb = os.path.getsize(Path(path).parent / "large.onnx.data") / 2**20
    workers = sorted((round(v) for v in poll.peak.values() if v > 500), reverse=True)  # the ones that loaded it
    return {
        "model_mb": round(model_mb),
        "seconds": round(seconds, 1),
        "driver_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "worker_peaks_mb": workers,
    }


def _run(what: str, path: Path, nodes: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAYQ_CACHE_DIR": tempfile.mkdtemp(prefix="rayq-bench-")}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, __file__, "_job", what, str(path)]
    if nodes == 1:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=False)
    else:
        sys.path.insert(0, str(ROOT))
        from tests.cluster.test_two_node_job import _start, local_head, token_env

        env = token_env(**{k: env[k] for k in ("PYTHONPATH", "RAYQ_CACHE_DIR")})
        with local_head("bench-large", env, ["--num-cpus=1", "--include-dashboard=false"]) as (gcs, _):
            _start(
                [f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"],
                env,
            )
            proc = subprocess.run(
                [*cmd, f"127.0.0.1:{gcs}", f"127.0.0.1:{gcs}"],
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
            )
    shutil.rmtree(env["RAYQ_CACHE_DIR"], ignore_errors=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return {"nodes": nodes, "what": what, **json.loads(line[len("RESULT ") :])}
    return {"nodes": nodes, "what": what, "error": (proc.stderr or proc.stdout)[-3000:]}


def main() -> None:
    if sys.argv[1:2] == ["_job"]:
        what, path, address, marker = (sys.argv[2:] + [None, None])[:4]
        print("RESULT " + json.dumps(job(what, path, address, marker)), flush=True)
        return
    if sys.argv[1:2] == ["_make"]:
        sys.path.insert(0, str(ROOT / "bench"))
        import bench_memory

        bench_memory.LARGE_LAYERS = int(sys.argv[3])
        bench_memory.make_large(Path(sys.argv[2]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", default="1,2")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument(
        "--what",
        default="calibrate",
        choices=["calibrate", "quantize"],
        help="calibration only (the driver holds the model once), or the whole quantize",
    )
    a = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rayq-large-", dir="/tmp"))
    try:
        subprocess.run([sys.executable, __file__, "_make", str(folder), str(a.layers)], check=True)
        for n in map(int, a.nodes.split(",")):
            print(json.dumps(_run(a.what, folder / "large.onnx", n)), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
