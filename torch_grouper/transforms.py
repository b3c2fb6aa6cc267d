"""Per-group pipelines for ``GroupedDataset.map_groups`` (the FL client side).

Each transform takes a group (anything iterable over examples with an
``id``) and returns a new :class:`~torch_grouper.dataset.Group`, except
``Batch``, which returns the list of batches.  They are small picklable
classes, so they run in DataLoader workers.  Output stays plain Python /
NumPy unless ``ToTorch`` is applied.

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


class Compose:
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
    at ``take`` examples, repeat for ``epochs``, batch, convert to torch
    (batches through torch's ``default_collate``; unbatched examples through
    ``default_convert``)."""
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
