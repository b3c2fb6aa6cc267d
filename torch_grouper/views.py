"""Views of a GroupedDataset: splits, the flat example stream, cohorts.

A view reads through ``GroupedDataset``'s public methods (``reader_share``,
``group_at``, ``group_ids_at``, ``group_num_examples``) and never copies data.
``FlatView`` (``GroupedDataset.examples``) and ``Cohorts``
(``GroupedDataset.cohorts``) are classes here; group and example splits are
index views whose maths is here and whose datasets ``GroupedDataset`` makes.

Splits as index views: which groups a group split holds, and which examples
of each group an example split holds.  No data is copied or read to decide.

Group splits (``GroupedDataset.split_groups``): a group belongs to split
``k`` when ``u = blake2b(seed, group id) / 2**64`` falls in split ``k``'s
share of [0, 1) (shares in the order given).  Membership depends on the seed
and the group id only: adding groups, removing others or reordering the
dataset never moves a group to another split.  The fractions are therefore
met in expectation, not exactly (a split of ``f`` of ``n`` groups holds
``f * n`` groups give or take about ``sqrt(f * (1 - f) * n)``).

Example splits (``GroupedDataset.split_examples``, ``Group.split``): the
examples of a group of ``n`` are put in a seeded random order (seed and group
id), and the parts take consecutive runs of it, each part's examples then
kept in input order.  Part sizes:

* fractions (floats summing to at most 1): part ``k`` gets ``floor(n * f_k)``
  examples, and the examples left over by rounding go one each to the parts
  with the largest fractional remainders (ties: the earlier part), as long as
  the fractions sum to 1; with a smaller sum the rest of the group is unused;
* counts (ints, and at most one ``None`` meaning "the rest"): parts are
  filled in the order given; a group too small for all counts fills the
  earlier parts first, so later parts may be short or empty.

Groups with fewer than ``min_examples`` examples (default 1) are left out of
every part, so the parts of one split hold the same groups.
"""
from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

import numpy as np
import torch.utils.data

from . import format as fmt

if TYPE_CHECKING:
    from .dataset import GroupedDataset


def _parts(parts) -> list:
    if isinstance(parts, dict):
        items = list(parts.items())
    else:
        raise TypeError(f"parts must be a dict of name -> fraction or count, got {type(parts).__name__}")
    if not items:
        raise ValueError("parts must name at least one part")
    for name, _ in items:
        if not isinstance(name, str) or not name:
            raise ValueError(f"part names must be non-empty strings, got {name!r}")
    return items


def _unit(seed: int, canon: bytes) -> float:
    h = hashlib.blake2b(b"%d\0" % seed + canon, digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def check_fractions(parts, what: str) -> list:
    items = _parts(parts)
    for name, f in items:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0 <= f <= 1) or math.isnan(f):
            raise ValueError(f"{what}: the fraction of {name!r} must be a number in [0, 1], got {f!r}")
    total = sum(f for _, f in items)
    if total > 1 + 1e-9:
        raise ValueError(f"{what}: fractions sum to {total:g}, more than 1 ({dict(items)})")
    return items


def group_split_rows(ids, id_type: str, parts, seed: int) -> dict:
    """{split name: index rows (ascending)} for a group split of ``ids`` (group
    ids of type ``id_type``: "str", "int" or "bytes")."""
    items = check_fractions(parts, "split_groups")
    bounds = np.cumsum([f for _, f in items])
    u = np.fromiter((_unit(seed, fmt.canonical_group_id(g, id_type)) for g in ids), dtype=np.float64,
                    count=len(ids))
    which = np.searchsorted(bounds, u, side="right")  # u in [b_{k-1}, b_k) -> k
    return {name: np.flatnonzero(which == k) for k, (name, _) in enumerate(items)}


def example_part_sizes(n: int, parts) -> list:
    """Sizes of each part for a group of ``n`` examples (see the module doc)."""
    items = _parts(parts)
    values = [v for _, v in items]
    if all(isinstance(v, float) for v in values):
        check_fractions(parts, "split_examples")
        exact = [n * f for f in values]
        sizes = [int(math.floor(x + 1e-9)) for x in exact]
        if abs(sum(values) - 1) < 1e-9:
            left = n - sum(sizes)
            order = sorted(range(len(values)), key=lambda k: (-(exact[k] - sizes[k]), k))
            for k in order[:left]:
                sizes[k] += 1
        return sizes
    if sum(v is None for v in values) > 1 or not all(
            v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0) for v in values):
        raise ValueError(f"split_examples: give fractions (floats) or counts (ints >= 0, at most one None "
                         f"for the rest), got {dict(items)}")
    fixed = sum(v for v in values if v is not None)
    sizes, left = [], n
    for v in values:
        take = min(left, max(0, n - fixed) if v is None else v)
        sizes.append(take)
        left -= take
    return sizes


def example_positions(n: int, ghash: int, seed: int, parts, part: str) -> np.ndarray:
    """Positions (ascending) of the examples of part ``part`` in a group of ``n``."""
    names = [k for k, _ in _parts(parts)]
    sizes = example_part_sizes(n, parts)
    k = names.index(part)
    perm = np.random.default_rng([seed, ghash]).permutation(n)
    start = sum(sizes[:k])
    return np.sort(perm[start:start + sizes[k]])


def group_hash(gid, id_type: str) -> int:
    return fmt.group_hash(fmt.canonical_group_id(gid, id_type))


# ------------------------------------------------------------------ flat view
class FlatView(torch.utils.data.IterableDataset):
    """Examples of a GroupedDataset with their group ids (``GroupedDataset.examples``)."""

    def __init__(self, ds: GroupedDataset, shuffle_buffer: int, seed: int):
        super().__init__()
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.ds, self.shuffle_buffer, self.seed = ds, shuffle_buffer, seed

    def __len__(self) -> int:
        return self.ds.num_examples

    def __iter__(self):
        reader, readers, _ = self.ds.reader_share()
        groups = (g for g in self.ds)
        if not self.shuffle_buffer:
            for g in groups:
                for ex in g:
                    yield g.id, ex
            return
        rng = np.random.default_rng([self.seed, self.ds.epoch, reader, readers])
        buf: list = []
        for g in groups:
            for ex in g:
                if len(buf) < self.shuffle_buffer:
                    buf.append((g.id, ex))
                    continue
                j = int(rng.integers(len(buf)))
                out, buf[j] = buf[j], (g.id, ex)
                yield out
        rng.shuffle(buf)
        yield from buf


# ------------------------------------------------------------------ cohorts
class Cohorts:
    """Rounds of groups drawn from a GroupedDataset (see ``GroupedDataset.cohorts``)."""

    def __init__(self, ds: GroupedDataset, size: int, *, seed: int, replacement: str, weighted: bool,
                 rounds: int | None, num_threads: int):
        n = len(ds)
        if not 1 <= size <= n:
            raise ValueError(f"cohort size must be between 1 and the {n} groups, got {size}")
        if replacement not in ("epoch", "independent"):
            raise ValueError(f"replacement must be 'epoch' or 'independent', got {replacement!r}")
        if weighted and replacement != "independent":
            raise ValueError("weighted=True draws each round independently: use replacement='independent'")
        self.ds, self.size, self.seed = ds, size, int(seed)
        self.replacement, self.weighted = replacement, weighted
        self.rounds, self.num_threads = rounds, num_threads
        self.round = 0
        self._perm_epoch, self._perm = None, None

    def rows(self, r: int) -> np.ndarray:
        """Index rows of round ``r``'s cohort (no reading)."""
        n = len(self.ds)
        if self.replacement == "independent":
            rng = np.random.default_rng([self.seed, r])
            p = None
            if self.weighted:
                w = self.ds.group_num_examples().astype(np.float64)
                p = w / w.sum()
            return rng.choice(n, size=self.size, replace=False, p=p)
        per_epoch = n // self.size  # full cohorts per pass over all groups
        epoch, k = divmod(r, per_epoch)
        if self._perm_epoch != epoch:
            self._perm = np.random.default_rng([self.seed, epoch, 1]).permutation(n)
            self._perm_epoch = epoch
        return self._perm[k * self.size:(k + 1) * self.size]

    def state_dict(self) -> dict:
        return {"round": self.round, "seed": self.seed, "size": self.size, "replacement": self.replacement}

    def load_state_dict(self, state: dict) -> None:
        if (state["seed"], state["size"], state["replacement"]) != (self.seed, self.size, self.replacement):
            raise ValueError("cohort state was saved with another seed, size or replacement")
        self.round = int(state["round"])

    def __iter__(self):
        from concurrent.futures import ThreadPoolExecutor

        ds = self.ds

        def fetch(row):
            return ds.group_at(int(row), materialize=True)

        with ThreadPoolExecutor(self.num_threads) as pool:
            while self.rounds is None or self.round < self.rounds:
                cohort = list(pool.map(fetch, self.rows(self.round)))
                self.round += 1
                yield cohort

    def ids(self, r: int) -> list:
        """Group ids of round ``r``'s cohort, in draw order (no group is read)."""
        return self.ds.group_ids_at(self.rows(r))
