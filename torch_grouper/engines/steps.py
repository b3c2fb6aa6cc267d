"""The engine-neutral steps of a partition, and the engine interface.

A partition is four steps, each a plain function of its arguments (no
process globals), so any engine runs them where it likes: in this process,
in a ``multiprocess`` pool (``engines/local.py``), or as remote tasks.

1. **Fit** (partitioners fitted on the whole source only): ``count_slice``
   once per slice, then ``partitioners.fit_partitioner`` over the counts in
   slice order gives each slice's ``SliceStart``.
2. **Map**: ``map_slice(ctx, slice, start)`` keys and encodes each example of
   one slice into its final tar members (``codec.encode_sample``; the sample
   key, ``format.sample_key_at``, is the group hash + the example's input
   position, so it is known here), buffers them up to ``ctx.budget``, sorts
   the buffer by (group hash, group id, position) and spills it as a *run*
   file in ``ctx.spill_dir``: one *piece* per group (header + the group's tar
   bytes, in input order).  Each run records where each of the NUM_BUCKETS
   hash buckets starts.  JSON Lines slices keyed by a column or a URL domain
   take ``engines/columnar.py`` (the same runs, a block of lines at a time).  ``MapTotals`` adds the slices' results up, in slice
   order, and checks that all group ids have one type.
3. **Plan**: ``plan_write(...)`` cuts the bucket space into ``WriteTask``s of
   similar byte size, from the data alone (``plan_tasks``, ``task_inputs``).
4. **Write**: ``write_task(task)``: a k-way merge of the pieces of the task's
   bucket range from every run (``heapq.merge``: one piece header in memory
   per run) into ``ShardWriter``, which copies each piece's bytes in bounded
   chunks.  Runs are listed in input order and the merge is stable, so the
   pieces of one group come out in input order with one comparison per
   piece, not per example.

Memory is bounded by the budget whatever the input size and whatever the
size of the largest group; the output is byte-identical for any number of
workers and any engine because slices, buckets, the sort order and the task
plan depend only on the data.

An engine (``Engine``) takes a ``Job`` and returns a ``RunResult``.
"""
from __future__ import annotations

import errno
import heapq
import json
import os
import posixpath
import struct
import tempfile
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Callable, Iterable, Protocol, runtime_checkable

from .. import format as fmt
from .. import storage
from ..codec import EncodeError, encode_sample
from ..partitioners import Partitioner, SliceStart
from ..retry import RetryError
from ..sources import Slice, Source
from ..writer import ShardWriter
from . import columnar

# piece header: hash, canon_len, num_examples, num_words, num_bytes, blob_len, labels_len
_PIECE = struct.Struct("<QIIQQQI")  # ... + length of the piece's label counts (JSON)
_ENTRY_OVERHEAD = 160  # Python object overhead of one buffered example
TASK_MIN_BYTES = 16 << 20  # default smallest write task (unless the shard size is smaller)
TASKS_PER_DATASET = 64  # default number of write tasks a large dataset is cut into
_SEEN_MAX = 200_000  # group ids whose key parts a process keeps (MapContext.seen)


class PartitionError(ValueError):
    """Bad input found while partitioning; the message names the example."""


def check_settings(**settings) -> None:
    """An engine's integer settings: each given one (not None) must be >= 1."""
    for name, v in settings.items():
        if v is not None and v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")


# ------------------------------------------------------------ the interface
@dataclass
class Job:
    """What to partition and where: everything an engine needs."""

    source: Source
    keyfn: Callable  # example -> group id, or a Partitioner
    output_url: str  # the folder write tasks put shards in
    shard_bytes: int  # target bytes per shard
    memory_budget: int  # bytes of buffered examples over all workers
    storage_options: dict | None = None
    tmp_dir: str | None = None  # local folder for spill files (None: the system temp dir)
    progress: bool = False
    label_column: str | None = None  # count this column's values per group
    #: called once every example was read, keyed and encoded, before the first shard is written
    before_write: Callable[[], None] | None = None


@dataclass
class RunResult:
    """What an engine returns: the written tasks and the totals the manifest records."""

    num_examples: int
    id_type: str  # the group ids' type: "str", "int" or "bytes"
    written: list  # one (index rows, shard infos) per write task, in dataset order
    num_dropped: int = 0  # examples a partitioner left out


@runtime_checkable
class Engine(Protocol):
    """Runs a ``Job``'s steps.  ``num_workers`` and ``slice_bytes`` tell
    ``partition()`` how finely to cut the source into slices (None: the
    default); they never change the output."""

    num_workers: int
    slice_bytes: int | None

    def run(self, job: Job) -> RunResult: ...


# --------------------------------------------------------------------- fit
def needs_fit(keyfn) -> bool:
    """Whether ``keyfn`` is a partitioner to fit on the whole source first."""
    return isinstance(keyfn, Partitioner)


def work_slices(source: Source) -> Iterable[Slice]:
    """The source's slices, in input order; a streamed source is cut into
    chunks as they are asked for (in the calling process)."""
    return source.slices if source.stream is None else source.chunks()


def check_fittable(source: Source, partitioner) -> None:
    """A partitioner's first pass reads the source twice: refuse a one-shot iterator."""
    if source.stream is not None and iter(source.stream) is source.stream:
        raise PartitionError(
            f"{type(partitioner).__name__} needs a first pass over the data (to count examples"
            f"{' and labels' if partitioner.label_column else ''}), but the source is a one-shot "
            f"iterator; pass a list, a datasets.Dataset or IterableDataset, or files"
        )


def count_slice(partitioner, s: Slice):
    """First pass over one slice: ``(examples, {label: count} in first-seen
    order)``, or ``(examples, [label values])`` for a partitioner that
    ``collect_values`` (input of ``partitioners.fit_partitioner``)."""
    col = partitioner.label_column
    counts: dict = {}
    n = 0
    if partitioner.collect_values:
        values = []
        for ex, _, loc in s.iter_column(col):
            try:
                values.append(ex[col])
            except KeyError:
                raise _key_error(s, loc, partitioner, ex, KeyError(col)) from None
        return len(values), values
    for ex, _, loc in s.iter_column(col):
        if col is not None:
            try:
                label = ex[col]
                counts[label] = counts.get(label, 0) + 1
            except KeyError:
                raise _key_error(s, loc, partitioner, ex, KeyError(col)) from None
            except TypeError:
                raise PartitionError(
                    f"{s.where(loc)}: label {ex[col]!r} in column {col!r} is not hashable"
                ) from None
        n += 1
    return n, counts


# --------------------------------------------------------------------- map
@dataclass
class Run:
    path: str
    offsets: list  # NUM_BUCKETS + 1 byte offsets of the buckets in the file
    sizes: dict  # bucket -> bytes of tar members (not headers: independent of how runs were cut)


@dataclass
class MapResult:
    runs: list
    examples: int
    id_type: str | None
    id_type_where: str | None  # where the first key of that type was seen
    dropped: int = 0  # examples a partitioner left out


@dataclass
class MapContext:
    """What ``map_slice`` needs besides the slice.  ``seen`` is a cache of
    this process's group ids; it is not pickled (a copy of the context sent
    elsewhere starts with an empty one)."""

    source: Source  # for its image fields; the slice is passed on its own
    keyfn: Callable  # example -> group id, or a fitted Partitioner
    spill_dir: str
    budget: int  # bytes of buffered examples before a spill
    label_column: str | None = None
    #: (type, group id) -> (canonical bytes, hash, sample key prefix, id type), over all slices
    seen: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["seen"] = {}
        return state


def _key_error(s: Slice, loc, keyfn, ex, e) -> PartitionError:
    where = s.where(loc)
    col = getattr(keyfn, "column", None) or getattr(keyfn, "label_column", None)
    if col is not None and isinstance(e, KeyError):
        cols = ", ".join(map(str, list(ex)[:20])) if isinstance(ex, dict) else type(ex).__name__
        return PartitionError(f"{where}: has no key column {col!r} (columns: {cols})")
    return PartitionError(f"{where}: key function raised {type(e).__name__}: {e}")


def map_slice(ctx: MapContext, s: Slice, start: SliceStart | None = None) -> MapResult:
    """Key, encode and spill one slice.  ``start`` is the slice's
    ``SliceStart`` when ``ctx.keyfn`` is a fitted partitioner.  A JSON Lines
    slice keyed by a column or a URL domain takes the columnar path
    (``engines/columnar.py``: the same bytes, a block of lines at a time)."""
    if columnar.eligible(ctx, s, start):
        runs, n, id_type, id_type_where = columnar.map_json(
            ctx, s, lambda c, sub, t, w: _map_examples(c, sub, None, t, w))
        return MapResult(runs, n, id_type, id_type_where)
    return _map_examples(ctx, s, start)


def _map_examples(ctx: MapContext, s: Slice, start: SliceStart | None = None, id_type: str | None = None,
                  id_type_where: str | None = None) -> MapResult:
    """``map_slice`` one example at a time (any source, key and partitioner);
    ``id_type`` / ``id_type_where``: the key type seen before this slice part."""
    keyfn, spill_dir, budget = ctx.keyfn, ctx.spill_dir, ctx.budget
    planned = isinstance(keyfn, Partitioner)
    label_col_stats = ctx.label_column
    label_keys: dict = {}  # label -> its key in the label-count JSON
    dropped = 0
    if planned:
        index0, ranks0 = start
        label_col = None if keyfn.collect_values else keyfn.label_column  # ranks only per label
        running: dict = {}
    image_fields = ctx.source.image_fields
    buf: list = []
    size = 0
    runs: list = []
    n = 0
    blake = fmt.group_hash
    canon_of = fmt.canonical_group_id
    key_prefix = fmt.sample_key_prefix
    key_at = fmt.sample_key_at
    encode = encode_sample
    where = s.where
    fno = s.file_no
    seen: dict = ctx.seen
    for ordinal, (ex, raw, loc) in enumerate(s.iter()):
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
            raise _key_error(s, loc, keyfn, ex, e) from None
        ck = (gid.__class__, gid)
        try:
            canon, h, prefix, t = seen[ck]
        except (KeyError, TypeError):
            t = fmt.group_id_type(gid)
            if t is None:
                raise PartitionError(
                    f"{where(loc)}: group key {gid!r} of type {type(gid).__name__} is not "
                    f"allowed; a key must be a str, int or bytes"
                ) from None
            try:
                canon = canon_of(gid, t)
            except UnicodeEncodeError:
                raise PartitionError(
                    f"{where(loc)}: group key {gid!r} is not valid Unicode (a lone "
                    f"surrogate); group ids are stored as UTF-8"
                ) from None
            except OverflowError:
                raise PartitionError(
                    f"{where(loc)}: group key {gid!r} is out of range; int group ids are "
                    f"stored as int64 (-2**63 <= key < 2**63)"
                ) from None
            h = blake(canon)
            prefix = key_prefix(h)
            if len(seen) > _SEEN_MAX:
                seen.clear()
            seen[ck] = (canon, h, prefix, t)
        if t is not id_type:
            if id_type is not None:
                raise PartitionError(
                    f"{where(loc)}: group key {gid!r} is {t} but {id_type_where} gave a "
                    f"{id_type} key; all keys must have one type"
                )
            id_type, id_type_where = t, where(loc)
        try:
            tar, nbytes, nwords = encode(key_at(prefix, fno, loc), ex, image_fields, raw)
        except EncodeError as e:
            raise PartitionError(f"{where(loc)} (group {gid!r}): {e}") from None
        lk = None
        if label_col_stats is not None:
            try:
                lab = ex[label_col_stats]
                lk = label_keys.get(lab)
            except (KeyError, TypeError) as e:
                raise _key_error(s, loc, keyfn, ex, KeyError(label_col_stats) if isinstance(e, KeyError)
                                 else TypeError(f"label {ex.get(label_col_stats)!r} is not hashable")) from None
            if lk is None:  # label counts are stored as JSON objects: str labels as they are, others as JSON
                if type(lab) is not str and hasattr(lab, "item") and type(lab).__module__ == "numpy":
                    lab = lab.item()  # a numpy scalar
                if lab is not None and not isinstance(lab, (str, int, float)):  # bool is an int
                    raise PartitionError(
                        f"{where(loc)}: label {lab!r} in column {label_col_stats!r} is a "
                        f"{type(lab).__name__}; labels must be str, int, float, bool or None (label counts "
                        f"are stored as JSON)")
                lk = label_keys[ex[label_col_stats]] = lab if isinstance(lab, str) else json.dumps(lab)
        buf.append((h, canon, ordinal, nwords, nbytes, tar, lk))
        size += len(tar) + len(canon) + _ENTRY_OVERHEAD
        n += 1
        if size >= budget:
            runs.append(_spill(buf, spill_dir))
            buf = []
            size = 0
    if buf:
        runs.append(_spill(buf, spill_dir))
    return MapResult(runs, n, id_type, id_type_where, dropped)


class MapTotals:
    """The map results of all slices added up, in slice order: the runs (in
    input order, which the write merge relies on), the counts, and the one
    type all group ids must share."""

    def __init__(self):
        self.runs: list = []
        self.examples = 0
        self.dropped = 0
        self.id_type: str | None = None
        self._id_type_where: str | None = None

    def add(self, res: MapResult) -> None:
        self.runs.extend(res.runs)
        self.examples += res.examples
        self.dropped += res.dropped
        if res.id_type is None:
            return
        if self.id_type is None:
            self.id_type, self._id_type_where = res.id_type, res.id_type_where
        elif res.id_type != self.id_type:
            raise PartitionError(
                f"{res.id_type_where}: group key is {res.id_type} but {self._id_type_where} gave a "
                f"{self.id_type} key; all keys must have one type"
            )


def _spill(buf: list, spill_dir: str) -> Run:
    """Sort the buffer and write it as one run of per-group pieces.  A failed
    write (a full disk) raises an OSError naming the spill file."""
    buf.sort(key=itemgetter(0, 1, 2))
    return _spill_file(spill_dir, lambda f: _write_run(buf, f))


def _spill_file(spill_dir: str, write) -> Run:
    """A new run file in ``spill_dir`` written by ``write(file)``, which
    returns the run's ``(bucket offsets, bucket sizes)``."""
    path = None
    try:
        fd, path = tempfile.mkstemp(suffix=".run", dir=spill_dir)
        with os.fdopen(fd, "wb") as f:
            offsets, sizes = write(f)
        return Run(path, offsets, sizes)
    except OSError as e:
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass
        full = " (disk full?)" if e.errno == errno.ENOSPC else ""
        raise OSError(e.errno, f"cannot write spill file {path or 'in ' + spill_dir}: {e.strerror or e}{full}; "
                               f"spill files go to tmp_dir: pass tmp_dir= a folder with room for the input"
                      ) from e


def _write_run(buf: list, f):
    offsets = [0] * (fmt.NUM_BUCKETS + 1)
    pos = 0
    b = 0
    shift = fmt.BUCKET_SHIFT
    pack = _PIECE.pack
    out: list = []
    pending = 0
    sizes: dict = {}
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
    return offsets, sizes


# -------------------------------------------------------------------- plan
def plan_tasks(runs: list, shard_bytes: int, task_min_bytes: int = TASK_MIN_BYTES,
               tasks_per_dataset: int = TASKS_PER_DATASET) -> list:
    """Cut the bucket space into write tasks of similar byte size: [(lo, hi)].

    Depends only on the data (the tar bytes in each bucket), never on the
    worker count or on how the input was cut into slices and runs.
    """
    sizes = [0] * fmt.NUM_BUCKETS
    for r in runs:
        for b, n in r.sizes.items():
            sizes[b] += n
    total = sum(sizes)
    target = min(shard_bytes, max(task_min_bytes, total // tasks_per_dataset))
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


@dataclass
class WriteTask:
    """One write task: the pieces of a bucket range, merged into shards."""

    number: int  # the task's place in the dataset (shard names start with it)
    inputs: list  # (run path, start, stop) byte ranges, in input order
    output_url: str
    storage_options: dict | None
    shard_bytes: int
    id_type: str
    budget: int  # bytes of read buffers
    label_stats: bool = False
    tmp_dir: str | None = None  # local staging for remote shards


def plan_write(job: Job, runs: list, id_type: str, budget: int, tmp_dir: str | None, *,
               task_min_bytes: int = TASK_MIN_BYTES, tasks_per_dataset: int = TASKS_PER_DATASET) -> list:
    """The job's ``WriteTask``s, in dataset order, from the runs alone."""
    return [WriteTask(t, task_inputs(runs, lo, hi), job.output_url, job.storage_options, job.shard_bytes, id_type,
                      budget, job.label_column is not None, tmp_dir)
            for t, (lo, hi) in enumerate(plan_tasks(runs, job.shard_bytes, task_min_bytes, tasks_per_dataset))]


# ------------------------------------------------------------------- write
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


def write_task(task: WriteTask):
    """Write one task's shards; returns ``(index rows, shard infos)``."""
    fs, root, _ = storage.location(task.output_url, task.storage_options)
    ranges = task.inputs
    bufsize = max(64 << 10, min(1 << 20, task.budget // max(1, 2 * len(ranges))))
    streams = [_read_pieces(p, a, b, bufsize) for p, a, b in ranges if b > a]
    merged = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=_piece_key)
    w = ShardWriter(fs, root, task.number, task.shard_bytes, task.id_type, task.label_stats, task.tmp_dir)
    try:
        for h, canon, n, nwords, nbytes, labels, blob_len, f in merged:
            w.add_piece(h, canon, n, nwords, nbytes, blob_len, f, labels)
        return w.close()
    except OSError as e:
        w.abort()
        if isinstance(e, RetryError) or e.errno is None:
            raise
        where = posixpath.join(task.output_url, w.name) if getattr(w, "name", None) else task.output_url
        hint = " (disk full?)" if e.errno == errno.ENOSPC else ""
        raise OSError(e.errno, f"writing shard {where}: {e.strerror or e}{hint}") from e
    except BaseException:
        w.abort()
        raise


__all__ = [
    "Engine", "Job", "RunResult", "PartitionError", "MapContext", "MapResult", "MapTotals", "Run", "WriteTask",
    "needs_fit", "work_slices", "check_fittable", "count_slice", "map_slice", "plan_tasks", "task_inputs",
    "plan_write", "write_task", "TASK_MIN_BYTES", "TASKS_PER_DATASET",
]
