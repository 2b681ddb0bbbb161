"""Train the model of the accuracy-control benchmark (``bench/bench_qwac.py``).

A small vision transformer trained with torch on scikit-learn's bundled *digits*
(``sklearn.datasets.load_digits``: 1797 grayscale 8x8 images, 10 classes; ships with
scikit-learn, nothing is downloaded), exported to ONNX. Deterministic (seeded, torch
deterministic algorithms, fixed thread count): two runs write identical files.

    python bench/qwac_model.py                     # bench/.cache/qwac/vit.onnx + data
    python bench/qwac_model.py --arch cnn          # other candidates (see ARCHS)
    python bench/qwac_model.py --out DIR --epochs N

Writes into ``--out`` (default ``bench/.cache/qwac``):

- ``<arch>.onnx``: opset 17, input ``"input"`` float32 ``[batch, 1, 8, 8]`` (pixels / 16,
  in [0, 1]), output ``"logits"`` float32 ``[batch, 10]``, dynamic batch.
- ``data.npz``: ``calibration`` float32 ``[300, 1, 8, 8]`` (training images, the usual
  PTQ practice), ``val_input`` float32 ``[597, 1, 8, 8]`` and ``val_label`` int64 ``[597]``
  (held out: never used for training or calibration).
- ``<arch>.json``: training summary (accuracy with torch and ONNX Runtime, seconds).

Needs torch (training / export only), scikit-learn, onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

SEED = 0
N_VALIDATION = 597          # one third of the 1797 images
N_CALIBRATION = 300
DEFAULT_OUT = Path(__file__).resolve().parent / ".cache" / "qwac"
DEFAULT_ARCH = "vit"


def split_digits() -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Stratified train / validation split (``random_state=0``); calibration = the first
    300 training images. Images are ``[N, 1, 8, 8]`` float32 in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=N_VALIDATION, stratify=y,
                                                      random_state=SEED)
    return (x_train, y_train), x_train[:N_CALIBRATION].copy(), (x_val, y_val)


def _models():
    import torch
    from torch import nn

    class Block(nn.Module):
        """Pre-norm transformer encoder block; attention written out (MatMul/Softmax/MatMul)."""

        def __init__(self, dim: int, heads: int, mlp: int) -> None:
            super().__init__()
            self.heads, self.hd = heads, dim // heads
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

        def forward(self, x):
            b, n, d = x.shape
            qkv = self.qkv(self.ln1(x)).reshape(b, n, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            att = torch.softmax((q @ k.transpose(-2, -1)) * (self.hd ** -0.5), dim=-1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(b, n, d))
            return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))

    class ViT(nn.Module):
        """2x2 patches -> 16 tokens + class token, learned positions, 4 blocks, LN, linear head."""

        def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4, mlp: int = 128, patch: int = 2):
            super().__init__()
            self.patch = nn.Conv2d(1, dim, patch, stride=patch)
            n = (8 // patch) ** 2
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
            self.blocks = nn.Sequential(*[Block(dim, heads, mlp) for _ in range(depth)])
            self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            x = self.blocks(x)
            return self.head(self.norm(x[:, 0]))

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, expand: int, stride: int) -> None:
            super().__init__()
            mid = cin * expand
            self.res = stride == 1 and cin == cout
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return x + self.body(x) if self.res else self.body(x)

    class MobileNet(nn.Module):
        """MobileNetV2-style: stem conv, inverted residuals with depthwise 3x3, GAP, linear."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
                InvertedResidual(16, 16, 1, 1), InvertedResidual(16, 24, 4, 2), InvertedResidual(24, 24, 4, 1),
                InvertedResidual(24, 32, 4, 2), InvertedResidual(32, 32, 4, 1),
                nn.Conv2d(32, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6())
            self.head = nn.Linear(128, 10)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

    class MLP(nn.Module):
        """Three hidden layers on the flattened 64 pixels."""

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                     nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

        def forward(self, x):
            return self.net(x)

    return {"vit": ViT, "mobilenet": MobileNet, "mlp": MLP}


ARCHS = ("vit", "mobilenet", "mlp")
EPOCHS = {"vit": 60, "mobilenet": 40, "mlp": 60}


def train(model, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 3e-3) -> None:
    import torch
    from torch import nn

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            shift = tuple(torch.randint(-1, 2, (2,), generator=gen).tolist())   # +-1 pixel shifts
            batch = torch.roll(xt[idx], shifts=shift, dims=(2, 3))
            loss = nn.functional.cross_entropy(model(batch), yt[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(axis=1) == labels).mean())


def export(model, path: Path) -> None:
    import torch

    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True)


def make(arch: str = DEFAULT_ARCH, out: Path = DEFAULT_OUT, epochs: int | None = None,
         threads: int = 2) -> dict:
    """Train ``arch`` and write ``<out>/<arch>.onnx``, ``data.npz`` and ``<arch>.json``."""
    import onnxruntime as ort
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    epochs = epochs or EPOCHS[arch]
    (x_train, y_train), x_cal, (x_val, y_val) = split_digits()
    model = _models()[arch]()
    start = time.perf_counter()
    train(model, x_train, y_train, epochs)
    train_s = time.perf_counter() - start
    with torch.no_grad():
        torch_acc = top1(model(torch.from_numpy(x_val)).numpy(), y_val)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{arch}.onnx"
    export(model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_acc = top1(sess.run(None, {"input": x_val})[0], y_val)
    if abs(ort_acc - torch_acc) > 1.0 / len(y_val):
        raise SystemExit(f"ONNX Runtime accuracy {ort_acc:.4f} != torch accuracy {torch_acc:.4f}")
    np.savez(out / "data.npz", calibration=x_cal, val_input=x_val, val_label=y_val)
    summary = {"arch": arch, "train_samples": len(x_train), "calibration_samples": len(x_cal),
               "validation_samples": len(x_val), "epochs": epochs, "train_seconds": round(train_s, 1),
               "torch_threads": threads, "params": sum(p.numel() for p in model.parameters()),
               "val_top1_torch": round(torch_acc, 4), "val_top1_onnxruntime": round(ort_acc, 4),
               "onnx": str(path), "onnx_bytes": path.stat().st_size}
    (out / f"{arch}.json").write_text(json.dumps(summary, indent=2))
    return summary


def ensure(arch: str = DEFAULT_ARCH, out: Path = DEFAULT_OUT) -> Path:
    """The model path, training it first when missing."""
    path = out / f"{arch}.onnx"
    if not path.exists() or not (out / "data.npz").exists():
        make(arch, out)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=DEFAULT_ARCH, choices=ARCHS)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print(json.dumps(make(args.arch, args.out, args.epochs, args.threads), indent=2))


if __name__ == "__main__":
    main()
