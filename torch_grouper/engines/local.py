"""The single-machine engine: parallel map/spill, then parallel group-contiguous reduce.

Map (one task per source slice, in a ``multiprocess`` pool):
    key + encode each example into its final tar members (the sample key is
    the group hash + the example's input position, so it is known here),
    buffer them up to the worker's memory budget, sort the buffer by
    (group hash, group id, position) and spill it as a *run* file to local
    temp space: one *piece* per group (header + the group's tar bytes, in
    input order).  Each run records where each of the NUM_BUCKETS hash
    buckets starts.

Reduce (one task per contiguous range of buckets, also in the pool):
    k-way merge of the pieces of that bucket range from every run
    (``heapq.merge``: one piece header in memory per run) into
    ``ShardWriter``, which copies each piece's bytes in bounded chunks.
    Runs are listed in input order and the merge is stable, so the pieces of
    one group come out in input order with one comparison per piece, not
    per example.

Memory is bounded by the budget whatever the input size and whatever the
size of the largest group; the output is byte-identical for any number of
workers because slices, buckets, the sort order and the task plan depend
only on the data.
"""
from __future__ import annotations

import errno
import heapq
import json
import os
import posixpath
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass, replace
from operator import itemgetter

import multiprocess as mp

from .. import format as fmt
from ..codec import EncodeError, count_example_words, encode
from ..tario import _PADS, _header, member
from ..partitioners import Partitioner
from ..retry import RetryError
from ..writer import ShardWriter

# piece header: hash, canon_len, num_examples, num_words, num_bytes, blob_len, labels_len
_PIECE = struct.Struct("<QIIQQQI")  # ... + length of the piece's label counts (JSON)
_ENTRY_OVERHEAD = 160  # Python object overhead of one buffered example
TASK_MIN_BYTES = 16 << 20
TASKS_PER_DATASET = 64


class PartitionError(ValueError):
    """Bad input found while partitioning; the message names the example."""


@dataclass
class Run:
    path: str
    offsets: list  # NUM_BUCKETS + 1 byte offsets of the buckets in the file
    sizes: dict  # bucket -> bytes of tar members (not headers: independent of how runs were cut)


@dataclass
class MapResult:
    runs: list
    examples: int
    gid_kind: str | None
    gid_where: str | None  # where the first key of that kind was seen
    dropped: int = 0  # examples a partitioner left out


# ------------------------------------------------------------------- map
_W: dict = {}  # per-process state set by _init


def _init(source, keyfn, tmpdir, budget, stats_column=None):
    _W.update(source=source, keyfn=keyfn, tmpdir=tmpdir, budget=budget, seen={}, stats_column=stats_column)


def _key_error(source, s, loc, keyfn, ex, e) -> PartitionError:
    where = source.where(s, loc)
    col = getattr(keyfn, "column", None) or getattr(keyfn, "label_column", None)
    if col is not None and isinstance(e, KeyError):
        cols = ", ".join(map(str, list(ex)[:20])) if isinstance(ex, dict) else type(ex).__name__
        return PartitionError(f"{where}: has no key column {col!r} (columns: {cols})")
    return PartitionError(f"{where}: key function raised {type(e).__name__}: {e}")


def map_slice(slice_no: int, task) -> MapResult:
    """Key, encode and spill one slice.  ``task`` is the slice, or for a
    partitioner fitted on the whole source, ``(slice, (first global index,
    {label: first rank}))``."""
    source, keyfn, tmpdir, budget = _W["source"], _W["keyfn"], _W["tmpdir"], _W["budget"]
    planned = isinstance(keyfn, Partitioner)
    stats_col = _W.get("stats_column")
    label_keys: dict = {}  # label -> its key in the label-count JSON
    if planned:
        s, (index0, ranks0) = task
        label_col = None if keyfn.collect_values else keyfn.label_column  # ranks only per label
        running: dict = {}
        dropped = 0
    else:
        s = task
    image_fields = source.image_fields
    buf: list = []
    size = 0
    runs: list = []
    kind = None
    kind_where = None
    n = 0
    blake = fmt.group_hash
    canon_of = fmt.canonical_group_id
    sample_key = fmt.sample_key
    header, pads = _header, _PADS
    fno = source.file_no(s)
    # (type, group id) -> (canonical bytes, hash, hex hash, type name), for all this worker's slices
    seen: dict = _W["seen"]
    for ordinal, (ex, raw, loc) in enumerate(source.iter_slice(s)):
        try:
            if planned:
                label = ex[label_col] if label_col is not None else None
                r = running.get(label, 0)
                running[label] = r + 1
                gid = keyfn.assign(ex, index0 + ordinal, ranks0.get(label, 0) + r)
                if gid is None:  # the partitioner leaves this example out
                    dropped += 1
                    continue
            else:
                gid = keyfn(ex)
        except Exception as e:  # noqa: BLE001 - reported with the example's location
            raise _key_error(source, s, loc, keyfn, ex, e) from None
        ck = (gid.__class__, gid)
        try:
            canon, h, hexh, t = seen[ck]
        except (KeyError, TypeError):
            t = fmt.group_id_type(gid)
            if t is None:
                raise PartitionError(
                    f"{source.where(s, loc)}: group key {gid!r} of type {type(gid).__name__} is not "
                    f"allowed; a key must be a str, int or bytes"
                ) from None
            try:
                canon = canon_of(gid, t)
            except UnicodeEncodeError:
                raise PartitionError(
                    f"{source.where(s, loc)}: group key {gid!r} is not valid Unicode (a lone "
                    f"surrogate); group ids are stored as UTF-8"
                ) from None
            except OverflowError:
                raise PartitionError(
                    f"{source.where(s, loc)}: group key {gid!r} is out of range; int group ids are "
                    f"stored as int64 (-2**63 <= key < 2**63)"
                ) from None
            h = blake(canon)
            hexh = sample_key(h, 0, 0)[:16]
            if len(seen) > 200_000:
                seen.clear()
            seen[ck] = (canon, h, hexh, t)
        if t is not kind:
            if kind is not None:
                raise PartitionError(
                    f"{source.where(s, loc)}: group key {gid!r} is {t} but {kind_where} gave a "
                    f"{kind} key; all keys must have one type"
                )
            kind, kind_where = t, source.where(s, loc)
        if raw is not None:
            # a parsed JSON line holds JSON values only: store the line as it is
            # (codec.encode does the same; inlined, as this loop is the hot path)
            nwords = count_example_words(ex)
            nbytes = len(raw)
            name = f"{hexh}_{fno:05d}{loc:013d}.json".encode()
            tar = b"".join((header(name, nbytes), raw, pads[nbytes & 511]))
        else:
            try:
                members, nbytes, nwords = encode(ex, image_fields, raw)
            except EncodeError as e:
                raise PartitionError(f"{source.where(s, loc)} (group {gid!r}): {e}") from None
            key = f"{hexh}_{fno:05d}{loc:013d}."
            tar = b"".join(c for suffix, data in members for c in member(key + suffix, data))
        lk = None
        if stats_col is not None:
            try:
                lab = ex[stats_col]
                lk = label_keys.get(lab)
            except (KeyError, TypeError) as e:
                raise _key_error(source, s, loc, keyfn, ex, KeyError(stats_col) if isinstance(e, KeyError)
                                 else TypeError(f"label {ex.get(stats_col)!r} is not hashable")) from None
            if lk is None:  # label counts are stored as JSON objects: str labels as they are, others as JSON
                if type(lab) is not str and hasattr(lab, "item") and type(lab).__module__ == "numpy":
                    lab = lab.item()  # a numpy scalar
                if lab is not None and not isinstance(lab, (str, int, float)):  # bool is an int
                    raise PartitionError(
                        f"{source.where(s, loc)}: label {lab!r} in column {stats_col!r} is a "
                        f"{type(lab).__name__}; labels must be str, int, float, bool or None (label counts "
                        f"are stored as JSON)")
                lk = label_keys[ex[stats_col]] = lab if isinstance(lab, str) else json.dumps(lab)
        buf.append((h, canon, ordinal, nwords, nbytes, tar, lk))
        size += len(tar) + len(canon) + _ENTRY_OVERHEAD
        n += 1
        if size >= budget:
            runs.append(_spill(buf, tmpdir))
            buf = []
            size = 0
    if buf:
        runs.append(_spill(buf, tmpdir))
    return MapResult(runs, n, kind, kind_where, dropped if planned else 0)


def _spill(buf: list, tmpdir: str) -> Run:
    """Sort the buffer and write it as one run of per-group pieces.  A failed
    write (a full disk) raises an OSError naming the spill file."""
    buf.sort(key=itemgetter(0, 1, 2))
    path = None
    try:
        fd, path = tempfile.mkstemp(suffix=".run", dir=tmpdir)
        return _write_run(buf, fd, path)
    except OSError as e:
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass
        full = " (disk full?)" if e.errno == errno.ENOSPC else ""
        raise OSError(e.errno, f"cannot write spill file {path or 'in ' + tmpdir}: {e.strerror or e}{full}; "
                               f"spill files go to tmp_dir: pass tmp_dir= a folder with room for the input"
                      ) from e


def _write_run(buf: list, fd: int, path: str) -> Run:
    offsets = [0] * (fmt.NUM_BUCKETS + 1)
    pos = 0
    b = 0
    shift = fmt.BUCKET_SHIFT
    pack = _PIECE.pack
    out: list = []
    pending = 0
    sizes: dict = {}
    with os.fdopen(fd, "wb") as f:
        i = 0
        n = len(buf)
        while i < n:
            h, canon = buf[i][0], buf[i][1]
            j = i + 1
            while j < n and buf[j][0] == h and buf[j][1] == canon:
                j += 1
            bk = h >> shift
            while b <= bk:
                offsets[b] = pos
                b += 1
            blobs = [e[5] for e in buf[i:j]]
            blob_len = sum(map(len, blobs))
            sizes[bk] = sizes.get(bk, 0) + blob_len
            if buf[i][6] is None:
                lc = b""
            else:
                counts: dict = {}
                for e in buf[i:j]:
                    counts[e[6]] = counts.get(e[6], 0) + 1
                lc = json.dumps(counts).encode()
            out.append(pack(h, len(canon), j - i, sum(e[3] for e in buf[i:j]),
                            sum(e[4] for e in buf[i:j]), blob_len, len(lc)))
            out.append(canon)
            out.append(lc)
            out.extend(blobs)
            pos += _PIECE.size + len(canon) + len(lc) + blob_len
            pending += blob_len
            if pending >= 4 << 20:
                f.writelines(out)
                out = []
                pending = 0
            i = j
        f.writelines(out)
    while b <= fmt.NUM_BUCKETS:
        offsets[b] = pos
        b += 1
    return Run(path, offsets, sizes)


# ---------------------------------------------------------------- reduce
def _read_pieces(path: str, start: int, stop: int, bufsize: int):
    """Yield ``(hash, canon, n, nwords, nbytes, label counts or None, blob_len,
    file)`` per piece of a run's byte range.  The consumer may read the blob
    from ``file`` before asking for the next piece; whatever it leaves is
    skipped."""
    hsize = _PIECE.size
    unpack = _PIECE.unpack
    with open(path, "rb", buffering=bufsize) as f:
        f.seek(start)
        pos = start
        while pos < stop:
            h, clen, n, nwords, nbytes, blob_len, llen = unpack(f.read(hsize))
            canon = f.read(clen)
            labels = json.loads(f.read(llen)) if llen else None
            blob_at = pos + hsize + clen + llen
            yield h, canon, n, nwords, nbytes, labels, blob_len, f
            pos = blob_at + blob_len
            f.seek(pos)


def _piece_key(p):
    return p[0], p[1]


def reduce_task(task: int, ranges: list, root_url: str, storage_options, shard_size: int,
                gid_kind: str, budget: int, label_stats: bool = False, tmp_dir: str | None = None):
    import fsspec

    fs, root = fsspec.core.url_to_fs(root_url, **(storage_options or {}))
    bufsize = max(64 << 10, min(1 << 20, budget // max(1, 2 * len(ranges))))
    streams = [_read_pieces(p, a, b, bufsize) for p, a, b in ranges if b > a]
    merged = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=_piece_key)
    w = ShardWriter(fs, root, task, shard_size, gid_kind, label_stats, tmp_dir)
    try:
        for h, canon, n, nwords, nbytes, labels, blob_len, f in merged:
            w.add_piece(h, canon, n, nwords, nbytes, blob_len, f, labels)
        return w.close()
    except OSError as e:
        w.abort()
        if isinstance(e, RetryError) or e.errno is None:
            raise
        where = posixpath.join(root_url, w.name) if getattr(w, "name", None) else root_url
        hint = " (disk full?)" if e.errno == errno.ENOSPC else ""
        raise OSError(e.errno, f"writing shard {where}: {e.strerror or e}{hint}") from e
    except BaseException:
        w.abort()
        raise


def plan_tasks(runs: list, shard_size: int) -> list:
    """Cut the bucket space into reduce tasks of similar byte size: [(lo, hi)].

    Depends only on the data (the tar bytes in each bucket), never on the
    worker count or on how the input was cut into slices and runs.
    """
    sizes = [0] * fmt.NUM_BUCKETS
    for r in runs:
        for b, n in r.sizes.items():
            sizes[b] += n
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
    return tasks


def task_inputs(runs: list, lo: int, hi: int) -> list:
    """The (run path, start, stop) byte ranges holding buckets [lo, hi)."""
    return [(r.path, r.offsets[lo], r.offsets[hi]) for r in runs if r.offsets[hi] > r.offsets[lo]]


# ------------------------------------------------------------ orchestration
def _pool(num_workers, initargs):
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


SPILL_LOCK = "lock"  # inside a spill directory: flock-ed by its run for the run's lifetime
SPILL_UNLOCKED_MAX_AGE_S = 24 * 3600  # a spill directory without a lock file: removed after this
_SPILL_NAME = r"torch_grouper-\d+-"


def _fcntl():
    """The ``fcntl`` module, or None where there is none (not POSIX: no flock,
    so stale spill directories are never removed)."""
    try:
        import fcntl
    except ImportError:
        return None
    return fcntl


def make_spill_dir(tmp_dir: str | None):
    """Create this run's spill directory and lock it: ``(path, lock fd)``.

    The run holds an exclusive ``flock`` on ``path/lock`` until
    ``remove_spill_dir`` (or its death: the kernel drops the lock with the
    last process holding it, forked pool workers included).  The lock file is
    locked before it gets its name, so no cleanup ever sees it unlocked while
    the run lives.  Without ``fcntl``, or on a filesystem without ``flock``,
    the fd is None and the directory has no lock file."""
    path = tempfile.mkdtemp(prefix=f"torch_grouper-{os.getpid()}-", dir=tmp_dir)
    fcntl = _fcntl()
    if fcntl is None:
        return path, None
    staged = os.path.join(path, SPILL_LOCK + ".new")
    fd = os.open(staged, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(staged, os.path.join(path, SPILL_LOCK))
    except OSError:
        os.close(fd)
        return path, None
    return path, fd


def remove_spill_dir(path: str, lock_fd) -> None:
    """Remove a run's spill directory, then release its lock."""
    shutil.rmtree(path, ignore_errors=True)
    if lock_fd is not None:
        os.close(lock_fd)


def clean_stale_spills(tmp_dir: str | None) -> None:
    """Remove spill directories left by partitions that died (SIGKILL, power
    loss), only where that is proven: the directory's lock file can be locked,
    so no live process holds it, whatever its PID or PID namespace.  A
    directory without a lock file (an older release's, or one being created)
    is removed only once untouched for SPILL_UNLOCKED_MAX_AGE_S.  Without
    ``fcntl`` nothing is removed."""
    import re
    import stat
    import time

    fcntl = _fcntl()
    if fcntl is None:
        return
    root = tmp_dir or tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if not re.match(_SPILL_NAME, name):
            continue
        path = os.path.join(root, name)
        try:
            fd = os.open(os.path.join(path, SPILL_LOCK), os.O_RDONLY)
        except FileNotFoundError:
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and time.time() - st.st_mtime > SPILL_UNLOCKED_MAX_AGE_S:
                shutil.rmtree(path, ignore_errors=True)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its run lives (or no flock here, which proves nothing)
            os.close(fd)
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


# ------------------------------------------------------------ first pass
def count_slice(slice_no: int, s):
    """First pass over one slice: (examples, {label: count} in first-seen order)."""
    source, keyfn = _W["source"], _W["keyfn"]
    col = keyfn.label_column
    counts: dict = {}
    n = 0
    if keyfn.collect_values:
        values = []
        for ex, _, loc in source.iter_column(s, col):
            try:
                values.append(ex[col])
            except KeyError:
                raise _key_error(source, s, loc, keyfn, ex, KeyError(col)) from None
        return len(values), values
    for ex, _, loc in source.iter_column(s, col):
        if col is not None:
            try:
                label = ex[col]
                counts[label] = counts.get(label, 0) + 1
            except KeyError:
                raise _key_error(source, s, loc, keyfn, ex, KeyError(col)) from None
            except TypeError:
                raise PartitionError(
                    f"{source.where(s, loc)}: label {ex[col]!r} in column {col!r} is not hashable"
                ) from None
        n += 1
    return n, counts


def first_pass(source, keyfn, pool, progress):
    """Count examples (and labels) per slice; fit the partitioner.

    Returns the per-slice offsets ``(first global index, {label: first rank})``
    that make each example's index and rank-in-class known in any worker."""
    from tqdm.auto import tqdm

    if source.stream is not None:
        if iter(source.stream) is source.stream:
            raise PartitionError(
                f"{type(keyfn).__name__} needs a first pass over the data (to count examples"
                f"{' and labels' if keyfn.label_column else ''}), but the source is a one-shot "
                f"iterator; pass a list, a datasets.Dataset or IterableDataset, or files"
            )
        _init(source, keyfn, None, 0)
        per_slice = [count_slice(i, s) for i, s in enumerate(source.chunks())]
    elif pool is not None:
        per_slice = list(_bounded(pool, count_slice, source.slices, len(source.slices)))
    else:
        _init(source, keyfn, None, 0)
        per_slice = [count_slice(i, s) for i, s in enumerate(source.slices)]
    offsets = []
    total = 0
    if keyfn.collect_values:
        values: list = []
        for n, vals in per_slice:
            offsets.append((total, {}))
            total += n
            values.extend(vals)
        keyfn.fit(total, values)
        return offsets
    totals: dict = {}
    for n, counts in per_slice:
        offsets.append((total, dict(totals)))
        total += n
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    keyfn.fit(total, totals)
    if progress:
        tqdm.write(f"partition: first pass: {total:,} examples" +
                   (f", {len(totals):,} labels" if keyfn.label_column else ""))
    return offsets


def run(source, keyfn, root_url, *, num_workers, shard_size, memory_budget, storage_options,
        tmp_dir, progress, before_write=None, stats_column=None):
    """Partition ``source`` into shards under ``root_url``.

    ``before_write`` is called after every example has been read, keyed and
    encoded (so bad input fails before the output is touched) and before the
    first shard is written.  Returns ``(num_examples, gid_kind, results,
    num_dropped)`` where ``results`` holds one ``(index rows, shard infos)``
    per write task, in dataset order, and ``num_dropped`` counts examples a
    partitioner left out.
    """
    from tqdm.auto import tqdm

    budget = max(1 << 20, memory_budget // max(1, num_workers))
    clean_stale_spills(tmp_dir)
    tmpdir, spill_lock = make_spill_dir(tmp_dir)
    pool = None
    try:
        offsets = None
        if isinstance(keyfn, Partitioner):
            if num_workers > 1 and source.stream is None:
                with _pool(num_workers, (replace(source, stream=None), keyfn, tmpdir, budget)) as p:
                    offsets = first_pass(source, keyfn, p, progress)
            else:
                offsets = first_pass(source, keyfn, None, progress)
        items = source.slices if source.stream is None else source.chunks()
        if offsets is not None:
            items = zip(items, offsets)
        if num_workers > 1:
            # workers fork from here, so they hold the fitted partitioner;
            # a stream stays in this process and workers get its chunks
            pool = _pool(num_workers, (replace(source, stream=None), keyfn, tmpdir, budget, stats_column))
            mapped = _bounded(pool, map_slice, items, 2 * num_workers)
        else:
            _init(source, keyfn, tmpdir, budget, stats_column)
            mapped = (map_slice(i, s) for i, s in enumerate(items))
        runs, n, kind, kind_where, dropped = [], 0, None, None, 0
        with tqdm(desc="partition: read", unit="ex", disable=not progress, leave=False) as bar:
            for res in mapped:
                runs.extend(res.runs)
                n += res.examples
                dropped += res.dropped
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
        args = [(t, task_inputs(runs, lo, hi), root_url, storage_options, shard_size, kind, budget,
                 stats_column is not None, tmpdir) for t, (lo, hi) in enumerate(tasks)]
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
        return n, kind, results, dropped
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        remove_spill_dir(tmpdir, spill_lock)
