"""Streaming a grouped dataset through DataLoader worker processes, fast.

``DataLoader(ds, num_workers=k, batch_size=None)`` works, but it hands the
main process one item per group: each crossing costs ~100-200 us of queue and
pickling work, more than reading a small group does, so workers make
streaming slower than one process.  :class:`GroupLoader`
(``ds.loader(num_workers=2)``, or ``tg.GroupLoader(ds.examples(), num_workers=2)``
for the flat stream) moves
**bundles** instead: each worker reads consecutive groups of its share until
they hold ``bundle_bytes`` of shard data and sends them as one item, which
the main process unbundles into the same groups (or ``(group_id, example)``
pairs), each worker's in its order.

What crosses the process boundary:

- groups whose examples are single JSON members (the usual case) travel as
  their members' JSON text, joined into one JSON array per bundle, with no
  per-example pickling: the worker walks and checks the members (header
  checksums, sample keys, example count and bytes against the index) and the
  main process decodes the array with one ``json.loads``.  If that text does
  not decode into exactly the expected examples, the main process reads the
  bundle's groups again by random access through the ordinary checked path,
  which decodes them or raises the error naming the shard and byte offset;
- any other group (binary fields, array fields, an example split) travels as
  its decoded examples;
- ``map_groups`` outputs travel as they are, after torch's
  ``default_convert`` (what ``DataLoader(batch_size=None)`` applies): numpy
  arrays become tensors, and tensors go through torch's shared memory.

Resume (``stateful=True``, torchdata's ``StatefulDataLoader``): the state is
the loader's state before the current bundle and how many items of that
bundle were yielded; loading it reads that bundle again and skips them, so
the rest of the epoch is exactly the items not yet yielded.
"""
from __future__ import annotations

import json

import numpy as np
import torch.utils.data

from .codec import assemble
from .dataset import Group, GroupedDataset, _count_mismatch
from .tario import (BLOCK, CHECKSUM_END, CHECKSUM_OFFSET, MAGIC, MAGIC_OFFSET, NAME_END, PREFIX_OFFSET, SIZE_OFFSET,
                    TYPEFLAG_OFFSET, checked_members, header_checksum_ok)
from .views import FlatView

__all__ = ["GroupLoader"]

_FORBIDDEN = ("batch_size", "shuffle", "sampler", "batch_sampler", "collate_fn", "drop_last", "dataset")


class GroupLoader:
    """Groups (or ``(group_id, example)`` pairs) of a grouped dataset, read in
    ``num_workers`` DataLoader worker processes and handed over in bundles.

    Yields what ``DataLoader(data, num_workers=num_workers,
    batch_size=None)`` yields: every group of each worker's share once, in
    the share's order, the same examples; workers take turns a bundle at a
    time (DataLoader: a group at a time), so with two or more workers the
    interleaving differs.

    Args:
        data: a :class:`~torch_grouper.GroupedDataset` (any view or
            ``map_groups`` copy), or ``ds.examples()`` (without a shuffle
            buffer) for the flat stream of ``(group_id, example)``.
        num_workers: DataLoader worker processes (0: read in this process).
        stateful: use torchdata's ``StatefulDataLoader``, so that
            ``state_dict()`` / ``load_state_dict()`` resume exactly.
        bundle_bytes: a worker sends its groups in bundles of at least this
            many bytes of shard data (a group is never cut; 1 MiB by default).
        dataloader_kwargs: passed to the DataLoader (``prefetch_factor``,
            ``persistent_workers``, ``multiprocessing_context``, ``timeout``,
            ``worker_init_fn``, ``snapshot_every_n_steps``, ...); batching and
            sampling arguments are refused (batch inside ``map_groups``).
    """

    def __init__(self, data, *, num_workers: int = 2, stateful: bool = False, bundle_bytes: int = 1 << 20,
                 **dataloader_kwargs):
        if isinstance(data, FlatView):
            if data.shuffle_buffer:
                raise ValueError(f"GroupLoader streams ds.examples() without a shuffle buffer (got "
                                 f"shuffle_buffer={data.shuffle_buffer}); use DataLoader(ds.examples(...)) for one")
            ds, self.flat = data.ds, True
        elif isinstance(data, GroupedDataset):
            ds, self.flat = data, False
        else:
            raise TypeError(f"GroupLoader takes a GroupedDataset or its examples() view, got {type(data).__name__}")
        if isinstance(bundle_bytes, bool) or not isinstance(bundle_bytes, int) or bundle_bytes < 1:
            raise ValueError(f"bundle_bytes must be an int >= 1, got {bundle_bytes!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        bad = sorted(k for k in dataloader_kwargs if k in _FORBIDDEN)
        if bad:
            raise TypeError(f"GroupLoader does not take {', '.join(bad)}: it yields one group at a time "
                            f"(batch inside map_groups, e.g. transforms.Batch)")
        self.dataset, self.bundle_bytes, self.stateful = ds, bundle_bytes, bool(stateful)
        self._bundles = _Bundles(ds, bundle_bytes)
        if stateful:
            from torchdata.stateful_dataloader import StatefulDataLoader as cls
        else:
            cls = torch.utils.data.DataLoader
        self._dl = cls(self._bundles, batch_size=None, num_workers=num_workers, **dataloader_kwargs)
        self._before = None  # the DataLoader's state before the current bundle
        self._taken = 0  # items of the current bundle yielded
        self._finished = None  # the DataLoader's state after its last bundle
        self._skip = 0  # items of the first bundle to skip (a loaded state)
        self._loaded = None

    def __len__(self) -> int:
        return self.dataset.num_examples if self.flat else len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Select the dataset's shuffle order of ``epoch`` (before iterating)."""
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        skip, self._skip = self._skip, 0
        self._loaded = None
        self._finished = None
        stateful, flat, ds = self.stateful, self.flat, self.dataset
        it = iter(self._dl)
        while True:
            if stateful:
                self._before, self._taken = self._dl.state_dict(), 0
            try:
                bundle = next(it)
            except StopIteration:
                break
            items = bundle.unbundle(ds)
            if flat:
                items = [(g.id, ex) for g in items for ex in g]
            if skip:
                if skip > len(items):
                    raise ValueError(f"state says {skip} items of a bundle were yielded, but it has {len(items)} "
                                     f"(a state from another dataset or bundle_bytes?)")
                self._taken, items, skip = skip, items[skip:], 0
            for item in items:
                self._taken += 1
                yield item
        if stateful:
            self._finished, self._before, self._taken = self._dl.state_dict(), None, 0

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """The position in the epoch (``stateful=True`` only): the
        StatefulDataLoader's state before the current bundle, and how many of
        its items were yielded."""
        if not self.stateful:
            raise TypeError("state_dict needs GroupLoader(..., stateful=True) (a StatefulDataLoader)")
        if self._loaded is not None:
            return dict(self._loaded)
        if self._finished is not None:
            return {"loader": self._finished, "taken": 0, "bundle_bytes": self.bundle_bytes, "flat": self.flat}
        before = self._before if self._before is not None else self._dl.state_dict()
        return {"loader": before, "taken": self._taken, "bundle_bytes": self.bundle_bytes, "flat": self.flat}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from ``state_dict()`` of a loader over the
        same data with the same ``num_workers`` and ``bundle_bytes``): the
        next iteration yields exactly the items not yet yielded in that epoch."""
        if not self.stateful:
            raise TypeError("load_state_dict needs GroupLoader(..., stateful=True) (a StatefulDataLoader)")
        if not isinstance(state, dict) or not {"loader", "taken", "bundle_bytes", "flat"} <= state.keys():
            raise ValueError(f"state must be a dict from GroupLoader.state_dict(), got {state!r:.200}")
        if (state["bundle_bytes"], state["flat"]) != (self.bundle_bytes, self.flat):
            raise ValueError(f"state was saved with bundle_bytes={state['bundle_bytes']}, flat={state['flat']}; this "
                             f"loader has bundle_bytes={self.bundle_bytes}, flat={self.flat}")
        taken = state["taken"]
        if isinstance(taken, bool) or not isinstance(taken, int) or taken < 0:
            raise ValueError(f"state['taken'] must be an int >= 0, got {taken!r}")
        self._dl.load_state_dict(state["loader"])
        self._skip, self._loaded = taken, dict(state)
        self._finished = self._before = None


# ------------------------------------------------------------------ workers
class _Bundles(torch.utils.data.IterableDataset):
    """The worker side: the dataset's share of this reader, as bundles.  Its
    state is the dataset's (``delivered`` counts the groups of the bundles
    yielded)."""

    def __init__(self, ds: GroupedDataset, bundle_bytes: int):
        super().__init__()
        self.ds, self.bundle_bytes = ds, bundle_bytes

    def state_dict(self) -> dict:
        return self.ds.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ds.load_state_dict(state)

    def __iter__(self):
        ds = self.ds
        raw = ds._raw_groups()  # plain JSON groups may travel as their JSON text
        lengths = ds._columns()["length"]
        whole = ds._reader.options.whole_read
        from torch.utils.data import default_convert

        b = _Bundle()
        size = 0
        reader = ds._reader
        for row, g in ds._iter_rows():
            if raw:
                src = g._src
                if src.length <= whole:
                    b.add_raw(row, g, reader.read(src.shard, src.offset, src.length))
                else:  # a group too large to read at once: window by window
                    b.add(row, g.id, Group(g.id, g.examples(), num_bytes=g.num_bytes, num_words=g.num_words))
            else:
                out = ds._apply(g)
                if isinstance(out, Group):
                    out.examples()  # materialized here, so read errors are the worker's
                else:
                    out = default_convert(out)
                b.add(row, g.id, out)
            size += int(lengths[row])
            if size >= self.bundle_bytes:
                yield b.done(reader)
                b, size = _Bundle(), 0
        if b.rows:
            yield b.done(reader)


def json_members(buf, count: int, nbytes: int) -> tuple[list, list] | None:
    """``(texts, headers)`` of a group held in ``buf`` when it is ``count``
    consecutive tar members holding ``nbytes`` bytes of data and filling
    ``buf`` exactly (memoryviews into ``buf``: each member's data and its
    header block); None otherwise.  What the headers must hold (one
    ``KEY.json`` member per example, the group's sample-key prefix, checksums)
    is checked for a whole bundle at once by :func:`headers_ok`."""
    mv = memoryview(buf)
    texts, heads = [], []
    end = len(buf)
    pos = total = 0
    size_at, size_end = SIZE_OFFSET, SIZE_OFFSET + 11  # 11 octal digits (a size of 8 GiB or more is not this path's)
    try:
        while pos < end:
            if len(heads) == count:
                return None
            size = int(buf[pos + size_at:pos + size_end], 8)
            start = pos + BLOCK
            stop = start + size
            if stop > end or size < 0:
                return None
            heads.append(mv[pos:start])
            texts.append(mv[start:stop])
            total += size
            pos = stop + (-size) % BLOCK
    except ValueError:
        return None
    if len(heads) != count or total != nbytes or pos != end:
        return None
    return texts, heads


_MAGIC = np.frombuffer(MAGIC, np.uint8)
_JSON = np.frombuffer(b".json", np.uint8)
_OCTAL6 = 8 ** np.arange(5, -1, -1, dtype=np.int64)
_OCTAL11 = 8 ** np.arange(10, -1, -1, dtype=np.int64)
_COLUMNS = np.arange(NAME_END)


def headers_ok(h: np.ndarray, prefixes: np.ndarray, heads=None) -> np.ndarray:
    """For each tar header block (a row of ``h``, shape ``(n, 512)``), whether
    it is a plain ustar regular file (magic, type ``0``, no name prefix) named
    ``KEY.json``, ``KEY`` starting with its row of ``prefixes`` (the group's
    hash and ``_``), no ``/`` in the name, a header checksum that matches (as
    ``tario.header_checksum_ok``), and a name other than the previous row's
    when that is of the same group (one member per example).  Vectorized: the
    per-member checks of the streaming fast path, for a bundle at once."""
    n, plen = len(h), prefixes.shape[1]
    if n == 0:
        return np.zeros(0, bool)
    ok = (h[:, MAGIC_OFFSET:MAGIC_OFFSET + len(MAGIC)] == _MAGIC).all(1)
    ok &= (h[:, TYPEFLAG_OFFSET] == 48) | (h[:, TYPEFLAG_OFFSET] == 0)
    ok &= h[:, PREFIX_OFFSET] == 0
    ok &= (h[:, :plen] == prefixes).all(1)
    name = h[:, :NAME_END]
    nul = (name == 0).argmax(1)  # the name's end: its first NUL (none: 0, refused below)
    ok &= nul >= plen + len(_JSON)
    rows = np.arange(n)[:, None]
    ok &= (name[rows, np.maximum(nul, len(_JSON))[:, None] - len(_JSON) + np.arange(len(_JSON))] == _JSON).all(1)
    ok &= ~((name == 47) & (_COLUMNS < nul[:, None])).any(1)  # no "/"
    if n > 1:  # a member with the name of the one before it: two members of one example
        ok[1:] &= ~((name[1:] == name[:-1]).all(1) & (prefixes[1:] == prefixes[:-1]).all(1))
    field = h[:, CHECKSUM_OFFSET:CHECKSUM_END].astype(np.int64)
    unsigned = h.sum(1, dtype=np.int64) - field.sum(1) + 8 * 32  # the checksum field counts as spaces
    digits = field[:, :6] - 48
    plain = ((digits >= 0) & (digits < 8)).all(1) & (field[:, 6] == 0) & (field[:, 7] == 32)
    good = plain & (digits @ _OCTAL6 == unsigned)
    for k in np.flatnonzero(ok & ~good):  # another spelling of the field, or the signed sum
        good[k] = header_checksum_ok(h[k].tobytes())
    return ok & good


def json_bundle(bufs: list, prefixes: list, counts: list, nbytes: list):
    """The fast path of a bundle: ``bufs`` are consecutive groups' bytes
    (whole tar members), ``prefixes``/``counts``/``nbytes`` what the index
    says of each.  Returns ``(text, ok)``: ``ok[i]`` when group ``i`` is
    ``counts[i]`` ``KEY.json`` members holding ``nbytes[i]`` bytes whose
    headers pass :func:`headers_ok`, and ``text`` the JSON array of those
    groups' member texts in order (bytes; None when no group passed).  The
    member walk is vectorized: candidate headers are the blocks with the tar
    magic, accepted only if following each one's size from the first block
    visits exactly them; otherwise every group is walked one by one."""
    ng = len(bufs)
    lens = np.fromiter((len(b) for b in bufs), np.int64, ng)
    okg = (lens % BLOCK == 0) & (lens > 0)
    if not okg.all():  # a group not made of whole blocks: walked alone below
        return _json_groups(bufs, prefixes, counts, nbytes)
    arr = np.frombuffer(b"".join(bufs), np.uint8)
    blocks = arr.reshape(-1, BLOCK)
    cand = np.flatnonzero((blocks[:, MAGIC_OFFSET:MAGIC_OFFSET + len(MAGIC)] == _MAGIC).all(1))
    gstart = (np.cumsum(lens) - lens) // BLOCK
    if len(cand) == 0:
        return _json_groups(bufs, prefixes, counts, nbytes)
    h = blocks[cand]
    sd = h[:, SIZE_OFFSET:SIZE_OFFSET + 11].astype(np.int64) - 48
    if not (((sd >= 0) & (sd < 8)).all() and (h[:, SIZE_OFFSET + 11] == 0).all()):
        return _json_groups(bufs, prefixes, counts, nbytes)
    size = sd @ _OCTAL11
    nxt = cand + 1 + (size + BLOCK - 1) // BLOCK
    chain = cand[0] == 0 and nxt[-1] == len(blocks) and (nxt[:-1] == cand[1:]).all()
    at = np.searchsorted(cand, gstart)
    if not chain or (at >= len(cand)).any() or (cand[np.minimum(at, len(cand) - 1)] != gstart).any():
        return _json_groups(bufs, prefixes, counts, nbytes)
    group = np.searchsorted(gstart, cand, side="right") - 1  # the group of each member
    okg &= np.bincount(group, minlength=ng) == np.asarray(counts, np.int64)
    okg &= np.bincount(group, weights=size, minlength=ng) == np.asarray(nbytes, np.float64)
    pre = np.frombuffer(b"".join(prefixes), np.uint8).reshape(ng, -1)
    if len({len(p) for p in prefixes}) != 1:
        return _json_groups(bufs, prefixes, counts, nbytes)
    good = headers_ok(h, pre[group])
    okg &= np.bincount(group, weights=~good, minlength=ng) == 0
    keep = okg[group]
    if not keep.any():
        return None, okg
    # the text: the kept members' data, joined with ","
    start = (cand[keep] + 1) * BLOCK
    mv = memoryview(arr)
    texts = [mv[a:b] for a, b in zip(start.tolist(), (start + size[keep]).tolist())]
    return b"[" + b",".join(texts) + b"]", okg


def _json_groups(bufs, prefixes, counts, nbytes):
    """``json_bundle`` for groups walked one at a time."""
    texts, okg = [], np.zeros(len(bufs), bool)
    for i, buf in enumerate(bufs):
        m = json_members(buf, counts[i], nbytes[i])
        if m is None or not m[1]:
            continue
        h = np.frombuffer(b"".join(m[1]), np.uint8).reshape(-1, BLOCK)
        pre = np.frombuffer(prefixes[i] * len(h), np.uint8).reshape(len(h), -1)
        if headers_ok(h, pre).all():
            okg[i] = True
            texts.extend(m[0])
    return (b"[" + b",".join(texts) + b"]" if texts else None), okg


class _Bundle:
    """Consecutive groups of one reader, as they cross to the main process:
    plain JSON groups as one JSON array of their examples' texts, the others
    (and ``map_groups`` outputs) as objects."""

    __slots__ = ("rows", "ids", "counts", "sizes", "items", "_pending", "text")

    def __init__(self):
        self.rows, self.ids, self.counts, self.sizes, self.items = [], [], [], [], []
        self._pending: list = []  # (position, group, its bytes) of groups that may travel as JSON
        self.text = None

    def add_raw(self, row: int, g: Group, buf) -> None:
        self._pending.append((len(self.rows), g, buf))
        self.rows.append(row)
        self.ids.append(g.id)
        self.counts.append(g.num_examples)
        self.sizes.append((g.num_bytes, g.num_words))
        self.items.append(None)

    def add(self, row: int, gid, item) -> None:
        self.rows.append(row)
        self.ids.append(gid)
        self.counts.append(-1)
        self.sizes.append(None)
        self.items.append(item)

    def done(self, reader) -> "_Bundle":
        """Check the pending groups' members; a group that is not plain JSON
        members, or fails a check, takes the ordinary checked path here (it
        travels decoded, or raises the error naming its shard and byte offset)."""
        pending, self._pending = self._pending, []
        if not pending:
            return self
        srcs = [g._src for _, g, _ in pending]
        self.text, ok = json_bundle([b for _, _, b in pending], [s.key_prefix for s in srcs],
                                    [s.num_examples for s in srcs], [s.num_bytes for s in srcs])
        for (k, g, buf), good in zip(pending, ok):
            if not good:
                self.counts[k], self.sizes[k] = -1, None
                self.items[k] = Group(g.id, checked_examples(reader, g._src, g.id, buf), num_bytes=g.num_bytes,
                                      num_words=g.num_words)
        return self

    def __reduce__(self):
        text = self.text
        if text is not None and type(text) is bytes:  # to the main process through torch's shared memory
            text = torch.from_numpy(np.frombuffer(text, np.uint8).copy())
        return (_rebuild_bundle, (self.rows, self.ids, self.counts, self.sizes, self.items, text))

    def unbundle(self, ds: GroupedDataset) -> list:
        """The bundle's items (groups, or ``map_groups`` outputs), in order."""
        exs = None
        if self.text is not None:
            expected = sum(c for c in self.counts if c >= 0)
            try:
                text = self.text if type(self.text) is bytes else memoryview(self.text.numpy())
                exs = json.loads(str(text, "utf-8"))
                if len(exs) != expected or not all(type(e) is dict for e in exs):
                    exs = None
            except Exception:  # noqa: BLE001 - decided (and named) below, by the ordinary checked read
                exs = None
        out = []
        at = 0
        for row, gid, n, sizes, item in zip(self.rows, self.ids, self.counts, self.sizes, self.items):
            if n < 0:
                out.append(item)
                continue
            if exs is None:  # read again by random access: its examples, or the error naming shard and offset
                g = ds._group(row, ranged=True)
                buf = ds._reader.read(g._src.shard, g._src.offset, g._src.length, True)
                out.append(Group(gid, checked_examples(ds._reader, g._src, gid, buf), num_bytes=g.num_bytes,
                                 num_words=g.num_words))
                continue
            out.append(Group(gid, exs[at:at + n], num_bytes=sizes[0], num_words=sizes[1]))
            at += n
        return out


def checked_examples(reader, src, gid, buf) -> list:
    """The examples of group ``gid`` from its bytes ``buf`` by the general,
    fully checked path (every header checksum, sample key, member), and
    their count and bytes against the index."""
    where, tally = reader.where(src.shard), [0]
    out = list(assemble(checked_members(buf, where, src.offset, tally), where, src.offset, src.key_prefix, gid))
    if len(out) != src.num_examples or tally[0] != src.num_bytes:
        raise _count_mismatch(where, src.offset, gid, len(out), src.num_examples, tally[0], src.num_bytes)
    return out


def _rebuild_bundle(rows, ids, counts, sizes, items, text):
    b = _Bundle()
    b.rows, b.ids, b.counts, b.sizes, b.items, b.text = rows, ids, counts, sizes, items, text
    return b
