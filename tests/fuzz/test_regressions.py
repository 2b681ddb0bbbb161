"""Named regression tests for the crash classes the graph fuzzer found (tests/fuzz/test_graph_fuzz.py).

Each builds the smallest model that showed the class, by hand, and checks what the fuzzer
checks: ``rayq.quantize`` returns, the output is valid ONNX, and it runs on ONNX Runtime and
OpenVINO close to FP32.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rayq
from rayq.testing.fuzz_check import nmse, run_model

pytest.importorskip("openvino")


def _model(nodes, inputs, outputs, inits, opset: int) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(helper.make_graph(nodes, "regression", inputs, outputs, inits),
                              opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model, full_check=True)
    return model


def _quantize_and_compare(model, feeds: list[dict], *, bound: float = 0.05, **options) -> onnx.ModelProto:
    params = rayq.AdvancedQuantizationParameters(overflow_fix="enable", activation_estimator="minmax")
    quantized = rayq.quantize(model, rayq.Dataset(feeds), num_workers=1, cache=False, subset_size=len(feeds),
                              advanced_parameters=params, **options)
    onnx.checker.check_model(quantized, full_check=True)
    for runtime in ("onnxruntime", "openvino"):
        for feed in feeds[:2]:
            ref, out = run_model(model, feed, runtime), run_model(quantized, feed, runtime)
            assert [r.shape for r in ref] == [o.shape for o in out], runtime
            assert max(nmse(r, o) for r, o in zip(ref, out)) < bound, runtime
    return quantized


@pytest.mark.parametrize("op", ["Transpose", "Reshape", "MaxPool"])
def test_opset21_int8_activation_before_data_movement_loads_on_onnxruntime(op):
    """Opset 21, symmetric (int8) activations feeding a Transpose/Reshape/MaxPool: ONNX Runtime
    failed to create the session ("output_dtype INT8 does not match y_zero_point type UINT8").
    Fixed in the ONNX writer: activation quantizers are uint8 (+128) from opset 21 on."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(np.array([0, 4, -1], np.int64), "shape"),
             numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32) * 0.5, "m")]
    moved = {"Transpose": helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 1, 3]),
             "Reshape": helper.make_node("Reshape", ["c", "shape"], ["t"]),
             "MaxPool": helper.make_node("MaxPool", ["c"], ["t"], kernel_shape=[2, 2], strides=[2, 2])}[op]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), moved,
             helper.make_node("Relu", ["t"], ["y"])]
    shape = {"Transpose": [1, 4, 4, 4], "Reshape": [1, 4, 16], "MaxPool": [1, 4, 2, 2]}[op]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits, opset=21)
    feeds = [{"x": rng.standard_normal((1, 4, 4, 4)).astype(np.float32)} for _ in range(8)]
    quantized = _quantize_and_compare(model, feeds, preset="performance")
    zps = [numpy_helper.to_array(t) for t in quantized.graph.initializer if t.name.endswith("rayq_zp")]
    assert zps and all(z.dtype == np.uint8 and z == 128 for z in zps)  # symmetric, stored as uint8
