"""A character-level language model small enough for CPU, and its tokenizer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import torch_grouper as tg

# The 86 characters of TensorFlow Federated's Shakespeare task (``\n`` and ``\r``
# included); anything else maps to the tokenizer's ``unk`` id.
SHAKESPEARE_ALPHABET = ("dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\naeimquyAEIMQUY]!%)-159\r")
IGNORE_INDEX = -100  # PackTokens' padding target, skipped by the loss


def tokenizer() -> tg.transforms.CharTokenizer:
    return tg.transforms.CharTokenizer(SHAKESPEARE_ALPHABET)


class CharLM(nn.Module):
    """Embedding -> 1-layer GRU -> linear head over the vocabulary."""

    def __init__(self, vocab_size: int, embed_dim: int = 8, hidden: int = 128):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.rnn = nn.GRU(embed_dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embed(inputs))
        return self.head(h)


def token_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor):
    """(summed cross-entropy in nats, number of scored tokens) of ``targets`` given ``inputs``."""
    logits = model(inputs)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((targets != IGNORE_INDEX).sum())


def make_model(seed: int = 0, **kw) -> CharLM:
    torch.manual_seed(seed)
    return CharLM(tokenizer().vocab_size, **kw)
