"""Subprocess jobs behind ``bench_ptq.py``; each runs in a fresh Python process
(started by ``harness.run_job``) and prints its result as a ``RESULT {json}`` line.

    python bench/ptq_jobs.py prepare  --model resnet50 --work W --samples 300 --heldout 50
    python bench/ptq_jobs.py quantize --model M --backend onnx|openvino --tool nncf|rayq
                                      [--workers ray|1] --work W --samples 300 --out OUT
    python bench/ptq_jobs.py measure  --model M --backend B --work W --threads 2 --runs 30

``quantize`` imports exactly one of nncf / rayq, so neither tool pays for the other's
imports; its result holds the import time, the timed quantize call and the save time
separately. ``measure`` applies one protocol to the FP32 model, NNCF's INT8 model and
rayq's, and imports neither tool's quantization code:

* ONNX Runtime: ``intra_op_num_threads=threads``, ``inter_op_num_threads=1``, sequential
  execution, all graph optimisations (the settings rayq's own runner uses).
* OpenVINO: ``INFERENCE_NUM_THREADS=threads``, ``PERFORMANCE_HINT=LATENCY``,
  ``INFERENCE_PRECISION_HINT=f32`` on ``CPU`` (reads FP32 ONNX, QDQ ONNX, or IR).
* Latency: batch 1, ``harness.interleaved_latency`` (rayq's interleaved timing: rounds of
  rotating turns, ``warmup`` untimed + 10 timed calls per turn, ``runs`` timed calls per
  model in all); the report adds the median of per-round ratios.
* Output error of INT8 vs FP32 on held-out inputs (batch 1 each):
  ``nmse = mean_i ||q_i - f_i||^2 / ||f_i||^2`` and the mean row cosine similarity.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import harness
import numpy as np

BENCH = Path(__file__).resolve().parent
MODELS = ("resnet50", "minilm")
SEEDS = {"calib": 0, "heldout": 1}
MINILM_HELDOUT_SEED = 2_000  # export_minilm uses seed 0 for calibration, 1000 for its check


# --------------------------------------------------------------------------- assets
def paths(work: Path, model: str) -> dict[str, Path]:
    """Where the FP32 model, calibration and held-out data of ``model`` live."""
    if model == "resnet50":
        d = work / "resnet50"
        return {"fp32": d / "fp32.onnx", "calib": d / "calib.npz", "heldout": d / "heldout.npz"}
    if model == "minilm":
        cache = BENCH / ".cache"
        return {
            "fp32": cache / "minilm.onnx",
            "calib": cache / "minilm_calib.npz",
            "heldout": work / "minilm" / "heldout.npz",
        }
    raise SystemExit(f"unknown model {model!r}; choose from {MODELS}")


def output_path(work: Path, model: str, backend: str, variant: str) -> Path:
    ext = ".onnx" if backend == "onnx" else ".xml"
    return work / model / backend / f"{variant}{ext}"


def prepare(args: argparse.Namespace) -> dict:
    p = paths(args.work, args.model)
    p["heldout"].parent.mkdir(parents=True, exist_ok=True)
    if args.model == "resnet50":
        return _prepare_resnet(p, args.samples, args.heldout)
    return _prepare_minilm(p, args.samples, args.heldout)


def _prepare_resnet(p: dict[str, Path], samples: int, heldout: int) -> dict:
    import onnx

    from rayq.testing.models import resnet50_like  # model builder only (numpy + onnx)

    if not p["fp32"].exists():
        onnx.save(resnet50_like(seed=0), str(p["fp32"]))
    for key, n in (("calib", samples), ("heldout", heldout)):
        if _rows(p[key]) != n:
            rng = np.random.default_rng(SEEDS[key])
            np.savez(p[key], input=rng.standard_normal((n, 3, 224, 224), dtype=np.float32))
    return {k: str(v) for k, v in p.items()}


def _prepare_minilm(p: dict[str, Path], samples: int, heldout: int) -> dict:
    if not p["fp32"].exists() or _rows(p["calib"]) != samples:
        cmd = [sys.executable, str(BENCH / "export_minilm.py"), "--calib", str(samples), "--output", str(p["fp32"])]
        subprocess.run(cmd, check=True)
    if _rows(p["heldout"]) != heldout:
        sys.path.insert(0, str(BENCH))
        import export_minilm as em
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(em.get_model_path())
        with np.load(p["calib"]) as z:
            seq_len = z["input_ids"].shape[1]
        feeds = em.tokenize(tok, em.synthetic_sentences(heldout, seed=MINILM_HELDOUT_SEED), seq_len)
        np.savez(p["heldout"], **feeds)
    return {k: str(v) for k, v in p.items()}


def _rows(path: Path) -> int:
    if not path.exists():
        return -1
    with np.load(path) as z:
        return len(z[z.files[0]])


def load_items(path: Path, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """One ``{input name: array[1, ...]}`` dict per row (the same items for both tools)."""
    with np.load(path) as z:
        cols = {k: z[k] for k in z.files}
    n = len(next(iter(cols.values())))
    n = n if limit is None else min(n, limit)
    return [{k: v[i : i + 1] for k, v in cols.items()} for i in range(n)]


# --------------------------------------------------------------------------- quantize
def quantize(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = paths(args.work, args.model)
    transformer = args.model == "minilm"
    t0 = time.perf_counter()
    if args.tool == "nncf":
        import nncf

        tool = nncf
    else:
        import rayq

        tool = rayq
    import_s = time.perf_counter() - t0
    items = load_items(p["calib"], args.samples)
    ov_model = None
    if args.backend == "openvino":
        import openvino as ov

        ov_model = ov.Core().read_model(str(p["fp32"]))  # same ov.Model for both tools, untimed

    start = time.perf_counter()
    if args.tool == "nncf":
        import onnx

        model = onnx.load(str(p["fp32"])) if ov_model is None else ov_model
        kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
        q = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), **kwargs)
    else:
        model = str(p["fp32"]) if ov_model is None else ov_model
        workers = None if args.workers == "ray" else int(args.workers)
        q = rayq.quantize(
            model,
            rayq.Dataset(items),
            subset_size=len(items),
            model_type="transformer" if transformer else None,
            num_workers=workers,
            cache=False,
        )
    quantize_s = time.perf_counter() - start

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    _save(q, out, args.backend)
    result = {
        "tool": args.tool,
        "workers": args.workers if args.tool == "rayq" else None,
        "model": args.model,
        "backend": args.backend,
        "samples": len(items),
        "import_s": import_s,
        "quantize_s": quantize_s,
        "save_s": time.perf_counter() - t1,
        "output": str(out),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "version": getattr(tool, "__version__", "?"),
        "module_file": tool.__file__,
        "rayq_commit_env": os.environ.get("RAYQ_BENCH_COMMIT"),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "loadavg_after": os.getloadavg(),
        "ops": _op_counts(q, args.backend),
    }
    result.update(_ray_info())
    return result


def _save(q, out: Path, backend: str) -> None:
    if backend == "onnx":
        import onnx

        onnx.save(q, str(out))
    else:
        import openvino as ov

        ov.save_model(q, str(out), compress_to_fp16=False)


def _op_counts(q, backend: str) -> dict[str, int]:
    from collections import Counter

    if backend == "onnx":
        c = Counter(n.op_type for n in q.graph.node)
        keep = ("QuantizeLinear", "DequantizeLinear")
    else:
        c = Counter(op.get_type_name() for op in q.get_ops())
        keep = ("FakeQuantize", "Convert", "Multiply", "Subtract")
    return {k: c.get(k, 0) for k in keep}


def _ray_info() -> dict:
    if "ray" not in sys.modules:
        return {"ray": None}
    import ray

    if not ray.is_initialized():
        return {"ray": "imported, not initialized"}
    return {
        "ray": {
            "resources": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "memory")},
            "address_env": os.environ.get("RAY_ADDRESS"),
        }
    }


# --------------------------------------------------------------------------- measure
def measure(args: argparse.Namespace) -> dict:
    p = paths(args.work, args.model)
    feeds = load_items(p["heldout"], args.heldout)
    variants = {"fp32": p["fp32"]}
    for v in ("nncf", "rayq_ray", "rayq_inproc"):
        path = output_path(args.work, args.model, args.backend, v)
        if path.exists():
            variants[v] = path
    primary = [v for v in ("fp32", "nncf", "rayq_ray") if v in variants]
    if "rayq_ray" not in variants and "rayq_inproc" in variants:
        primary.append("rayq_inproc")
    runtimes = ["ort", "ov"] if args.backend == "onnx" else ["ov"]
    result: dict = {
        "model": args.model,
        "backend": args.backend,
        "threads": args.threads,
        "heldout": len(feeds),
        "variants": {k: str(v) for k, v in variants.items()},
        "latency_variants": primary,
        "runtimes": {},
    }
    for rt in runtimes:
        runners = {}
        for v, path in variants.items():
            # FP32 on OpenVINO is always the FP32 ONNX file, read by OpenVINO.
            runners[v] = harness.RUNTIMES[rt](str(path), args.threads)
        outs = {v: harness.outputs(run, feeds) for v, run in runners.items()}
        errors = {
            v: {"nmse": harness.nmse(outs["fp32"], o), "cosine": harness.mean_cosine(outs["fp32"], o)}
            for v, o in outs.items()
            if v != "fp32"
        }
        if "rayq_ray" in outs and "rayq_inproc" in outs:
            errors["rayq_ray_vs_inproc_max_abs"] = float(np.abs(outs["rayq_ray"] - outs["rayq_inproc"]).max())
        load_before = os.getloadavg()
        lat = harness.interleaved_latency(
            {v: runners[v] for v in primary}, feeds[0], runs=args.runs, warmup=args.warmup
        )
        result["runtimes"][rt] = {
            "errors": errors,
            "latency": lat,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        }
        del runners
    return result


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("job", choices=("prepare", "quantize", "measure"))
    ap.add_argument("--model", required=True, choices=MODELS)
    ap.add_argument("--backend", choices=("onnx", "openvino"))
    ap.add_argument("--tool", choices=("nncf", "rayq"))
    ap.add_argument("--workers", default="ray", help="rayq only: 'ray' (num_workers=None) or an int")
    ap.add_argument("--work", type=Path, default=BENCH / ".cache" / "ptq")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--heldout", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", help="quantize: output model path")
    args = ap.parse_args(argv)
    harness.emit({"prepare": prepare, "quantize": quantize, "measure": measure}[args.job](args))


if __name__ == "__main__":
    main()
