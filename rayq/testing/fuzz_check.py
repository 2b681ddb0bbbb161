"""The fuzzer's oracle: quantize a :class:`~rayq.testing.fuzz.FuzzCase` and classify what happened.

:func:`check_case` returns an :class:`Outcome` whose ``kind`` names the failure class:

- ``pass``; ``rayq_error:<Class>`` (rayq refused the model with a :class:`rayq.RayqError`);
- ``generator:<what>`` -- the FP32 model itself is broken (a generator bug);
- ``skipped:fp32_runtimes_disagree`` -- ONNX Runtime and OpenVINO disagree on the FP32 model;
- ``crash:<ExceptionType>`` -- ``rayq.quantize`` raised something that is not a RayqError;
- ``output:checker``, ``output:<runtime>``, ``output:shape:<runtime>`` -- the quantized model
  is invalid, does not run, or its output shapes differ from FP32's;
- ``nmse:<runtime>`` -- the quantized output is further from FP32 than ``nmse_bound``.

Both runtimes are called directly (ONNX Runtime, OpenVINO with ``f32`` inference precision),
not through rayq's runners, so rayq's output is checked by the runtimes themselves.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

import numpy as np
import onnx

from rayq.testing.fuzz import FuzzCase

RUNTIMES = ("onnxruntime", "openvino")
#: NMSE bound, per output and runtime, for 8-bit QDQ with the overflow fix on these small
#: random models (a few quantized layers each; measured maxima are an order of magnitude lower).
NMSE_BOUND = 0.1
#: Outputs with an RMS below this are compared as if their RMS were this (see ``_floored_nmse``).
RMS_FLOOR = 0.1

#: Patterns OpenVINO 2026.4 mishandles once quantized, whatever the quantizer (each shown on a
#: hand-written QDQ model in tests/fuzz/test_regressions.py). Where one occurs, the quantized
#: model is checked on ONNX Runtime only (``Outcome.skipped`` names the gap). Its low-precision
#: transformations move an INT8 MatMul's per-output-channel dequantization (last axis) into
#: the next ops and break there: AveragePool/MaxPool, Resize or an Unsqueeze after the channel
#: axis fail to compile ("Argument shapes are inconsistent", "cannot be broadcasted"). A Gather
#: over a non-batch axis of an activation, next to quantized ops, segfaults (after an INT8
#: MatMul, or when a sibling branch of its input is quantized) or returns a wrong shape.
RUNTIME_GAPS = {
    "ov_op_after_int8_matmul": (("MatMul", "Gemm"), ("AveragePool", "MaxPool", "Unsqueeze", "Resize")),
    "ov_gather_of_activation": (None, ("Gather",)),
}
_MOVES = frozenset({"Split", "Slice", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"})
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")

__all__ = [
    "NMSE_BOUND",
    "RUNTIME_GAPS",
    "Outcome",
    "activation_matmul",
    "check_case",
    "cpu_has_vnni",
    "draw_options",
    "nmse",
    "run_model",
    "runtime_gap",
]


@dataclass
class Outcome:
    """What one case gave: ``kind`` (see the module docstring), a detail message, measured NMSEs,
    and the runtime gap for which OpenVINO was not run on the quantized model, if any."""

    kind: str
    detail: str = ""
    nmse: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None  #: the RUNTIME_GAPS entry that kept the quantized model off OpenVINO
    quantizers: int = 0  #: QuantizeLinear nodes in the quantized model

    @property
    def ok(self) -> bool:
        return self.kind == "pass" or self.kind.startswith("rayq_error:")


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray], runtime: str) -> list[np.ndarray]:
    """Run ``model`` once on ``runtime`` (2 threads; OpenVINO with f32 inference precision)."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 2
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return [np.asarray(o) for o in session.run(None, feeds)]
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(model=model.SerializeToString(), weights=b""),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2},
    )
    result = compiled(feeds)
    return [np.asarray(result[o]) for o in compiled.outputs]


def nmse(reference: np.ndarray, candidate: np.ndarray) -> float:
    """``|ref - cand|^2 / |ref|^2`` (0 when both are zero)."""
    ref, cand = np.float64(reference), np.float64(candidate)
    den = float(np.sum(ref**2))
    num = float(np.sum((ref - cand) ** 2))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def _floored_nmse(reference: np.ndarray, candidate: np.ndarray) -> float:
    """NMSE with the reference's mean square floored at ``RMS_FLOOR**2``: inputs are standard
    normal and weights keep the scale, so an output far below unit scale is a cancellation
    (the mean of a few signed values, ``x - x*c``) whose relative error says nothing."""
    ref, cand = np.float64(reference), np.float64(candidate)
    den = max(float(np.mean(ref**2)), RMS_FLOOR**2)
    return float(np.mean((ref - cand) ** 2)) / den


def _run_all(model: onnx.ModelProto, feeds: list[dict], runtime: str) -> list[list[np.ndarray]]:
    return [run_model(model, f, runtime) for f in feeds]


def _fp32(case: FuzzCase, feeds: list[dict]) -> tuple[dict | None, Outcome | None]:
    try:
        onnx.checker.check_model(case.model, full_check=True)
    except Exception as exc:
        return None, Outcome("generator:checker", str(exc).splitlines()[0])
    refs = {}
    for runtime in RUNTIMES:
        try:
            refs[runtime] = _run_all(case.model, feeds, runtime)
        except Exception as exc:
            return None, Outcome(f"generator:{runtime}", str(exc).splitlines()[0][:300])
    for a, b in zip(refs["onnxruntime"][0], refs["openvino"][0]):
        if a.shape != b.shape or nmse(a, b) > 1e-5:
            # a runtime gap, not a generator bug: e.g. OpenVINO 2026.4 computes ReduceMean(last axis)
            # + Add(per-channel constant) wrongly in FP32 for batch > 1 (tests/fuzz/test_regressions.py)
            return None, Outcome("skipped:fp32_runtimes_disagree", f"{a.shape} vs {b.shape}, NMSE {nmse(a, b):.3g}")
    return refs, None


def _quantize(case: FuzzCase, calibration: list[dict], options: dict):
    import rayq

    # min-max ranges: tested on calibration items, no activation is clipped, so the NMSE bound
    # measures rounding (the default mean-of-batch estimator clips the largest items by design)
    params = rayq.AdvancedQuantizationParameters(overflow_fix="enable", activation_estimator="minmax")
    try:
        return rayq.quantize(
            case.model,
            rayq.Dataset(calibration),
            num_workers=1,
            cache=False,
            subset_size=len(calibration),
            advanced_parameters=params,
            **options,
        ), None
    except rayq.RayqError as exc:
        return None, Outcome(f"rayq_error:{type(exc).__name__}", str(exc).splitlines()[0][:300])
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
        return None, Outcome(
            f"crash:{type(exc).__name__}", f"{where}: {str(exc).splitlines()[0][:300]}" if str(exc) else where
        )


def draw_options(chooser) -> dict:
    """Random ``rayq.quantize`` keyword arguments: preset, model type, bias correction."""
    return {
        "preset": chooser.choice((None, "performance", "mixed")),
        "model_type": chooser.choice((None, "transformer")),
        "fast_bias_correction": chooser.choice((True, False, None)),
    }


def runtime_gap(model: onnx.ModelProto) -> str | None:
    """The name of the first :data:`RUNTIME_GAPS` pattern in ``model``, else None. A consumer's
    producer is looked up through data-movement ops (:data:`_MOVES`, as OpenVINO moves the
    dequantization); a producer of None matches any tensor computed from the inputs (not a
    graph input, a constant, or a shape)."""
    constant = {t.name for t in model.graph.initializer}
    for n in model.graph.node:  # Constant nodes, what is computed from constants only (Cast), shapes
        if n.op_type == "Shape" or all(t in constant for t in n.input if t):
            constant.update(n.output)
    nodes = {o: n for n in model.graph.node for o in n.output if o not in constant}
    for name, (sources, consumers) in RUNTIME_GAPS.items():
        for n in model.graph.node:
            if n.op_type not in consumers or not n.input or n.input[0] not in nodes:
                continue
            source = nodes[n.input[0]]
            while sources is not None and source.op_type in _MOVES and source.input[0] in nodes:
                source = nodes[source.input[0]]
            if sources is None or source.op_type in sources:
                return name
    return None


def cpu_has_vnni() -> bool:
    """True if this x86 CPU has VNNI or AMX INT8 (``/proc/cpuinfo``); False if unknown."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return any(f in flags for f in _VNNI_FLAGS)


def activation_matmul(model: onnx.ModelProto) -> bool:
    """True if a MatMul multiplies two computed tensors (attention ``Q @ K^T``, ``P @ V``)."""
    constant = {t.name for t in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }
    return any(n.op_type == "MatMul" and not constant.intersection(n.input) for n in model.graph.node)


def _ov_nmse_unreliable(model: onnx.ModelProto) -> bool:
    """OpenVINO runs an INT8 MatMul of two activations with u8*s8 pair sums in int16
    (``vpmaddubsw``) on CPUs without VNNI: full-range 8-bit activations on both sides
    saturate (NMSE up to ~1 where ONNX Runtime gives 1e-4, tests/fuzz/test_regressions.py).
    The overflow fix only narrows weights, so there its NMSE is not rayq's to bound."""
    return activation_matmul(model) and not cpu_has_vnni()


def check_case(
    case: FuzzCase,
    options: dict | None = None,
    *,
    n_calibration: int = 8,
    n_test: int = 2,
    nmse_bound: float = NMSE_BOUND,
) -> Outcome:
    """Quantize ``case`` with ``rayq.quantize(**options)`` and check the result on both runtimes.

    Example:
        >>> from rayq.testing.fuzz import RandomChooser, random_case
        >>> check_case(random_case(RandomChooser(3))).ok                    # doctest: +SKIP
        True
    """
    calibration = case.inputs(n_calibration, seed=0)
    feeds = calibration[:n_test]  # inside the calibrated range: the bound measures rounding, not clipping
    refs, failed = _fp32(case, feeds)
    if failed:
        return failed
    assert refs is not None  # _fp32 returns references or a failure
    quantized, failed = _quantize(case, calibration, options or {})
    if failed:
        return failed
    try:
        onnx.checker.check_model(quantized, full_check=True)
    except Exception as exc:
        return Outcome("output:checker", str(exc).splitlines()[0][:300])
    errors: dict[str, float] = {}
    gap = runtime_gap(case.model)
    count = sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    for runtime in RUNTIMES if gap is None else ("onnxruntime",):
        try:
            outs = _run_all(quantized, feeds, runtime)
        except Exception as exc:
            return Outcome(f"output:{runtime}", str(exc).splitlines()[0][:300])
        for ref_feed, out_feed in zip(refs[runtime], outs):
            if [r.shape for r in ref_feed] != [o.shape for o in out_feed]:
                return Outcome(
                    f"output:shape:{runtime}", f"{[r.shape for r in ref_feed]} vs {[o.shape for o in out_feed]}"
                )
        errors[runtime] = max(
            _floored_nmse(
                np.concatenate([f[i].ravel() for f in refs[runtime]]), np.concatenate([f[i].ravel() for f in outs])
            )
            for i in range(len(outs[0]))
        )
    bounded = {k: v for k, v in errors.items() if not (k == "openvino" and _ov_nmse_unreliable(case.model))}
    worst = max(bounded, key=lambda k: bounded[k])
    if not errors[worst] <= nmse_bound:
        return Outcome(f"nmse:{worst}", f"NMSE {errors[worst]:.3g} > {nmse_bound}", errors, gap, count)
    return Outcome("pass", "", errors, gap, count)
