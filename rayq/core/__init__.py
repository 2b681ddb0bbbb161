"""Pure quantization logic on numpy only: plans, placement, parameters, statistics.

Nothing in this package imports ray, onnx, onnxruntime, openvino or optuna; a test
checks ``sys.modules`` after importing it.
"""
