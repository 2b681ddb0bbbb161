"""``rayq quantize``: basic post-training INT8 quantization of one model.

Builds one :class:`rayq.api.config.QuantizeConfig` from ``--config`` and the flags (flags
win), calls :func:`rayq.quantize`, saves the model and ``config.yaml`` into the
output folder, prints a summary line and, with ``--validation``, an FP32 vs INT8
table of the metric and latency on each runtime.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import rayq
from rayq.api import compare
from rayq.api.config import OUTPUT_FORMATS, QuantizeConfig, dump
from rayq.backends import convert, detect
from rayq.backends.base import Backend
from rayq.cli import report
from rayq.cli.common import (
    BIAS_CORRECTION,
    UNSET,
    add_bias_correction_flags,
    add_model_argument,
    build_config,
    file_size,
    mb,
    ray_scope,
    resolve_function,
    warn_relative_job_output,
)
from rayq.core.plan import ACTIVATION_ESTIMATORS, OVERFLOW_FIXES, PRESETS, TARGET_DEVICES
from rayq.errors import BackendError, ConfigError, InputError
from rayq.pipeline import data
from rayq.storage import Location, Publication, check_output, resolve

log = logging.getLogger("rayq.cli")

HELP = "quantize a model to INT8 (post-training, NNCF-compatible)"
DESCRIPTION = """\
Post-training INT8 quantization of an ONNX (.onnx) or OpenVINO (.xml) model. A
TorchScript (.pt), TensorFlow SavedModel folder (or .keras, .pb), TFLite (.tflite) or
PaddlePaddle (.pdmodel) model is converted first, with the first calibration item as
example input: to OpenVINO, or to ONNX (PyTorch only) for --output-format onnx or an
OUT ending in .onnx.

Give MODEL, --data and --output, or --config FILE (a YAML QuantizeConfig, see
configs/README.md); flags given with --config override the file's fields. The
quantized model and the effective config.yaml are written to the output folder.
"""
EPILOG = """\
examples:
  rayq quantize --config configs/digits.yaml
  rayq quantize model.onnx --data calib.npz --output out/model_int8.onnx --num-workers 1
  rayq quantize model.onnx --data calib.npz --output out/ --output-format openvino \\
      --ignored-type Softmax --estimator histogram_mse
  rayq quantize model.pt --data calib.npz --output out/model_int8.onnx
"""

SUFFIXES = {"onnx": ".onnx", "openvino": ".xml"}

#: argparse dest -> QuantizeConfig field (every flag maps to exactly one field).
FIELDS = {
    "model": "model",
    "data": "calibration",
    "output": "output",
    "preset": "preset",
    "target_device": "target_device",
    "subset_size": "subset_size",
    "model_type": "model_type",
    "num_workers": "num_workers",
    "output_format": "output_format",
    "address": "address",
    "validation": "validation",
    "validation_fn": "validation_fn",
    "latency_batch": "latency_batch",
}
ADVANCED = {"estimator": "activation_estimator", "overflow_fix": "overflow_fix"}
SCOPE = {"ignored_scope": "names", "ignored_pattern": "patterns", "ignored_type": "types"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    u = argparse.SUPPRESS  # "not given" must stay distinguishable from any value
    add_model_argument(p)
    p.add_argument("--config", metavar="FILE", help="YAML config (configs/*.yaml); flags override its fields")
    io = p.add_argument_group("data and output")
    io.add_argument(
        "--data",
        "--calibration",
        dest="data",
        default=u,
        metavar="DATA",
        help="calibration data: .npz/.npy/.parquet (config field: calibration)",
    )
    io.add_argument(
        "--output",
        "-o",
        default=u,
        metavar="OUT",
        help="output model path (.onnx/.xml), or a folder for <model>_int8.<ext>",
    )
    io.add_argument(
        "--output-format",
        choices=OUTPUT_FORMATS,
        default=u,
        help="format of the saved model (default: from OUT's suffix, else the input's; a converted model: openvino)",
    )
    io.add_argument("--no-cache", action="store_true", help="do not read or write the statistics cache")
    q = p.add_argument_group("quantization")
    q.add_argument(
        "--preset",
        choices=PRESETS,
        default=u,
        help="performance: symmetric activations; mixed: asymmetric (default: by model type)",
    )
    q.add_argument("--subset-size", type=int, default=u, metavar="N", help="calibration items used (default 300)")
    q.add_argument("--model-type", choices=["transformer"], default=u, help="enable transformer rules and SmoothQuant")
    q.add_argument("--target-device", choices=TARGET_DEVICES, default=u, help="NNCF target device (default ANY)")
    add_bias_correction_flags(q)
    q.add_argument(
        "--estimator",
        choices=ACTIVATION_ESTIMATORS,
        default=u,
        help="activation range estimator (advanced.activation_estimator)",
    )
    q.add_argument("--overflow-fix", choices=OVERFLOW_FIXES, default=u, help="advanced.overflow_fix")
    q.add_argument(
        "--ignored-scope",
        nargs="+",
        action="extend",
        default=u,
        metavar="NAME",
        help="node names kept in FP32 (ignored_scope.names)",
    )
    q.add_argument(
        "--ignored-pattern",
        nargs="+",
        action="extend",
        default=u,
        metavar="REGEX",
        help="node-name regexes kept in FP32 (ignored_scope.patterns)",
    )
    q.add_argument(
        "--ignored-type",
        nargs="+",
        action="extend",
        default=u,
        metavar="OPTYPE",
        help="op types kept in FP32 (ignored_scope.types)",
    )
    r = p.add_argument_group("execution")
    r.add_argument(
        "--num-workers",
        type=int,
        default=u,
        metavar="N",
        help="calibration workers: 1 = in this process, N > 1 = Ray actors (default: all CPUs)",
    )
    r.add_argument(
        "--address",
        default=u,
        metavar="RAY_ADDRESS",
        help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray started on demand)",
    )
    v = p.add_argument_group("validation (optional)")
    v.add_argument("--validation", default=u, metavar="DATA", help="validation data (.npz/.npy/.parquet)")
    v.add_argument(
        "--validation-fn",
        default=u,
        metavar="MODULE:FUNCTION",
        help="fn(compiled_model, items) -> float, e.g. examples.digits.metric:accuracy",
    )
    v.add_argument("--threads", type=int, default=2, metavar="N", help="threads for validation and latency (default 2)")
    v.add_argument(
        "--latency-batch",
        type=int,
        default=u,
        metavar="N",
        help="latency is timed on the first N validation items as one batch (default 1)",
    )


def config_from_args(args: argparse.Namespace) -> QuantizeConfig:
    """The one frozen config, from ``--config`` (if any) with the given flags on top."""
    given = vars(args)
    if args.config is None:
        missing = [
            flag for dest, flag in (("model", "MODEL"), ("data", "--data"), ("output", "--output")) if dest not in given
        ]
        if missing:
            raise ConfigError(
                f"rayq quantize needs MODEL, --data and --output (or --config FILE); missing {', '.join(missing)}"
            )
    fields = {field: given.get(dest, UNSET) for dest, field in FIELDS.items()}
    if "bias_correction" in given:
        fields["fast_bias_correction"] = BIAS_CORRECTION[given["bias_correction"]]
    nested = {
        "advanced": {field: given.get(dest, UNSET) for dest, field in ADVANCED.items()},
        "ignored_scope": {field: tuple(given[dest]) if dest in given else UNSET for dest, field in SCOPE.items()},
    }
    cfg = build_config("quantize", args.config, fields, nested)
    if (cfg.validation is None) != (cfg.validation_fn is None):
        raise ConfigError("validation and validation_fn go together: give both or neither")
    if args.threads < 0:
        raise ConfigError(f"--threads={args.threads} must be >= 0")
    return cfg


def output_path(cfg: QuantizeConfig, backend_name: str) -> tuple[Location, str]:
    """The model file to write (a local path or a ``pyarrow.fs`` URI) and its format,
    checked before any work (see ``output`` in configs/README.md)."""
    warn_relative_job_output(cfg.output)
    out = resolve(cfg.output)
    by_suffix = {v: k for k, v in SUFFIXES.items()}
    fmt = cfg.output_format
    suffix = Path(out.name).suffix.lower()
    if suffix in by_suffix:
        implied = by_suffix[suffix]
        if fmt is not None and fmt != implied:
            raise ConfigError(
                f"output={cfg.output!r} ends in {suffix} but output_format={fmt!r}: "
                f"use a {SUFFIXES[fmt]} name or an output folder"
            )
        fmt = implied
    else:
        fmt = fmt or backend_name
        out = out.child(f"{Path(cfg.model).stem}_int8{SUFFIXES[fmt]}")
    if backend_name == "openvino" and fmt == "onnx":
        raise ConfigError("an OpenVINO model cannot be saved as ONNX: use output_format openvino")
    check_output(out.parent(), folder=True)
    check_output(out, folder=False)
    return out, fmt


def input_files(path: str) -> list[str]:
    if Path(path).is_dir():  # a TensorFlow SavedModel
        return [str(p) for p in sorted(Path(path).rglob("*")) if p.is_file()]
    files = [path]
    if path.lower().endswith(".xml"):
        files.append(str(Path(path).with_suffix(".bin")))
    return files


def load_model(cfg: QuantizeConfig) -> tuple[Backend, Any]:
    """The backend and the loaded model. A PyTorch, TensorFlow, TFLite or PaddlePaddle
    model is converted first (see :mod:`rayq.backends.convert`), with the first
    calibration item as example input, to ``output_format``, else the format of
    ``output``'s suffix, else OpenVINO."""
    model: Any = cfg.model
    if convert.framework_of(model) is not None:
        first = data.take(data.as_dataset(cfg.calibration), 1)[0]
        suffix = {v: k for k, v in SUFFIXES.items()}.get(Path(resolve(cfg.output).name).suffix.lower())
        model = convert.prepare(model, convert.example_from(cfg.calibration, first), cfg.output_format or suffix)
    backend = detect(model)
    return backend, backend.load(model)


def save(qmodel: Any, backend_name: str, fmt: str, out: Publication, name: str) -> list[str]:
    """Write the model into the staging folder (converted by the backend layer when
    ``fmt`` differs); returns the staged file names."""
    return [Path(p).name for p in convert.save_as(qmodel, backend_name, fmt, str(out.staging / name))]


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    fn = resolve_function(cfg.validation_fn, "validation_fn") if cfg.validation_fn else None
    items = compare.load_items(cfg.validation) if cfg.validation else None
    try:
        backend, model = load_model(cfg)
    except BackendError as exc:
        raise InputError(str(exc)) from exc
    target, fmt = output_path(cfg, backend.name)
    feeds = compare.latency_feeds(backend, model, items, cfg.latency_batch) if items is not None else None
    start = time.perf_counter()
    with Publication.open(target.parent()) as out, ray_scope(cfg.address, cfg.num_workers != 1):
        qmodel = rayq.quantize(
            model,
            cfg.calibration,
            preset=cfg.preset,
            target_device=cfg.target_device,
            subset_size=cfg.subset_size,
            fast_bias_correction=cfg.fast_bias_correction,
            model_type=cfg.model_type,
            ignored_scope=cfg.ignored_scope,
            advanced_parameters=cfg.advanced,
            num_workers=cfg.num_workers,
            cache=not args.no_cache,
        )
        staged = save(qmodel, backend.name, fmt, out, target.name)
        (out.staging / "config.yaml").write_text(dump(cfg), encoding="utf-8")
        size = file_size([str(out.staging / name) for name in staged])
        written = list(out.publish([*staged, "config.yaml"]).values())
    model_files = written[:-1]
    print(
        f"rayq quantize: {time.perf_counter() - start:.1f}s, {cfg.model} ({mb(file_size(input_files(cfg.model)))})"
        f" -> {model_files[0]} ({mb(size)}, {fmt}); config {written[-1]}",
        flush=True,
    )
    if fn is not None and items is not None and feeds is not None:  # together (config_from_args)
        rows = compare.compare(backend, {"FP32": model, "INT8": qmodel}, fn, items, feeds, threads=args.threads)
        name = getattr(fn, "__name__", "metric")
        print(f"validation: {cfg.validation} ({len(items)} items), {cfg.validation_fn}")
        print(report.format_table(rows, name, cfg.latency_batch), flush=True)
    return 0
