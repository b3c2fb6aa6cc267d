"""Per-group pipelines for ``GroupedDataset.map_groups`` (the FL client side).

Each transform takes a group (anything iterable over examples with an
``id``) and returns a new :class:`~torch_grouper.dataset.Group`, except
``Batch``, which returns the list of batches.  They are small picklable
classes, so they run in DataLoader workers.  Output stays plain Python /
NumPy unless ``ToTorch`` is applied (torch's ``default_convert``) or
``client_pipeline(..., to_torch=True)`` batches with torch's
``default_collate``.

    ds.map_groups(tg.transforms.client_pipeline(seed=0, take=500, epochs=2, batch_size=32, to_torch=True))
"""
from __future__ import annotations

import hashlib

import numpy as np

from .dataset import Group


def _examples(g) -> list:
    return g.examples() if hasattr(g, "examples") else list(g)


def _group_seed(seed: int, gid) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{gid!r}".encode(), digest_size=8).digest(), "big")


class ShuffleExamples:
    """Shuffle a group's examples, seeded by (seed, group id)."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, g) -> Group:
        exs = _examples(g)
        order = np.random.default_rng(_group_seed(self.seed, g.id)).permutation(len(exs))
        return Group(g.id, [exs[i] for i in order])


class Take:
    """Keep the first ``n`` examples (cap a client's data)."""

    def __init__(self, n: int):
        if n < 0:
            raise ValueError(f"Take: n must be >= 0, got {n}")
        self.n = n

    def __call__(self, g) -> Group:
        return Group(g.id, _examples(g)[: self.n])


class Repeat:
    """Repeat the examples ``k`` times (k local epochs)."""

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"Repeat: k must be >= 1, got {k}")
        self.k = k

    def __call__(self, g) -> Group:
        return Group(g.id, _examples(g) * self.k)


def collate_dicts(examples: list) -> dict:
    """Plain collation: a dict of lists, numpy arrays stacked when shapes match."""
    out = {}
    for k in examples[0]:
        vals = [e[k] for e in examples]
        if isinstance(vals[0], np.ndarray) and all(v.shape == vals[0].shape for v in vals):
            out[k] = np.stack(vals)
        else:
            out[k] = vals
    return out


class Batch:
    """Cut a group into batches; returns ``[collate_fn(batch), ...]``."""

    def __init__(self, batch_size: int, collate_fn=collate_dicts, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"Batch: batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.collate_fn, self.drop_last = batch_size, collate_fn, drop_last

    def __call__(self, g) -> list:
        exs = _examples(g)
        stop = len(exs) - len(exs) % self.batch_size if self.drop_last else len(exs)
        return [self.collate_fn(exs[i:i + self.batch_size]) for i in range(0, stop, self.batch_size)]


class ToTorch:
    """Convert numbers and numpy arrays to tensors with torch's default_convert
    (on a list of batches, each batch; on a group, each example)."""

    def __call__(self, x):
        from torch.utils.data import default_convert

        if isinstance(x, list):
            return [default_convert(b) for b in x]
        return Group(x.id, [default_convert(e) for e in _examples(x)])


class ByteTokenizer:
    """Text -> token ids: its UTF-8 bytes shifted by ``offset`` (ids below it
    are free for special tokens: by default 0 = padding, 1 = end of text).
    ``vocab_size`` = 256 + offset."""

    def __init__(self, offset: int = 2):
        self.offset = offset
        self.vocab_size = 256 + offset

    def __call__(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) + self.offset

    def decode(self, ids) -> str:
        b = bytes(int(i) - self.offset for i in ids if int(i) >= self.offset)
        return b.decode("utf-8", "replace")


class CharTokenizer:
    """Text -> token ids over a fixed alphabet (e.g. the 86 characters of
    TFF's Shakespeare task); characters outside it map to ``unk`` (1), 0 is
    padding, and ids of the alphabet start at 2.  ``vocab_size`` = len + 2."""

    def __init__(self, alphabet: str):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("CharTokenizer: the alphabet has repeated characters")
        self.alphabet = alphabet
        self.table = {c: i + 2 for i, c in enumerate(alphabet)}
        self.vocab_size = len(alphabet) + 2

    def __call__(self, text: str) -> np.ndarray:
        get = self.table.get
        return np.fromiter((get(c, 1) for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids) -> str:
        return "".join(self.alphabet[int(i) - 2] for i in ids if int(i) >= 2)


class PackTokens:
    """Language-model blocks from a group's text, as Dataset Grouper's LM
    pipeline builds them: tokenize each example's ``field`` (``tokenizer``: any
    callable ``str -> sequence of ints``; default ``ByteTokenizer()``), join
    the examples in order with ``eos_id`` after each (None: nothing), cut the
    stream into blocks of ``block_size + 1`` tokens, and return a Group whose
    examples are ``{"inputs": block[:-1], "targets": block[1:]}`` (int64 numpy
    arrays of ``block_size``).  The last, shorter block is dropped
    (``remainder="drop"``) or padded (``"pad"``: inputs with ``pad_id``,
    targets with ``ignore_index``, which ``torch.nn.CrossEntropyLoss`` skips)."""

    def __init__(self, block_size: int, tokenizer=None, *, field: str = "text", eos_id: int | None = 1,
                 remainder: str = "drop", pad_id: int = 0, ignore_index: int = -100):
        if block_size < 1:
            raise ValueError(f"PackTokens: block_size must be >= 1, got {block_size}")
        if remainder not in ("drop", "pad"):
            raise ValueError(f"PackTokens: remainder must be 'drop' or 'pad', got {remainder!r}")
        self.block_size, self.field, self.eos_id = block_size, field, eos_id
        self.tokenizer = ByteTokenizer() if tokenizer is None else tokenizer
        self.remainder, self.pad_id, self.ignore_index = remainder, pad_id, ignore_index

    def __call__(self, g) -> Group:
        parts = []
        for ex in _examples(g):
            try:
                text = ex[self.field]
            except KeyError:
                raise KeyError(f"PackTokens: group {g.id!r} has an example without field {self.field!r} "
                               f"(fields: {sorted(ex)})") from None
            parts.append(np.asarray(self.tokenizer(text), dtype=np.int64))
            if self.eos_id is not None:
                parts.append(np.array([self.eos_id], dtype=np.int64))
        stream = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        n = self.block_size
        out = []
        full = (len(stream) - 1) // n if len(stream) > 1 else 0
        for k in range(full):  # consecutive blocks share one token (the next block's first input)
            blk = stream[k * n:(k + 1) * n + 1]
            out.append({"inputs": blk[:-1].copy(), "targets": blk[1:].copy()})
        rest = stream[full * n:]
        if self.remainder == "pad" and len(rest) > 1:
            inputs = np.full(n, self.pad_id, np.int64)
            targets = np.full(n, self.ignore_index, np.int64)
            inputs[:len(rest) - 1] = rest[:-1]
            targets[:len(rest) - 1] = rest[1:]
            out.append({"inputs": inputs, "targets": targets})
        return Group(g.id, out)


class Compose:
    """Apply ``fns`` in order: ``Compose(f, g)(x) == g(f(x))``."""

    def __init__(self, *fns):
        self.fns = fns

    def __call__(self, g):
        for fn in self.fns:
            g = fn(g)
        return g


def client_pipeline(*, seed: int | None = 0, take: int | None = None, epochs: int = 1,
                    batch_size: int | None = None, collate_fn=collate_dicts, drop_last: bool = False,
                    to_torch: bool = False) -> Compose:
    """The usual FL client pipeline: shuffle (seeded; None: keep order), cap
    at ``take`` examples, repeat for ``epochs``, batch, convert to torch.

    ``to_torch`` with ``batch_size`` and the default ``collate_fn``: batches
    are made by torch's ``default_collate`` (fields stacked into tensors)
    instead of ``collate_dicts``; with a ``collate_fn`` of your own, it
    decides, and ``to_torch`` adds nothing.  ``to_torch`` without
    ``batch_size``: each example goes through torch's ``default_convert``
    (``ToTorch``)."""
    fns = []
    if seed is not None:
        fns.append(ShuffleExamples(seed))
    if take is not None:
        fns.append(Take(take))
    if epochs != 1:
        fns.append(Repeat(epochs))
    if batch_size is not None:
        if to_torch and collate_fn is collate_dicts:
            from torch.utils.data import default_collate as collate_fn
        fns.append(Batch(batch_size, collate_fn, drop_last))
    elif to_torch:
        fns.append(ToTorch())
    return Compose(*fns)
