"""Train a small CNN on scikit-learn's bundled digits and export the rayq example files.

Everything is offline (``sklearn.datasets.load_digits`` ships with scikit-learn) and
seeded. Run from anywhere::

    python examples/digits/make_digits.py            # writes next to this script
    python examples/digits/make_digits.py --out DIR

Writes ``digits_cnn.onnx`` (opset 17, input ``"input"`` ``[batch, 1, 8, 8]`` float32 in
[0, 1], output ``"logits"`` ``[batch, 10]``), ``calibration.npz`` (key ``"input"``),
``validation.npz`` (keys ``"input"``, ``"label"``) and ``validation.parquet``
(``input`` list<float32> of 64 values, ``label`` int64, metadata
``{"rayq.shape.input": "1,8,8"}``).

Needs torch (training/export only); the outputs need only numpy/onnx.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
N_CALIBRATION = 300
N_VALIDATION = 400


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU stem, two residual 3x3 blocks, max-pool, GAP and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.skip2 = nn.Conv2d(16, 32, 1)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Sequential(
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.BatchNorm2d(64),
        )
        self.skip3 = nn.Conv2d(32, 64, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)  # exports as GlobalAveragePool
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.conv2(x) + self.skip2(x))  # residual 1: 8x8, 16 -> 32
        x = self.pool(x)  # 4x4
        x = torch.relu(self.conv3(x) + self.skip3(x))  # residual 2: 4x4, 32 -> 64
        x = torch.flatten(self.gap(x), 1)
        return self.head(x)


def split_digits():
    """Deterministic stratified train / calibration / validation split, images in [0, 1]."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_rest, x_val, y_rest, y_val = train_test_split(x, y, test_size=N_VALIDATION, stratify=y, random_state=SEED)
    x_train, x_cal, y_train, _ = train_test_split(
        x_rest, y_rest, test_size=N_CALIBRATION, stratify=y_rest, random_state=SEED
    )
    return (x_train, y_train), x_cal, (x_val, y_val)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 30) -> None:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            # light augmentation: random shift by up to one pixel
            shift = tuple(torch.randint(-1, 2, (2,), generator=gen).tolist())
            batch = torch.roll(xt[idx], shifts=shift, dims=(2, 3))
            loss = nn.functional.cross_entropy(model(batch), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def export(model: nn.Module, path: Path) -> None:
    # The TorchScript exporter (dynamo=False) needs no onnxscript and folds BatchNorm
    # into the Conv weights in eval mode.
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=True,
    )


def write_parquet(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    flat = x.reshape(len(x), -1)
    col = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.float32()), flat.shape[1])
    table = pa.table({"input": col.cast(pa.list_(pa.float32())), "label": pa.array(y, pa.int64())})
    table = table.replace_schema_metadata({"rayq.shape.input": "1,8,8"})
    pq.write_table(table, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)

    (x_train, y_train), x_cal, (x_val, y_val) = split_digits()
    model = DigitsCNN()
    start = time.perf_counter()
    train(model, x_train, y_train, args.epochs)
    train_s = time.perf_counter() - start
    with torch.no_grad():
        torch_acc = top1(model(torch.from_numpy(x_val)).numpy(), y_val)

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "digits_cnn.onnx"
    export(model, onnx_path)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_acc = top1(sess.run(None, {"input": x_val})[0], y_val)
    if abs(ort_acc - torch_acc) > 1.0 / len(y_val):
        raise SystemExit(f"ONNX Runtime accuracy {ort_acc:.4f} != torch accuracy {torch_acc:.4f}")

    np.savez_compressed(args.out / "calibration.npz", input=x_cal)
    np.savez_compressed(args.out / "validation.npz", input=x_val, label=y_val)
    write_parquet(x_val, y_val, args.out / "validation.parquet")
    print(
        json.dumps(
            {
                "train_samples": len(x_train),
                "calibration_samples": len(x_cal),
                "validation_samples": len(x_val),
                "epochs": args.epochs,
                "train_seconds": round(train_s, 1),
                "torch_threads": torch.get_num_threads(),
                "val_top1_torch": round(torch_acc, 4),
                "val_top1_onnxruntime": round(ort_acc, 4),
                "onnx_bytes": onnx_path.stat().st_size,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
