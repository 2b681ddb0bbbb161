"""NNCF's option names, parameter objects and keywords, with ``import rayq as nncf``.

The reference names come from NNCF itself where it is installed (a benchmark-only
dependency: the tests may import it, rayq never does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from e2e.runtimes import dequantized, initializers, weight_of

import rayq as nncf
from examples.digits.data import MODEL, load_calibration
from rayq import compat
from rayq.compat import advanced_parameters, ignored_scope
from rayq.core.plan import QuantPlan

ENUMS = ("QuantizationPreset", "ModelType", "TargetDevice", "DropType", "OverflowFix", "QuantizationMode")


@pytest.fixture(scope="module")
def digits():
    return onnx.load(str(MODEL)), load_calibration()[:64]


def _quantize(digits, **kwargs) -> onnx.ModelProto:
    model, calib = digits
    return nncf.quantize(
        model, nncf.Dataset(list(calib[:, None])), subset_size=64, num_workers=1, cache=False, **kwargs
    )


# -- names -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ENUMS)
def test_enum_members_are_their_strings(name):
    enum = getattr(nncf, name)
    for member in enum:
        assert isinstance(member, str) and member == member.value and f"{member}" == member.value


@pytest.mark.parametrize("name", ENUMS)
def test_enum_members_match_nncf(name):
    real = pytest.importorskip("nncf")
    ours = getattr(nncf, name)
    for member in getattr(real, name):
        assert compat.plain(member) == ours[member.name].value, (name, member)


def test_enum_and_plain_string_give_the_same_plan():
    a = QuantPlan.create(
        preset=nncf.QuantizationPreset.MIXED,
        model_type=nncf.ModelType.TRANSFORMER,
        target_device=nncf.TargetDevice.CPU,
        advanced=nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.FIRST_LAYER),
    )
    b = QuantPlan.create(
        preset="mixed",
        model_type="transformer",
        target_device="CPU",
        advanced=nncf.AdvancedQuantizationParameters(overflow_fix="first_layer_only"),
    )
    assert a == b and a.key() == b.key() and type(a.preset) is str


# -- keywords ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fp8_e4m3", nncf.QuantizationMode.FP8_E5M2, "int4"])
def test_non_int8_modes_are_a_config_error(digits, mode):
    with pytest.raises(nncf.ConfigError, match="mode=.*INT8 only"):
        _quantize(digits, mode=mode)
    with pytest.raises(nncf.ConfigError, match="mode="):
        nncf.quantize_with_accuracy_control(digits[0], digits[1], digits[1], lambda m, d: 1.0, mode=mode)


def test_disable_bias_correction(digits):
    def biases(q):
        return {k: v for k, v in initializers(q).items() if v.dtype == np.int32}

    default = biases(_quantize(digits, mode=nncf.QuantizationMode.INT8))
    none = biases(_quantize(digits, fast_bias_correction=None))
    keyword = biases(_quantize(digits, disable_bias_correction=True))
    advanced = biases(
        _quantize(digits, advanced_parameters=nncf.AdvancedQuantizationParameters(disable_bias_correction=True))
    )
    assert default.keys() == none.keys() == keyword.keys() == advanced.keys()
    assert any(not np.array_equal(default[k], none[k]) for k in default)
    assert all(np.array_equal(none[k], keyword[k]) and np.array_equal(none[k], advanced[k]) for k in none)


def test_smooth_quant_alphas_set_the_transformer_alpha():
    adv = nncf.AdvancedQuantizationParameters(smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=0.5))
    assert QuantPlan.create(model_type="transformer", advanced=adv).smooth_quant_alpha == 0.5
    assert QuantPlan.create(model_type="transformer").smooth_quant_alpha == 0.95
    with pytest.raises(nncf.ConfigError, match="smooth_quant_alphas.convolution"):
        nncf.AdvancedSmoothQuantParameters(convolution=0.5)


@pytest.mark.parametrize(
    "kwargs, field_name",
    [
        ({"max_num_iterations": 3}, "max_num_iterations"),
        ({"tune_hyperparams": True}, "tune_hyperparams"),
        ({"restore_mode": "only_activations"}, "restore_mode"),
    ],
)
def test_accuracy_restorer_parameters_rayq_cannot_honour(kwargs, field_name):
    with pytest.raises(nncf.ConfigError, match=field_name):
        nncf.AdvancedAccuracyRestorerParameters(**kwargs)


# -- NNCF's own objects --------------------------------------------------------------------------
@dataclass
class AdvancedQuantizationParameters:
    """A stand-in with NNCF's class name and field names (runs where NNCF is not installed)."""

    overflow_fix: str | None = None
    quantize_outputs: bool = False
    disable_bias_correction: bool = False
    backend_params: dict = field(default_factory=dict)


def test_duck_typed_nncf_parameters_are_converted_field_by_field():
    adv = advanced_parameters(
        AdvancedQuantizationParameters(overflow_fix="first_layer_only", disable_bias_correction=True)
    )
    assert isinstance(adv, nncf.AdvancedQuantizationParameters)
    assert adv.overflow_fix == "first_layer" and adv.disable_bias_correction
    with pytest.raises(nncf.ConfigError, match="quantize_outputs"):
        advanced_parameters(AdvancedQuantizationParameters(quantize_outputs=True))
    with pytest.raises(nncf.ConfigError, match="backend_params"):
        advanced_parameters(AdvancedQuantizationParameters(backend_params={"x": 1}))
    with pytest.raises(nncf.ConfigError, match="advanced_parameters must be"):
        advanced_parameters(object())


def test_real_nncf_objects_are_converted(digits):
    real = pytest.importorskip("nncf")
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    # the failure: a raw AttributeError on activation_estimator
    q = _quantize(digits, advanced_parameters=real.AdvancedQuantizationParameters())
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    adv = advanced_parameters(
        real.AdvancedQuantizationParameters(
            overflow_fix=real.OverflowFix.DISABLE,
            smooth_quant_alphas=real.AdvancedSmoothQuantParameters(matmul=0.6),
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
        )
    )
    assert (adv.overflow_fix, adv.activation_estimator, adv.smooth_quant_alphas.matmul) == ("disable", "minmax", 0.6)
    with pytest.raises(nncf.ConfigError, match="quantize_outputs"):
        advanced_parameters(real.AdvancedQuantizationParameters(quantize_outputs=True))
    with pytest.raises(nncf.ConfigError, match="max_num_iterations"):
        compat.accuracy_restorer_parameters(real.AdvancedAccuracyRestorerParameters(max_num_iterations=2))
    restorer = compat.accuracy_restorer_parameters(
        real.AdvancedAccuracyRestorerParameters(ranking_subset_size=20, num_ranking_workers=1)
    )
    assert (restorer.ranking_subset_size, restorer.num_ranking_workers) == (20, 1)


def test_real_nncf_ignored_scope_keeps_nodes_fp32(digits):
    real = pytest.importorskip("nncf")
    model = digits[0]
    conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    scope = ignored_scope(real.IgnoredScope(names=[conv], subgraphs=[real.Subgraph(inputs=[conv], outputs=[conv])]))
    assert scope.names == (conv,) and scope.subgraphs[0].inputs == (conv,)
    mixed = nncf.IgnoredScope(names=[conv], subgraphs=[real.Subgraph(inputs=[conv], outputs=[conv])])
    assert mixed == scope
    with pytest.raises(nncf.ConfigError, match="needs 'inputs' and 'outputs'"):
        nncf.IgnoredScope(subgraphs=[{"inputs": [conv]}])
    q = _quantize(digits, ignored_scope=real.IgnoredScope(names=[conv]))
    assert weight_of(q, conv) is None
    assert weight_of(_quantize(digits), conv) is not None


# -- target_device ---------------------------------------------------------------------------------
def _weight_ranges(q, model):
    return {
        n.name: int(np.abs(weight_of(q, n.name)[0].astype(np.int32)).max())
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm")
    }


def _quantized_add_inputs(q) -> list[int]:
    return [sum(dequantized(q, t) for t in n.input) for n in q.graph.node if n.op_type == "Add"]


def test_target_devices_any_cpu_gpu_npu_give_the_same_int8_scheme(digits):
    models = {d: _quantize(digits, target_device=d).SerializeToString() for d in ("ANY", "CPU", "GPU", "NPU")}
    assert len(set(models.values())) == 1


def test_cpu_spr_uses_full_8bit_weights_and_leaves_one_add_input_fp32(digits):
    model = digits[0]
    any_q, spr = _quantize(digits, target_device="ANY"), _quantize(digits, target_device=nncf.TargetDevice.CPU_SPR)
    assert min(_weight_ranges(any_q, model).values()) <= 63  # first layer: 7-bit (overflow fix)
    assert set(_weight_ranges(spr, model).values()) == {127}  # CPU_SPR: AMX/VNNI do not saturate
    assert _quantized_add_inputs(any_q) == [2, 2]
    assert _quantized_add_inputs(spr) == [1, 1]
    explicit = _quantize(
        digits,
        target_device="CPU_SPR",
        advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix="first_layer"),
    )
    assert min(_weight_ranges(explicit, model).values()) <= 63  # an explicit overflow fix wins


def test_unknown_target_device_is_a_config_error(digits):
    with pytest.raises(nncf.ConfigError, match="target_device='TPU'"):
        _quantize(digits, target_device="TPU")


def test_cpu_spr_on_openvino_drops_one_fake_quantize_per_residual_add(digits):
    ov = pytest.importorskip("openvino")
    model, calib = digits
    ov_model = ov.convert_model(str(MODEL))

    def fake_quantizes(device):
        q = nncf.quantize(
            ov_model,
            nncf.Dataset(list(calib[:, None])),
            target_device=device,
            subset_size=64,
            num_workers=1,
            cache=False,
        )
        return sum(op.get_type_name() == "FakeQuantize" for op in q.get_ops())

    adds = sum(n.op_type == "Add" for n in model.graph.node)
    assert fake_quantizes("CPU_SPR") == fake_quantizes("NPU") - adds
