"""The Python API, shaped like NNCF's so that switching is a change of import.

>>> import rayq
>>> q = rayq.quantize("model.onnx", rayq.Dataset(items, transform_fn))   # doctest: +SKIP
>>> q = rayq.quantize("model.onnx", calib, num_workers=1, cache=False)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rayq import compat
from rayq.api.options import Execution, resolve
from rayq.api.session import ModelSession, connect, start_workers_early
from rayq.compat import check_mode, compat_advanced
from rayq.core.estimators import needs_histogram
from rayq.core.plan import AdvancedQuantizationParameters, QuantPlan
from rayq.core.scope import IgnoredScope
from rayq.pipeline.build import build_quantized, placement_for

log = logging.getLogger("rayq")

#: rayq's keywords of :func:`quantize` beyond NNCF's and the :class:`~rayq.api.options.Execution` fields.
EXTRA_KWARGS = frozenset({"disable_bias_correction", "convert_to"})


def quantize(
    model: Any,
    calibration_dataset: Any,
    *,
    mode: str | None = None,
    preset: str | None = None,
    target_device: str = "ANY",
    subset_size: int = 300,
    fast_bias_correction: bool | None = True,
    model_type: str | None = None,
    ignored_scope: IgnoredScope | None = None,
    advanced_parameters: AdvancedQuantizationParameters | None = None,
    execution: Execution | None = None,
    **kwargs: Any,
) -> Any:
    """Post-training INT8 quantization, with ``nncf.quantize`` semantics.

    Args:
        model: ``onnx.ModelProto`` or ``.onnx`` path (returns an ``onnx.ModelProto``
            with QuantizeLinear/DequantizeLinear), or ``openvino.Model`` / ``.xml``
            path (returns an ``openvino.Model`` with FakeQuantize). A PyTorch module
            or TorchScript file, a TensorFlow/Keras model or SavedModel folder, a
            ``.tflite`` or PaddlePaddle model is converted first, with the first
            calibration item (after ``transform_fn``) as example input; see
            :mod:`rayq.backends.convert`.
        calibration_dataset: :class:`rayq.Dataset`, numpy array, ``.npz``/``.npy``/
            Parquet path, or ``ray.data.Dataset``.
        mode: None or ``rayq.QuantizationMode.INT8`` (INT8); other modes (NNCF's FP8)
            raise :class:`rayq.ConfigError`.
        preset: ``performance`` (symmetric activations) or ``mixed`` (asymmetric);
            default ``mixed`` for transformers, else ``performance``. Every option
            taking a name also takes the matching ``rayq`` string enum member
            (``rayq.QuantizationPreset.MIXED``).
        target_device: ``ANY``, ``CPU``, ``GPU``, ``NPU`` or ``CPU_SPR``. ``CPU_SPR``
            (Sapphire Rapids, AMX) leaves one input of each residual Add in FP32 and
            uses full 8-bit weights (``overflow_fix`` defaults to ``disable``); the
            others give the same INT8 scheme, as in NNCF for 8-bit quantization.
        subset_size: Number of calibration items (the first ones).
        fast_bias_correction: True: fast bias correction; False: the exact
            (data-driven) variant; None: none.
        model_type: None or ``"transformer"`` (SmoothQuant, transformer placement).
        ignored_scope: Nodes to keep in FP32.
        advanced_parameters: :class:`rayq.AdvancedQuantizationParameters` (an NNCF
            one is converted field by field, see :mod:`rayq.compat`).
        execution: Where calibration runs: :class:`rayq.Execution`; quantize uses its
            ``num_workers`` (calibration workers as Ray tasks; None: every CPU of the
            connected Ray cluster, a local one is started when none runs; 1: in this
            process), ``cache`` (reuse/store statistics in the Parquet cache) and ``address``.
        **kwargs: rayq's additions, flat: any :class:`rayq.Execution` field
            (``num_workers=1``, ``cache=False``), ``disable_bias_correction`` (True: no bias
            correction, as ``advanced_parameters.disable_bias_correction``) and
            ``convert_to`` (what a framework model becomes: ``"openvino"`` (None) or
            ``"onnx"``, PyTorch only: ``torch.onnx.export``, opset 17; ONNX and OpenVINO
            models are used as they are).

    Returns:
        The quantized model, in the input's format (a converted model: in ``convert_to``'s).

    Example:
        >>> import numpy as np, rayq
        >>> calib = np.load("examples/digits/calibration.npz")["input"]         # doctest: +SKIP
        >>> q = rayq.quantize("examples/digits/digits_cnn.onnx", calib)           # doctest: +SKIP
    """
    start = time.perf_counter()
    check_mode(mode)
    _, _, execution, extra = resolve(None, None, execution, kwargs, allowed=EXTRA_KWARGS, accepts=(Execution,))
    num_workers, convert_to = execution.num_workers, extra.get("convert_to")
    adv = compat_advanced(advanced_parameters, extra.get("disable_bias_correction"))
    ignored_scope = compat.ignored_scope(ignored_scope)
    plan = QuantPlan.create(
        preset=preset,
        model_type=model_type,
        target_device=target_device,
        fast_bias_correction=fast_bias_correction,
        ignored_scope=ignored_scope,
        advanced=adv,
    )
    connect(execution.address)
    start_workers_early(num_workers, None, subset_size=subset_size)
    session = ModelSession(
        model, calibration_dataset, subset_size=subset_size, batch_size=adv.batch_size, convert_to=convert_to
    )
    placement = placement_for(session.graph, plan)
    stats = session.statistics(
        plan, histograms=needs_histogram(plan.activation_estimator), num_workers=num_workers, use_cache=execution.cache
    )
    qmodel, summary = build_quantized(
        session.backend, session.model, session.graph, stats, plan, placement=placement, batches=session.batches
    )
    info = session.info
    source = "cached statistics" if info and info.cached else f"calibrated on {session.num_items} items"
    size = f"{_mb(session.backend, session.model)} -> {_mb(session.backend, qmodel)}"
    log.info("rayq.quantize: %.1fs, %s, %s, %s", time.perf_counter() - start, source, size, summary.line())
    for op, reason in summary.fp32_ops:
        if reason not in ("fallback", "ignored scope", "not a quantizable op type"):
            log.info("kept FP32: %s (%s)", op, reason)
    return qmodel


def _mb(backend, model) -> str:
    """Model size (weights included) for the summary line, without serialising the model."""
    return f"{backend.size_bytes(model) / 1e6:.2f} MB"
