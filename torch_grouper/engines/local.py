"""The single-machine engine: parallel map/spill, then parallel group-contiguous reduce.

Map (one task per source slice, in a ``multiprocess`` pool):
    key + encode each example, buffer records up to the worker's memory
    budget, sort the buffer by (group hash, group id, slice, ordinal) and
    spill it as a *run* file to local temp space.  Each run records where
    each of the NUM_BUCKETS hash buckets starts.

Reduce (one task per contiguous range of buckets, also in the pool):
    k-way merge of that bucket range from every run (``heapq.merge``, one
    record in memory per run) straight into ``ShardWriter``.

Memory is bounded by the budget whatever the input size and whatever the
size of the largest group; the output is byte-identical for any number of
workers because the buckets, the sort order and the task plan depend only
on the data.
"""
from __future__ import annotations

import heapq
import os
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass, replace

from .. import format as fmt
from ..codec import EncodeError, encode
from ..writer import ShardWriter

# record header: hash, slice, ordinal, canon_len, nwords, nmembers
_REC = struct.Struct("<QIQIIH")
_MEM = struct.Struct("<HQ")
_ENTRY_OVERHEAD = 160  # Python object overhead of one buffered record
TASK_MIN_BYTES = 16 << 20
TASKS_PER_DATASET = 64


class PartitionError(ValueError):
    """Bad input found while partitioning; the message names the example."""


@dataclass
class Run:
    path: str
    offsets: list  # NUM_BUCKETS + 1 byte offsets
    records: int


@dataclass
class MapResult:
    runs: list
    examples: int
    gid_kind: str | None
    gid_where: str | None  # where the first key of that kind was seen


# ------------------------------------------------------------------- map
_W: dict = {}  # per-process state set by _init


def _init(source, keyfn, tmpdir, budget):
    _W.update(source=source, keyfn=keyfn, tmpdir=tmpdir, budget=budget)


def _key_error(source, s, loc, keyfn, ex, e) -> PartitionError:
    where = source.where(s, loc)
    col = getattr(keyfn, "column", None)
    if col is not None and isinstance(e, KeyError):
        cols = ", ".join(map(str, list(ex)[:20])) if isinstance(ex, dict) else type(ex).__name__
        return PartitionError(f"{where}: has no key column {col!r} (columns: {cols})")
    return PartitionError(f"{where}: key function raised {type(e).__name__}: {e}")


def map_slice(slice_no: int, s) -> MapResult:
    source, keyfn, tmpdir, budget = _W["source"], _W["keyfn"], _W["tmpdir"], _W["budget"]
    image_fields = source.image_fields
    buf: list = []
    size = 0
    runs: list = []
    kind = None
    kind_where = None
    n = 0
    blake = fmt.group_hash
    canon_of = fmt.canonical_group_id
    pack = _REC.pack
    mpack = _MEM.pack
    seen: dict = {}  # (type, group id) -> (canonical bytes, hash): ids repeat; hash each once
    for ordinal, (ex, raw, loc) in enumerate(source.iter_slice(s)):
        try:
            gid = keyfn(ex)
        except Exception as e:  # noqa: BLE001 - reported with the example's location
            raise _key_error(source, s, loc, keyfn, ex, e) from None
        ck = (gid.__class__, gid)
        try:
            canon, h = seen[ck]
        except (KeyError, TypeError):
            t = fmt.group_id_type(gid)
            if t is None:
                raise PartitionError(
                    f"{source.where(s, loc)}: group key {gid!r} of type {type(gid).__name__} is not "
                    f"allowed; a key must be a str, int or bytes"
                ) from None
            if t != kind:
                if kind is not None:
                    raise PartitionError(
                        f"{source.where(s, loc)}: group key {gid!r} is {t} but {kind_where} gave a "
                        f"{kind} key; all keys must have one type"
                    ) from None
                kind, kind_where = t, source.where(s, loc)
            canon = canon_of(gid, t)
            h = blake(canon)
            if len(seen) > 200_000:
                seen.clear()
            seen[ck] = (canon, h)
        try:
            members, _, nwords = encode(ex, image_fields, raw)
        except EncodeError as e:
            raise PartitionError(f"{source.where(s, loc)} (group {gid!r}): {e}") from None
        parts = [pack(h, slice_no, ordinal, len(canon), nwords, len(members)), canon]
        for suffix, data in members:
            sb = suffix.encode()
            parts.append(mpack(len(sb), len(data)))
            parts.append(sb)
            parts.append(data)
        rec = b"".join(parts)
        buf.append((h, canon, ordinal, rec))
        size += len(rec) + _ENTRY_OVERHEAD
        n += 1
        if size >= budget:
            runs.append(_spill(buf, tmpdir))
            buf = []
            size = 0
    if buf:
        runs.append(_spill(buf, tmpdir))
    return MapResult(runs, n, kind, kind_where)


def _spill(buf: list, tmpdir: str) -> Run:
    buf.sort(key=lambda e: (e[0], e[1], e[2]))
    fd, path = tempfile.mkstemp(suffix=".run", dir=tmpdir)
    offsets = [0] * (fmt.NUM_BUCKETS + 1)
    pos = 0
    b = 0
    shift = fmt.BUCKET_SHIFT
    with os.fdopen(fd, "wb") as f:
        batch = []
        for h, _, _, rec in buf:
            bk = h >> shift
            while b <= bk:
                offsets[b] = pos
                b += 1
            batch.append(rec)
            pos += len(rec)
            if len(batch) >= 4096:
                f.write(b"".join(batch))
                batch = []
        f.write(b"".join(batch))
    while b <= fmt.NUM_BUCKETS:
        offsets[b] = pos
        b += 1
    return Run(path, offsets, len(buf))


# ---------------------------------------------------------------- reduce
def _read_run(path: str, start: int, stop: int, bufsize: int):
    """Yield the records of one run's byte range."""
    hsize = _REC.size
    unpack = _REC.unpack
    munpack = _MEM.unpack
    msize = _MEM.size
    with open(path, "rb", buffering=bufsize) as f:
        f.seek(start)
        pos = start
        read = f.read
        while pos < stop:
            h, sl, ordn, clen, nwords, nmem = unpack(read(hsize))
            canon = read(clen)
            members = []
            pos += hsize + clen
            for _ in range(nmem):
                sl_len, dlen = munpack(read(msize))
                members.append((read(sl_len).decode(), read(dlen)))
                pos += msize + sl_len + dlen
            yield h, canon, sl, ordn, nwords, members


def reduce_task(task: int, ranges: list, root_url: str, storage_options, shard_size: int,
                gid_kind: str, budget: int):
    import fsspec

    fs, root = fsspec.core.url_to_fs(root_url, **(storage_options or {}))
    bufsize = max(64 << 10, min(1 << 20, budget // max(1, 2 * len(ranges))))
    streams = [_read_run(p, a, b, bufsize) for p, a, b in ranges if b > a]
    merged = streams[0] if len(streams) == 1 else heapq.merge(*streams)
    w = ShardWriter(fs, root, task, shard_size, gid_kind)
    try:
        for h, canon, _, _, nwords, members in merged:
            w.add(h, canon, nwords, members)
        return w.close()
    except BaseException:
        w.abort()
        raise


def plan_tasks(runs: list, shard_size: int) -> list:
    """Cut the bucket space into reduce tasks of similar byte size.

    Depends only on the data (bucket sizes), never on the worker count.
    """
    sizes = [0] * fmt.NUM_BUCKETS
    for r in runs:
        o = r.offsets
        for b in range(fmt.NUM_BUCKETS):
            sizes[b] += o[b + 1] - o[b]
    total = sum(sizes)
    target = min(shard_size, max(TASK_MIN_BYTES, total // TASKS_PER_DATASET))
    tasks = []
    lo = 0
    acc = 0
    for b in range(fmt.NUM_BUCKETS):
        acc += sizes[b]
        if acc >= target or b == fmt.NUM_BUCKETS - 1:
            if acc:
                tasks.append((lo, b + 1))
            lo, acc = b + 1, 0
    return [
        [(r.path, r.offsets[lo], r.offsets[hi]) for r in runs if r.offsets[hi] > r.offsets[lo]]
        for lo, hi in tasks
    ]


# ------------------------------------------------------------ orchestration
def _pool(num_workers, initargs):
    import multiprocess as mp

    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return mp.get_context(method).Pool(num_workers, initializer=_init, initargs=initargs)


def _bounded(pool, fn, items, limit):
    """Like pool.imap over (i, item), but never more than ``limit`` in flight
    (Pool.imap reads its whole input eagerly, which a streamed source must not)."""
    pending = []
    for i, item in enumerate(items):
        pending.append(pool.apply_async(fn, (i, item)))
        if len(pending) >= limit:
            yield pending.pop(0).get()
    for p in pending:
        yield p.get()


def run(source, keyfn, root_url, *, num_workers, shard_size, memory_budget, storage_options,
        tmp_dir, progress, before_write=None):
    """Partition ``source`` into shards under ``root_url``.

    ``before_write`` is called after every example has been read, keyed and
    encoded (so bad input fails before the output is touched) and before the
    first shard is written.  Returns ``(num_examples, gid_kind, results)``
    where ``results`` holds one ``(index table, shard infos)`` per task, in
    dataset order.
    """
    from tqdm.auto import tqdm

    budget = max(1 << 20, memory_budget // max(1, num_workers))
    tmpdir = tempfile.mkdtemp(prefix="torch_grouper-", dir=tmp_dir)
    pool = None
    try:
        chunk_bytes = max(1 << 20, min(16 << 20, budget // 4))
        items = source.slices if source.stream is None else source.chunks(chunk_bytes)
        if num_workers > 1:
            # the stream stays in this process; workers get its chunks
            pool = _pool(num_workers, (replace(source, stream=None), keyfn, tmpdir, budget))
            mapped = _bounded(pool, map_slice, items, 2 * num_workers)
        else:
            _init(source, keyfn, tmpdir, budget)
            mapped = (map_slice(i, s) for i, s in enumerate(items))
        runs, n, kind, kind_where = [], 0, None, None
        with tqdm(desc="partition: read", unit="ex", disable=not progress, leave=False) as bar:
            for res in mapped:
                runs.extend(res.runs)
                n += res.examples
                bar.update(res.examples)
                if res.gid_kind is None:
                    continue
                if kind is None:
                    kind, kind_where = res.gid_kind, res.gid_where
                elif res.gid_kind != kind:
                    raise PartitionError(
                        f"{res.gid_where}: group key is {res.gid_kind} but {kind_where} gave a "
                        f"{kind} key; all keys must have one type"
                    )
        kind = kind or "str"
        tasks = plan_tasks(runs, shard_size)
        if before_write is not None:
            before_write()
        args = [(t, ranges, root_url, storage_options, shard_size, kind, budget)
                for t, ranges in enumerate(tasks)]
        results = []
        with tqdm(total=len(args), desc="partition: write", unit="task", disable=not progress,
                  leave=False) as bar:
            if pool is not None:
                for r in [pool.apply_async(reduce_task, a) for a in args]:
                    results.append(r.get())
                    bar.update(1)
            else:
                for a in args:
                    results.append(reduce_task(*a))
                    bar.update(1)
        return n, kind, results
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        shutil.rmtree(tmpdir, ignore_errors=True)
