"""Loading, saving, hashing and byte-shipping OpenVINO IR models.

The byte format of :func:`to_bytes` (no pickle) is a small container::

    b"RAYQOVIR" | u32 version (1) | u64 len(xml) | xml | u64 len(bin) | bin

little-endian, where ``xml``/``bin`` are exactly what ``ov.save_model`` writes.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from rayq.backends.openvino import runtime
from rayq.errors import BackendError

_MAGIC = b"RAYQOVIR"
_VERSION = 1
_HEADER = struct.Struct("<8sIQ")
_LENGTH = struct.Struct("<Q")


def is_ir_path(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".xml")


def load_model(model: Any) -> ov.Model:
    """Return ``model`` itself if it is an ``ov.Model``, else read the IR at that path.

    Raises:
        BackendError: the ``.xml`` or its ``.bin`` is missing, or OpenVINO cannot read it.
    """
    if isinstance(model, ov.Model):
        if model.has_rt_info(_FOLDED):
            return model
        return _fold(model.clone())
    if not is_ir_path(model):
        raise BackendError(f"expected an openvino.Model or a path ending in .xml, got {model!r}")
    xml = Path(os.fspath(model))
    weights = xml.with_suffix(".bin")
    if xml.is_dir():
        raise BackendError(f"model path {str(xml)!r} is a folder, not an OpenVINO IR .xml file")
    if not xml.is_file():
        raise BackendError(f"OpenVINO IR file {str(xml)!r} does not exist")
    if not weights.is_file():
        raise BackendError(f"the weights file {str(weights)!r} of OpenVINO IR {str(xml)!r} is missing")
    try:
        model = runtime.core().read_model(str(xml), str(weights))
    except Exception as exc:  # openvino raises RuntimeError subclasses
        raise BackendError(f"OpenVINO cannot read {str(xml)!r}: {runtime.describe(exc)}") from exc
    return _fold(model)


_FOLDED = "rayq_constant_folded"


def _fold(model: ov.Model) -> ov.Model:
    """Fold constant subgraphs once (e.g. a bias reshaped through ShapeOf by the ONNX
    frontend), so a bias Add is seen as an Add of a constant, not as a residual Add.
    Compressed weights (an ``i8``/``u8``/``f16``... ``Constant`` -> ``Convert`` chain)
    are kept as they are: folded to f32, an INT8 model's weights would lose their
    integer form and OpenVINO would run those layers in f32. The model is tagged so
    later ``load`` calls return it unchanged (stable names)."""
    from openvino import passes

    shielded = _shield_compressed(model)
    manager = passes.Manager()
    manager.register_pass(passes.ConstantFolding())
    manager.run_passes(model)
    for const, param in shielded:
        param.output(0).replace(const.output(0))
        model.remove_parameter(param)
    model.set_rt_info(True, _FOLDED)
    return model


_COMPRESSED = frozenset({"i8", "u8", "i4", "u4", "f16", "bf16", "nf4", "f8e4m3", "f8e5m2"})


def _shield_compressed(model: ov.Model) -> list[tuple]:
    """Swap each low-precision ``Constant`` read by a ``Convert`` for a temporary
    ``Parameter`` (constant folding cannot see through one); returns the pairs to swap back."""
    import openvino.opset13 as ops

    pairs = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_output_element_type(0).get_type_name() not in _COMPRESSED:
            continue
        users = [t.get_node() for t in op.output(0).get_target_inputs()]
        if users and all(u.get_type_name() == "Convert" for u in users):
            param = ops.parameter(op.get_output_partial_shape(0), op.get_output_element_type(0))
            op.output(0).replace(param.output(0))
            model.add_parameters([param])
            pairs.append((op, param))
    return pairs


def save_model(model: ov.Model, path: str | os.PathLike) -> list[str]:
    """Write ``model`` as ``<path>.xml`` + ``.bin`` (FP32 weights kept); returns both paths.

    A path without the ``.xml`` suffix gets it appended.

    Raises:
        BackendError: the location is not writable or OpenVINO fails to serialise.
    """
    xml = Path(os.fspath(path))
    if xml.suffix.lower() != ".xml":
        xml = xml.with_name(xml.name + ".xml")
    try:
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(xml), compress_to_fp16=False)
    except Exception as exc:  # OSError or openvino's RuntimeError
        raise BackendError(f"cannot write the model to {str(xml)!r}: {runtime.describe(exc)}") from exc
    return [str(xml), str(xml.with_suffix(".bin"))]


def _ir_bytes(model: ov.Model) -> tuple[bytes, bytes]:
    with tempfile.TemporaryDirectory(prefix="rayq-ov-") as tmp:
        xml, weights = save_model(model, os.path.join(tmp, "model.xml"))
        return Path(xml).read_bytes(), Path(weights).read_bytes()


def fingerprint(model: ov.Model) -> str:
    """sha256 (hex) over the serialised IR: xml and weights, each length-prefixed."""
    xml, weights = _ir_bytes(model)
    h = hashlib.sha256()
    for part in (xml, weights):
        h.update(_LENGTH.pack(len(part)))
        h.update(part)
    return h.hexdigest()


def to_bytes(model: ov.Model) -> bytes:
    """Serialise ``model`` to the container described in the module docstring."""
    xml, weights = _ir_bytes(model)
    return b"".join([_HEADER.pack(_MAGIC, _VERSION, len(xml)), xml, _LENGTH.pack(len(weights)), weights])


def from_bytes(data: bytes) -> ov.Model:
    """Inverse of :func:`to_bytes`.

    Raises:
        BackendError: ``data`` is not such a container, or OpenVINO cannot read it.
    """
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise BackendError("not a rayq OpenVINO model: the data is too short")
    magic, version, xml_len = _HEADER.unpack_from(view)
    if magic != _MAGIC or version != _VERSION:
        raise BackendError("not a rayq OpenVINO model (bad header or unsupported version)")
    start = _HEADER.size
    end = start + xml_len
    if end + _LENGTH.size > len(view):
        raise BackendError("truncated rayq OpenVINO model (xml)")
    (bin_len,) = _LENGTH.unpack_from(view, end)
    if end + _LENGTH.size + bin_len != len(view):
        raise BackendError("truncated or oversized rayq OpenVINO model (weights)")
    xml = bytes(view[start:end])
    weights = np.frombuffer(view[end + _LENGTH.size :], dtype=np.uint8).copy()
    try:
        return runtime.core().read_model(model=xml, weights=ov.Tensor(weights))
    except Exception as exc:  # openvino raises RuntimeError subclasses
        raise BackendError(f"OpenVINO cannot read the model bytes: {runtime.describe(exc)}") from exc
