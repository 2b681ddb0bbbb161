"""Graph patterns that real exporters produce, quantized end to end.

Each case builds a small model with ``onnx.helper``, quantizes it with
``rayq.quantize(..., num_workers=1)``, and checks that the output passes
``onnx.checker`` (full check), runs on ONNX Runtime and on OpenVINO with the same
output shapes as FP32, and stays close to FP32 on both.

The models are quantized with 7-bit weights (``overflow_fix="enable"``): on AVX2 CPUs
without VNNI, OpenVINO's int8 kernels saturate int16 pair sums with full 8-bit weights
(NMSE up to 0.07 on these random models, where ONNX Runtime gives 0.001), which would
hide a broken graph behind a loose bound. With 7-bit weights both runtimes compute the
same thing on every CPU, so one tight bound checks both.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import rayq
from tests.e2e.graph_patterns import CASES
from tests.e2e.runtimes import nmse, run_ort, run_ov

ov = pytest.importorskip("openvino")

MAX_NMSE = 0.02


def quantize(model: onnx.ModelProto, items, **kwargs) -> onnx.ModelProto:
    adv = rayq.AdvancedQuantizationParameters(overflow_fix="enable")
    return rayq.quantize(model, items, subset_size=len(items), num_workers=1, cache=False,
                         advanced_parameters=adv, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_pattern_quantizes_and_runs_close_to_fp32(case):
    model, items, feeds = CASES[case]()
    q = quantize(model, items)
    onnx.checker.check_model(q, full_check=True)
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node), "nothing was quantized"
    reference = run_ort(model, feeds)
    for runtime, run in (("onnxruntime", run_ort), ("openvino", run_ov)):
        out = run(q, feeds)
        assert [o.shape for o in out] == [r.shape for r in reference], runtime
        assert nmse(reference, out) < MAX_NMSE, f"{runtime}: NMSE {nmse(reference, out):.4f}"


@pytest.mark.parametrize("case", ["paddle_constants", "gemm_broadcast_bias", "shared_weights", "if_subgraph"])
def test_exact_bias_correction_on_patterns(case):
    """The exact (data-driven) bias correction runs the quantized model on the patterns
    too: Constant and shared biases, a bias broadcast over the channels, a subgraph."""
    model, items, feeds = CASES[case]()
    q = quantize(model, items, fast_bias_correction=False)
    onnx.checker.check_model(q, full_check=True)
    reference = run_ort(model, feeds)
    assert nmse(reference, run_ort(q, feeds)) < MAX_NMSE * 1.5
