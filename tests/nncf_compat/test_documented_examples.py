"""NNCF's documented post-training examples, run with ``import rayq as nncf``.

Written from NNCF's documentation ("Basic quantization flow" and "Quantization with
accuracy control", OpenVINO and ONNX): a data loader of ``(images, labels)`` batches,
``nncf.Dataset(loader, transform_fn)``, ``nncf.quantize`` and
``nncf.quantize_with_accuracy_control`` with a ``validate(model, loader)`` that uses
the model the way each runtime's own object is used. Nothing below the import line
knows it runs on rayq; the bundled digits example stands in for the docs' model/data.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime
import pytest

ov = pytest.importorskip("openvino")

import rayq as nncf  # noqa: E402  -- the only change NNCF's examples get
from examples.digits.data import MODEL, load_calibration, load_validation  # noqa: E402

MAX_DROP = 0.02


# -- the user's data pipeline, as in NNCF's docs -------------------------------------------
def make_loader(images: np.ndarray, labels: np.ndarray, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A minimal data loader: a re-iterable list of ``(images, labels)`` batches."""
    return [(images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(images), batch_size)]


def transform_fn(data_item):
    images, _ = data_item
    return images


@pytest.fixture(scope="module")
def loaders():
    x_cal = load_calibration()
    x_val, y_val = load_validation()
    calibration_loader = make_loader(x_cal[:100], np.zeros(100, np.int64), batch_size=1)
    validation_loader = make_loader(x_val, y_val, batch_size=100)
    return calibration_loader, validation_loader


@pytest.fixture(scope="module")
def by_value():
    """Ray workers get this module's functions by value, as they get a script's (``__main__``)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


# -- OpenVINO: validate(model: ov.CompiledModel, loader) ----------------------------------
def validate_openvino(model, validation_loader) -> float:
    """NNCF's OpenVINO validation function: ``model(images)[model.output(0)]``."""
    output = model.outputs[0]
    assert model.output(0).get_any_name() == output.get_any_name()
    predictions, references = [], []
    for images, target in validation_loader:
        pred = model(images)[model.output(0)]
        assert np.array_equal(pred, model([images])[output]) and np.array_equal(pred, model({0: images})[0])
        predictions.append(np.argmax(pred, axis=1))
        references.append(target)
    return float(np.mean(np.concatenate(predictions) == np.concatenate(references)))


# -- ONNX: validate(model: onnx.ModelProto, loader) ---------------------------------------
def validate_onnx(model, validation_loader) -> float:
    """NNCF's ONNX validation function: an ONNX Runtime session from ``model.SerializeToString()``."""
    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    output_names = [o.name for o in sess.get_outputs()]
    predictions, references = [], []
    for images, target in validation_loader:
        pred = sess.run(output_names, {input_name: images})[0]
        predictions.append(np.argmax(pred, axis=1))
        references.append(target)
    return float(np.mean(np.concatenate(predictions) == np.concatenate(references)))


def _compiled(model):
    return ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


@pytest.fixture(scope="module")
def ov_model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ir") / "digits.xml"
    ov.save_model(ov.convert_model(str(MODEL)), str(path), compress_to_fp16=False)
    return str(path)


# -- basic quantization --------------------------------------------------------------------
def test_basic_quantize_openvino(loaders):
    calibration_loader, validation_loader = loaders
    model = ov.convert_model(str(MODEL))
    calibration_dataset = nncf.Dataset(calibration_loader, transform_fn)
    quantized_model = nncf.quantize(model, calibration_dataset)

    assert isinstance(quantized_model, ov.Model)
    assert any(op.get_type_name() == "FakeQuantize" for op in quantized_model.get_ops())
    fp32 = validate_openvino(_compiled(model), validation_loader)
    int8 = validate_openvino(_compiled(quantized_model), validation_loader)
    assert fp32 - int8 <= MAX_DROP, (fp32, int8)


def test_basic_quantize_onnx(loaders):
    calibration_loader, validation_loader = loaders
    model = onnx.load(str(MODEL))
    calibration_dataset = nncf.Dataset(calibration_loader, transform_fn)
    quantized_model = nncf.quantize(
        model,
        calibration_dataset,
        preset=nncf.QuantizationPreset.MIXED,
        target_device=nncf.TargetDevice.CPU,
        subset_size=100,
        fast_bias_correction=True,
    )

    assert isinstance(quantized_model, onnx.ModelProto)
    assert any(n.op_type == "QuantizeLinear" for n in quantized_model.graph.node)
    fp32, int8 = validate_onnx(model, validation_loader), validate_onnx(quantized_model, validation_loader)
    assert fp32 - int8 <= MAX_DROP, (fp32, int8)


# -- quantization with accuracy control ----------------------------------------------------
def test_accuracy_control_openvino(loaders, ov_model_path, ray_cluster, by_value):
    calibration_loader, validation_loader = loaders
    model = ov.Core().read_model(ov_model_path)
    calibration_dataset = nncf.Dataset(calibration_loader, transform_fn)
    validation_dataset = nncf.Dataset(validation_loader, transform_fn)

    quantized_model = nncf.quantize_with_accuracy_control(
        model,
        calibration_dataset=calibration_dataset,
        validation_dataset=validation_dataset,
        validation_fn=validate_openvino,
        max_drop=MAX_DROP,
        drop_type=nncf.DropType.ABSOLUTE,
    )

    assert isinstance(quantized_model, ov.Model)
    fp32 = validate_openvino(_compiled(model), validation_loader)
    int8 = validate_openvino(_compiled(quantized_model), validation_loader)
    assert fp32 - int8 <= MAX_DROP + 1e-9, (fp32, int8)
    ov.save_model(quantized_model, ov_model_path.replace(".xml", "_int8.xml"))


def test_accuracy_control_onnx(loaders, ray_cluster, by_value, tmp_path):
    calibration_loader, validation_loader = loaders
    model = onnx.load(str(MODEL))
    calibration_dataset = nncf.Dataset(calibration_loader, transform_fn)
    validation_dataset = nncf.Dataset(validation_loader, transform_fn)

    quantized_model = nncf.quantize_with_accuracy_control(
        model,
        calibration_dataset=calibration_dataset,
        validation_dataset=validation_dataset,
        validation_fn=validate_onnx,
        max_drop=MAX_DROP,
        drop_type=nncf.DropType.ABSOLUTE,
        preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=100,
        advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(ranking_subset_size=50),
    )

    assert isinstance(quantized_model, onnx.ModelProto)
    fp32, int8 = validate_onnx(model, validation_loader), validate_onnx(quantized_model, validation_loader)
    assert fp32 - int8 <= MAX_DROP + 1e-9, (fp32, int8)
    onnx.save(quantized_model, str(tmp_path / "int8.onnx"))


def test_openvino_validation_gets_a_compiled_model(loaders, ov_model_path, tmp_path):
    """The validation function is handed OpenVINO's own object; NNCF's restorer parameters
    choose the workers (one: in-process) and the output directory."""
    calibration_loader, validation_loader = loaders
    seen_models = []

    def recording_validate(model, validation_loader):
        seen_models.append(model)
        return validate_openvino(model, validation_loader)

    nncf.quantize_with_accuracy_control(
        ov.Core().read_model(ov_model_path),
        nncf.Dataset(calibration_loader, transform_fn),
        nncf.Dataset(validation_loader, transform_fn),
        recording_validate,
        max_drop=MAX_DROP,
        drop_type="absolute",
        subset_size=100,
        advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
            num_ranking_workers=1, intermediate_model_dir=str(tmp_path / "run")
        ),
    )
    assert seen_models and all(isinstance(m, ov.CompiledModel) for m in seen_models)
    m = seen_models[-1]
    images = validation_loader[0][0]
    assert len(m.inputs) == 1 and m.input(0).get_any_name() == m.inputs[0].get_any_name()
    by_name = m({m.input(0).get_any_name(): images})[m.output(0).get_any_name()]
    assert np.array_equal(by_name, m(images)[0])
    assert (tmp_path / "run" / "result.json").is_file()
