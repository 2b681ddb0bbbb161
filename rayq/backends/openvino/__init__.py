"""The OpenVINO backend (``openvino.Model`` and IR ``.xml`` files).

Modules: :mod:`.reader` (names, constants, graph view), :mod:`.instrument` (in-graph
statistics), :mod:`.writer` (FakeQuantize + compressed INT8 weights), :mod:`.runtime`
(compile and run), :mod:`.serialization` (load, save, hash, bytes).
"""

from rayq.backends.openvino.backend import OpenVINOBackend

__all__ = ["OpenVINOBackend"]
