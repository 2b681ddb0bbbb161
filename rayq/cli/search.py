"""``rayq search``: the accuracy-controlled, latency-minimising search."""

from __future__ import annotations

import argparse
import time

from rayq.cli.common import UNSET, build_config, ray_scope, resolve_function
from rayq.config import SearchConfig, dump
from rayq.errors import ConfigError

HELP = "find the fastest measured INT8 model within an accuracy budget (Ray + Optuna)"
DESCRIPTION = """\
Calibrate once (sharded over Ray actors), rank fallback groups in parallel, evaluate
top-k fallback sets, then explore preset x estimator x bias correction x SmoothQuant
alpha x fallback set with a seeded Optuna study. Every trial is persisted (a journal
in --output); rerunning the same command resumes. Writes the model, trials.parquet,
pareto.parquet, result.json, pareto.png and config.yaml under --output."""
EPILOG = """\
examples:
  rayq search --config configs/search_digits.yaml
  rayq search MODEL --data calib.npz --validation val.npz --validation-fn pkg.metrics:accuracy \\
      --max-drop 0.01 --output runs/search
  ray job submit --working-dir . -- rayq search --config configs/search_digits.yaml"""

FIELDS = {
    "model": "model", "data": "calibration", "validation": "validation", "validation_fn": "validation_fn",
    "output": "output", "max_drop": "max_drop", "drop_type": "drop_type", "target": "target",
    "n_trials": "n_trials", "timeout": "timeout", "num_workers": "num_workers", "storage": "storage",
    "study_name": "study_name", "seed": "seed", "preset": "preset", "model_type": "model_type",
    "subset_size": "subset_size", "address": "address", "validation_timeout": "validation_timeout",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    u = argparse.SUPPRESS
    p.add_argument("model", nargs="?", default=u, metavar="MODEL", help="model path (.onnx or .xml)")
    p.add_argument("--config", metavar="FILE", help="YAML config (configs/*.yaml); flags override its fields")
    io = p.add_argument_group("data and output")
    io.add_argument("--data", "--calibration", dest="data", default=u, metavar="DATA", help="calibration data")
    io.add_argument("--validation", default=u, metavar="DATA", help="validation data (.npz/.npy/.parquet)")
    io.add_argument("--validation-fn", default=u, metavar="MODULE:FUNCTION",
                    help="fn(model, items) -> metric or (metric, per_item); higher is better")
    io.add_argument("--output", "-o", default=u, metavar="DIR_OR_URI", help="local folder or pyarrow.fs URI")
    s = p.add_argument_group("search")
    s.add_argument("--max-drop", type=float, default=u, help="accuracy budget (default 0.01)")
    s.add_argument("--drop-type", choices=["absolute", "relative"], default=u)
    s.add_argument("--target", choices=["onnxruntime", "openvino"], default=u, help="runtime to validate and time")
    s.add_argument("--n-trials", type=int, default=u, help="total trials (default 32)")
    s.add_argument("--timeout", type=float, default=u, help="seconds after which no new generation starts")
    s.add_argument("--validation-timeout", type=float, default=u, metavar="SECONDS",
                   help="seconds one validation call may take; a slower candidate is a failed trial "
                        "(default: 10x the FP32 validation, at least 60)")
    s.add_argument("--num-workers", type=int, default=u,
                   help="evaluations at once, as Ray tasks (default: all cluster CPUs; 1: in-process)")
    s.add_argument("--storage", default=u, help="Optuna storage: journal path or RDB URL")
    s.add_argument("--study-name", default=u)
    s.add_argument("--seed", type=int, default=u)
    s.add_argument("--preset", choices=["performance", "mixed"], default=u, help="base preset")
    s.add_argument("--model-type", choices=["transformer"], default=u)
    s.add_argument("--subset-size", type=int, default=u)
    s.add_argument("--address", default=u, help="Ray address (default: RAY_ADDRESS, else a local Ray)")


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    given = vars(args)
    if args.config is None:
        need = [flag for dest, flag in (("model", "MODEL"), ("data", "--data"), ("validation", "--validation"),
                                        ("validation_fn", "--validation-fn")) if dest not in given]
        if need:
            raise ConfigError(f"rayq search needs MODEL, --data, --validation and --validation-fn "
                              f"(or --config FILE); missing {', '.join(need)}")
    return build_config("search", args.config, {f: given.get(d, UNSET) for d, f in FIELDS.items()})


def run(args: argparse.Namespace) -> int:
    from rayq.search_api import search_from_config

    cfg = config_from_args(args)
    resolve_function(cfg.validation_fn, "validation_fn")  # fail fast, cwd importable
    start = time.perf_counter()
    with ray_scope(cfg.address, cfg.num_workers != 1):
        result = search_from_config(cfg)
    if cfg.output:
        _write_config(cfg)
    fb = ", ".join(result.plan.fallback) or "none"
    speed = f" ({result.speedup:.2f}x FP32)" if result.speedup else ""
    print(f"rayq search: {result.status} in {time.perf_counter() - start:.1f}s, {len(result.trials)} trials")
    print(f"  metric {result.metric:.4f} (FP32 {result.fp32_metric:.4f}, drop {result.drop:.4f}, "
          f"max {cfg.max_drop} {cfg.drop_type}); latency {result.latency_ms:.3f} ms{speed} on {result.target}")
    print(f"  plan: preset={result.plan.preset} estimator={result.plan.activation_estimator} "
          f"bias_correction={result.plan.bias_correction} FP32 layers: {fb}")
    if result.model_path:
        print(f"  model: {result.model_path}; trials, result.json and pareto.png next to it", flush=True)
    return 0 if result.status == "met" else 3


def _write_config(cfg: SearchConfig) -> None:
    import os
    import tempfile

    from rayq.storage import copy_dir_to

    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(dump(cfg))
        copy_dir_to(tmp, cfg.output)
