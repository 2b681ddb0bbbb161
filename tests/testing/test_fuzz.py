"""The graph generator itself: valid models, every op and storage mode reachable, deterministic."""

from __future__ import annotations

import onnx

from rayq.testing import fuzz_ops
from rayq.testing.fuzz import ALL_STORAGES, MAX_ELEMENTS, MAX_OPSET, MIN_OPSET, RandomChooser, random_case


def _cases(n: int = 150):
    return [random_case(RandomChooser(seed), storages=ALL_STORAGES) for seed in range(n)]


def test_every_generated_model_passes_the_full_checker_and_stays_small():
    for case in _cases():
        onnx.checker.check_model(case.model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(case.model, strict_mode=True)
        for vi in [*inferred.graph.value_info, *inferred.graph.output]:
            dims = [d.dim_value for d in vi.type.tensor_type.shape.dim[1:] if d.HasField("dim_value")]
            assert all(d > 0 for d in dims) and _prod(dims) <= MAX_ELEMENTS, (vi.name, dims, case.describe())


def _prod(dims) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def test_every_op_storage_and_opset_is_reachable():
    cases = _cases()
    steps = {s for c in cases for s in c.ops}
    assert set(fuzz_ops.EMITTERS) <= steps
    assert {s for c in cases for s in c.storages} == {"initializer", "shared", "constant", "fp16_cast"}
    assert {c.opset for c in cases} == set(range(MIN_OPSET, MAX_OPSET + 1))
    assert {c.dynamic for c in cases} == {False, True}
    ops = {n.op_type for c in cases for n in c.model.graph.node}
    assert {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "Resize",
        "Gelu",
        "HardSwish",
        "LayerNormalization",
        "Where",
        "Erf",
        "GlobalAveragePool",
        "MaxPool",
        "AveragePool",
        "Pad",
        "Split",
        "Flatten",
    } <= ops


def test_same_seed_same_model_and_inputs():
    a, b = random_case(RandomChooser(7)), random_case(RandomChooser(7))
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert all((x[k] == y[k]).all() for x, y in zip(a.inputs(2), b.inputs(2)) for k in x)
