"""Small torch architectures of the zoo that torchvision does not have: a decoder-only
LM block, a CRNN/CTC text recogniser, and the MiniLM sentence-embedding head."""

from __future__ import annotations

import torch
from torch import nn


class _Block(nn.Module):
    """Pre-LayerNorm causal self-attention + GELU MLP, GPT-2 style."""

    def __init__(self, dim: int, heads: int, seq: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc, self.out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.register_buffer("causal", torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / (d // self.heads) ** 0.5
        att = att.masked_fill(self.causal[:t, :t], float("-inf")).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.out(nn.functional.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """Token ids (int64 ``[batch, seq]``) -> next-token logits ``[batch, seq, vocab]``:
    token + position embeddings, ``layers`` causal blocks, final LayerNorm, LM head."""

    def __init__(self, vocab: int = 2048, dim: int = 256, heads: int = 4, layers: int = 2, seq: int = 64) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads, seq) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.05)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


class CRNN(nn.Module):
    """Text-line image (``[batch, 1, 32, 128]``) -> CTC log-probabilities
    ``[time=32, batch, classes]``: a Conv/BN/ReLU/MaxPool stack that collapses the
    height, a 2-layer bidirectional LSTM, a Linear and ``log_softmax``."""

    def __init__(self, classes: int = 37, hidden: int = 128) -> None:
        super().__init__()

        def conv(cin: int, cout: int, pool: tuple[int, int] | None) -> list[nn.Module]:
            layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            return layers + ([nn.MaxPool2d(pool, pool)] if pool else [])

        self.cnn = nn.Sequential(
            *conv(1, 32, (2, 2)),
            *conv(32, 64, (2, 2)),
            *conv(64, 128, None),
            *conv(128, 128, (2, 1)),
            *conv(128, 256, (2, 1)),
            *conv(256, 256, (2, 1)),
        )
        self.rnn = nn.LSTM(256, hidden, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.cnn(x).squeeze(2).permute(2, 0, 1)  # [W, N, C]
        y, _ = self.rnn(f)
        return self.fc(y).log_softmax(-1)


class Embedder(nn.Module):
    """A Hugging Face BERT + sentence-transformers' mean pooling and L2 normalisation."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)
