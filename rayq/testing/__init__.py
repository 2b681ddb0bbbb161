"""Test and benchmark helpers: deterministic FP32 ONNX models and matching feeds.

Pure ``onnx.helper``/numpy (no torch), so CI can build every model it needs
without downloading weights.

Example:
    >>> from rayq.testing import resnet_like, random_inputs
    >>> model = resnet_like()
    >>> feeds = random_inputs(model, 4, batch=2, seed=1)
"""

from rayq.testing.models import mlp, random_inputs, resnet50_like, resnet_like, transformer_block, with_outlier_channel

__all__ = ["mlp", "random_inputs", "resnet50_like", "resnet_like", "transformer_block", "with_outlier_channel"]
