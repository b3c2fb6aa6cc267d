"""Client data for FL rounds: group ids from an ids-only cohort draw, each
client's data read through ``map_groups`` in DataLoader workers.

Each round costs ``cohort`` ranged reads (one per group, by random access);
no round reads data to choose its clients.  One DataLoader serves all rounds,
so its workers read round ``r + 1`` while round ``r`` trains; the time the
training loop spends blocked on it is the data wait.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import torch_grouper as tg

from .model import IGNORE_INDEX, tokenizer


class ClientBlocks:
    """``map_groups`` function: a group's text packed into language-model blocks
    (``PackTokens`` with the Shakespeare ``CharTokenizer``; the last block padded),
    at most ``max_blocks`` of them (the first ones), as ``(group id, inputs, targets)``
    int64 tensors of shape ``[blocks, block_size]``."""

    def __init__(self, block_size: int, max_blocks: int | None = None):
        self.block_size, self.max_blocks = block_size, max_blocks
        self.pack = tg.transforms.PackTokens(block_size, tokenizer(), remainder="pad", pad_id=0,
                                             ignore_index=IGNORE_INDEX)

    def __call__(self, g):
        blocks = self.pack(g).examples()[: self.max_blocks]
        if not blocks:
            empty = torch.zeros((0, self.block_size), dtype=torch.int64)
            return g.id, empty, empty.clone()
        inputs = torch.from_numpy(np.stack([b["inputs"] for b in blocks]))
        targets = torch.from_numpy(np.stack([b["targets"] for b in blocks]))
        return g.id, inputs, targets


def cohort_ids(view: tg.GroupedDataset, size: int, rounds: int, *, seed: int = 0) -> list:
    """The group ids of each of ``rounds`` rounds, drawn without reading data:
    seeded passes over all groups of ``view`` (no group repeats before every
    group has been drawn), uniform over groups.

    ``GroupedDataset.cohort_ids`` where the library has it; otherwise the same
    draws from ``Cohorts.rows`` (index rows only) and ``group_ids()``."""
    if hasattr(view, "cohort_ids"):
        return [list(ids) for ids in view.cohort_ids(size, seed=seed, replacement="epoch", rounds=rounds)]
    draw = tg.Cohorts(view, size, seed=seed, replacement="epoch", weighted=False, rounds=None, num_threads=1)
    ids = view.group_ids()
    return [[ids[int(i)] for i in draw.rows(r)] for r in range(rounds)]


class RoundGroups(IterableDataset):
    """``(round, group id, data)`` for every id of every round, read by random
    access (``mapped[gid]``: one ranged read per group, then the ``map_groups``
    functions).  DataLoader workers split each round's ids between them
    (``get_worker_info``), so every id is read exactly once."""

    def __init__(self, mapped: tg.GroupedDataset, rounds_ids: list):
        super().__init__()
        self.mapped, self.rounds_ids = mapped, rounds_ids

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for r, ids in enumerate(self.rounds_ids):
            for gid in ids[wid::nw]:
                yield r, gid, self.mapped[gid]


def _loader(mapped, rounds_ids, num_workers: int, prefetch: int):
    kw = {"prefetch_factor": prefetch} if num_workers else {}
    return DataLoader(RoundGroups(mapped, rounds_ids), batch_size=None, num_workers=num_workers, **kw)


def iterate_rounds(view: tg.GroupedDataset, rounds_ids: list, fn, *, num_workers: int = 2,
                   prefetch: int | None = None):
    """Yield ``(round, [fn(group) for each id of the round, in draw order], wait_s)``.

    ``wait_s`` is the time spent blocked on the loader for that round's data.
    Items of a later round that arrive early are kept until their round."""
    if prefetch is None:  # enough in flight to read a whole round ahead
        prefetch = max(2, -(-max((len(i) for i in rounds_ids), default=1) // max(num_workers, 1)) + 1)
    it = iter(_loader(view.map_groups(fn), rounds_ids, num_workers, prefetch))
    pending: dict = {}
    try:
        for r, ids in enumerate(rounds_ids):
            wait = 0.0
            got = pending.pop(r, {})
            while len(got) < len(ids):
                t0 = time.perf_counter()
                rr, gid, data = next(it)
                wait += time.perf_counter() - t0
                (got if rr == r else pending.setdefault(rr, {}))[gid] = data
            yield r, [got[g] for g in ids], wait
    finally:
        del it  # shuts the workers down


def load_groups(view: tg.GroupedDataset, ids: list, fn, *, num_workers: int = 2) -> dict:
    """``{group id: fn(group)}`` for ``ids`` (read in DataLoader workers)."""
    out = {}
    for _, datas, _ in iterate_rounds(view, [list(ids)], fn, num_workers=num_workers):
        out = dict(zip(ids, datas))
    return out
