"""Quantize the zoo with rayq and NNCF side by side: runs, NMSE, latency, quantize time,
quantizers.

For every model built by ``build.py`` and every backend (ONNX: QDQ models run on ONNX
Runtime; OpenVINO: ``ov.convert_model`` IR with FakeQuantize, run on OpenVINO), both
tools quantize the same model with the same calibration items (``--calib`` items made
from the model's input spec, ``<name>.json``: standard-normal images/audio/state, random
token ids and attention masks, the fixed 0-d sample rate; seed 0, batch 1 each) and their
defaults, plus the model's ``model_type`` (``transformer`` for MiniLM) for both. Reported:

- ``runs``: whether each tool returned a model that the runtime loads (else the error);
- ``aq``: activation quantizers (QuantizeLinear / FakeQuantize on a non-constant input),
  ``tensors``: distinct tensors they quantize;
- ``nmse``: INT8 vs FP32 (first output) on ``--heldout`` other items (seed 1), same runtime;
- ``lat``: rayq/NNCF latency ratio (median of each), batch 1, ``--threads`` threads,
  paired interleaved rounds (:func:`harness.interleaved_latency`, rayq's own interleaved
  timing: ``--rounds`` rounds of ``--warmup`` + ``--block`` calls per model); the FP32
  model takes part in the rounds too (``fp32`` = rayq/FP32);
- ``quantize_s``: wall time of ``nncf.quantize`` and of ``rayq.quantize(num_workers=1,
  cache=False)`` (loading the model and data excluded), in this process.

NNCF's quantized models and times are cached (they do not change when rayq does);
``--redo nncf`` re-quantizes them. ``--tag before`` quantizes with whatever rayq is on
``PYTHONPATH`` (e.g. an older commit, ``git archive``-d) under another name, and
``--also before`` measures those cached models in the same interleaved rounds. ``--diff``
prints the quantized edges (producer op -> consumer op) on which the tools differ.
With ``--out`` the rows go to that file (:func:`harness.write_results`'s layout,
``results`` = one row per model), rewritten after every model: a row replaces the same
model's earlier row, the other rows stay; without it (partial or diagnostic runs) only the
table is printed. ``--quick`` (resnet18 on ONNX, few items) writes under
``bench/.cache/quick/``. Usage::

    python bench/zoo/compare.py --models densenet121 --diff
    python bench/zoo/compare.py --out bench/results/zoo.json        # the whole zoo
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import sys
import time
import traceback

import numpy as np
import onnx
import openvino as ov

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # bench/: the harness
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import harness
import runners as rt
from runners import DEFAULT, feeds

BACKENDS = ("onnx", "openvino")


def items(meta: dict, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` items of batch 1 for the model's inputs (``build.feeds`` rules)."""
    return [feeds(meta["inputs"], 1, seed * 100_003 + i) for i in range(n)]


def _quantize(
    tool: str, backend: str, fp32: pathlib.Path, data: list, model_type: str | None, out: pathlib.Path
) -> float:
    model = str(fp32) if backend == "onnx" else ov.convert_model(str(fp32))
    kwargs = {"model_type": model_type} if model_type else {}
    if tool == "nncf":
        import nncf

        if backend == "onnx":
            model = onnx.load(str(fp32))
        if model_type:
            kwargs["model_type"] = nncf.ModelType.TRANSFORMER
        start = time.perf_counter()
        q = nncf.quantize(model, nncf.Dataset(data), subset_size=len(data), **kwargs)
    else:
        import rayq

        start = time.perf_counter()
        q = rayq.quantize(model, rayq.Dataset(data), subset_size=len(data), num_workers=1, cache=False, **kwargs)
    seconds = time.perf_counter() - start
    if backend == "onnx":
        onnx.save(q, str(out))
    else:
        ov.save_model(q, str(out), compress_to_fp16=False)
    return seconds


def quantize_cached(
    tool: str, backend: str, fp32: pathlib.Path, data: list, meta: dict, out: pathlib.Path, redo: bool
) -> dict:
    """Quantize (or reuse ``out``); returns ``{"seconds": s}`` or ``{"error": msg}``,
    also kept in ``out.json`` so a cached model keeps its time."""
    record = out.with_suffix(out.suffix + ".json")
    if not redo and out.exists() and record.exists():
        return json.loads(record.read_text())
    try:
        result = {"seconds": _quantize(tool, backend, fp32, data, meta.get("model_type"), out)}
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        out.unlink(missing_ok=True)
    record.write_text(json.dumps(result))
    return result


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
    """Activation quantizers, distinct tensors they quantize, and the edges."""
    edges = onnx_edges(path) if backend == "onnx" else ov_edges(path)
    if backend == "onnx":
        m = onnx.load(str(path), load_external_data=False)
        consts = {i.name for i in m.graph.initializer} | {
            o for n in m.graph.node if n.op_type == "Constant" for o in n.output
        }
        per = collections.Counter(
            n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in consts
        )
    else:
        m = ov.Core().read_model(str(path))
        per = collections.Counter(
            f"{op.input_value(0).get_node().get_friendly_name()}:{op.input_value(0).get_index()}"
            for op in m.get_ops()
            if op.get_type_name() == "FakeQuantize"
            and op.input_value(0).get_node().get_type_name() not in ("Constant", "Convert")
        )
    return {
        "aq": sum(per.values()),
        "tensors": len(per),
        "edges": edges,
        "max_per_tensor": max(per.values(), default=0),
    }


def _diff(a: list, b: list) -> dict[str, collections.Counter]:
    ka = collections.Counter((p, c) for _, p, c in set(a))
    kb = collections.Counter((p, c) for _, p, c in set(b))
    return {"rayq_only": ka - kb, "nncf_only": kb - ka}


def measure(backend: str, files: dict[str, pathlib.Path], fp32: pathlib.Path, heldout: list, args) -> dict:
    """NMSE of every variant vs FP32, and their latencies in the same interleaved rounds;
    a variant the runtime cannot load or run is reported in ``errors``."""
    runs, errors = {}, {}
    for k, p in {"fp32": fp32, **files}.items():
        try:
            run = rt.RUNTIMES[backend](str(p), args.threads)
            runs[k] = (run, rt.outputs(run, heldout))
        except Exception as exc:
            errors[k] = f"{type(exc).__name__}: {str(exc)[:300]}"
    if "fp32" not in runs:
        return {"errors": errors}
    ref = runs["fp32"][1]
    nmse = {k: rt.nmse(ref, o) for k, (_, o) in runs.items() if k != "fp32"}
    lat = harness.interleaved_latency(
        {k: r for k, (r, _) in runs.items()},
        heldout[0],
        runs=args.rounds * args.block,
        warmup=args.warmup,
        block=args.block,
    )
    return {"nmse": nmse, "median_ms": {k: float(v["median_ms"]) for k, v in lat.items()}, "errors": errors}


def run_backend(name: str, backend: str, fp32: pathlib.Path, meta: dict, data: tuple, tags: list, args) -> dict:
    work = pathlib.Path(args.work) / "q"
    work.mkdir(parents=True, exist_ok=True)
    ext = "onnx" if backend == "onnx" else "xml"
    paths = {t: work / f"{name}_{t}_{backend}.{ext}" for t in ("nncf", *tags)}
    redo = set(args.redo.split(","))
    quant = {}
    for tool in ("nncf", args.tag):
        fresh = (tool == args.tag and not args.no_quantize) or tool in redo
        quant[tool] = quantize_cached(
            "nncf" if tool == "nncf" else "rayq", backend, fp32, data[0], meta, paths[tool], fresh
        )
    files = {t: p for t, p in paths.items() if p.exists() and "error" not in quant.get(t, {})}
    c = {t: counts(p, backend) for t, p in files.items()}
    r = {"quantize": quant, "counts": {t: {k: c[t][k] for k in ("aq", "tensors", "max_per_tensor")} for t in c}}
    if args.diff and args.tag in c and "nncf" in c:
        d = _diff(c[args.tag]["edges"], c["nncf"]["edges"])
        r["diff"] = {k: {f"{p}->{q}": n for (p, q), n in v.most_common()} for k, v in d.items()}
    if not args.no_measure:
        r.update(measure(backend, files, fp32, data[1], args))
    return r


def run_model(name: str, args) -> dict:
    work = pathlib.Path(args.work)
    fp32 = work / f"{name}.onnx"
    meta = json.loads((work / f"{name}.json").read_text())
    data = items(meta, args.calib, 0), items(meta, args.heldout, 1)
    tags = list(dict.fromkeys([args.tag, *filter(None, args.also.split(","))]))
    result: dict = {
        "model": name,
        "family": meta["family"],
        "exporter": meta["exporter"],
        "model_type": meta["model_type"],
        "tags": tags,
    }
    for backend in args.backends.split(","):
        r = run_backend(name, backend, fp32, meta, data, tags, args)
        result[backend] = r
        print(json.dumps({name: {backend: r}}, indent=None), flush=True)
    return result


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def _row(res: dict, backend: str, tag: str) -> str:
    r = res[backend]
    q, n, ms, c = r["quantize"], r.get("nmse", {}), r.get("median_ms", {}), r["counts"]
    errs = r.get("errors", {})

    def ok(t: str) -> str:
        e = q.get(t, {}).get("error") or errs.get(t)
        return "yes" if t in n else f"**no** ({e})" if e else "-"

    qs = {t: q.get(t, {}).get("seconds") for t in (tag, "nncf")}
    aq = "/".join(str(c[t]["aq"]) if t in c else "-" for t in (tag, "nncf"))
    fmt = {t: f"{n[t]:.2e}" if t in n else "-" for t in (tag, "nncf")}
    nncf_nmse = max(n.get("nncf", 0), 1e-30) if "nncf" in n else None
    return (
        f"| {res['model']} | {'ORT' if backend == 'onnx' else 'OV'} | {ok(tag)} / {ok('nncf')} | {aq} | "
        f"{fmt[tag]} | {fmt['nncf']} | {_ratio(n.get(tag), nncf_nmse)} | "
        f"{_ratio(ms.get(tag), ms.get('nncf'))} | {_ratio(ms.get(tag), ms.get('fp32'))} | "
        f"{_ratio(ms.get('nncf'), ms.get('fp32'))} | "
        f"{qs[tag] or 0:.1f} / {qs['nncf'] or 0:.1f} | {_ratio(qs[tag], qs['nncf'])} |"
    )


def table(results: list[dict]) -> str:
    """Markdown: one row per model, runtime and rayq variant, ratios against NNCF."""
    rows = [
        (
            "| model | runtime | runs rayq / NNCF | act. quantizers rayq/NNCF | NMSE rayq | NMSE NNCF | NMSE ratio | "
            "latency rayq/NNCF | rayq/FP32 | NNCF/FP32 | quantize s rayq / NNCF | quantize time ratio |"
        ),
        "|---" * 12 + "|",
    ]
    for res in results:
        for backend in BACKENDS:
            if backend in res:
                rows += [_row(res, backend, tag) for tag in res["tags"]]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT))
    ap.add_argument("--backends", default="onnx,openvino")
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--heldout", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--redo", default="", help="variants whose cached models are re-quantized (nncf)")
    ap.add_argument("--tag", default="rayq", help="name of the rayq variant quantized by this run")
    ap.add_argument("--also", default="", help="cached rayq variants measured alongside (e.g. before)")
    ap.add_argument("--no-quantize", action="store_true", help="reuse the cached --tag models")
    ap.add_argument("--diff", action="store_true")
    ap.add_argument("--no-measure", action="store_true")
    ap.add_argument("--work", default="bench/.cache/zoo")
    ap.add_argument(
        "--out",
        type=pathlib.Path,
        default=None,
        help="result JSON, e.g. bench/results/zoo.json (default: none, only the table; "
        "with --quick bench/.cache/quick/zoo.json)",
    )
    ap.add_argument("--quick", action="store_true", help="resnet18 on ONNX, 4 calibration / 2 held-out items")
    ap.add_argument("--cpus", default=None, help="CPU ids this process is pinned to, e.g. 0-1 (default: all of ours)")
    ap.add_argument(
        "--table",
        nargs="*",
        metavar="JSON",
        help="print the table of saved --out files (merged, in zoo order) and exit",
    )
    args = ap.parse_args()
    if args.table is not None:
        print(table(merged(args.table)))
        return
    if args.quick:
        args.models, args.backends, args.calib, args.heldout, args.rounds = "resnet18", "onnx", 4, 2, 1
    cpus = harness.parse_cpus(args.cpus)
    os.sched_setaffinity(0, cpus)
    out = harness.output_path(args, "zoo") if args.out or args.quick else None
    env = harness.environment(cpus=cpus)
    saved = json.loads(out.read_text())["results"] if out and out.exists() else []
    results = []
    for m in args.models.split(","):
        results.append(dict(run_model(m, args), machine=machine(), args=vars(args)))
        if out:  # after every model, replacing its earlier row: a run that stops keeps what it measured
            done = {r["model"] for r in results}
            rows = merged_rows([r for r in saved if r["model"] not in done] + results)
            harness.write_results("zoo", rows, env=env, config=vars(args), markdown=table(rows), out=out)
    if not out:
        print(table(results))


def merged(paths: list[str]) -> list[dict]:
    """The results of several ``--out`` files, the last one winning per model, in zoo order."""
    return merged_rows([r for p in paths for r in json.loads(pathlib.Path(p).read_text())["results"]])


def merged_rows(rows: list[dict]) -> list[dict]:
    """One row per model (the last one wins), in zoo order."""
    by_model = {r["model"]: r for r in rows}
    order = {m: i for i, m in enumerate(DEFAULT)}
    return sorted(by_model.values(), key=lambda r: order.get(r["model"], len(order)))


def machine() -> dict:
    """CPU model, core count and load average (1, 5, 15 min) when the model's rows ended."""
    from rayq.pipeline.latency import cpu_model

    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()}


if __name__ == "__main__":
    main()
