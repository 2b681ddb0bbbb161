"""TensorFlow in: a Keras model object and a SavedModel folder, converted by OpenVINO,
quantized, and run on OpenVINO against TensorFlow's FP32 output.

Runs where tensorflow is importable (``pip install "rayq[tf]"``), skips cleanly otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
ov = pytest.importorskip("openvino")

import rayq  # noqa: E402

FAST = dict(num_workers=1, subset_size=32)


@pytest.fixture(scope="module")
def keras_model():
    """conv + batch norm + relu + dense, random weights, NHWC."""
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((8, 8, 3), batch_size=None, name="x")
    x = tf.keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = tf.keras.layers.BatchNormalization()(x, training=False)
    x = tf.keras.layers.ReLU()(x)
    x = tf.keras.layers.Flatten()(x)
    outputs = tf.keras.layers.Dense(10)(x)
    return tf.keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((32, 8, 8, 3)).astype(np.float32)


def _check(q, keras_model, calib) -> None:
    assert isinstance(q, ov.Model)
    assert "FakeQuantize" in {op.get_type_name() for op in q.get_ops()}
    compiled = ov.Core().compile_model(q, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = calib[:16]
    out, ref = compiled(x)[0], keras_model(x, training=False).numpy()
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 0.15 * np.abs(ref).max()


def test_keras_model_quantizes_to_openvino(keras_model, calib):
    _check(rayq.quantize(keras_model, calib, **FAST), keras_model, calib)


def test_saved_model_folder_quantizes(keras_model, calib, tmp_path):
    folder = tmp_path / "saved"
    tf.saved_model.save(keras_model, str(folder))
    _check(rayq.quantize(str(folder), calib, **FAST), keras_model, calib)


def test_keras_model_cannot_become_onnx(keras_model, calib):
    with pytest.raises(rayq.ConfigError, match="converts to OpenVINO only"):
        rayq.quantize(keras_model, calib, convert_to="onnx", **FAST)


def test_converting_twice_gives_the_same_model(keras_model):
    from rayq.backends import convert, get_backend

    first, second = convert.convert(keras_model), convert.convert(keras_model)
    assert get_backend("openvino").fingerprint(first) == get_backend("openvino").fingerprint(second)


def test_keras_file_quantizes(keras_model, calib, tmp_path):
    path = tmp_path / "model.keras"
    keras_model.save(str(path))
    _check(rayq.quantize(str(path), calib, **FAST), keras_model, calib)
