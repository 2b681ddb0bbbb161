"""Build the model zoo offline: torchvision architectures with random weights, exported to ONNX.

No weights are downloaded. Each model gets random weights (seed 0); its BatchNorm
statistics are re-estimated on random images with a few forward passes in train mode
(momentum None = cumulative average), so activations have realistic, non-degenerate
ranges. Export: ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``),
opset 17, in eval mode (BatchNorm after Conv folded by constant folding).

Usage::

    python bench/zoo/build.py --models densenet121,resnet18 --size 128 --out bench/.cache/zoo
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import types

import torch

# The installed torchvision wheel is a CUDA build next to a CPU torch: its C extension
# (detection ops such as nms) does not load, and importing torchvision then fails while
# registering fake kernels for those ops. The classification models need none of them.
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
import torchvision.models as tvm  # noqa: E402
from torchvision.models.vision_transformer import VisionTransformer  # noqa: E402


def _vit_s16(size: int) -> torch.nn.Module:
    return VisionTransformer(image_size=size, patch_size=16, num_layers=12, num_heads=6,
                             hidden_dim=384, mlp_dim=1536)


BUILDERS = {
    "resnet18": lambda s: tvm.resnet18(),
    "densenet121": lambda s: tvm.densenet121(),
    "efficientnet_b0": lambda s: tvm.efficientnet_b0(),
    "mobilenet_v3_small": lambda s: tvm.mobilenet_v3_small(),
    "shufflenet_v2_x1_0": lambda s: tvm.shufflenet_v2_x1_0(),
    "convnext_tiny": lambda s: tvm.convnext_tiny(),
    "vit_s_16": _vit_s16,
    "vit_b_16": lambda s: tvm.vit_b_16(image_size=s),
}


def _reestimate_bn(model: torch.nn.Module, size: int, passes: int = 4, batch: int = 8) -> None:
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes
    model.train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(passes):
            model(torch.randn(batch, 3, size, size, generator=gen))


def build(name: str, size: int, out: pathlib.Path) -> pathlib.Path:
    """Build ``name`` with random weights and export it to ``out/<name>_<size>.onnx``."""
    path = out / f"{name}_{size}.onnx"
    if path.exists():
        return path
    torch.manual_seed(0)
    model = BUILDERS[name](size)
    if isinstance(model, VisionTransformer):  # its head is zero-initialised: constant logits
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    _reestimate_bn(model, size)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    x = torch.randn(1, 3, size, size)
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], do_constant_folding=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(BUILDERS))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--out", default="bench/.cache/zoo")
    args = ap.parse_args()
    for name in args.models.split(","):
        print(build(name, args.size, pathlib.Path(args.out)))


if __name__ == "__main__":
    main()
