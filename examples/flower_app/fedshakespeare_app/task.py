"""The model and the per-group work of the FedShakespeare Flower App.

A tiny character model (bytes in, next byte out) small enough for a CPU: a
round of a few groups takes seconds.  Each group's speech turns are joined
into one text; a client trains on random windows of it and reports what it
consumed (the number of examples and a digest of them).
"""
from __future__ import annotations

import hashlib
import json
import zlib

import torch
from torch import nn

VOCAB = 256  # UTF-8 bytes

DEFAULTS = {
    "dataset-path": "",  # a torch_grouper dataset of FedShakespeare (see README)
    "num-server-rounds": 3,
    "cohort-size": 6,  # groups per training round
    "eval-cohort-size": 6,  # groups per evaluation round (0: none)
    "seed": 0,
    "local-steps": 8,
    "batch-size": 8,
    "seq-len": 64,
    "lr": 1.0,
    "report-path": "",  # if set, the server writes what each client consumed, as JSON Lines
}


class CharGRU(nn.Module):
    def __init__(self, dim: int = 32, hidden: int = 96):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, dim)
        self.rnn = nn.GRU(dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, VOCAB)

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.out(h)


def examples_digest(examples) -> str:
    """sha256 of the examples as canonical JSON lines, in order."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def consume(group) -> tuple[torch.Tensor, int, str]:
    """A group's text as byte tokens, with the number of examples read and their digest."""
    examples = list(group)
    text = "\n".join(ex["text"] for ex in examples)
    tokens = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    return tokens, len(examples), examples_digest(examples)


def _windows(tokens: torch.Tensor, seq_len: int, starts) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([tokens[s:s + seq_len] for s in starts])
    y = torch.stack([tokens[s + 1:s + seq_len + 1] for s in starts])
    return x, y


def train(model: nn.Module, tokens: torch.Tensor, *, steps: int, batch_size: int, seq_len: int, lr: float,
          seed: int) -> float:
    """``steps`` SGD steps on random windows of ``tokens``; the mean training loss."""
    seq = min(seq_len, len(tokens) - 1)
    if seq < 1:
        return 0.0
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total = 0.0
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - seq, (batch_size,), generator=g).tolist()
        x, y = _windows(tokens, seq, starts)
        opt.zero_grad()
        loss = loss_fn(model(x).reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        total += loss.item()
    return total / steps


@torch.no_grad()
def evaluate(model: nn.Module, tokens: torch.Tensor, *, seq_len: int, max_windows: int = 32) -> float:
    """Mean loss over consecutive windows of ``tokens`` (at most ``max_windows``)."""
    seq = min(seq_len, len(tokens) - 1)
    if seq < 1:
        return 0.0
    starts = list(range(0, len(tokens) - seq, seq))[:max_windows]
    x, y = _windows(tokens, seq, starts)
    model.eval()
    return nn.functional.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1)).item()


def group_seed(server_round: int, group_id) -> int:
    return zlib.crc32(f"{server_round}\0{group_id}".encode())
