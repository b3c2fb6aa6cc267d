"""The Ray engine: the steps of ``engines/steps.py`` as Ray tasks, on a
local Ray or on a cluster (``pip install torch-grouper[ray]``).

What runs where:

- the **driver** (the process calling ``partition``) holds the plan: the
  source's slice descriptions, each map task's ``MapResult`` (counts and the
  runs' bucket offsets, no example bytes), the write plan, the index rows
  and the manifest.  A streamed source (an iterable) is cut into chunks
  here and each chunk is put into the object store; at most
  ``2 * num_workers`` chunks are in flight.
- a **fit task** per slice (``steps.count_slice``) when the partitioner is
  fitted on the whole source; the fit itself runs on the driver.
- a **map task** per slice (``steps.map_slice``) spills its sorted runs into
  a spill folder of the worker's own temp dir, then returns them to Ray's
  object store cut by bucket range into ``PARTS`` byte blobs (numpy
  ``uint8`` arrays; part p holds every run's bytes of buckets
  ``[p * NUM_BUCKETS / PARTS, (p + 1) * NUM_BUCKETS / PARTS)``) and removes
  the files.  The runs thus travel through the object store (which spills
  to the nodes' disks when full), never through the driver, and a part lost
  with its node is rebuilt by Ray from the task's lineage.
- a **write task** per ``steps.WriteTask`` fetches, one part at a time, only
  the parts that overlap its bucket range (so the shuffle moves each byte
  about once, not once per write task), copies its byte ranges into a local
  file of its own, and runs ``steps.write_task`` on it, which writes the
  shards to the output (any fsspec URL every node can reach).

Same input, same ``task_min_bytes`` and ``tasks_per_dataset``: the same
bytes as ``LocalEngine``, for any cluster shape.  Paths that only exist on
the driver are refused on a cluster of more than one node: local source
files, a ``tmp_dir``, a ``datasets.Dataset`` backed by Arrow cache files;
``memory://`` sources and outputs are refused always (they live in one
process).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .. import format as fmt
from .. import storage
from ..sources import FileSlice, HFRowsSlice, Slice
from .local import LOCAL_SLICE_BYTES, clean_stale_spills, make_spill_dir, remove_spill_dir
from .steps import (
    TASK_MIN_BYTES,
    check_settings,
    TASKS_PER_DATASET,
    Job,
    MapContext,
    MapTotals,
    Run,
    RunResult,
    check_fittable,
    count_slice,
    map_slice,
    needs_fit,
    plan_write,
    write_task,
)

_BLOB = "ray-map-"  # a run's path in the driver's plan: "ray-map-N-P", part P of map task N
#: Each map task returns its runs cut into ``parts`` objects by bucket range
#: (default PARTS), so a write task fetches only the parts overlapping its range.
PARTS = 64


def part_bounds(parts: int) -> list:
    """The first bucket of each of ``parts`` equal bucket ranges, and the end."""
    return [p * fmt.NUM_BUCKETS // parts for p in range(parts + 1)]


class PartOffsets:
    """A run's bucket offsets inside one part: buckets ``lo .. lo+len-1``
    (and the end); a bucket below the part reads as its start, above as its
    end, so a bucket range outside the part is empty."""

    __slots__ = ("lo", "offsets")

    def __init__(self, lo: int, offsets: list):
        self.lo, self.offsets = lo, offsets

    def __getitem__(self, b: int) -> int:
        i = b - self.lo
        return self.offsets[0] if i < 0 else self.offsets[min(i, len(self.offsets) - 1)]

    def __getstate__(self):
        return self.lo, self.offsets

    def __setstate__(self, state):
        self.lo, self.offsets = state


def _ray():
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("engine='ray' needs Ray: pip install 'torch-grouper[ray]'") from None
    return ray


class RayEngine:
    """Partition on a Ray cluster.

    ``address``: the cluster to connect to (``"auto"``, ``"ray://host:10001"``,
    ...); None uses ``RAY_ADDRESS`` when set, else Ray's default (a cluster
    started with ``ray start`` on this machine, else a new local Ray).  With
    ``num_cpus`` (and no address) a new local Ray with that many CPUs is
    started, whatever else runs on the machine.  When Ray is already initialised in
    this process, that connection is used as it is.  ``num_workers`` (how
    finely the source is cut; default: the cluster's CPUs) and
    ``slice_bytes`` (default ``LOCAL_SLICE_BYTES``, as ``LocalEngine``) /
    ``chunk_examples`` tune the input cut, never the
    output; ``task_min_bytes`` and ``tasks_per_dataset`` set the write plan
    as in ``LocalEngine`` (same values, same bytes).  ``max_retries``: how
    often Ray reruns a task whose worker died (the steps are deterministic,
    so a rerun writes the same bytes).  ``shared_disk=True`` says that this
    machine's paths (source files, the output folder, ``tmp_dir``, a
    ``datasets`` Arrow cache) are mounted at the same path on every node
    (NFS, Lustre, or nodes on one machine); without it such paths are
    refused on a cluster of more than one node.  ``parts``: how many objects
    (bucket ranges) each map task's output is cut into; a write task fetches
    the parts that overlap its range, so about as many parts as write tasks
    (up to ``NUM_BUCKETS``) keeps the shuffle near one copy of the data."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, num_workers: int | None = None,
                 slice_bytes: int | None = None, chunk_examples: int | None = None,
                 task_min_bytes: int = TASK_MIN_BYTES, tasks_per_dataset: int = TASKS_PER_DATASET,
                 max_retries: int = 3, shared_disk: bool = False, parts: int = PARTS,
                 init_kwargs: dict | None = None):
        check_settings(num_cpus=num_cpus, num_workers=num_workers, slice_bytes=slice_bytes, parts=parts,
                       chunk_examples=chunk_examples, task_min_bytes=task_min_bytes,
                       tasks_per_dataset=tasks_per_dataset)
        self.address = address
        self.num_cpus = num_cpus
        self._num_workers = num_workers
        self.slice_bytes = LOCAL_SLICE_BYTES if slice_bytes is None else slice_bytes  # as LocalEngine: fewer tasks
        self.chunk_examples = chunk_examples
        self.task_min_bytes = task_min_bytes
        self.tasks_per_dataset = tasks_per_dataset
        self.max_retries = max_retries
        self.shared_disk = shared_disk
        if parts > fmt.NUM_BUCKETS:
            raise ValueError(f"parts must be <= {fmt.NUM_BUCKETS} (the number of hash buckets), got {parts}")
        self.parts = parts
        self.init_kwargs = dict(init_kwargs or {})

    def __repr__(self) -> str:
        return (f"RayEngine(address={self.address!r}, num_cpus={self.num_cpus}, num_workers={self._num_workers}, "
                f"task_min_bytes={self.task_min_bytes}, tasks_per_dataset={self.tasks_per_dataset}, "
                f"shared_disk={self.shared_disk}, parts={self.parts})")

    # ------------------------------------------------------------ the cluster
    def connect(self):
        """Connect to (or start) Ray unless this process is connected already; returns the ``ray`` module."""
        ray = _ray()
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or None
            kw = dict(self.init_kwargs)
            if address is None and self.num_cpus is not None:
                address, kw["num_cpus"] = "local", self.num_cpus
            ray.init(address=address, **kw)
        return ray

    @property
    def num_workers(self) -> int:
        if self._num_workers is not None:
            return self._num_workers
        ray = self.connect()
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    # ------------------------------------------------------------ the run
    def run(self, job: Job) -> RunResult:
        """Partition ``job.source`` into shards under ``job.output_url`` with Ray tasks."""
        from ..progress import bar

        ray = self.connect()
        source, keyfn = job.source, job.keyfn
        source = _ray_dataset_slices(ray, source)
        workers = self.num_workers
        _check_paths(ray, job, source, self.shared_disk)
        budget = max(1 << 20, job.memory_budget // max(1, workers))
        opts = dict(max_retries=self.max_retries, retry_exceptions=False)
        map_remote = ray.remote(num_returns=1 + self.parts)(_map_task).options(**opts)
        ctx = MapContext(replace(source, stream=None), keyfn, "", budget, job.label_column)
        starts = None
        total = source.num_examples_hint()  # the read bar's total, when known without reading
        if needs_fit(keyfn):
            starts, total = self._fit(ray, source, keyfn, job.progress, opts)
        ctx_ref = ray.put(ctx)  # after the fit: the tasks get the fitted partitioner
        if source.stream is None:
            items: Any = range(len(source.slices))
        else:
            items = source.chunks(max_examples=self.chunk_examples)
        args = zip(items, starts) if starts is not None else ((it, None) for it in items)
        tmp = job.tmp_dir
        totals = MapTotals()
        blobs: list = []
        try:
            with bar("partition: read", total=total, unit="ex", enabled=job.progress) as read_bar:
                pending: list = []

                def take():
                    meta_ref, *part_refs = pending.pop(0)
                    res = _get(ray, meta_ref)
                    totals.add(res)
                    blobs.append(part_refs)
                    read_bar.update(res.examples + res.dropped)

                for n, (item, start) in enumerate(args):
                    if not isinstance(item, int):
                        item = ray.put(item)  # a chunk: into the object store, not into the task spec
                    pending.append(map_remote.remote(ctx_ref, item, start, n, tmp, self.parts))
                    if source.stream is not None and len(pending) >= 2 * workers:
                        take()
                while pending:
                    take()
            id_type = totals.id_type or "str"
            tasks = plan_write(job, totals.runs, id_type, budget, None, task_min_bytes=self.task_min_bytes,
                               tasks_per_dataset=self.tasks_per_dataset)
            if job.before_write is not None:
                job.before_write()
            write_remote = ray.remote(_write_task).options(**opts)
            refs = []
            for t in tasks:
                needed = {}
                for p, _, _ in t.inputs:
                    n, part = map(int, p[len(_BLOB):].split("-"))
                    needed[p] = blobs[n][part]
                refs.append(write_remote.remote(t, needed, tmp))
            written = []
            with bar("partition: write", total=len(tasks), unit="task", enabled=job.progress) as write_bar:
                for r in refs:
                    written.append(_get(ray, r))
                    write_bar.update(1)
            return RunResult(totals.examples, id_type, written, totals.dropped)
        finally:
            blobs.clear()  # the runs leave the object store with their last reference

    def _fit(self, ray, source, keyfn, progress, opts) -> tuple[list, int]:
        from ..partitioners import fit_partitioner
        from ..progress import note

        if source.stream is not None:  # the chunks are cut here anyway
            check_fittable(source, keyfn)
            per_slice = [count_slice(keyfn, s) for s in source.chunks(max_examples=self.chunk_examples)]
        else:
            src_ref = ray.put(replace(source, stream=None))
            count_remote = ray.remote(_count_task).options(**opts)
            per_slice = [_get(ray, r) for r in
                         [count_remote.remote(keyfn, src_ref, i) for i in range(len(source.slices))]]
        fitted = fit_partitioner(keyfn, per_slice)
        if not keyfn.collect_values:
            note(f"partition: first pass: {fitted.num_examples:,} examples" +
                 (f", {fitted.num_labels:,} labels" if keyfn.label_column else ""), enabled=progress)
        return fitted.starts, fitted.num_examples


def _get(ray, ref):
    """``ray.get``, raising a task's own exception (a ``PartitionError``
    naming the example) rather than Ray's wrapper."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


# ------------------------------------------------------------ checks
def _nodes(ray) -> int:
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def _check_paths(ray, job: Job, source, shared_disk: bool = False) -> None:
    """Refuse what a worker cannot reach: in-process stores always, paths of
    this machine on a cluster of more than one node (unless every node
    mounts them: ``shared_disk``)."""
    out_fs = storage.location(job.output_url, job.storage_options).fs
    if storage.is_memory(out_fs):
        raise ValueError(f"output {job.output_url}: a memory:// store lives in one process; Ray tasks write "
                         f"the shards in their own processes: write to a disk, S3, GCS, ...")
    files = [s for s in source.slices if isinstance(s, FileSlice)]
    for s in files[:1]:
        if storage.is_memory(storage.location(s.url, s.storage_options).fs):
            raise ValueError(f"source {s.url}: a memory:// store lives in one process; Ray tasks read the "
                             f"files in their own processes")
    if shared_disk or _nodes(ray) <= 1:
        return
    many = "on a Ray cluster of more than one node"
    shared = " (or, if every node mounts it at this path, RayEngine(shared_disk=True))"
    if job.tmp_dir is not None:
        raise ValueError(f"tmp_dir={job.tmp_dir!r} is a folder of this machine; {many} each task spills to "
                         f"its node's own temp dir (TMPDIR): leave tmp_dir=None{shared}")
    if storage.is_local(out_fs):
        raise ValueError(f"output {job.output_url} is on this machine's disk; {many} the shards are written by "
                         f"the workers: write to a store every node reaches (s3://, gs://, ...){shared}")
    for s in files:
        if storage.is_local(storage.location(s.url, s.storage_options).fs):
            raise ValueError(f"source file {s.url} is on this machine's disk; {many} the workers read the "
                             f"files themselves: put them in a store every node reaches (s3://, gs://, ...){shared}")
    hf = next((s for s in source.slices if isinstance(s, HFRowsSlice)), None)
    if hf is not None and getattr(hf.dataset, "cache_files", None):
        raise ValueError(f"the datasets.Dataset is backed by Arrow files of this machine "
                         f"({hf.dataset.cache_files[0].get('filename')}); {many} the workers cannot open them: "
                         f"load it in memory (keep_in_memory=True) or pass its files from a shared store{shared}")


# ------------------------------------------------------------ tasks
_cleaned: set = set()  # temp dirs this worker process has cleaned of dead runs' spill folders


def _spill_dir(tmp_dir):
    key = tmp_dir or tempfile.gettempdir()
    if key not in _cleaned:
        clean_stale_spills(tmp_dir)
        _cleaned.add(key)
    return make_spill_dir(tmp_dir)


def _count_task(keyfn, source, i):
    return count_slice(keyfn, source.slices[i])


def _map_task(ctx: MapContext, item, start, n: int, tmp_dir, parts: int = PARTS):
    """Map one slice (a slice number of ``ctx.source`` or a chunk) in this
    worker's temp dir; returns the ``MapResult`` (its runs name the parts)
    and ``parts`` blobs: part p holds every run's bytes of bucket range p."""
    s = ctx.source.slices[item] if isinstance(item, int) else item
    spill, lock = _spill_dir(tmp_dir)
    try:
        res = map_slice(replace(ctx, spill_dir=spill), s, start)
        bounds = part_bounds(parts)
        blobs = [np.empty(sum(r.offsets[bounds[p + 1]] - r.offsets[bounds[p]] for r in res.runs), dtype=np.uint8)
                 for p in range(parts)]
        filled = [0] * parts
        runs = []
        for r in res.runs:  # run-major, parts in bucket order: the write merge sees the runs in input order
            with open(r.path, "rb") as f:
                for p in range(parts):
                    lo, hi = bounds[p], bounds[p + 1]
                    a, b = r.offsets[lo], r.offsets[hi]
                    if b == a:
                        continue
                    base = filled[p]
                    f.seek(a)
                    got = f.readinto(memoryview(blobs[p])[base:base + b - a])
                    if got != b - a:
                        raise OSError(f"spill file {r.path}: read {got} of {b - a} bytes at {a}")
                    offsets = PartOffsets(lo, [base + o - a for o in r.offsets[lo:hi + 1]])
                    runs.append(Run(f"{_BLOB}{n}-{p}", offsets, {k: v for k, v in r.sizes.items() if lo <= k < hi}))
                    filled[p] += b - a
            os.unlink(r.path)
        return (replace(res, runs=runs), *blobs)
    finally:
        remove_spill_dir(spill, lock)


def _write_task(task, blobs: dict, tmp_dir):
    """Copy this task's byte ranges out of the map parts (one part held at a
    time) into one local file, then ``steps.write_task`` on it."""
    import ray

    spill, lock = _spill_dir(tmp_dir)
    try:
        path = os.path.join(spill, "task.run")
        inputs = []
        pos = 0
        with open(path, "wb") as f:
            held, blob = None, None
            for p, a, b in task.inputs:
                if p != held:
                    blob = None
                    blob, held = ray.get(blobs[p]), p
                f.write(memoryview(blob)[a:b])
                inputs.append((path, pos, pos + b - a))
                pos += b - a
            blob = None
        return write_task(replace(task, inputs=inputs, tmp_dir=spill))
    finally:
        remove_spill_dir(spill, lock)


# ------------------------------------------------------------ ray.data
@dataclass
class RayBlockSlice(Slice):
    """The rows of one block of a ``ray.data.Dataset`` (an object-store
    reference to an Arrow table); ``start`` is its first row's index."""

    block: Any = field(repr=False)
    start: int = 0

    def iter(self):
        import ray

        table = ray.get(self.block)
        start = self.start
        for a in range(0, table.num_rows, 2_000):
            for i, ex in enumerate(table.slice(a, 2_000).to_pylist()):
                yield ex, None, start + a + i

    def where(self, loc) -> str:
        return f"example {loc} (row {loc} of the ray Dataset)"


def _num_rows(table) -> int:
    return table.num_rows


def _ray_dataset_slices(ray, source):
    """A ``ray.data.Dataset`` source as one slice per block, in row order
    (the dataset is materialised with ``preserve_order``); other sources as
    they are."""
    stream = source.stream
    try:
        from ray.data import Dataset
    except ImportError:  # pragma: no cover - ray without ray[data]
        return source
    if not isinstance(stream, Dataset):
        return source
    ctx = stream.context
    keep = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        refs = stream.to_arrow_refs()
    finally:
        ctx.execution_options.preserve_order = keep
    rows = ray.get([ray.remote(_num_rows).remote(r) for r in refs])
    slices, start = [], 0
    for r, n in zip(refs, rows):
        if n:
            slices.append(RayBlockSlice(r, start))
        start += n
    return replace(source, stream=None, slices=slices, kind="ray")


__all__ = ["RayEngine", "RayBlockSlice"]
