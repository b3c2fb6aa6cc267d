"""Reading a grouped dataset: ``GroupedDataset``, ``Group`` and ``load_index``."""
from __future__ import annotations

import copy
import hashlib
import json
from hashlib import blake2b as _blake2b
import os
import posixpath
import threading
import warnings
from collections import OrderedDict
from typing import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch.utils.data

from . import format as fmt
from . import snapshots, views
from .features import ToArrays, array_fields
from .writer import is_local
from .codec import decode_field
from .retry import retry
from .tario import BLOCK, GroupMismatchError, TarFormatError, walk

_loads = json.loads
WHOLE_READ = 16 << 20  # groups up to this size are read with one ranged read
WINDOW = 8 << 20  # larger groups are read in windows of this size
OPEN_SHARDS = 8


class Group:
    """One group of a dataset: ``g.id``, ``len(g)`` and iteration over its examples.

    A group read in the main process streams its examples from the shard, so
    a group larger than memory can be walked.  A group that crosses a process
    boundary (a DataLoader worker handing it to the main process, or any
    pickling) is materialized first: its examples travel as a list.
    """

    __slots__ = ("id", "num_examples", "num_bytes", "num_words", "_examples", "_src")

    def __init__(self, id, examples=None, *, num_examples=None, num_bytes=0, num_words=0, _src=None):
        self.id = id
        self._examples = examples
        self._src = _src
        self.num_examples = len(examples) if num_examples is None else num_examples
        self.num_bytes = num_bytes
        self.num_words = num_words

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self) -> Iterator[dict]:
        if self._examples is not None:
            return iter(self._examples)
        return self._src[0].examples(*self._src[1:])

    def examples(self) -> list:
        """All examples as a list (reads the group if it was not read yet)."""
        if self._examples is None:
            self._examples = list(self)
            self._src = None
        return self._examples

    def split(self, parts: dict, *, seed: int = 0) -> dict:
        """This group's examples split into parts (``{"personalize": 0.8,
        "test": 0.2}`` or counts): the same parts as
        ``GroupedDataset.split_examples(parts, seed=seed)`` gives for it."""
        kind = fmt.group_id_type(self.id) or "str"
        exs = self.examples()
        h = views.group_hash(self.id, kind)
        views.example_part_sizes(0, parts)  # checks the parts
        return {name: Group(self.id, [exs[i] for i in views.example_positions(len(exs), h, seed, parts, name)])
                for name in parts}

    def __reduce__(self):
        return (_rebuild_group, (self.id, self.examples(), self.num_bytes, self.num_words))

    def __repr__(self) -> str:
        return f"Group(id={self.id!r}, num_examples={self.num_examples})"


def _rebuild_group(gid, examples, num_bytes, num_words):
    return Group(gid, examples, num_bytes=num_bytes, num_words=num_words)


# ------------------------------------------------------------------ opening
def _open_dataset(path, storage_options, snapshot=None):
    """(fs, folder holding the files, its URL, manifest, snapshot id or None)."""
    url = os.fspath(path)
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    root = root.rstrip("/") or "/"
    r = snapshots.resolve(fs, root, url, snapshot)
    return fs, r.root, r.url, r.manifest, r.snapshot


def load_index(path, storage_options: dict | None = None, *, snapshot: str | None = None) -> pa.Table:
    """The group index of a dataset as a pyarrow Table (one row per group).

    Columns: group_id, shard, offset, length, num_examples, num_bytes, num_words.
    """
    fs, root, _, _, _ = _open_dataset(path, storage_options, snapshot)
    return _read_index(fs, root)


def shard_urls(path, storage_options: dict | None = None, *, snapshot: str | None = None) -> list:
    """URLs of the current (or the given) snapshot's shards, in dataset order,
    for stock readers: ``webdataset.WebDataset(tg.shard_urls(p))``,
    ``datasets.load_dataset("webdataset", data_files=tg.shard_urls(p))``."""
    url = os.fspath(path)
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    r = snapshots.resolve(fs, root.rstrip("/") or "/", url, snapshot)
    base = r.root if is_local(fs) else fs.unstrip_protocol(r.root)
    return [posixpath.join(base, _safe_shard(s["path"], r.url)) for s in r.manifest["shards"]]


def _safe_shard(name, where: str) -> str:
    if not isinstance(name, str) or not fmt.SHARD_RE.match(name):
        raise ValueError(f"{where}: manifest lists a shard named {name!r}, which is not a shard name")
    return name


def _read_index(fs, root) -> pa.Table:
    # ParquetFile.read, not read_table: read_table starts pyarrow.dataset (~0.25 s)
    path = posixpath.join(root, fmt.INDEX)
    raw = retry(fs.cat_file, path, what=f"read {path}")
    return pq.ParquetFile(pa.BufferReader(raw)).read()


class _Reader:
    """Ranged reads from shards, with a small cache of open shard handles.

    The filesystem object is made in each process that reads (async
    filesystems such as s3fs are not fork-safe): after a fork, for instance in
    a DataLoader worker, the first read makes a fresh one."""

    def __init__(self, fs, root: str, url: str, storage_options: dict | None = None):
        self._fs, self.root, self.url = fs, root, url
        self.storage_options = storage_options or {}
        self._pid = os.getpid()
        self._open: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # open handles are shared: one seek+read at a time

    @property
    def fs(self):
        if self._pid != os.getpid() or self._fs is None:
            self._fs = fsspec.core.url_to_fs(self.url, **self.storage_options)[0]
            self._pid = os.getpid()
            self._open = OrderedDict()
            self._lock = threading.Lock()
        return self._fs

    def __getstate__(self):  # handles, the lock and the filesystem stay in this process
        return {"root": self.root, "url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, st):
        self.__init__(None, st["root"], st["url"], st["storage_options"])

    def _file(self, shard: str):
        fs = self.fs  # first: in a forked process this drops the parent's handles, whose
        # file offsets the parent and every sibling share (seek + read would race)
        f = self._open.get(shard)
        if f is None:
            f = fs.open(posixpath.join(self.root, shard), "rb", block_size=4 << 20)
            self._open[shard] = f
            if len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(shard)
        return f

    def where(self, shard: str) -> str:
        return posixpath.join(self.url, shard)

    def read(self, shard: str, offset: int, length: int, ranged: bool = False) -> bytes:
        """``length`` bytes at ``offset``: through a cached open handle (streaming),
        or with ``ranged`` as one stateless ranged request (random access,
        safe from any thread)."""
        if ranged:
            path = posixpath.join(self.root, shard)
            data = retry(self.fs.cat_file, path, start=offset, end=offset + length,
                         what=f"read {self.where(shard)} bytes {offset}-{offset + length}")
        else:
            data = retry(self._read_handle, shard, offset, length,
                         what=f"read {self.where(shard)} bytes {offset}-{offset + length}")
        if len(data) != length:
            raise TarFormatError(
                f"{self.where(shard)}: byte offset {offset + len(data)}: shard ends early "
                f"(truncated shard)"
            )
        return data

    def _read_handle(self, shard: str, offset: int, length: int) -> bytes:
        with self._lock:
            try:
                f = self._file(shard)
                f.seek(offset)
                return f.read(length)
            except BaseException:
                bad = self._open.pop(shard, None)  # a failed handle is not reused
                if bad is not None:
                    try:
                        bad.close()
                    except Exception:
                        pass
                raise

    def examples(self, shard: str, offset: int, length: int, ranged: bool, gid, hexh: bytes,
                 count: int, nbytes: int) -> Iterator[dict]:
        """The examples of group ``gid`` at ``[offset, offset + length)`` of
        ``shard``, checked: every member's sample key must start with
        ``hexh`` (the group's hash and ``_``), and there must be ``count``
        examples holding ``nbytes`` bytes of member data (so a range cut
        short at a member boundary is found too); otherwise
        GroupMismatchError names the shard and offset."""
        where = self.where(shard)
        if length <= WHOLE_READ:
            tally = [0]
            out = _decode_group(self.read(shard, offset, length, ranged), where, offset, hexh, gid, tally)
            if len(out) != count or tally[0] != nbytes:
                raise _count_mismatch(where, offset, gid, len(out), count, tally[0], nbytes)
            return iter(out)
        return self._stream_examples(shard, offset, length, where, ranged, gid, hexh, count, nbytes)

    def _stream_examples(self, shard, offset, length, where, ranged, gid, hexh, count, nbytes):
        """Examples of a group too large to read at once: window by window
        (``WINDOW`` bytes, cut at example boundaries), so memory stays bounded
        and each window takes the same fast path as a small group.  The count
        is checked as soon as it is exceeded, and at the end of the group."""
        end = offset + length
        pos = offset
        window = WINDOW
        n = 0
        tally = [0]
        while pos < end:
            chunk = self.read(shard, pos, min(window, end - pos), ranged)
            cut = len(chunk) if pos + len(chunk) == end else _whole_examples(chunk, where, pos)
            if cut == 0:  # one example larger than the window: widen it
                window *= 2
                continue
            part = _decode_group(chunk[:cut] if cut < len(chunk) else chunk, where, pos, hexh, gid, tally)
            n += len(part)
            if n > count:
                raise _count_mismatch(where, offset, gid, f"more than {count}", count, tally[0], nbytes)
            yield from part
            pos += cut
            window = WINDOW
        if n != count or tally[0] != nbytes:
            raise _count_mismatch(where, offset, gid, n, count, tally[0], nbytes)


def _count_mismatch(where: str, offset: int, gid, n, count: int, got_bytes: int, nbytes: int) -> GroupMismatchError:
    return GroupMismatchError(f"{where}: byte offset {offset}: group {gid!r} holds {n} examples ({got_bytes} bytes "
                              f"of member data), the index says {count} ({nbytes} bytes): the index does not "
                              f"match the shard (a mixed-up or altered dataset)")


def _whole_examples(chunk: bytes, where: str, base: int) -> int:
    """Length of a prefix of ``chunk`` holding only whole examples (every
    member of each sample key), from the tar headers alone.  Conservative:
    the last example seen is left out, as the next window may continue it."""
    example_start = 0
    prev_key = None
    for unit, name, _, _ in walk(chunk, where, base, partial=True):
        key = name.split(".", 1)[0]
        if key != prev_key:
            example_start, prev_key = unit, key
    return example_start


_scan_json = json.JSONDecoder().scan_once


def _decode_group(buf: bytes, where: str, base: int, hexh: bytes, gid=None, tally=None) -> list:
    """All examples of group ``gid`` held in memory (the hot path of streaming).

    Equivalent to ``list(_assemble(members, where, base, hexh, gid))`` in one
    tight loop for the common case (one ``KEY.json`` member per example whose
    key starts with ``hexh``, the group's hash and ``_``); from the first
    member that is anything else it takes the general path, which checks the
    tar header checksums, validates and names the byte offset of any damage
    (GroupMismatchError for a member of another group).  ``tally[0]`` (a
    one-item list) is increased by the bytes of member data decoded.
    """
    out = []
    append = out.append
    pos = 0
    end = len(buf)
    scan = _scan_json
    startswith = buf.startswith
    total = 0
    try:
        while pos + BLOCK <= end:
            # startswith(x, at) rather than slices: no new bytes object per member
            if not startswith(b"ustar", pos + 257) or buf[pos + 156] not in (48, 0) or buf[pos + 345]:
                break  # not a plain ustar regular file with a short name
            if not startswith(hexh, pos):
                break  # not a member of this group: the general path names it
            name_end = buf.find(b"\0", pos, pos + 100)
            if not buf.endswith(b".json", pos, name_end) or buf.find(b"/", pos, name_end) >= 0:
                break
            size = int(buf[pos + 124 : pos + 135], 8)
            data_end = pos + BLOCK + size
            nxt = data_end + (-size) % BLOCK
            if data_end > end:
                break
            if nxt < end and buf[nxt]:  # another member of this example follows?
                if buf[nxt + 156] not in (48, 0):
                    break  # a pax / long-name record: its member's key is not in this header
                key = buf[pos : name_end - 4]  # "KEY."
                if buf[nxt : nxt + len(key)] == key:
                    break
            text = buf[pos + BLOCK : data_end].decode("utf-8")
            obj, stop = scan(text, 0)
            if stop != len(text) or type(obj) is not dict:
                break
            append(obj)
            total += size
            pos = nxt
        else:
            if tally is not None:
                tally[0] += total
            return out
    except Exception:  # anything unexpected: the general path validates and names it
        pass
    if tally is not None:
        tally[0] += total
    out.extend(_assemble(_checked_members(buf[pos:], where, base + pos, tally), where, base, hexh, gid))
    return out


def _checked_members(buf, where: str, base: int, tally=None):
    """``(name, data, byte offset)`` of each member, as ``iter_members``, after
    checking the tar header checksum of the member and of the record that
    starts its unit (a pax long name): a damaged name or size in a header is
    an error here, not a member read under another name.  ``buf`` holds whole
    members only (a group, or a window cut at an example boundary): bytes
    after the last member (an end-of-archive block, or records that are not
    members) are an error too, not members quietly left out."""
    done = 0
    for unit, name, start, stop in walk(buf, where, base):
        for h in {unit, start - BLOCK}:
            hdr = bytes(buf[h : h + BLOCK])
            field = hdr[148:156].rstrip(b"\0 ").lstrip(b" ")
            summed = hdr[:148] + b"        " + hdr[156:]  # the checksum field counts as spaces
            unsigned = sum(summed)
            try:
                stored = int(field, 8)
            except ValueError:
                stored = None
            if stored != unsigned and stored != unsigned - 256 * sum(b > 127 for b in summed):
                raise TarFormatError(f"{where}: byte offset {base + h}: tar header checksum does not match "
                                     f"(corrupt shard)")
        if tally is not None:
            tally[0] += stop - start
        yield name, buf[start:stop], base + start - BLOCK
        done = stop + (-(stop - start)) % BLOCK
    if done < len(buf):
        raise TarFormatError(f"{where}: byte offset {base + done}: {len(buf) - done} bytes after the last member "
                             f"of the group are not a member (corrupt shard, or an index that does not match it)")


def _assemble(members, where: str = "", base: int = 0, hexh: bytes | None = None, gid=None) -> Iterator[dict]:
    """Group consecutive members with one sample key into example dicts.

    ``members`` yields ``(name, data)`` or ``(name, data, byte offset)``.
    With ``hexh`` (the group's hash and ``_``), a member whose sample key
    does not start with it raises GroupMismatchError.  A member that does not
    decode (whatever the error) raises TarFormatError naming the shard, the
    byte offset and the member."""
    cur = None
    ex = None
    prefix = None if hexh is None else hexh.decode("ascii")
    for name, data, *at in members:
        off = at[0] if at else base
        dot = name.find(".")
        if dot <= 0:
            raise TarFormatError(f"{where}: group at byte offset {base}: member {name!r} at byte offset {off} "
                                 f"has no KEY.EXT name")
        key = name[:dot]
        suffix = name[dot + 1 :]
        if key != cur:
            if prefix is not None and not key.startswith(prefix):
                raise GroupMismatchError(
                    f"{where}: byte offset {off}: member {name!r} is not of group {gid!r} (its sample key "
                    f"does not start with the group's hash {prefix[:16]}): the index does not match the "
                    f"shard (a mixed-up or altered dataset)")
            if ex is not None:
                yield ex
            cur = key
            ex = None
        try:
            if suffix == "json":
                obj = _loads(data if type(data) is bytes else bytes(data))
                if type(obj) is not dict:
                    raise ValueError(f"JSON member holds a {type(obj).__name__}, not an object")
                ex = obj if ex is None else {**obj, **ex}
            else:
                if ex is None:
                    ex = {}
                k, v = decode_field(suffix, data)
                ex[k] = v
        except Exception as e:  # ValueError, MemoryError, RecursionError...: all name the member
            raise TarFormatError(f"{where}: group at byte offset {base}: member {name!r} does not decode "
                                 f"(corrupt data?) at byte offset {off}: {type(e).__name__}: {e}") from None
    if ex is not None:
        yield ex


def _int64_column(table: pa.Table, name: str) -> np.ndarray:
    """An int64 column as numpy, without Array.to_numpy (which imports pandas, ~0.2 s)."""
    arr = table.column(name).combine_chunks()
    if len(arr) == 0:
        return np.zeros(0, np.int64)
    if arr.null_count or arr.type != pa.int64():
        raise ValueError(f"index column {name!r} must be int64 without nulls")
    return np.frombuffer(arr.buffers()[1], dtype=np.int64, count=len(arr), offset=arr.offset * 8)


# ------------------------------------------------------------------ dataset
class GroupedDataset(torch.utils.data.IterableDataset):
    """A grouped dataset as a stream of groups (a ``torch`` IterableDataset).

    ``for g in GroupedDataset(path)`` yields :class:`Group` objects;
    ``len(ds)`` is the number of groups; ``ds[group_id]`` reads one group.

    Sharing: under a ``DataLoader`` with ``num_workers=k`` (use
    ``batch_size=None``) and across distributed ranks, each reader (rank x
    worker) gets a disjoint, contiguous share of the epoch's group order,
    balanced by bytes and split at group boundaries, so there is no idle
    reader even with one shard, and every group arrives exactly once.  Groups
    handed from a worker to the main process are materialized (their examples
    travel as a list); in the main process a group streams from its shard.

    Order: without ``shuffle``, dataset order.  With ``shuffle``, the shards'
    order and the groups' order inside each shard are permuted, seeded by
    (``seed``, epoch): the same for the same seed, epoch and number of
    readers; ``set_epoch(e)`` changes it.  Reading stays shard by shard.

    Resume: ``state_dict()`` / ``load_state_dict()`` (also what torchdata's
    ``StatefulDataLoader`` calls, in each worker) record the epoch and how many
    groups this reader has delivered; after loading, iteration continues with
    exactly the groups not yet delivered.  The order is recomputed from the
    index, not replayed, so resuming costs the same anywhere in an epoch.  A
    state records the dataset's ``fingerprint`` (its content, and a view's
    definition) and its snapshot: another dataset's or view's state is
    refused; a state saved at the end of an epoch continues with a full one.

    ``map_groups(fn)`` returns a copy whose groups go through ``fn`` in the
    reader (the DataLoader worker); ``torch_grouper.transforms`` has the FL
    client pipeline (shuffle examples, take, repeat, batch, to torch).
    ``cohorts(size, ...)`` draws FL rounds by random access.

    Examples come out as plain Python values (numpy arrays for array fields,
    bytes for binary and image fields), so PyTorch, JAX, NumPy and Flower all
    consume them.

    Args:
        path: dataset directory, a local path or fsspec URL.
        shuffle, seed: see Order.
        storage_options: passed to fsspec.
        snapshot: read this snapshot (an id from ``tg.list_snapshots`` or a
            partition's manifest) instead of the current one.  The snapshot
            opened is pinned: ``ds.snapshot``, in pickles, ``state_dict``,
            views and cohorts, so every process of a job reads the same data
            while the dataset is rewritten.
        rank, world_size: this process's share for distributed reading
            (default: from ``torch.distributed`` when it is initialized).
        arrays: return the fields that the dataset's features declare as
            numeric sequences or arrays (HF ``Sequence``/``List`` of numbers,
            ``Array2D``...) as numpy arrays, so collation stacks them
            (``torch_grouper.features``); groups are then read whole.
        on_error: a damaged group (corrupt or truncated shard) raises an error
            naming the shard and byte offset ("raise"), or is skipped with a
            warning and recorded in ``skipped`` ("skip"; groups are then read
            whole before they are yielded).
    """

    def __init__(self, path, *, shuffle: bool = False, seed: int = 0, storage_options: dict | None = None,
                 rank: int | None = None, world_size: int | None = None, on_error: str = "raise",
                 snapshot: str | None = None, arrays: bool = True):
        super().__init__()
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if (rank is None) != (world_size is None):
            raise ValueError(f"pass both rank and world_size, or neither (got rank={rank!r}, "
                             f"world_size={world_size!r})")
        if world_size is not None:
            for name, v in (("rank", rank), ("world_size", world_size)):
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                    raise ValueError(f"{name} must be an int, got {v!r} of type {type(v).__name__}")
            rank, world_size = int(rank), int(world_size)
            if world_size < 1:
                raise ValueError(f"world_size must be >= 1, got world_size={world_size}")
            if not 0 <= rank < world_size:
                raise ValueError(f"rank must satisfy 0 <= rank < world_size, got rank={rank}, "
                                 f"world_size={world_size}")
        self.on_error = on_error
        self.skipped: list = []  # (group id, error) of damaged groups skipped in this process
        self.path = os.fspath(path)
        # the snapshot is pinned here: pickles (DataLoader workers), views and
        # cohorts read this folder, whatever is committed later
        fs, self.root, folder_url, self.manifest, self.snapshot = _open_dataset(path, storage_options, snapshot)
        self.url = self.path
        self._reader = _Reader(fs, self.root, folder_url, storage_options)
        self._index = None
        self._cols = None
        self._by_id = None
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed = shuffle, int(seed)
        self.epoch = 0
        self._transforms: tuple = ()
        self._view: tuple = ()  # split steps selecting groups / examples (views.py)
        fields = array_fields(self.manifest.get("features")) if arrays else {}
        self._arrays = ToArrays(fields) if fields else None
        self._delivered = 0  # groups this reader has yielded in the current epoch
        self._resume: dict | None = None

    # ------------------------------------------------------------- info
    def __len__(self) -> int:
        if self._view:
            return len(self._columns()["ids"])
        return int(self.manifest["num_groups"])

    @property
    def num_examples(self) -> int:
        if self._view:
            c = self._columns()
            return int(c.get("part_n", c["num_examples"]).sum())
        return int(self.manifest["num_examples"])

    @property
    def fingerprint(self) -> str:
        """Identifies this dataset's content (sha256 hex of the index checksum
        and the group and example counts); ``state_dict`` records it so that
        ``load_state_dict`` refuses the state of another dataset."""
        m = self.manifest
        index_sha = (m.get("index") or {}).get("sha256")
        view = json.dumps([list(step) for step in self._view], sort_keys=True) if self._view else ""
        return hashlib.sha256(f"{index_sha}\0{m['num_groups']}\0{m['num_examples']}{view}".encode()).hexdigest()

    @property
    def fs(self):
        """The fsspec filesystem (made anew in each process)."""
        return self._reader.fs

    @property
    def features(self):
        """The HF ``datasets.Features`` of the source, when it had them."""
        f = self.manifest.get("features")
        if f is None:
            return None
        import datasets

        return datasets.Features.from_dict(f)

    @property
    def index(self) -> pa.Table:
        """The group index (one row per group), read once."""
        if self._index is None:
            self._index = _read_index(self._reader.fs, self.root)
        return self._index

    def group_ids(self) -> list:
        return list(self._columns()["ids"])

    def __repr__(self) -> str:
        view = f", view={[d['name'] for _, d in self._view]}" if self._view else ""
        return (f"GroupedDataset({self.url!r}{view}, groups={len(self)}, examples={self.num_examples}, "
                f"shards={len(self.manifest['shards'])}, shuffle={self.shuffle})")

    def __getstate__(self):
        st = self.__dict__.copy()
        st["_index"] = st["_cols"] = st["_by_id"] = None
        return st

    # ------------------------------------------------------------- views
    def map_groups(self, fn) -> "GroupedDataset":
        """A copy that applies ``fn(group)`` to every group in the reader.

        ``fn`` may return anything picklable (a Group, a list of batches, ...);
        chain calls to compose.  It also applies to ``ds[id]`` and cohorts."""
        new = copy.copy(self)
        new._transforms = self._transforms + (fn,)
        new._resume = None
        new._delivered = 0
        return new

    def split_groups(self, parts: dict, *, seed: int = 0) -> dict:
        """Disjoint views over subsets of the groups: ``{"train": 0.9, "heldout": 0.1}``
        gives ``{"train": view, "heldout": view}``, each a GroupedDataset.

        A group's split depends only on (``seed``, group id), so it never
        changes when groups are added or reordered; the fractions hold in
        expectation, not exactly (see ``torch_grouper.views``).  Fractions
        summing to less than 1 leave the rest of the groups in no split.  A
        view reads no data to decide, refuses ``view[id]`` for ids outside it,
        and has its own ``fingerprint`` (a resume state of one view does not
        load into another)."""
        views.check_fractions(parts, "split_groups")
        return {name: self._with_view("groups", {"parts": dict(parts), "seed": int(seed), "name": name})
                for name in parts}

    def split_examples(self, parts: dict, *, seed: int = 0, min_examples: int = 1) -> dict:
        """Views splitting each group's examples into parts, e.g.
        ``{"personalize": 0.8, "test": 0.2}`` (fractions) or
        ``{"personalize": 16, "test": None}`` (counts; None: the rest).

        Seeded by (``seed``, group id); each part keeps input order.  Groups
        with fewer than ``min_examples`` examples are left out of every part;
        the rounding rule for small groups is in ``torch_grouper.views``.
        A group is read whole to be split (its part is selected before any
        ``map_groups`` function runs)."""
        if isinstance(min_examples, bool) or not isinstance(min_examples, int) or min_examples < 0:
            raise ValueError(f"min_examples must be an int >= 0, got {min_examples!r}")
        views.example_part_sizes(0, parts)  # checks the parts
        return {name: self._with_view("examples", {"parts": dict(parts), "seed": int(seed), "name": name,
                                                   "min_examples": min_examples})
                for name in parts}

    def _with_view(self, kind: str, spec: dict) -> "GroupedDataset":
        new = copy.copy(self)
        new._view = self._view + ((kind, spec),)
        new._cols = new._by_id = None
        new._resume = None
        new._delivered = 0
        return new

    def _view_columns(self) -> dict:
        """The index columns restricted by this view's steps (``part_n``: the
        examples of each group's part, for example splits)."""
        base = copy.copy(self)
        base._view, base._cols, base._by_id = (), None, None
        c = dict(base._columns())
        kind = self.manifest.get("group_id_type", "str")
        for step, spec in self._view:
            n = c.get("part_n", c["num_examples"])
            if step == "groups":
                rows = views.group_split_rows(c["ids"], kind, spec["parts"], spec["seed"])[spec["name"]]
                part_n = n[rows]
            else:
                k = list(spec["parts"]).index(spec["name"])
                rows = np.flatnonzero(n >= spec["min_examples"])
                part_n = np.fromiter((views.example_part_sizes(int(x), spec["parts"])[k] for x in n[rows]),
                                     dtype=np.int64, count=len(rows))
            ids = c["ids"]
            c = {key: (v[rows] if isinstance(v, np.ndarray) else v) for key, v in c.items()}
            c["ids"] = [ids[i] for i in rows]
            if step == "examples" or "part_n" in c:
                c["part_n"] = part_n
        return c

    def _select_examples(self, g):
        """The group restricted to this view's example parts (read whole)."""
        kind = self.manifest.get("group_id_type", "str")
        for step, spec in self._view:
            if step != "examples":
                continue
            exs = g.examples()
            pos = views.example_positions(len(exs), views.group_hash(g.id, kind), spec["seed"], spec["parts"],
                                          spec["name"])
            g = Group(g.id, [exs[i] for i in pos], num_bytes=g.num_bytes, num_words=g.num_words)
        return g

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of ``epoch`` (call before iterating)."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """This reader's position: epoch and groups delivered in it."""
        reader, readers, _ = self._share()
        return {"epoch": self.epoch, "delivered": self._delivered, "reader": reader, "readers": readers,
                "seed": self.seed, "shuffle": self.shuffle, "num_groups": len(self),
                "fingerprint": self.fingerprint, "snapshot": self.snapshot}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``: the next iteration yields exactly the
        groups this reader had not delivered yet in that epoch (and the
        epoch's order is the saved epoch's).  A state saved at the end of an
        epoch continues with a full epoch."""
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        fp = state.get("fingerprint")
        if fp != self.fingerprint:
            saved = fp[:12] if isinstance(fp, str) else repr(fp)
            raise ValueError(f"state is for another dataset (fingerprint {saved}); {self.url} has "
                             f"fingerprint {self.fingerprint[:12]}")
        if (state.get("seed"), state.get("shuffle")) != (self.seed, self.shuffle):
            raise ValueError(f"state was saved with seed={state.get('seed')}, shuffle={state.get('shuffle')}; "
                             f"this dataset has seed={self.seed}, shuffle={self.shuffle}")
        for name in ("epoch", "delivered", "reader", "readers"):
            v = state.get(name)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"state[{name!r}] must be an int >= 0, got {v!r}")
        if not state["delivered"] <= len(self):
            raise ValueError(f"state['delivered'] = {state['delivered']} is more than the {len(self)} groups "
                             f"of {self.url}")
        self.epoch = int(state["epoch"])
        self._resume = {**state, **{k: int(state[k]) for k in ("epoch", "delivered", "reader", "readers")}}

    # ------------------------------------------------------------- reading
    def _columns(self):
        """The index as columns, validated: nothing from the data is a path
        (a shard name must be a plain file name matching the shard pattern)
        and no offset, length or count is negative."""
        if self._cols is None and self._view:
            self._cols = self._view_columns()
        if self._cols is None:
            idx = self.index
            names: dict = {}  # shard name -> number (plain Python: pyarrow.compute costs 0.2 s to start)
            shards = idx["shard"].to_pylist()
            shard = np.fromiter((names.setdefault(x, len(names)) for x in shards),
                                dtype=np.int32, count=idx.num_rows)
            ids = idx["group_id"].to_pylist()
            for name in names:
                if not (isinstance(name, str) and fmt.SHARD_RE.fullmatch(name)
                        and posixpath.basename(name) == name and "\\" not in name):
                    row = shards.index(name)
                    raise ValueError(f"{self.url}: index row {row} (group {ids[row]!r}): shard name {name!r} is "
                                     f"not a shard file name of this dataset (a tampered index?)")
            cols = {c: _int64_column(idx, c) for c in ("offset", "length", "num_examples", "num_bytes", "num_words")}
            for c in ("offset", "length", "num_examples"):
                bad = np.flatnonzero(cols[c] < 0)
                if bad.size:
                    row = int(bad[0])
                    raise ValueError(f"{self.url}: index row {row} (group {ids[row]!r}): {c} is "
                                     f"{int(cols[c][row])}, must be >= 0 (a damaged or tampered index)")
            if idx["group_id"].null_count:
                raise ValueError(f"{self.url}: index row {ids.index(None)}: group_id is null (a damaged index)")
            t = idx.schema.field("group_id").type
            kind = ("str" if pa.types.is_string(t) or pa.types.is_large_string(t) else "int" if pa.types.is_integer(t)
                    else "bytes" if pa.types.is_binary(t) or pa.types.is_large_binary(t) else None)
            if kind is None or kind != self.manifest.get("group_id_type", kind):
                raise ValueError(f"{self.url}: index group_id column of type {t} does not hold the manifest's "
                                 f"group_id_type {self.manifest.get('group_id_type')!r} (a damaged index)")
            self._cols = {"ids": ids, "kind": kind, "shard_names": list(names), "shard": shard, **cols}
        return self._cols

    def _group(self, i: int, ranged: bool = False) -> Group:
        """Group at index row ``i``; ``ranged``: read by one ranged request
        (random access) rather than through the streaming handle."""
        c = self._columns()
        gid = c["ids"][i]
        n = int(c["num_examples"][i])
        # members must carry the group's hash in their sample key (checked on every read): the hex
        # of fmt.group_hash's blake2b-64 digest, as fmt.sample_key writes it, computed in one step
        hexh = _blake2b(fmt.canonical_group_id(gid, c["kind"]), digest_size=8).hexdigest().encode() + b"_"
        return Group(
            gid, num_examples=n, num_bytes=int(c["num_bytes"][i]), num_words=int(c["num_words"][i]),
            _src=(self._reader, c["shard_names"][c["shard"][i]], int(c["offset"][i]), int(c["length"][i]),
                  ranged, gid, hexh, n, int(c["num_bytes"][i])),
        )

    def _apply(self, g):
        if self._view:
            g = self._select_examples(g)
        if self._arrays is not None:
            conv = self._arrays.example
            g = Group(g.id, [conv(e) for e in g.examples()], num_bytes=g.num_bytes, num_words=g.num_words)
        for fn in self._transforms:
            g = fn(g)
        return g

    def __getitem__(self, group_id):
        """Random access to one group by id (one ranged read of its shard)."""
        return self._apply(self._group(self.position_of(group_id), ranged=True))

    def position_of(self, group_id) -> int:
        """The group's row in the index."""
        if self._by_id is None:
            self._by_id = {g: i for i, g in enumerate(self._columns()["ids"])}
        kind = self.manifest.get("group_id_type")
        if type(group_id) is not int or kind != "int":  # 1.0 and True hash like 1: check the type
            ok = {"int": int, "str": str, "bytes": bytes}.get(kind, object)
            if isinstance(group_id, np.integer) and kind == "int":
                group_id = int(group_id)
            elif not isinstance(group_id, ok) or isinstance(group_id, bool):
                raise KeyError(f"no group {group_id!r} of type {type(group_id).__name__} in {self.url}: "
                               f"its group ids are {kind}")
        try:
            return self._by_id[group_id]
        except (KeyError, TypeError):
            raise KeyError(f"no group {group_id!r} in {self.url}") from None

    def _share(self) -> tuple[int, int, bool]:
        """(reader number, number of readers, in a worker?) for this process."""
        info = torch.utils.data.get_worker_info()
        nw, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                rank, world = dist.get_rank(), dist.get_world_size()
            else:
                rank, world = 0, 1
        return rank * nw + wid, world * nw, info is not None

    def epoch_order(self, epoch: int | None = None) -> np.ndarray:
        """All group rows in the order of ``epoch`` (dataset order without shuffle)."""
        c = self._columns()
        n = len(c["ids"])
        if not self.shuffle:
            return np.arange(n)
        e = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, e])
        shard_rank = rng.permutation(len(c["shard_names"]))[c["shard"]]  # shards in a seeded order
        within = rng.random(n)  # and the groups of each shard in a seeded order
        return np.lexsort((within, shard_rank))

    def _my_rows(self, reader: int, readers: int, order: np.ndarray) -> np.ndarray:
        """This reader's contiguous share of ``order``, balanced by bytes."""
        if readers == 1:
            return order
        length = self._columns()["length"][order]
        total = int(length.sum())
        starts = np.cumsum(length) - length
        owner = np.minimum((starts * readers) // max(total, 1), readers - 1)
        return order[owner == reader]

    def __iter__(self):
        reader, readers, in_worker = self._share()
        start = 0
        if self._resume is not None:
            st, self._resume = self._resume, None
            if (st["reader"], st["readers"]) != (reader, readers):
                raise ValueError(f"state was saved by reader {st['reader']} of {st['readers']}; this is reader "
                                 f"{reader} of {readers} (resume with the same world size and num_workers)")
            start = st["delivered"]
            if start and st["epoch"] != self.epoch:
                raise ValueError(f"state was saved in epoch {st['epoch']} after {start} groups, but this dataset "
                                 f"is set to epoch {self.epoch}: finish the resumed epoch before set_epoch")
        self._delivered = start
        if len(self) == 0:
            return
        rows = self._my_rows(reader, readers, self.epoch_order())
        if start > len(rows):
            self._delivered = 0
            raise ValueError(f"state says reader {reader} of {readers} delivered {start} groups, but it has "
                             f"{len(rows)} groups in epoch {self.epoch} of {self.url}")
        skip = self.on_error == "skip"
        for k in range(start, len(rows)):
            g = self._group(int(rows[k]))
            self._delivered = k + 1
            if skip:
                try:
                    g.examples()
                except (TarFormatError, OSError) as e:
                    warnings.warn(f"skipping damaged group {g.id!r}: {e}", stacklevel=2)
                    self.skipped.append((g.id, str(e)))
                    continue
            elif in_worker and not self._transforms:
                g.examples()
            yield self._apply(g)
        self._delivered = 0  # a finished epoch resumes from its start

    # ------------------------------------------------------------- flat view
    def examples(self, *, shuffle_buffer: int = 0, seed: int = 0) -> "FlatView":
        """All examples as ``(group_id, example)``: the centralized baseline on
        the same data.  Readers share the groups as in the grouped stream; a
        seeded buffer of ``shuffle_buffer`` examples mixes groups (0: group
        by group, in order)."""
        return FlatView(self, shuffle_buffer, seed)

    # ------------------------------------------------------------- cohorts
    def cohorts(self, size: int, *, seed: int = 0, replacement: str = "epoch", weighted: bool = False,
                rounds: int | None = None, num_threads: int = 8) -> "Cohorts":
        """FL rounds: an iterator of cohorts (lists of groups, after ``map_groups``).

        Within a round groups are distinct.  ``replacement="epoch"``: rounds
        walk a seeded permutation of all groups, so no group repeats until
        every group has been drawn; ``"independent"``: each round is an
        independent draw without replacement (``weighted``: probability
        proportional to ``num_examples``).  Deterministic by (seed, round);
        ``state_dict``/``load_state_dict`` resume at a round.  Groups are
        fetched by random access on ``num_threads`` threads, so a round costs
        ``size`` ranged reads whatever the dataset size."""
        return Cohorts(self, size, seed=seed, replacement=replacement, weighted=weighted, rounds=rounds,
                       num_threads=num_threads)

    def cohort_ids(self, size: int, *, seed: int = 0, replacement: str = "epoch", weighted: bool = False,
                   rounds: int | None = None) -> Iterator[list]:
        """The group ids of ``cohorts(...)``'s rounds, reading no group data: an
        iterator of lists of ids, the same draws as ``cohorts`` with the same
        arguments (only the index is read).  For round ``r`` alone, use
        ``cohorts(...).ids(r)``."""
        import itertools

        c = self.cohorts(size, seed=seed, replacement=replacement, weighted=weighted, rounds=rounds)
        return (c.ids(r) for r in (range(rounds) if rounds is not None else itertools.count()))


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
        reader, readers, _ = self.ds._share()
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
                w = self.ds._columns()["num_examples"].astype(np.float64)
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
            g = ds._group(int(row), ranged=True)
            g.examples()
            return ds._apply(g)

        with ThreadPoolExecutor(self.num_threads) as pool:
            while self.rounds is None or self.round < self.rounds:
                cohort = list(pool.map(fetch, self.rows(self.round)))
                self.round += 1
                yield cohort

    def ids(self, r: int) -> list:
        """Group ids of round ``r``'s cohort, in draw order (no group is read)."""
        ids = self.ds._columns()["ids"]
        return [ids[int(i)] for i in self.rows(r)]
