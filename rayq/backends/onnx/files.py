"""Writing an ONNX model with its weights as external data, without touching the model.

``onnx.save(..., save_as_external_data=True)`` converts the in-memory model it is given:
its weights lose their ``raw_data``, so the caller's model is empty afterwards, and
copying a multi-GB model first would double the memory. Here the weights are written
one tensor at a time, straight from the model, next to a small copy of the graph whose
initializers are external-data stubs.
"""

from __future__ import annotations

import os

import onnx

from rayq.backends.onnx import normalize, reader

#: Initializers at least this large go to the data file; smaller ones stay inline.
EXTERNAL_MIN_BYTES = 1024
_ALIGN = 1 << 16  # data offsets: aligned to any platform's mapping granularity, so runtimes may map them


def save_external(proto: onnx.ModelProto, path: str, data_name: str) -> list[str]:
    """Write ``proto`` to ``path`` and its large weights to ``data_name`` next to it;
    ``proto`` is not modified. Returns both paths."""
    light = onnx.ModelProto()
    normalize.copy_fields(proto, light, skip="graph")
    normalize.copy_fields(proto.graph, light.graph, skip="initializer")
    data_path = os.path.join(os.path.dirname(path), data_name)
    with open(data_path, "wb") as f:
        for t in proto.graph.initializer:
            if not t.HasField("raw_data") or reader.tensor_bytes(t) < EXTERNAL_MIN_BYTES:
                light.graph.initializer.append(t)
                continue
            offset = -(-f.tell() // _ALIGN) * _ALIGN
            f.seek(offset)
            length = f.write(t.raw_data)
            stub = light.graph.initializer.add()
            stub.name, stub.data_type, stub.doc_string = t.name, t.data_type, t.doc_string
            stub.dims.extend(t.dims)
            stub.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                stub.external_data.add(key=key, value=value)
    onnx.save(light, path)
    return [path, data_path]
