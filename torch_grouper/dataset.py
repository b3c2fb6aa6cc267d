"""Reading a grouped dataset: opening it, the shard ``_Reader``, ``GroupedDataset``,
``Group`` and ``load_index``.

The rooms of the read path: ``storage`` (filesystems, retried reads),
``tario`` (walking tar headers), ``codec`` (members -> examples, the streaming
fast path), ``views`` (splits, ``FlatView``, ``Cohorts``); this module opens a
dataset, reads group ranges and checks them against the index.
"""
from __future__ import annotations

import copy
import hashlib
import json
from hashlib import blake2b as _blake2b
import os
import posixpath
import threading
import warnings
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch.utils.data

from . import format as fmt
from . import snapshots, storage, views
from .codec import decode_group
from .features import ToArrays, array_fields
from .retry import retry
from .tario import GroupMismatchError, TarFormatError, whole_samples
from .views import Cohorts, FlatView

__all__ = ["GroupedDataset", "Group", "GroupLocation", "ReadOptions", "Cohorts", "FlatView", "load_index",
           "shard_urls"]


@dataclass(frozen=True)
class ReadOptions:
    """How a ``GroupedDataset`` reads its shards (``GroupedDataset(path, read_options=...)``).

    Args:
        whole_read: groups of up to this many bytes are read with one ranged read.
        window: larger groups are read in windows of this many bytes, cut at
            example boundaries (a window is widened for an example larger than it),
            so memory stays bounded whatever a group's size.
        open_shards: shard handles kept open per process for streaming.
        readahead: while a reader streams (``for g in ds``, in each DataLoader
            worker), the shard ranges of the groups it will yield next are
            fetched ahead, in ranges of consecutive groups of up to
            ``min(window, readahead // (2 * readahead_requests))`` bytes; at most
            this many bytes are fetched or held at once (0: no read-ahead;
            a group larger than this is read when it is reached, as without).
            Every group is still checked as it is decoded.
        readahead_requests: ranged reads in flight at once for the read-ahead.
    """

    whole_read: int = 16 << 20
    window: int = 8 << 20
    open_shards: int = 8
    readahead: int = 64 << 20
    readahead_requests: int = 4

    def __post_init__(self):
        for name in ("whole_read", "window", "open_shards", "readahead", "readahead_requests"):
            v = getattr(self, name)
            low = 0 if name == "readahead" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"ReadOptions.{name} must be an int >= {low}, got {v!r}")


class GroupLocation(NamedTuple):
    """Where a group's bytes are in its shard, and what a read must find there.

    ``key_prefix``: every member's sample key starts with it (the hex of the
    group's hash and ``_``); ``num_examples`` examples holding ``num_bytes``
    bytes of member data.  ``ranged``: read by one stateless ranged request
    (random access) rather than through the streaming handle.  (A named
    tuple: one is made per group streamed.)"""

    shard: str
    offset: int
    length: int
    key_prefix: bytes
    num_examples: int
    num_bytes: int
    ranged: bool = False


class Group:
    """One group of a dataset: ``g.id``, ``len(g)`` and iteration over its examples.

    A group read in the main process streams its examples from the shard, so
    a group larger than memory can be walked.  A group that crosses a process
    boundary (a DataLoader worker handing it to the main process, or any
    pickling) is materialized first: its examples travel as a list.
    """

    __slots__ = ("id", "num_examples", "num_bytes", "num_words", "_examples", "_src", "_reader")

    def __init__(self, id, examples=None, *, num_examples=None, num_bytes=0, num_words=0,
                 _src: GroupLocation | None = None, _reader: "_Reader | None" = None):
        self.id = id
        self._examples = examples
        self._src = _src  # where to read the examples (with _reader) until they are read
        self._reader = _reader
        self.num_examples = len(examples) if num_examples is None else num_examples
        self.num_bytes = num_bytes
        self.num_words = num_words

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self) -> Iterator[dict]:
        if self._examples is not None:
            return iter(self._examples)
        return self._reader.examples(self._src, self.id)

    def examples(self) -> list:
        """All examples as a list (reads the group if it was not read yet)."""
        if self._examples is None:
            self._examples = list(self)
            self._src = self._reader = None
        return self._examples

    def split(self, parts: dict, *, seed: int = 0) -> dict:
        """This group's examples split into parts (``{"personalize": 0.8,
        "test": 0.2}`` or counts): the same parts as
        ``GroupedDataset.split_examples(parts, seed=seed)`` gives for it."""
        id_type = fmt.group_id_type(self.id) or "str"
        exs = self.examples()
        h = views.group_hash(self.id, id_type)
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
    fs, root, url = storage.location(path, storage_options)
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
    fs, root, url = storage.location(path, storage_options)
    r = snapshots.resolve(fs, root, url, snapshot)
    base = storage.full_url(fs, r.root)
    return [posixpath.join(base, _safe_shard(s["path"], r.url)) for s in r.manifest["shards"]]


def _safe_shard(name, where: str) -> str:
    if not isinstance(name, str) or not fmt.SHARD_RE.match(name):
        raise ValueError(f"{where}: manifest lists a shard named {name!r}, which is not a shard name")
    return name


def _read_index(fs, root, *, shard_dictionary: bool = False) -> pa.Table:
    """The index table; ``shard_dictionary``: the shard column read as an Arrow
    dictionary (one small int per row instead of one string)."""
    # ParquetFile.read, not read_table: read_table starts pyarrow.dataset (~0.25 s)
    raw = storage.read_bytes(fs, posixpath.join(root, fmt.INDEX))
    f = pq.ParquetFile(pa.BufferReader(raw), read_dictionary=["shard"] if shard_dictionary else None)
    del raw  # the file object holds the buffer until the table is read
    return f.read()


class _Reader:
    """Ranged reads from shards, with a small cache of open shard handles.

    The filesystem object is made in each process that reads (async
    filesystems such as s3fs are not fork-safe): after a fork, for instance in
    a DataLoader worker, the first read makes a fresh one."""

    def __init__(self, fs, root: str, url: str, storage_options: dict | None = None,
                 options: ReadOptions | None = None):
        self._fs, self.root, self.url = fs, root, url
        self.storage_options = storage_options or {}
        self.options = options or ReadOptions()
        self._pid = os.getpid()
        self._open: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # open handles are shared: one seek+read at a time
        self._aheads: list = []  # the _ReadAheads of the streams running in this process
        self._where: dict = {}  # shard -> its URL (error messages; made once per shard)

    @property
    def fs(self):
        if self._pid != os.getpid() or self._fs is None:
            self._fs = storage.filesystem(self.url, self.storage_options)
            self._pid = os.getpid()
            self._open = OrderedDict()
            self._lock = threading.Lock()
            self._aheads = []  # a parent's read-ahead threads did not come with the fork
        return self._fs

    def __getstate__(self):  # handles, the lock and the filesystem stay in this process
        return {"root": self.root, "url": self.url, "storage_options": self.storage_options,
                "options": self.options}

    def __setstate__(self, st):
        self.__init__(None, st["root"], st["url"], st["storage_options"], st["options"])

    def _file(self, shard: str):
        fs = self.fs  # first: in a forked process this drops the parent's handles, whose
        # file offsets the parent and every sibling share (seek + read would race)
        f = self._open.get(shard)
        if f is None:
            f = fs.open(posixpath.join(self.root, shard), "rb", block_size=4 << 20)
            self._open[shard] = f
            if len(self._open) > self.options.open_shards:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(shard)
        return f

    def where(self, shard: str) -> str:
        w = self._where.get(shard)
        if w is None:
            w = self._where[shard] = posixpath.join(self.url, shard)
        return w

    def read(self, shard: str, offset: int, length: int, ranged: bool = False) -> bytes:
        """``length`` bytes at ``offset``: from a stream's read-ahead when it holds
        them, else through a cached open handle (streaming), or with ``ranged``
        as one stateless ranged request (random access, safe from any thread)."""
        data = None
        if not ranged:  # bytes fetched ahead of a stream, when a read-ahead holds them
            for ahead in self._aheads:
                data = ahead.get(shard, offset, length)
                if data is not None:
                    break
        if data is None and ranged:
            data = storage.read_bytes(self.fs, posixpath.join(self.root, shard), offset, offset + length,
                                      what=f"read {self.where(shard)} bytes {offset}-{offset + length}")
        elif data is None:
            data = retry(self._read_handle, shard, offset, length,
                         what=f"read {self.where(shard)} bytes {offset}-{offset + length}")
        if len(data) != length:
            raise TarFormatError(
                f"{self.where(shard)}: byte offset {offset + len(data)}: shard ends early "
                f"(truncated shard)"
            )
        return data

    def read_ahead(self, locs) -> "_ReadAhead | None":
        """Start fetching the shard ranges of ``locs`` (an iterator of
        ``(position, shard, offset, length)`` in stream order) ahead of the
        stream; ``None`` when ``options.readahead`` is 0."""
        if self.options.readahead == 0:
            return None
        ahead = _ReadAhead(self, locs)
        self._aheads.append(ahead)
        ahead.advance(0)
        return ahead

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

    def examples(self, loc: GroupLocation, gid) -> Iterator[dict]:
        """The examples of group ``gid`` at ``loc``, checked: every member's
        sample key must start with ``loc.key_prefix``, and there must be
        ``loc.num_examples`` examples holding ``loc.num_bytes`` bytes of member
        data (so a range cut short at a member boundary is found too);
        otherwise GroupMismatchError names the shard and offset."""
        shard, offset, length, hexh, count, nbytes, ranged = loc
        where = self.where(shard)
        if length <= self.options.whole_read:
            tally = [0]
            out = decode_group(self.read(shard, offset, length, ranged), where, offset, hexh, gid, tally)
            if len(out) != count or tally[0] != nbytes:
                raise _count_mismatch(where, offset, gid, len(out), count, tally[0], nbytes)
            return iter(out)
        return self._stream_examples(shard, offset, length, where, ranged, gid, hexh, count, nbytes)

    def _stream_examples(self, shard, offset, length, where, ranged, gid, hexh, count, nbytes):
        """Examples of a group too large to read at once: window by window
        (``options.window`` bytes, cut at example boundaries), so memory stays
        bounded and each window takes the same fast path as a small group.
        The count is checked as soon as it is exceeded, and at the end of the
        group."""
        end = offset + length
        pos = offset
        window = self.options.window
        n = 0
        tally = [0]
        while pos < end:
            chunk = self.read(shard, pos, min(window, end - pos), ranged)
            cut = len(chunk) if pos + len(chunk) == end else whole_samples(chunk, where, pos)
            if cut == 0:  # one example larger than the window: widen it
                window *= 2
                continue
            part = decode_group(chunk[:cut] if cut < len(chunk) else chunk, where, pos, hexh, gid, tally)
            n += len(part)
            if n > count:
                raise _count_mismatch(where, offset, gid, f"more than {count}", count, tally[0], nbytes)
            yield from part
            pos += cut
            window = self.options.window
        if n != count or tally[0] != nbytes:
            raise _count_mismatch(where, offset, gid, n, count, tally[0], nbytes)


class _ReadAhead:
    """Shard ranges fetched ahead of one stream, on ``readahead_requests``
    threads, holding at most ``readahead`` bytes (fetched or in flight).

    The stream calls ``advance(k)`` before it yields its ``k``-th group: the
    ranges of earlier groups are let go and more are fetched.  ``get`` serves
    a read lying inside a range still held (the bytes, not yet checked: the
    reader decodes and checks them as it would bytes it read itself); any
    other read, or one whose range failed, takes the reader's ordinary path,
    so errors are the same with and without read-ahead."""

    def __init__(self, reader: _Reader, locs):
        o = reader.options
        self.budget = o.readahead
        self.chunk = max(1, min(o.window, o.readahead // (2 * o.readahead_requests)))
        self.max_ranges = 64 * o.readahead_requests  # ranges fetched or held at once
        self._fs, self._root = reader.fs, reader.root
        self._plan = self._ranges(locs)
        self._next = None  # the next planned range, not fetched yet (over the budget)
        self._held: deque = deque()  # [shard, start, end, last position, future]
        self._last = None  # (shard, start, end, bytes) of the held range read last
        self.held_bytes = 0
        self.max_held = 0  # the most bytes fetched or held at once
        self._reader = reader
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(o.readahead_requests, thread_name_prefix="torch_grouper-readahead")

    def _ranges(self, locs):
        """Consecutive groups of one shard, contiguous in it, coalesced into
        ranges of up to ``chunk`` bytes: ``(shard, start, end, last position)``.
        Groups larger than the budget are left out."""
        cur = None
        for pos, shard, offset, length in locs:
            if cur is not None and shard == cur[0] and offset == cur[2] and offset + length - cur[1] <= self.chunk:
                cur[2], cur[3] = offset + length, pos
                continue
            if cur is not None:
                yield tuple(cur)
            cur = [shard, offset, offset + length, pos] if length <= self.budget else None
        if cur is not None:
            yield tuple(cur)

    def _fetch(self, shard, start, end):
        path = posixpath.join(self._root, shard)
        return storage.read_bytes(self._fs, path, start, end,
                                  what=f"read {self._reader.where(shard)} bytes {start}-{end}")

    def advance(self, pos: int) -> None:
        """The stream is at its group ``pos``: drop the ranges before it, fetch more."""
        with self._lock:
            held = self._held
            while held and held[0][3] < pos:
                shard, start, end, _, fut = held.popleft()
                fut.cancel()
                self.held_bytes -= end - start
                last = self._last
                if last is not None and (last[0], last[1]) == (shard, start):
                    self._last = None  # let its bytes go
            while True:
                if self._next is None:
                    self._next = next(self._plan, None)
                    if self._next is None:
                        return
                shard, start, end, last = self._next
                if last < pos:  # already passed
                    self._next = None
                    continue
                if self.held_bytes + end - start > self.budget or len(held) >= self.max_ranges:
                    return  # (a cap on ranges too: a shuffled stream of small groups is one range each)
                held.append([shard, start, end, last, self._pool.submit(self._fetch, shard, start, end)])
                self.held_bytes += end - start
                self.max_held = max(self.max_held, self.held_bytes)
                self._next = None

    def get(self, shard: str, offset: int, length: int) -> bytes | None:
        """The ``length`` bytes at ``offset`` of ``shard`` when a held range has
        them (waiting for it if it is in flight); None otherwise, or when that
        range's read failed."""
        last = self._last  # the range the previous read came from (consecutive groups share one)
        if last is not None and last[0] == shard and last[1] <= offset and offset + length <= last[2]:
            start, data = last[1], last[3]
            return data[offset - start:offset - start + length]
        with self._lock:
            fut = start = None
            for s, a, b, _, f in self._held:
                if s == shard and a <= offset and offset + length <= b:
                    fut, start, stop = f, a, b
                    break
        if fut is None:
            return None
        try:
            data = fut.result()
        except Exception:  # noqa: BLE001 - read again by the ordinary path, which names the group's bytes
            return None
        self._last = (shard, start, stop, data)
        return data[offset - start:offset - start + length]

    def close(self) -> None:
        with self._lock:
            for *_, fut in self._held:
                fut.cancel()
            self._held.clear()
            self._last = None
            self.held_bytes = 0
            self._next = None
            self._plan = iter(())
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            self._reader._aheads.remove(self)
        except ValueError:
            pass


def _count_mismatch(where: str, offset: int, gid, n, count: int, got_bytes: int, nbytes: int) -> GroupMismatchError:
    return GroupMismatchError(f"{where}: byte offset {offset}: group {gid!r} holds {n} examples ({got_bytes} bytes "
                              f"of member data), the index says {count} ({nbytes} bytes): the index does not "
                              f"match the shard (a mixed-up or altered dataset)")


def _int64_column(table: pa.Table, name: str) -> np.ndarray:
    """An int64 column as numpy, without Array.to_numpy (which imports pandas, ~0.2 s)."""
    arr = table.column(name).combine_chunks()
    if len(arr) == 0:
        return np.zeros(0, np.int64)
    if arr.null_count or arr.type != pa.int64():
        raise ValueError(f"index column {name!r} must be int64 without nulls")
    return np.frombuffer(arr.buffers()[1], dtype=np.int64, count=len(arr), offset=arr.offset * 8)


def _shard_codes(column) -> tuple[list, np.ndarray]:
    """(shard names in order of first appearance, int32 number of each row's
    shard) from the index's shard column, dictionary-encoded or not, without
    a Python string per row.  A null shard is the name None (refused by the
    caller like any name that is not a shard's)."""
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    names: dict = {}
    parts = []
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        values = chunk.dictionary.to_pylist()
        idx = chunk.indices
        codes = (np.frombuffer(idx.buffers()[1], dtype=idx.type.to_pandas_dtype(), count=len(idx),
                               offset=idx.offset * idx.type.bit_width // 8).astype(np.int64))
        if chunk.null_count:
            valid = np.fromiter((v is not None for v in idx.to_pylist()), dtype=bool, count=len(idx))
            codes = np.where(valid, codes, len(values))
            values = values + [None]
        uniq, first = np.unique(codes, return_index=True)
        lut = np.zeros(len(values), np.int32)
        for local in uniq[np.argsort(first)].tolist():
            lut[local] = names.setdefault(values[local], len(names))
        parts.append(lut[codes])
    shard = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    return list(names), shard.astype(np.int32, copy=False)


class _GroupIds:
    """The group ids of an index, held as Arrow buffers: no Python object per
    group.  Int ids are one int64 numpy array; str and bytes ids are the Arrow
    column's offsets and data buffer.  ``ids[i]`` makes the Python id of row
    ``i``; ``canon(i)`` its canonical bytes (``format.canonical_group_id``)."""

    __slots__ = ("id_type", "array", "values", "offsets", "data")

    def __init__(self, array: pa.Array, id_type: str):
        self.id_type, self.array = id_type, array
        self.values = self.offsets = self.data = None
        n = len(array)
        if id_type == "int":
            self.values = (np.frombuffer(array.buffers()[1], dtype=np.int64, count=n, offset=array.offset * 8)
                           if n else np.zeros(0, np.int64))
        else:
            large = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
            width = 8 if large else 4
            bufs = array.buffers()
            self.offsets = (np.frombuffer(bufs[1], dtype=np.int64 if large else np.int32, count=n + 1,
                                          offset=array.offset * width) if n else np.zeros(1, np.int64))
            self.data = memoryview(bufs[2]) if len(bufs) > 2 and bufs[2] is not None else memoryview(b"")

    @classmethod
    def from_column(cls, column, id_type: str) -> "_GroupIds":
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        return cls(arr, id_type)

    def __len__(self) -> int:
        return len(self.array)

    def canon(self, i: int) -> bytes:
        """Canonical bytes of the id at row ``i``."""
        if self.values is not None:
            return b"%d" % self.values.item(i)
        return self.data[self.offsets.item(i):self.offsets.item(i + 1)].tobytes()

    def __getitem__(self, i):
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"group row {i} out of range")
        return self.id_and_canon(i)[0]

    def id_and_canon(self, i: int) -> tuple:
        """(the id at row ``i`` (0 <= i < len), its canonical bytes)."""
        if self.values is not None:
            v = self.values.item(i)
            return v, b"%d" % v
        offsets = self.offsets
        raw = self.data[offsets.item(i):offsets.item(i + 1)].tobytes()
        return (raw.decode("utf-8") if self.id_type == "str" else raw), raw

    def __iter__(self):
        for start in range(0, len(self), 65536):  # Python objects of one slice at a time
            yield from self.array.slice(start, 65536).to_pylist()

    def tolist(self) -> list:
        return self.array.to_pylist()

    def take(self, rows: np.ndarray) -> "_GroupIds":
        """The ids at ``rows`` (a view's ids)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.values is not None:
            return _GroupIds(pa.array(self.values[rows], type=pa.int64()), self.id_type)
        off = self.offsets.astype(np.int64)
        starts, lens = off[rows], off[rows + 1] - off[rows]
        new_off = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lens, out=new_off[1:])
        src = np.frombuffer(self.data, dtype=np.uint8) if len(self.data) else np.zeros(0, np.uint8)
        gather = np.repeat(starts - new_off[:-1], lens) + np.arange(int(new_off[-1]), dtype=np.int64)
        arrow_type = pa.large_string() if self.id_type == "str" else pa.large_binary()
        arr = pa.Array.from_buffers(arrow_type, len(rows), [None, pa.py_buffer(new_off),
                                                             pa.py_buffer(src[gather].tobytes())])
        return _GroupIds(arr, self.id_type)

    def hashes(self) -> np.ndarray:
        """``format.group_hash`` of every id, as uint64 (computed a slice at a time)."""
        n = len(self)
        out = np.empty(n, dtype=">u8")
        step = 65536
        for start in range(0, n, step):
            stop = min(n, start + step)
            if self.values is not None:
                canons = [b"%d" % v for v in self.values[start:stop].tolist()]
            else:
                data, offs = self.data, self.offsets[start:stop + 1].tolist()
                canons = [data[a:b] for a, b in zip(offs, offs[1:])]
            out[start:stop] = np.frombuffer(b"".join([_blake2b(c, digest_size=8).digest() for c in canons]),
                                            dtype=">u8")
        return out.astype(np.uint64)


class _HashLookup:
    """Group id -> index row by binary search over the group hashes
    (``format.group_hash``), no Python object per group.  Rows whose hash
    matches are confirmed by comparing canonical ids, so colliding hashes are
    told apart.

    An index as this library writes it is in hash order: it is searched as it
    is, hashing only the ~log2(n) rows probed, so nothing is computed or held
    per group.  When that search misses (an absent id, or an index in another
    order), every id is hashed once into a sorted uint64 array (8 bytes per
    group, plus an int64 permutation when the rows are not in hash order),
    which then answers every lookup exactly."""

    __slots__ = ("ids", "sorted_hashes", "order")

    def __init__(self, ids: _GroupIds):
        self.ids = ids
        self.sorted_hashes = self.order = None

    def build(self) -> None:
        """Hash every id (once) into the sorted array."""
        if self.sorted_hashes is not None:
            return
        h = self.ids.hashes()
        if len(h) < 2 or bool(np.all(h[:-1] <= h[1:])):
            self.order = None  # written in hash order (the writer's order): rows are positions
            self.sorted_hashes = h
        else:
            self.order = np.argsort(h, kind="stable")
            self.sorted_hashes = h[self.order]

    def _hash_at(self, row: int) -> int:
        return int.from_bytes(_blake2b(self.ids.canon(row), digest_size=8).digest(), "big")

    def row(self, canon: bytes) -> int | None:
        """The row of the group with canonical id ``canon``, or None."""
        h = int.from_bytes(_blake2b(canon, digest_size=8).digest(), "big")  # fmt.group_hash
        ids, n = self.ids, len(self.ids)
        if self.sorted_hashes is None:  # search the rows as they are, assuming hash order
            lo, hi = 0, n
            while lo < hi:
                mid = (lo + hi) // 2
                if self._hash_at(mid) < h:
                    lo = mid + 1
                else:
                    hi = mid
            while lo < n and self._hash_at(lo) == h:
                if ids.canon(lo) == canon:
                    return lo
                lo += 1
            self.build()  # a miss: absent, or the rows are not in hash order; the sorted hashes tell
        sh = self.sorted_hashes
        hv = np.uint64(h)
        lo = int(np.searchsorted(sh, hv, side="left"))
        while lo < n and sh[lo] == hv:
            row = lo if self.order is None else int(self.order[lo])
            if ids.canon(row) == canon:
                return row
            lo += 1
        return None


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
    ``ds.loader(num_workers=k)`` reads the same shares in bundles of groups,
    several times faster (``torch_grouper.loader``).

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
        read_options: how shards are read (:class:`ReadOptions`: the largest
            group read at once, the window size for larger ones, open shard
            handles); the defaults suit local disks and object stores.
    """

    def __init__(self, path, *, shuffle: bool = False, seed: int = 0, storage_options: dict | None = None,
                 rank: int | None = None, world_size: int | None = None, on_error: str = "raise",
                 snapshot: str | None = None, arrays: bool = True, read_options: ReadOptions | None = None):
        super().__init__()
        if read_options is not None and not isinstance(read_options, ReadOptions):
            raise TypeError(f"read_options must be a ReadOptions, got {type(read_options).__name__}")
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
        self._reader = _Reader(fs, self.root, folder_url, storage_options, read_options)
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
        return self._columns()["ids"].tolist()

    def group_ids_at(self, rows) -> list:
        """The group ids at index rows ``rows`` (of this view), in that order."""
        ids = self._columns()["ids"]
        return [ids[int(i)] for i in rows]

    def group_num_examples(self) -> np.ndarray:
        """Examples of each group, by index row (of this view), as the index
        records them (whole groups, before any example split)."""
        return self._columns()["num_examples"]

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

    def _with_view(self, step: str, spec: dict) -> "GroupedDataset":
        new = copy.copy(self)
        new._view = self._view + ((step, spec),)
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
        id_type = self.manifest.get("group_id_type", "str")
        for step, spec in self._view:
            n = c.get("part_n", c["num_examples"])
            if step == "groups":
                rows = views.group_split_rows(c["ids"], id_type, spec["parts"], spec["seed"])[spec["name"]]
                part_n = n[rows]
            else:
                k = list(spec["parts"]).index(spec["name"])
                rows = np.flatnonzero(n >= spec["min_examples"])
                part_n = np.fromiter((views.example_part_sizes(int(x), spec["parts"])[k] for x in n[rows]),
                                     dtype=np.int64, count=len(rows))
            ids = c["ids"]
            c = {key: (v[rows] if isinstance(v, np.ndarray) else v) for key, v in c.items()}
            c["ids"] = ids.take(rows)
            if step == "examples" or "part_n" in c:
                c["part_n"] = part_n
        return c

    def _select_examples(self, g):
        """The group restricted to this view's example parts (read whole)."""
        id_type = self.manifest.get("group_id_type", "str")
        for step, spec in self._view:
            if step != "examples":
                continue
            exs = g.examples()
            pos = views.example_positions(len(exs), views.group_hash(g.id, id_type), spec["seed"], spec["parts"],
                                          spec["name"])
            g = Group(g.id, [exs[i] for i in pos], num_bytes=g.num_bytes, num_words=g.num_words)
        return g

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of ``epoch`` (call before iterating)."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """This reader's position: epoch and groups delivered in it."""
        reader, readers, _ = self.reader_share()
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
            # read here with the shard column as a dictionary, not through self.index: no Python
            # object per group (ids stay Arrow buffers, shards small ints)
            idx = self._index if self._index is not None else _read_index(self._reader.fs, self.root,
                                                                         shard_dictionary=True)
            t = idx.schema.field("group_id").type
            id_type = ("str" if pa.types.is_string(t) or pa.types.is_large_string(t)
                       else "int" if pa.types.is_integer(t)
                       else "bytes" if pa.types.is_binary(t) or pa.types.is_large_binary(t) else None)
            if id_type is None or id_type != self.manifest.get("group_id_type", id_type):
                raise ValueError(f"{self.url}: index group_id column of type {t} does not hold the manifest's "
                                 f"group_id_type {self.manifest.get('group_id_type')!r} (a damaged index)")
            if idx["group_id"].null_count:
                valid = np.fromiter((v is not None for v in idx["group_id"]), dtype=bool, count=idx.num_rows)
                raise ValueError(f"{self.url}: index row {int(np.argmin(valid))}: group_id is null (a damaged index)")
            ids = _GroupIds.from_column(idx["group_id"], id_type)
            names, shard = _shard_codes(idx["shard"])
            for code, name in enumerate(names):
                if not (isinstance(name, str) and fmt.SHARD_RE.fullmatch(name)
                        and posixpath.basename(name) == name and "\\" not in name):
                    row = int(np.flatnonzero(shard == code)[0])
                    raise ValueError(f"{self.url}: index row {row} (group {ids[row]!r}): shard name {name!r} is "
                                     f"not a shard file name of this dataset (a tampered index?)")
            cols = {c: _int64_column(idx, c) for c in ("offset", "length", "num_examples", "num_bytes", "num_words")}
            for c in ("offset", "length", "num_examples"):
                bad = np.flatnonzero(cols[c] < 0)
                if bad.size:
                    row = int(bad[0])
                    raise ValueError(f"{self.url}: index row {row} (group {ids[row]!r}): {c} is "
                                     f"{int(cols[c][row])}, must be >= 0 (a damaged or tampered index)")
            self._cols = {"ids": ids, "id_type": id_type, "shard_names": names, "shard": shard, **cols}
        return self._cols

    def _group(self, i: int, ranged: bool = False) -> Group:
        """Group at index row ``i``; ``ranged``: read by one ranged request
        (random access) rather than through the streaming handle."""
        c = self._columns()
        i = int(i)
        gid, canon = c["ids"].id_and_canon(i)
        n = c["num_examples"].item(i)
        # members must carry the group's hash in their sample key (checked on every read): the hex
        # of fmt.group_hash's blake2b-64 digest, as fmt.sample_key writes it, computed in one step
        hexh = _blake2b(canon, digest_size=8).hexdigest().encode() + b"_"
        nbytes = c["num_bytes"].item(i)
        return Group(
            gid, num_examples=n, num_bytes=nbytes, num_words=c["num_words"].item(i),
            _src=GroupLocation(c["shard_names"][c["shard"].item(i)], c["offset"].item(i), c["length"].item(i), hexh,
                               n, nbytes, ranged),
            _reader=self._reader,
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
        return self.group_at(self.position_of(group_id))

    def group_at(self, row: int, *, materialize: bool = False):
        """The group at index row ``row`` (of this view), read by one ranged
        request (random access, safe from any thread), after this view's
        example split and ``map_groups`` functions.  ``materialize``: its
        examples are read before those run (a thread fetching groups does the
        reading itself)."""
        g = self._group(row, ranged=True)
        if materialize:
            g.examples()
        return self._apply(g)

    def position_of(self, group_id) -> int:
        """The group's row in the index."""
        if self._by_id is None:
            self._by_id = _HashLookup(self._columns()["ids"])
        id_type = self.manifest.get("group_id_type")
        if type(group_id) is not int or id_type != "int":  # 1.0 and True hash like 1: check the type
            ok = {"int": int, "str": str, "bytes": bytes}.get(id_type, object)
            if isinstance(group_id, np.integer) and id_type == "int":
                group_id = int(group_id)
            elif not isinstance(group_id, ok) or isinstance(group_id, bool):
                raise KeyError(f"no group {group_id!r} of type {type(group_id).__name__} in {self.url}: "
                               f"its group ids are {id_type}")
        try:
            row = self._by_id.row(fmt.canonical_group_id(group_id, self._columns()["id_type"]))
        except (OverflowError, UnicodeEncodeError, TypeError, ValueError):  # no id of the dataset is like it
            row = None
        if row is None:
            raise KeyError(f"no group {group_id!r} in {self.url}")
        return row

    def reader_share(self) -> tuple[int, int, bool]:
        """(reader number, number of readers, in a DataLoader worker?) for this
        process: readers are distributed ranks x DataLoader workers, and each
        reads a disjoint share of the groups."""
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
        for _, g in self._iter_rows(apply=True):
            yield g

    def _iter_rows(self, apply: bool = False):
        """``(index row, group)`` of this reader's share, from the resume point:
        the groups as read (not yet through ``_apply``, read lazily unless
        damaged groups are skipped), or with ``apply`` as ``__iter__`` yields
        them.  ``_delivered`` counts the groups yielded."""
        reader, readers, in_worker = self.reader_share()
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
        ahead = self._reader.read_ahead(self._stream_locs(rows, start))
        try:
            for k in range(start, len(rows)):
                if ahead is not None:
                    ahead.advance(k)
                row = int(rows[k])
                g = self._group(row)
                self._delivered = k + 1
                if skip:
                    try:
                        g.examples()
                    except (TarFormatError, OSError) as e:
                        warnings.warn(f"skipping damaged group {g.id!r}: {e}", stacklevel=2)
                        self.skipped.append((g.id, str(e)))
                        continue
                if not apply:
                    yield row, g
                    continue
                if in_worker and not self._transforms:
                    g.examples()
                yield row, self._apply(g)
        finally:
            if ahead is not None:
                ahead.close()
        # a finished epoch resumes from its start; in a DataLoader worker, a finished share stays finished
        # (its state may be saved while other workers still yield: StatefulDataLoader restarts every
        # worker's iteration from its state, and ends the epoch itself when all are done)
        self._delivered = len(rows) if in_worker else 0

    def _raw_groups(self) -> bool:
        """Whether this view's groups are their examples as stored (no
        ``map_groups`` function, array conversion or example split, damaged
        groups not skipped): what ``loader.GroupLoader`` may move as JSON text."""
        return (not self._transforms and self._arrays is None and self.on_error == "raise"
                and all(step != "examples" for step, _ in self._view))

    def loader(self, *, num_workers: int = 2, stateful: bool = False, bundle_bytes: int = 1 << 20,
               **dataloader_kwargs):
        """This dataset's groups read in ``num_workers`` DataLoader workers and
        handed to this process in bundles (``torch_grouper.loader.GroupLoader``):
        the groups ``DataLoader(ds, num_workers=num_workers, batch_size=None)``
        yields, in its order, without its cost per group.  ``stateful``: a
        torchdata ``StatefulDataLoader``, with ``state_dict``/``load_state_dict``."""
        from .loader import GroupLoader

        return GroupLoader(self, num_workers=num_workers, stateful=stateful, bundle_bytes=bundle_bytes,
                           **dataloader_kwargs)

    def _stream_locs(self, rows, start: int):
        """``(position, shard, offset, length)`` of the stream's groups from ``start``."""
        c = self._columns()
        names, shard, offset, length = c["shard_names"], c["shard"], c["offset"], c["length"]
        for k in range(start, len(rows)):
            i = rows[k]
            yield k, names[shard[i]], int(offset[i]), int(length[i])

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
