"""Quantize the zoo with rayq and NNCF side by side; count quantizers, NMSE, latency.

For every model built by ``build.py`` and every backend (ONNX: QDQ models run on ONNX
Runtime; OpenVINO: ``ov.convert_model`` IR with FakeQuantize, run on OpenVINO), both
tools quantize the same model with the same calibration items (``--calib`` standard-
normal images, seed 0, batch 1 each) and their defaults (no ``model_type``). Reported:

- ``aq``: activation quantizers (QuantizeLinear / FakeQuantize on a non-constant input),
  ``tensors``: distinct tensors they quantize;
- ``nmse``: INT8 vs FP32 on ``--heldout`` other images (seed 1), same runtime;
- ``lat``: rayq/NNCF latency ratio (median of each), batch 1, ``--threads`` threads,
  paired interleaved rounds (:func:`rayq.pipeline.latency.time_interleaved`); the FP32
  model takes part in the rounds too (``fp32`` = rayq/FP32).

NNCF's quantized models are cached (they do not change when rayq does); ``--redo nncf``
re-quantizes them. ``--tag before`` quantizes with whatever rayq is on ``PYTHONPATH``
(e.g. an older commit, ``git archive``-d) under another name, and ``--also before``
measures those cached models in the same interleaved rounds. ``--diff`` prints the
quantized edges (producer op -> consumer op) on
which the tools differ. Usage::

    python bench/zoo/compare.py --models densenet121 --size 128 --diff
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys
import time

import numpy as np
import onnx
import openvino as ov

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import ptq_harness as h

from rayq.pipeline.latency import time_interleaved

BACKENDS = ("onnx", "openvino")


def _items(n: int, size: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((1, 3, size, size), dtype=np.float32)} for _ in range(n)]


def _quantize(tool: str, backend: str, fp32: pathlib.Path, items: list, out: pathlib.Path) -> float:
    model = str(fp32) if backend == "onnx" else ov.convert_model(str(fp32))
    start = time.perf_counter()
    if tool == "nncf":
        import nncf

        q = nncf.quantize(onnx.load(str(fp32)) if backend == "onnx" else model,
                          nncf.Dataset(items), subset_size=len(items))
    else:
        import rayq

        q = rayq.quantize(model, rayq.Dataset(items), subset_size=len(items), num_workers=1, cache=False)
    seconds = time.perf_counter() - start
    if backend == "onnx":
        onnx.save(q, str(out))
    else:
        ov.save_model(q, str(out), compress_to_fp16=False)
    return seconds


def onnx_edges(path: pathlib.Path) -> list[tuple[str, str, str]]:
    """(tensor, producer op, consumer op) of every activation QuantizeLinear."""
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    consumers = collections.defaultdict(list)
    for n in m.graph.node:
        for t in n.input:
            consumers[t].append(n)
    edges = []
    for n in m.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits or producers.get(n.input[0]) == "Constant":
            continue
        for dq in consumers[n.output[0]]:
            for c in consumers[dq.output[0]] or [None]:
                edges.append((n.input[0], producers.get(n.input[0], "input"), c.op_type if c else "output"))
    return edges


def ov_edges(path: pathlib.Path) -> list[tuple[str, str, str]]:
    """(tensor, producer op, consumer op) of every activation FakeQuantize."""
    m = ov.Core().read_model(str(path))
    edges = []
    for op in m.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        src = op.input_value(0)
        producer = src.get_node()
        if producer.get_type_name() in ("Constant", "Convert"):
            continue
        tensor = f"{producer.get_friendly_name()}:{src.get_index()}"
        for t in op.output(0).get_target_inputs():
            edges.append((tensor, producer.get_type_name(), t.get_node().get_type_name()))
    return edges


def counts(path: pathlib.Path, backend: str) -> dict:
    edges = onnx_edges(path) if backend == "onnx" else ov_edges(path)
    if backend == "onnx":
        m = onnx.load(str(path), load_external_data=False)
        inits = {i.name for i in m.graph.initializer}
        per = collections.Counter(n.input[0] for n in m.graph.node
                                  if n.op_type == "QuantizeLinear" and n.input[0] not in inits)
    else:
        m = ov.Core().read_model(str(path))
        per = collections.Counter(
            f"{op.input_value(0).get_node().get_friendly_name()}:{op.input_value(0).get_index()}"
            for op in m.get_ops() if op.get_type_name() == "FakeQuantize"
            and op.input_value(0).get_node().get_type_name() not in ("Constant", "Convert"))
    return {"aq": sum(per.values()), "tensors": len(per), "edges": edges,
            "max_per_tensor": max(per.values(), default=0)}


def _diff(a: list, b: list) -> dict[str, collections.Counter]:
    ka = collections.Counter((p, c) for _, p, c in set(a))
    kb = collections.Counter((p, c) for _, p, c in set(b))
    return {"rayq_only": ka - kb, "nncf_only": kb - ka}


def measure(backend: str, files: dict[str, pathlib.Path], fp32: pathlib.Path, heldout: list, args) -> dict:
    """NMSE of every variant vs FP32, and their latencies in the same interleaved rounds."""
    runtime = "ort" if backend == "onnx" else "ov"
    runners = {k: h.RUNTIMES[runtime](str(p), args.threads) for k, p in {"fp32": fp32, **files}.items()}
    outs = {k: h.outputs(r, heldout) for k, r in runners.items()}
    nmse = {k: h.nmse(outs["fp32"], o) for k, o in outs.items() if k != "fp32"}
    names = list(runners)
    times = time_interleaved([runners[k] for k in names], heldout[0], warmup=5, rounds=args.rounds,
                             block=args.block)
    med = {k: float(np.median(t)) for k, t in zip(names, times)}
    return {"nmse": nmse, "median_ms": med}


def run_model(name: str, args) -> dict:
    work = pathlib.Path(args.work)
    fp32 = work / f"{name}_{args.size}.onnx"
    items, heldout = _items(args.calib, args.size, 0), _items(args.heldout, args.size, 1)
    tags = list(dict.fromkeys([args.tag, *filter(None, args.also.split(","))]))
    result: dict = {"model": name, "size": args.size, "tags": tags}
    for backend in args.backends.split(","):
        ext = "onnx" if backend == "onnx" else "xml"
        files = {t: work / "q" / f"{name}_{args.size}_{t}_{backend}.{ext}" for t in ("nncf", *tags)}
        files[args.tag].parent.mkdir(parents=True, exist_ok=True)
        files = {t: p for t, p in files.items() if t in ("nncf", args.tag) or p.exists()}
        qtime = {}
        for tool, path in files.items():
            if (tool == args.tag and not args.no_quantize) or not path.exists() or tool in args.redo.split(","):
                qtime[tool] = _quantize("nncf" if tool == "nncf" else "rayq", backend, fp32, items, path)
        c = {t: counts(p, backend) for t, p in files.items()}
        r = {"quantize_s": qtime, "counts": {t: {k: c[t][k] for k in ("aq", "tensors", "max_per_tensor")} for t in c}}
        if args.diff:
            d = _diff(c[args.tag]["edges"], c["nncf"]["edges"])
            r["diff"] = {k: {f"{p}->{q}": n for (p, q), n in v.most_common()} for k, v in d.items()}
        if not args.no_measure:
            r.update(measure(backend, files, fp32, heldout, args))
        result[backend] = r
        print(json.dumps({name: {backend: r}}, indent=None), flush=True)
    return result


def table(results: list[dict]) -> str:
    """Markdown: one row per model, runtime and rayq variant, ratios against NNCF."""
    rows = ["| model | runtime | rayq | act. quantizers rayq/NNCF | tensors rayq/NNCF | NMSE rayq | NMSE NNCF | "
            "NMSE ratio | latency rayq/NNCF | rayq/FP32 | NNCF/FP32 |", "|---" * 11 + "|"]
    for res in results:
        for backend in BACKENDS:
            r = res.get(backend)
            if not r or "nmse" not in r:
                continue
            n, ms, c = r["nmse"], r["median_ms"], r["counts"]
            for tag in (t for t in res["tags"] if t in n):
                rows.append(
                    f"| {res['model']} | {'ORT' if backend == 'onnx' else 'OV'} | {tag} | "
                    f"{c[tag]['aq']}/{c['nncf']['aq']} | {c[tag]['tensors']}/{c['nncf']['tensors']} | "
                    f"{n[tag]:.2e} | {n['nncf']:.2e} | {n[tag] / max(n['nncf'], 1e-30):.2f} | "
                    f"{ms[tag] / ms['nncf']:.2f} | {ms[tag] / ms['fp32']:.2f} | {ms['nncf'] / ms['fp32']:.2f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,densenet121,efficientnet_b0,mobilenet_v3_small,"
                                        "shufflenet_v2_x1_0,convnext_tiny,vit_s_16")
    ap.add_argument("--backends", default="onnx,openvino")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--heldout", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--redo", default="", help="variants whose cached models are re-quantized (nncf)")
    ap.add_argument("--tag", default="rayq", help="name of the rayq variant quantized by this run")
    ap.add_argument("--also", default="", help="cached rayq variants measured alongside (e.g. before)")
    ap.add_argument("--no-quantize", action="store_true", help="reuse the cached --tag models")
    ap.add_argument("--diff", action="store_true")
    ap.add_argument("--no-measure", action="store_true")
    ap.add_argument("--work", default="bench/.cache/zoo")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    results = [run_model(m, args) for m in args.models.split(",")]
    print(table(results))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
