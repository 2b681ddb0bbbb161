"""Ratios, targets and Markdown tables for ``bench_ptq.py`` (pure functions on its JSON)."""

from __future__ import annotations

import statistics

TARGETS = {"quantize": 0.5, "latency": 1.0, "nmse": 1.5}
LABELS = {"nncf": "NNCF", "rayq_ray": "rayq (Ray, num_workers=None)",
          "rayq_inproc": "rayq (in-process, num_workers=1)"}


def _ratio(num, den):
    if num is None or den is None or den == 0:
        return None
    return num / den


def _verdict(ratio, target):
    if ratio is None:
        return "n/a"
    return "PASS" if ratio <= target else "MISS"


def _rayq_primary(measure: dict) -> str | None:
    lv = measure.get("latency_variants", [])
    return next((v for v in ("rayq_ray", "rayq_inproc") if v in lv), None)


def row_figures(row: dict) -> dict:
    """Absolute figures and ratios of one (model, backend) row."""
    q = row.get("quantize", {})
    m = row.get("measure", {})
    fig: dict = {"quantize_s": {v: r.get("quantize_s") for v, r in q.items()},
                 "import_s": {v: r.get("import_s") for v, r in q.items()},
                 "process_s": {v: r.get("process_s") for v, r in q.items()},
                 "process_cpu_s": {v: r.get("process_cpu_s") for v, r in q.items()},
                 "errors_in_jobs": {v: r.get("error") for v, r in q.items() if "error" in r},
                 "latency_ms": {}, "latency_iqr_ms": {}, "nmse": {}, "cosine": {}, "ratios": {},
                 "verdicts": {}}
    if "error" in m:
        fig["errors_in_jobs"]["measure"] = m["error"]
    fig["quantize_failures"] = {v: len(r.get("failures", [])) for v, r in q.items() if r.get("failures")}
    nncf_q = fig["quantize_s"].get("nncf")
    for v in ("rayq_ray", "rayq_inproc"):
        r = _ratio(fig["quantize_s"].get(v), nncf_q)
        fig["ratios"][f"quantize_{v}"] = r
        fig["verdicts"][f"quantize_{v}"] = _verdict(r, TARGETS["quantize"])
    fig["ratios"]["process_cpu_rayq_inproc"] = _ratio(fig["process_cpu_s"].get("rayq_inproc"),
                                                      fig["process_cpu_s"].get("nncf"))
    rq = _rayq_primary(m)
    fig["rayq_measured"] = rq
    fig["samples"] = sorted({r.get("samples") for r in q.values() if r.get("samples")})
    fig["latency_runs"] = sorted({s["runs"] for d in m.get("runtimes", {}).values() for s in d["latency"].values()})
    for rt, data in m.get("runtimes", {}).items():
        lat = data["latency"]
        fig["latency_ms"][rt] = {v: s["median_ms"] for v, s in lat.items()}
        fig["latency_iqr_ms"][rt] = {v: s["q3_ms"] - s["q1_ms"] for v, s in lat.items()}
        errs = data["errors"]
        fig["nmse"][rt] = {v: e["nmse"] for v, e in errs.items() if isinstance(e, dict)}
        fig["cosine"][rt] = {v: e["cosine"] for v, e in errs.items() if isinstance(e, dict)}
        if "rayq_ray_vs_inproc_max_abs" in errs:
            fig.setdefault("rayq_ray_vs_inproc_max_abs", {})[rt] = errs["rayq_ray_vs_inproc_max_abs"]
        r = _ratio(lat.get(rq, {}).get("median_ms"), lat.get("nncf", {}).get("median_ms"))
        fig["ratios"][f"latency_{rt}"] = r
        fig.setdefault("latency_paired_ratio", {})[rt] = _paired(lat.get(rq), lat.get("nncf"))
        fig.setdefault("loadavg", {})[rt] = [data.get("loadavg_before"), data.get("loadavg_after")]
        fig["verdicts"][f"latency_{rt}"] = _verdict(r, TARGETS["latency"])
        r = _ratio(fig["nmse"][rt].get(rq), fig["nmse"][rt].get("nncf"))
        fig["ratios"][f"nmse_{rt}"] = r
        fig["verdicts"][f"nmse_{rt}"] = _verdict(r, TARGETS["nmse"])
    return fig


def _paired(a: dict | None, b: dict | None) -> float | None:
    """Median over rounds of a/b, both timed in the same round (robust to load drift)."""
    if not a or not b or "times_ms" not in a or "times_ms" not in b:
        return None
    return statistics.median(x / y for x, y in zip(a["times_ms"], b["times_ms"]))


def build(rows: dict, env: dict, config: dict) -> dict:
    return {"environment": env, "config": config, "targets": TARGETS,
            "rows": {k: {"figures": row_figures(v), "raw": v} for k, v in rows.items()}}


def _rayq_source(env: dict) -> str:
    if env.get("rayq_commit"):
        return f"commit {env['rayq_commit']}"
    return f"working tree at {env['git_commit']}{', uncommitted changes' if env['rayq_tree_dirty'] else ''}"


def _cell(ratio, verdict) -> str:
    return "-" if ratio is None else f"{ratio:.3f} {verdict}"


def _num(x, fmt="{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def markdown(report: dict) -> str:
    env = report["environment"]
    v = env["versions"]
    figs = [row["figures"] for row in report["rows"].values()]
    samples = "/".join(str(x) for x in sorted({n for f in figs for n in f.get("samples", [])})) or "?"
    runs = "/".join(str(x) for x in sorted({n for f in figs for n in f.get("latency_runs", [])})) or "?"
    lines = [
        "### rayq vs NNCF: ratios rayq/NNCF (targets: quantize <= 0.5, INT8 latency <= 1.0, NMSE <= 1.5)",
        "",
        f"Machine: {env['cpu_model']}, {len(env['cpus_used'])} of {env['cpus_online']} CPUs used; "
        f"rayq {v['rayq']} ({_rayq_source(env)}), "
        f"nncf {v['nncf']}, onnxruntime {v['onnxruntime']}, openvino {v['openvino']}, ray {v['ray']}; "
        f"{samples} calibration items, latency batch 1 / {report['config']['threads']} threads, "
        f"median of {runs} interleaved runs; {env['date']}.",
        "",
        "| model | backend | quantize time, rayq default (num_workers=None) | quantize time, rayq 1 proc "
        "| INT8 latency ORT "
        "| INT8 latency OV | NMSE ORT | NMSE OV | CPU s, rayq 1 proc (info) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in report["rows"].items():
        f = row["figures"]
        r, d = f["ratios"], f["verdicts"]
        model, backend = key.split("/")
        cells = [_cell(r.get(k), d.get(k)) for k in ("quantize_rayq_ray", "quantize_rayq_inproc", "latency_ort",
                                                       "latency_ov", "nmse_ort", "nmse_ov")]
        for i, rt in ((2, "ort"), (3, "ov")):
            paired = f.get("latency_paired_ratio", {}).get(rt)
            if paired is not None:
                cells[i] += f" (paired {paired:.3f})"
        cpu = r.get("process_cpu_rayq_inproc")
        cells.append("-" if cpu is None else f"{cpu:.2f}")
        lines.append(f"| {model} | {backend} | " + " | ".join(cells) + " |")
    lines += ["", "Latency cells: ratio of medians (the verdict) and, in brackets, the median of per-round "
              "ratios rayq/NNCF (both timed in the same round). Last column: CPU seconds (user+sys) of the "
              "whole quantize process, rayq in-process / NNCF: less sensitive to other load than wall time; "
              "not a target (for rayq with Ray the actors' CPU is not visible to the driver)."]
    lines += ["", "Absolute figures (quantize: seconds of the timed call, median over repeats; "
              "latency: median ms, FP32 / NNCF / rayq; NMSE vs FP32 on held-out inputs):", "",
              "| model | backend | quantize s NNCF / rayq default / rayq 1 proc | process s (incl. imports, "
              "Ray start/stop, save) | process CPU s NNCF / rayq 1 proc | ORT ms FP32 / NNCF / rayq "
              "| OV ms FP32 / NNCF / rayq | NMSE ORT NNCF / rayq | NMSE OV NNCF / rayq | cosine OV NNCF / rayq |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in report["rows"].items():
        f = row["figures"]
        model, backend = key.split("/")
        rq = f.get("rayq_measured")
        order = ("nncf", "rayq_ray", "rayq_inproc")
        qs = " / ".join(_num(f["quantize_s"].get(x)) for x in order)
        ps = " / ".join(_num(f["process_s"].get(x)) for x in order)
        cs = " / ".join(_num(f.get("process_cpu_s", {}).get(x)) for x in ("nncf", "rayq_inproc"))
        lat = {rt: " / ".join(_num(f["latency_ms"].get(rt, {}).get(x), "{:.2f}") for x in ("fp32", "nncf", rq))
               for rt in ("ort", "ov")}
        nm = {rt: " / ".join(_num(f["nmse"].get(rt, {}).get(x), "{:.2e}") for x in ("nncf", rq))
              for rt in ("ort", "ov")}
        cos = " / ".join(_num(f["cosine"].get("ov", {}).get(x), "{:.4f}") for x in ("nncf", rq))
        lines.append(f"| {model} | {backend} | {qs} | {ps} | {cs} | {lat['ort']} | {lat['ov']} | {nm['ort']} "
                     f"| {nm['ov']} | {cos} |")
    notes = []
    for key, row in report["rows"].items():
        f = row["figures"]
        if f["errors_in_jobs"]:
            notes.append(f"- {key}: failed jobs: {f['errors_in_jobs']} (see the logs under the work dir)")
        if f.get("quantize_failures"):
            notes.append(f"- {key}: failed quantize attempts (retried; see JSON/logs): {f['quantize_failures']}")
        if f.get("rayq_ray_vs_inproc_max_abs"):
            diffs = ", ".join(f"{rt} {d:.2e}" for rt, d in f["rayq_ray_vs_inproc_max_abs"].items())
            notes.append(f"- {key}: max |rayq default output - rayq in-process output| on held-out inputs: {diffs}")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"
