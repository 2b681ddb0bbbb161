"""The OpenVINO writer leaves out FakeQuantizes that would be identities."""

from __future__ import annotations

import numpy as np
import onnx
import openvino as ov

import rayq
from tests.core.test_rules import _shuffle_block
from tests.e2e.runtimes import run_ort


def _fake_quantized_inputs(model: ov.Model) -> list[str]:
    return [
        op.input_value(0).get_node().get_type_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "FakeQuantize"
    ]


def test_shuffled_concat_output_is_not_fake_quantized_again(tmp_path):
    path = tmp_path / "shuffle.onnx"
    onnx.save(_shuffle_block(), str(path))
    calib = np.random.default_rng(0).normal(size=(8, 1, 4, 8, 8)).astype(np.float32)
    data = rayq.Dataset([{"x": c} for c in calib])
    q_ov = rayq.quantize(ov.convert_model(str(path)), data, num_workers=1, subset_size=8, cache=False)
    q_onnx = rayq.quantize(str(path), data, num_workers=1, subset_size=8, cache=False)
    # ONNX keeps the (lossless) Q/DQ after the shuffle: ONNX Runtime fuses with it
    assert sum(n.op_type == "QuantizeLinear" for n in q_onnx.graph.node) == 5
    # OpenVINO: the Concat outputs and the shuffled tensor are on the Concats' unified
    # grid already; only the Concats' own inputs are fake-quantized (as NNCF does)
    assert sorted(_fake_quantized_inputs(q_ov)) == ["Parameter", "Relu", "Relu"]
    core = ov.Core()
    compiled = core.compile_model(q_ov, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = calib[0]
    got = np.asarray(compiled({"x": x})[compiled.outputs[0]])
    want = run_ort(q_onnx, {"x": x})[0]
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
