"""Format-specific code: read, instrument, quantize, run and save models.

Each backend implements the small :class:`rayq.backends.base.Backend` protocol and
registers itself by name in :mod:`rayq.backends.registry`; nothing above this
layer branches on the backend. Models of other frameworks (PyTorch, TensorFlow,
TFLite, PaddlePaddle) are turned into one of these formats by
:mod:`rayq.backends.convert` before a backend sees them.
"""

from rayq.backends.registry import detect, get_backend, register

__all__ = ["detect", "get_backend", "register"]
