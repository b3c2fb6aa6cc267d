"""The single-machine engine: the steps of ``engines/steps.py`` in a
``multiprocess`` pool.

``LocalEngine.run`` only orchestrates: it makes (and removes) the spill
directory, fits a partitioner with one first-pass task per slice, maps the
slices with at most ``2 * num_workers`` in flight (a streamed source is cut
into chunks as the pool takes them), plans the write tasks from the spilled
runs and writes them in the pool, with progress bars.  Every worker process
holds one ``MapContext`` (given to the pool's initializer; forked workers
share the parent's copy), so a task carries only its slice number or chunk.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import replace

import multiprocess as mp

from .. import storage
from .steps import (  # noqa: F401 - PartitionError, Run, plan_tasks, task_inputs: re-exported names
    TASK_MIN_BYTES,
    check_settings,
    TASKS_PER_DATASET,
    Job,
    MapContext,
    MapTotals,
    PartitionError,
    Run,
    RunResult,
    check_fittable,
    count_slice,
    map_slice,
    needs_fit,
    plan_tasks,
    plan_write,
    task_inputs,
    write_task,
)


LOCAL_SLICE_BYTES = 32 << 20  # default bytes per file slice (a slice's examples are held in memory up to the budget)


class LocalEngine:
    """Partition on this machine with ``num_workers`` processes (default: the
    CPU count).  ``slice_bytes`` (bytes per file slice, default
    ``LOCAL_SLICE_BYTES``: a slice is spilled as one sorted run, and fewer,
    larger runs make the write merge cheaper) and ``chunk_examples`` (examples per chunk of a
    streamed source, default ``sources.CHUNK_EXAMPLES``) tune how the input
    is cut, never the output.  ``task_min_bytes`` and ``tasks_per_dataset``
    set the write plan (tasks of about ``total / tasks_per_dataset`` bytes, at
    least ``task_min_bytes`` unless a shard is smaller): they decide which
    shard files hold which groups, so the same values give the same bytes
    (for any number of workers, in any engine that uses them)."""

    def __init__(self, num_workers: int | None = None, *, slice_bytes: int | None = None,
                 chunk_examples: int | None = None, task_min_bytes: int = TASK_MIN_BYTES,
                 tasks_per_dataset: int = TASKS_PER_DATASET):
        if num_workers is None:
            num_workers = os.cpu_count() or 1
        check_settings(num_workers=num_workers, slice_bytes=slice_bytes, chunk_examples=chunk_examples,
                       task_min_bytes=task_min_bytes, tasks_per_dataset=tasks_per_dataset)
        self.num_workers = num_workers
        self.slice_bytes = LOCAL_SLICE_BYTES if slice_bytes is None else slice_bytes
        self.chunk_examples = chunk_examples
        self.task_min_bytes = task_min_bytes
        self.tasks_per_dataset = tasks_per_dataset

    def __repr__(self) -> str:
        return (f"LocalEngine(num_workers={self.num_workers}, slice_bytes={self.slice_bytes}, "
                f"chunk_examples={self.chunk_examples}, task_min_bytes={self.task_min_bytes}, "
                f"tasks_per_dataset={self.tasks_per_dataset})")

    def run(self, job: Job) -> RunResult:
        """Partition ``job.source`` into shards under ``job.output_url``."""
        from ..progress import bar

        source, keyfn = job.source, job.keyfn
        workers = min(self.num_workers, len(source.slices)) if source.slices else self.num_workers
        budget = max(1 << 20, job.memory_budget // max(1, workers))
        clean_stale_spills(job.tmp_dir)
        spill_dir, spill_lock = make_spill_dir(job.tmp_dir)
        # workers fork with it: a stream stays in this process and workers get its chunks
        ctx = MapContext(replace(source, stream=None), keyfn, spill_dir, budget, job.label_column)
        pool = None
        try:
            starts = None
            total = source.num_examples_hint()  # the read bar's total, when known without reading
            if needs_fit(keyfn):
                starts, total = self._fit(source, keyfn, ctx, workers, job.progress)
            if source.stream is None:  # a task names its slice; the workers have the source
                items = range(len(source.slices))
            else:
                items = source.chunks(max_examples=self.chunk_examples)
            args = zip(items, starts) if starts is not None else ((it, None) for it in items)
            if workers > 1:
                # workers fork from here, so they hold the fitted partitioner
                pool = _pool(workers, ctx)
                mapped = _bounded(pool, _map, args, 2 * workers)
            else:
                mapped = (map_slice(ctx, _slice(ctx, it), start) for it, start in args)
            totals = MapTotals()
            n_slices = None if total is not None or source.stream is not None else len(source.slices)
            with bar("partition: read", total=total, unit="ex", enabled=job.progress) as read_bar:
                for done, res in enumerate(mapped, 1):
                    totals.add(res)
                    if n_slices is not None:  # no total: how far through the input
                        read_bar.set_postfix_str(f"{done}/{n_slices} slices")
                    read_bar.update(res.examples + res.dropped)
            id_type = totals.id_type or "str"
            tasks = plan_write(job, totals.runs, id_type, budget, spill_dir, task_min_bytes=self.task_min_bytes,
                               tasks_per_dataset=self.tasks_per_dataset)
            if job.before_write is not None:
                job.before_write()
            written = []
            # an in-process store (memory://) only exists here: shards written by a worker would be lost
            write_here = storage.is_memory(storage.location(job.output_url, job.storage_options).fs)
            with bar("partition: write", total=len(tasks), unit="task", enabled=job.progress) as write_bar:
                if pool is not None and not write_here:
                    for r in [pool.apply_async(write_task, (t,)) for t in tasks]:
                        written.append(r.get())
                        write_bar.update(1)
                else:
                    for t in tasks:
                        written.append(write_task(t))
                        write_bar.update(1)
            return RunResult(totals.examples, id_type, written, totals.dropped)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
            remove_spill_dir(spill_dir, spill_lock)

    def _fit(self, source, keyfn, ctx, workers, progress) -> tuple[list, int]:
        """The partitioner's first pass (one task per slice) and fit: each
        slice's ``SliceStart``, and the number of examples."""
        from ..partitioners import fit_partitioner
        from ..progress import note

        if source.stream is not None:
            check_fittable(source, keyfn)
            per_slice = [count_slice(keyfn, s) for s in source.chunks(max_examples=self.chunk_examples)]
        elif workers > 1:
            with _pool(workers, ctx) as p:
                per_slice = list(_bounded(p, _count, ((i,) for i in range(len(source.slices))),
                                          len(source.slices)))
        else:
            per_slice = [count_slice(keyfn, s) for s in source.slices]
        fitted = fit_partitioner(keyfn, per_slice)
        if not keyfn.collect_values:
            note(f"partition: first pass: {fitted.num_examples:,} examples" +
                 (f", {fitted.num_labels:,} labels" if keyfn.label_column else ""), enabled=progress)
        return fitted.starts, fitted.num_examples


# ------------------------------------------------------------ worker side
_worker: dict = {}  # this worker process's MapContext, set by the pool's initializer


def _init(ctx: MapContext) -> None:
    _worker["ctx"] = ctx


def _slice(ctx: MapContext, item):
    """A task's slice: a slice number (of the source the workers hold) or a chunk."""
    return ctx.source.slices[item] if isinstance(item, int) else item


def _map(item, start):
    ctx = _worker["ctx"]
    return map_slice(ctx, _slice(ctx, item), start)


def _count(item):
    ctx = _worker["ctx"]
    return count_slice(ctx.keyfn, _slice(ctx, item))


def _pool(num_workers: int, ctx: MapContext):
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return mp.get_context(method).Pool(num_workers, initializer=_init, initargs=(ctx,))


def _bounded(pool, fn, args, limit):
    """Like pool.imap over argument tuples, but never more than ``limit`` in
    flight (Pool.imap reads its whole input eagerly, which a streamed source
    must not)."""
    pending = []
    for a in args:
        pending.append(pool.apply_async(fn, a))
        if len(pending) >= limit:
            yield pending.pop(0).get()
    for p in pending:
        yield p.get()


# ------------------------------------------------------------ spill directories
SPILL_LOCK = "lock"  # inside a spill directory: flock-ed by its run for the run's lifetime
SPILL_UNLOCKED_MAX_AGE_S = 24 * 3600  # a spill directory without a lock file: removed after this
_SPILL_NAME = r"torch_grouper-\d+-"
_STAGING_PREFIX = "torch_grouper-new-"  # a spill directory being created (it has no lock yet)
_STAGING_NAME = r"torch_grouper-new-(\d+)-"


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
    last process holding it, forked pool workers included).  The directory is
    made under a staging name (``torch_grouper-new-PID-...``), gets its locked
    lock file there, and only then takes its spill name, so no cleanup ever
    sees a spill directory unlocked while its run lives.  Without ``fcntl``,
    or on a filesystem without ``flock``, the fd is None and the directory
    has no lock file."""
    staging = tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", dir=tmp_dir)
    path = os.path.join(os.path.dirname(staging), "torch_grouper-" + os.path.basename(staging)[len(_STAGING_PREFIX):])
    fd = None
    fcntl = _fcntl()
    if fcntl is not None:
        fd = os.open(os.path.join(staging, SPILL_LOCK), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # no flock on this filesystem
            os.close(fd)
            os.unlink(os.path.join(staging, SPILL_LOCK))
            fd = None
    os.rename(staging, path)
    return path, fd


def remove_spill_dir(path: str, lock_fd) -> None:
    """Remove a run's spill directory, then release its lock."""
    shutil.rmtree(path, ignore_errors=True)
    if lock_fd is not None:
        os.close(lock_fd)


def _remove_dead_staging(path: str, pid: int) -> None:
    """A staging directory holds at most an empty lock file, and lives for
    the microseconds of ``make_spill_dir``: removed once the process named in
    it is gone, or after a minute whoever it was."""
    import time

    try:
        age = time.time() - os.lstat(path).st_mtime
    except OSError:
        return
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    except OSError:  # another user's live process
        alive = True
    if not alive or age > 60:
        shutil.rmtree(path, ignore_errors=True)


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
        staging = re.match(_STAGING_NAME, name)
        if staging:  # a run killed while creating its spill directory: nothing in it yet
            _remove_dead_staging(os.path.join(root, name), int(staging.group(1)))
            continue
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


