"""Placement on OpenVINO models, checked on what the CPU plugin compiles.

A squeeze-excitation block (MobileNetV3, EfficientNet) on OpenVINO: the Convs of the
branch that computes the gate are fake-quantized like any Conv, and every Convolution
of the compiled model runs in INT8 (``runtimePrecision`` ``u8``/``i8``); on ONNX the
same block keeps the branch Convs FP32 (tests/core/test_rules.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import openvino as ov

import rayq
from rayq.backends.openvino.runtime import int8_saturates
from tests.core.test_rules import _se_block
from tests.e2e.runtimes import nmse, run_ort


def _fake_quantized(model: ov.Model) -> dict[str, list[str]]:
    """Friendly name of every op that reads a FakeQuantize -> that FakeQuantize's input op types."""
    out: dict[str, list[str]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        source = op.input_value(0).get_node().get_type_name()
        for target in op.output(0).get_target_inputs():
            out.setdefault(target.get_node().get_friendly_name(), []).append(source)
    return out


def _runtime_precisions(compiled: ov.CompiledModel, layer_type: str) -> list[str]:
    return [
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in compiled.get_runtime_model().get_ordered_ops()
        if op.get_rt_info()["layerType"].astype(str) == layer_type
    ]


def test_squeeze_excitation_branch_convs_run_int8_on_openvino(tmp_path):
    path = tmp_path / "se.onnx"
    onnx.save(_se_block(), str(path))
    calib = np.random.default_rng(0).normal(size=(16, 1, 4, 8, 8)).astype(np.float32)
    adv = rayq.AdvancedQuantizationParameters(overflow_fix="enable" if int8_saturates() else "disable")
    q = rayq.quantize(
        ov.convert_model(str(path)),
        rayq.Dataset([{"x": c} for c in calib]),
        num_workers=1,
        subset_size=16,
        cache=False,
        advanced_parameters=adv,
    )
    fq = _fake_quantized(q)
    # the branch Convs read a fake-quantized pooling output and ReLU output
    branch = {name: src for name, src in fq.items() if src in (["ReduceMean"], ["Relu"])}
    assert sorted(branch.values()) == [["ReduceMean"], ["Relu"]], fq
    compiled = ov.Core().compile_model(q, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    # stem, two branch Convs, projection (a plugin may run a 1x1 Conv on [N, C, 1, 1] as FC)
    convs = _runtime_precisions(compiled, "Convolution") + _runtime_precisions(compiled, "FullyConnected")
    assert len(convs) == 4 and set(convs) <= {"u8", "i8"}, convs
    x = np.random.default_rng(1).normal(size=(1, 4, 8, 8)).astype(np.float32)
    got = [np.asarray(compiled({"x": x})[compiled.outputs[0]])]
    assert nmse(run_ort(onnx.load(str(path)), {"x": x}), got) < 0.02
