"""``rayq search``: the accuracy-controlled, latency-minimising search."""

from __future__ import annotations

import argparse
import time

from rayq import events
from rayq.api.config import SearchConfig
from rayq.cli.common import (
    BIAS_CORRECTION,
    UNSET,
    add_bias_correction_flags,
    add_model_argument,
    add_option_flags,
    build_config,
    ray_scope,
    resolve_function,
    warn_relative_job_output,
)
from rayq.core.plan import PRESETS, TARGET_DEVICES
from rayq.errors import ConfigError
from rayq.storage import check_free, check_output, resolve

HELP = "find an INT8 model within an accuracy budget that is measurably faster than FP32 (Ray + Optuna)"
DESCRIPTION = """\
Calibrate once (sharded over Ray actors), rank fallback groups in parallel, evaluate
top-k fallback sets, then explore preset x estimator x bias correction x SmoothQuant
alpha x fallback set with a seeded Optuna study (it minimises the compute left in FP32,
never a noisy timing). The answer is chosen among the feasible finalists by interleaved
timings against FP32 on --target with 95% intervals: exit code 0 when it is
significantly faster than FP32, 3 when the budget is not met or no candidate is
significantly faster (status "no_speedup"; the most accurate quantized model is still
written). Every trial is persisted (a journal in --output); rerunning the same command
resumes. Writes the model, trials.parquet, pareto.parquet, pareto.png, config.yaml and,
last, result.json (the marker of a complete run) under --output, which one search at a
time may use (a second one is refused, naming the first)."""
EPILOG = """\
examples:
  rayq search --config configs/search_digits.yaml
  rayq search MODEL --data calib.npz --validation val.npz --validation-fn pkg.metrics:accuracy \\
      --max-drop 0.01 --output runs/search
  ray job submit --working-dir . -- rayq search --config configs/search_digits.yaml"""

#: argparse dest -> SearchConfig field of the flags that are not options (those are generated:
#: :func:`~rayq.cli.common.add_option_flags`, one per field of SearchSpace, SearchOptions, Execution).
FIELDS = {
    "model": "model",
    "data": "calibration",
    "validation": "validation",
    "validation_fn": "validation_fn",
    "output": "output",
    "max_drop": "max_drop",
    "drop_type": "drop_type",
    "preset": "preset",
    "model_type": "model_type",
    "subset_size": "subset_size",
    "target_device": "target_device",
    "convert_to": "convert_to",
}
#: SearchConfig fields set only in a config file (structured values; ``rayq quantize`` has flags for parts).
CONFIG_ONLY = ("ignored_scope", "advanced")
#: Filled by :func:`add_arguments`: the option flags' dest -> field.
OPTION_FIELDS: dict[str, str] = {}


def add_arguments(p: argparse.ArgumentParser) -> None:
    u = argparse.SUPPRESS
    add_model_argument(p)
    p.add_argument("--config", metavar="FILE", help="YAML config (configs/*.yaml); flags override its fields")
    io = p.add_argument_group("data and output")
    io.add_argument("--data", "--calibration", dest="data", default=u, metavar="DATA", help="calibration data")
    io.add_argument("--validation", default=u, metavar="DATA", help="validation data (.npz/.npy/.parquet)")
    io.add_argument(
        "--validation-fn",
        default=u,
        metavar="MODULE:FUNCTION",
        help="fn(model, items) -> metric or (metric, per_item); higher is better",
    )
    io.add_argument("--output", "-o", default=u, metavar="DIR_OR_URI", help="local folder or pyarrow.fs URI")
    b = p.add_argument_group("accuracy budget")
    b.add_argument("--max-drop", type=float, default=u, help="accuracy budget (default 0.01)")
    b.add_argument("--drop-type", choices=["absolute", "relative"], default=u)
    q = p.add_argument_group("base quantization plan")
    q.add_argument("--preset", choices=PRESETS, default=u, help="base preset")
    q.add_argument("--model-type", choices=["transformer"], default=u)
    q.add_argument("--subset-size", type=int, default=u, help="calibration items used (default 300)")
    q.add_argument("--target-device", choices=TARGET_DEVICES, default=u, help="NNCF target device (default ANY)")
    add_bias_correction_flags(q)
    q.add_argument(
        "--convert-to",
        choices=["onnx", "openvino"],
        default=u,
        help="what a framework model is converted to (default: onnx for --target onnxruntime, else openvino)",
    )
    OPTION_FIELDS.update(add_option_flags(p))


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    given = vars(args)
    if args.config is None:
        need = [
            flag
            for dest, flag in (
                ("model", "MODEL"),
                ("data", "--data"),
                ("validation", "--validation"),
                ("validation_fn", "--validation-fn"),
            )
            if dest not in given
        ]
        if need:
            raise ConfigError(
                f"rayq search needs MODEL, --data, --validation and --validation-fn "
                f"(or --config FILE); missing {', '.join(need)}"
            )
    fields = {f: given.get(d, UNSET) for d, f in {**FIELDS, **OPTION_FIELDS}.items()}
    if "bias_correction" in given:
        fields["fast_bias_correction"] = BIAS_CORRECTION[given["bias_correction"]]
    return build_config("search", args.config, fields)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg.output:  # before the search is imported and Ray starts; rayq.search then locks it
        warn_relative_job_output(cfg.output)
        check_output(resolve(cfg.output), folder=True)
        check_free(cfg.output)
    resolve_function(cfg.validation_fn, "validation_fn")  # fail fast, cwd importable
    from rayq.api.search import search_from_config

    start = time.perf_counter()
    with ray_scope(cfg.address, cfg.num_workers != 1):
        result = search_from_config(cfg)
    events.emit(
        "search",
        "result",
        status=result.status,
        metric=result.metric,
        drop=result.drop,
        speedup=result.speedup_text,
        output=cfg.output,
    )
    fb = ", ".join(result.plan.fallback) or "none"
    latency = f"{result.latency_ms:.3f} ms, " if result.latency_ms else ""
    print(f"rayq search: {result.status} in {time.perf_counter() - start:.1f}s, {len(result.trials)} trials")
    print(
        f"  metric {result.metric:.4f} (FP32 {result.fp32_metric:.4f}, drop {result.drop:.4f}, "
        f"max {cfg.max_drop} {cfg.drop_type}); latency {latency}{result.speedup_text} on {result.target}"
    )
    print(
        f"  plan (trial {result.chosen_trial}): preset={result.plan.preset} "
        f"estimator={result.plan.activation_estimator} bias_correction={result.plan.bias_correction} "
        f"FP32 layers: {fb} ({len(result.plan.fallback)} of {result.n_quantizable})"
    )
    if result.status != "met":
        print(f"  {result.message}")
    if result.model_path:
        label = "" if result.status == "met" else f" (labelled {result.status!r} in result.json)"
        print(f"  model: {result.model_path}{label}; trials, result.json and pareto.png next to it", flush=True)
    return 0 if result.status == "met" else 3
