"""Models from PyTorch, TensorFlow, PaddlePaddle and TFLite, converted to a format rayq quantizes.

rayq quantizes ONNX and OpenVINO models. Any other model goes through OpenVINO's
converter (``openvino.convert_model``) first, or, for PyTorch on request, through
``torch.onnx.export`` (the TorchScript exporter, opset 17, dynamic batch axis):

- PyTorch: a ``torch.nn.Module`` (also a TorchScript ``ScriptModule`` or a
  ``torch.export.ExportedProgram``), or a TorchScript file (``.pt``, ``.pth``,
  ``.torchscript``: written by ``torch.jit.save``; a ``torch.save`` pickle is refused,
  rayq never unpickles files). Converted in eval mode with an example input.
- TensorFlow: a Keras model or ``tf.Module`` object, a SavedModel folder (one holding
  ``saved_model.pb``), a frozen graph ``.pb``, or a Keras 3 ``.keras`` file (loaded with
  ``safe_mode=True``: no Lambda-layer bytecode; legacy ``.h5`` files are not read).
- TensorFlow Lite: a ``.tflite`` file. PaddlePaddle: a ``.pdmodel`` file or a
  ``paddle.nn.Layer`` (with an example input).

The framework is told by the module of the model's class or one of its bases
(``torch.*``, ``keras.*``, ...) or by the path, so neither torch nor tensorflow is imported for any other model.
Errors are :class:`~rayq.errors.ConfigError` (a missing package: the message names
the ``pip install`` that fixes it; a target the framework cannot reach) or
:class:`~rayq.errors.BackendError` (the converter failed).
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import logging
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rayq.errors import BackendError, ConfigError

log = logging.getLogger(__name__)

#: Formats a framework model can be converted to.
TARGETS = ("openvino", "onnx")
#: ONNX opset of ``torch.onnx.export``.
ONNX_OPSET = 17

TORCH_SUFFIXES = (".pt", ".pth", ".torchscript")
_SUFFIXES = {
    **dict.fromkeys(TORCH_SUFFIXES, "torch"),
    ".pb": "tensorflow",
    ".keras": "tensorflow",
    ".tflite": "tflite",
    ".pdmodel": "paddle",
}
_MODULES = {
    "torch": "torch",
    "keras": "tensorflow",
    "tf_keras": "tensorflow",
    "tensorflow": "tensorflow",
    "paddle": "paddle",
}
#: What to install for each framework (the package that must be importable, the command).
INSTALL = {
    "torch": ("torch", 'pip install "rayq[torch]"'),
    "tensorflow": ("tensorflow", 'pip install "rayq[tf]"'),
    "paddle": ("paddle", "pip install paddlepaddle"),
}
NAMES = {"torch": "PyTorch", "tensorflow": "TensorFlow", "tflite": "TensorFlow Lite", "paddle": "PaddlePaddle"}


def framework_of(model: Any) -> str | None:
    """``"torch"``, ``"tensorflow"``, ``"tflite"``, ``"paddle"``, or None for anything
    else (ONNX, OpenVINO, unknown), without importing any framework.

    Example:
        >>> framework_of("model.pt"), framework_of("model.onnx")
        ('torch', None)
    """
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.suffix.lower() in _SUFFIXES:
            return _SUFFIXES[path.suffix.lower()]
        return "tensorflow" if os.path.isdir(model) and (path / "saved_model.pb").is_file() else None
    for cls in type(model).__mro__:  # a user's nn.Module subclass lives in the user's module
        framework = _MODULES.get(cls.__module__.split(".")[0])
        if framework is not None:
            return framework
    return None


def convert(model: Any, example_input: Any = None, *, to: str = "openvino") -> Any:
    """Convert a framework model to an ``openvino.Model`` or (PyTorch only) an ``onnx.ModelProto``.

    Args:
        model: A model or path :func:`framework_of` recognises.
        example_input: One input as the model's ``forward`` takes it (a tensor or array,
            a tuple of them, or a dict of keyword inputs); needed for PyTorch modules and
            Paddle layers, used for tracing TorchScript files, ignored otherwise.
        to: ``"openvino"`` or ``"onnx"``.

    Example:
        >>> ov_model = convert(torch_module, torch.zeros(1, 3, 224, 224))   # doctest: +SKIP
        >>> onnx_model = convert("model.pt", x, to="onnx")                 # doctest: +SKIP
    """
    framework = framework_of(model)
    if framework is None:
        raise ConfigError(
            f"cannot convert an object of type {type(model).__name__}: expected a PyTorch, "
            "TensorFlow, TFLite or PaddlePaddle model"
        )
    check_target(to)
    if to == "onnx" and framework != "torch":
        raise ConfigError(
            f"a {NAMES[framework]} model converts to OpenVINO only (convert_to='openvino'); "
            "ONNX output is for PyTorch models"
        )
    if isinstance(model, (str, os.PathLike)) and not os.path.exists(model):
        raise BackendError(f"model path {str(model)!r} does not exist")
    _require(framework, model)
    if framework == "torch":
        return _from_torch(model, example_input, to)
    if str(model).lower().endswith(".keras"):
        model = _load_keras(str(model))
    if framework == "paddle" and example_input is not None and not isinstance(model, (str, os.PathLike)):
        return _openvino(model, framework, example_input=_as_list(example_input))
    return _openvino(model, framework)


def save_as(model: Any, source: str, fmt: str, path: str) -> list[str]:
    """Save a loaded ``source`` (backend name) model at ``path`` in format ``fmt``; returns
    the files written. An ONNX model saved as OpenVINO goes through OpenVINO's ONNX
    frontend (its QuantizeLinear/DequantizeLinear pairs become FakeQuantize).

    Raises:
        ConfigError: No conversion from ``source`` to ``fmt`` (an OpenVINO model as ONNX).
        BackendError: OpenVINO cannot read the ONNX model.
    """
    from rayq.backends.registry import get_backend

    if fmt == source:
        return get_backend(fmt).save(model, path)
    if (source, fmt) != ("onnx", "openvino"):
        raise ConfigError(f"an {source} model cannot be saved as {fmt}")
    onnx_path = str(Path(path).with_suffix(".tmp.onnx"))
    written = get_backend("onnx").save(model, onnx_path)
    try:
        import openvino as ov

        ov_model = ov.Core().read_model(onnx_path)
    except Exception as exc:  # openvino raises RuntimeError subclasses
        raise BackendError(f"OpenVINO cannot convert the quantized ONNX model: {exc}") from exc
    try:
        return get_backend("openvino").save(ov_model, path)
    finally:
        for name in written:
            Path(name).unlink(missing_ok=True)


def check_target(convert_to: str | None) -> None:
    """Raise :class:`~rayq.errors.ConfigError` unless ``convert_to`` is None or in :data:`TARGETS`."""
    if convert_to is not None and convert_to not in TARGETS:
        raise ConfigError(f"convert_to={convert_to!r} must be None or one of {list(TARGETS)}")


def prepare(model: Any, example_input: Any, convert_to: str | None) -> Any:
    """``model`` ready for a backend: converted when it is a framework model
    (``convert_to``: None means ``"openvino"``), unchanged otherwise (ONNX and
    OpenVINO models are never converted; ``convert_to`` does not apply to them)."""
    check_target(convert_to)
    framework = framework_of(model)
    if framework is None:
        return model
    log.info("converting the %s model to %s", NAMES[framework], "ONNX" if convert_to == "onnx" else "OpenVINO")
    return convert(model, example_input, to=convert_to or "openvino")


def default_target(model: Any, convert_to: str | None, runtime: str | None) -> str | None:
    """``convert_to``, or for a framework model validated on ONNX Runtime, ``"onnx"``."""
    if convert_to is None and runtime == "onnxruntime" and framework_of(model) is not None:
        return "onnx"
    return convert_to


def example_from(calibration_dataset: Any, first_item: Any) -> Any:
    """The example input: the first calibration item after ``transform_fn``, as the
    model takes it. Arrays, files and Ray datasets are split into rows by rayq, which
    drops their batch axis: it is put back (``[1, *row.shape]``). A
    :class:`rayq.Dataset` or iterable item is used as it is (NNCF's convention:
    ``transform_fn`` returns a batch)."""
    split = isinstance(calibration_dataset, (np.ndarray, str, os.PathLike, dict)) or type(
        calibration_dataset
    ).__module__.startswith("ray.data")
    if not split:
        return first_item
    if isinstance(first_item, dict):
        return {k: np.asarray(v)[None] for k, v in first_item.items()}
    return np.asarray(first_item)[None]


def _require(framework: str, model: Any) -> None:
    """A framework object implies its package; of the files, TorchScript ones need torch
    and ``.keras`` ones tensorflow (OpenVINO reads the other TensorFlow, TFLite and
    Paddle files itself)."""
    if not isinstance(model, (str, os.PathLike)):
        return
    needs = "torch" if framework == "torch" else "tensorflow" if str(model).lower().endswith(".keras") else None
    if needs and not _has(INSTALL[needs][0]):
        raise ConfigError(
            f"{str(model)!r} is a {NAMES[framework]} model: converting it needs {needs} ({INSTALL[needs][1]})"
        )


def _load_keras(path: str) -> Any:
    """A Keras 3 ``.keras`` archive, with ``safe_mode`` (no deserialised bytecode)."""
    import tensorflow as tf

    try:
        return tf.keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # ValueError / OSError from Keras
        raise BackendError(f"Keras cannot load {path!r}: {type(exc).__name__}: {_first_lines(exc, 2)}") from exc


def _has(package: str) -> bool:
    """Whether ``package`` is installed (found, not imported)."""
    return importlib.util.find_spec(package) is not None


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _openvino(model: Any, framework: str, **kwargs: Any) -> Any:
    import openvino as ov

    try:
        return _stable_names(ov.convert_model(model, **kwargs))
    except ImportError as exc:
        package, command = INSTALL.get(framework, (framework, "pip install openvino"))
        raise ConfigError(f"converting a {NAMES[framework]} model needs {package}: {command} ({exc})") from exc
    except Exception as exc:  # OpenVINO raises RuntimeError/OpConversionFailure and friends
        hint = ""
        if framework == "tensorflow" and not _has("tensorflow"):
            hint = f" (TensorFlow is not installed; some models need it: {INSTALL['tensorflow'][1]})"
        raise BackendError(
            f"OpenVINO cannot convert the {NAMES[framework]} model{hint}: {type(exc).__name__}: {_first_lines(exc)}"
        ) from exc


#: A name OpenVINO made from its process-wide counter (``Multiply_2542``, ``Model3``), also
#: when a fused op inherits it; framework names are scoped (``__module.conv/aten::...``).
_COUNTER_NAME = re.compile(r"[A-Z][A-Za-z0-9]*_\d+")


def _stable_names(model: Any) -> Any:
    """Rename what the converter named by OpenVINO's process-wide counter after the op's
    type and place in the graph, so converting the same model twice gives the same
    fingerprint: the statistics cache and a resumed search's study name depend on it."""
    if re.fullmatch(r"Model\d+", model.get_friendly_name()):
        model.set_friendly_name("Model")
    taken = {op.get_friendly_name() for op in model.get_ops()}
    for index, op in enumerate(model.get_ordered_ops()):
        if _COUNTER_NAME.fullmatch(op.get_friendly_name()):
            name = f"{op.get_type_name()}_{index}"
            while name in taken:
                name += "_"
            taken.add(name)
            op.set_friendly_name(name)
    return model


def _first_lines(exc: Exception, n: int = 6) -> str:
    return "\n".join(str(exc).strip().splitlines()[:n])


# --- PyTorch -----------------------------------------------------------------------------------------


def _from_torch(model: Any, example_input: Any, to: str) -> Any:
    import torch

    if isinstance(model, (str, os.PathLike)):
        model = _load_torchscript(torch, str(model))
    if example_input is None:
        raise ConfigError("converting a PyTorch model needs an example input (the first calibration item)")
    example = _keyword_inputs(model, _torch_example(torch, example_input))
    with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        if to == "onnx":
            return _torch_onnx(torch, model, example)
        converted = _openvino(model, "torch", example_input=example)
    names = list(example) if isinstance(example, dict) else _input_names(model, len(_tuple(example)))
    if len(names) == len(converted.inputs):  # TorchScript names them "x.1": use forward's names
        for port, name in zip(converted.inputs, names):
            port.get_tensor().set_names({name})
    return converted


def _load_torchscript(torch: Any, path: str) -> Any:
    """A TorchScript archive (``torch.jit.save``); its constants are read by TorchScript's
    own restricted loader, never by ``pickle``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(path, map_location="cpu")
    except Exception as exc:  # RuntimeError from the archive reader
        raise BackendError(
            f"{path!r} is not a TorchScript file ({_first_lines(exc, 1)}): save the model with "
            "torch.jit.save(torch.jit.trace(model, example), path), or pass the nn.Module itself "
            "(rayq does not unpickle torch.save files)"
        ) from exc


def _torch_example(torch: Any, value: Any) -> Any:
    """Tensors from arrays (float64 -> float32, as rayq feeds them); tuples and dicts kept."""
    if isinstance(value, dict):
        return {k: _torch_example(torch, v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(_torch_example(torch, v) for v in value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    array = np.asarray(value)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array))


def _keyword_inputs(model: Any, example: Any) -> Any:
    """A dict item (``.npz`` rows: inputs and labels) keeps only ``forward``'s parameters,
    as a tuple in ``forward``'s order when they are its first ones (TorchScript takes no
    keywords)."""
    if not isinstance(example, dict):
        return example
    params = _input_names(model, 0, fallback=False)
    kept = {k: v for k, v in example.items() if k in params}
    if not kept:
        raise ConfigError(
            f"the example input has keys {sorted(example)}, none of them a parameter of the "
            f"model's forward{tuple(params)}: name the arrays after them, or give a "
            "transform_fn that returns the input tensor(s)"
        )
    if set(kept) == set(params[: len(kept)]):
        return tuple(kept[name] for name in params[: len(kept)])
    return kept


@contextmanager
def _eval_mode(model: Any):
    """Convert in eval mode (BatchNorm running statistics, no dropout); restore the mode after."""
    training = getattr(model, "training", False)
    if training:
        model.eval()
    try:
        yield
    finally:
        if training:
            model.train()


def _torch_onnx(torch: Any, model: Any, example: Any) -> Any:
    """``torch.onnx.export`` (TorchScript exporter) with a dynamic axis 0 on every input."""
    import onnx

    if _exported(model):  # the TorchScript exporter cannot trace its graph module
        raise ConfigError(
            "ONNX output is not available for a torch.export.ExportedProgram: pass the "
            "nn.Module it was exported from, or convert_to='openvino'"
        )
    args, kwargs = ((), example) if isinstance(example, dict) else (_tuple(example), None)
    names = list(example) if kwargs else _input_names(model, len(args))
    values = list(example.values()) if kwargs else list(args)
    dynamic = {name: {0: "batch"} for name, value in zip(names, values) if getattr(value, "ndim", 0) >= 1}
    buffer = io.BytesIO()
    try:
        torch.onnx.export(
            model,
            args,
            buffer,
            kwargs=kwargs,
            input_names=names,
            dynamic_axes=dynamic,
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    except Exception as exc:  # torch raises RuntimeError / errors.* / TypeError
        raise BackendError(
            f"torch.onnx.export cannot export the PyTorch model (opset {ONNX_OPSET}): "
            f"{type(exc).__name__}: {_first_lines(exc)}"
        ) from exc
    return onnx.load_from_string(buffer.getvalue())


def _exported(model: Any) -> bool:
    """A ``torch.export.ExportedProgram``."""
    return type(model).__module__.startswith("torch.export")


def _tuple(example: Any) -> tuple:
    return example if isinstance(example, tuple) else (example,)


def _input_names(model: Any, n: int, *, fallback: bool = True) -> list[str]:
    """The first ``n`` (0: all) ``forward`` parameter names; ``input_0``... when the
    signature is not Python's and ``fallback``."""
    if _exported(model):
        model = model.module()
    schema = getattr(getattr(model, "forward", None), "schema", None)
    if schema is not None:  # TorchScript: the method's schema, "self" first
        params = [a.name for a in schema.arguments[1:]]
    else:
        try:
            params = [
                p.name
                for p in inspect.signature(model.forward).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
        except (TypeError, ValueError, AttributeError):
            params = []
    if not fallback or (params and len(params) >= n):
        return params[:n] if n else params
    return [f"input_{i}" for i in range(n)]
