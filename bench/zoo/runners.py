"""Runtime sessions of the zoo comparison, the same settings for FP32, NNCF and rayq
(the harness's :data:`harness.RUNTIMES`): ONNX Runtime (``intra_op_num_threads``, one
inter-op thread, sequential, all graph optimisations) and OpenVINO CPU
(``INFERENCE_NUM_THREADS``, ``LATENCY`` hint, ``f32`` precision hint). A runner maps
feeds to the model's first output. :func:`feeds` makes a model's inputs from its spec
(``build.py`` writes it next to the model)."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # bench/, for the harness
import harness

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]

#: The models ``build.py`` builds and ``compare.py`` compares by default, in table order.
DEFAULT = (
    "resnet18",
    "densenet121",
    "efficientnet_b0",
    "mobilenet_v3_small",
    "shufflenet_v2_x1_0",
    "convnext_tiny",
    "r3d_18",
    "lraspp_mobilenet_v3",
    "vit_s_16",
    "swin_t",
    "minilm",
    "gpt_tiny",
    "crnn_ctc",
    "vad",
    "mobilenet_v3_small_dynamo",
    "gpt_tiny_dynamo",
    "resnet18_constants",
)


#: The harness's runners under the backend names: ONNX Runtime and OpenVINO CPU sessions
#: with the settings rayq measures with.
RUNTIMES: dict[str, Callable[[str, int], Runner]] = {"onnx": harness.ort_runner, "openvino": harness.ov_runner}
nmse = harness.nmse


def outputs(run: Runner, inputs: list[dict[str, np.ndarray]]) -> np.ndarray:
    """First output for every input, stacked along a new axis 0 (as float64): unlike
    :func:`harness.outputs` (concatenated along the batch axis) this also holds the zoo's
    outputs that have no leading batch axis (0-d, time-major, recurrent state)."""
    return np.stack([np.asarray(run(x), dtype=np.float64) for x in inputs])


def feeds(specs: list[dict], batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random inputs for ``specs`` with the batch axis (axis 0 of >= 2-D float inputs
    of batch 1) set to ``batch``; the same rules as ``compare.py``'s items."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        shape = list(s["shape"])
        if s["kind"] == "normal":
            if len(shape) >= 2 and shape[0] == 1:
                shape[0] = batch
            out[s["name"]] = (rng.standard_normal(shape) * s.get("scale", 1.0)).astype(np.float32)
        elif s["kind"] == "tokens":
            out[s["name"]] = rng.integers(s["low"], s["high"], shape, dtype=np.int64)
        elif s["kind"] == "mask":
            n = int(rng.integers(shape[-1] // 4, shape[-1] + 1))
            out[s["name"]] = (np.arange(shape[-1]) < n).astype(np.int64).reshape(shape)
        elif s["kind"] == "zeros":
            out[s["name"]] = np.zeros(shape, np.dtype(s["dtype"]))
        else:
            out[s["name"]] = np.array(s["value"], np.dtype(s["dtype"])).reshape(shape)
    return out
