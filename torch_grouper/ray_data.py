"""A grouped dataset as a Ray Data dataset: one row per group
(``pip install 'torch-grouper[ray]'``; needs ``ray[data]``).

``to_ray_dataset(path)`` opens the dataset on the driver, which reads only the
manifest and the index, and pins the snapshot current at that moment.  The
groups are cut into contiguous index ranges balanced by bytes, one range per
read task; each read task runs in a Ray worker, opens the same snapshot with
:class:`~torch_grouper.GroupedDataset` and reads each of its groups by one
ranged request of its shard (``group_at``).  No example passes through the
driver, and a partition committed to the same path later does not change what
the dataset reads (as long as the pinned snapshot is kept: see
``keep_snapshots`` and ``tg.vacuum``).
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from .dataset import GroupedDataset

try:
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("to_ray_dataset needs Ray Data: pip install 'torch-grouper[ray]' 'ray[data]'") from None

# groups per block a read task yields at most, and bytes per block (whichever comes first)
BLOCK_GROUPS = 1024
BLOCK_BYTES = 64 << 20


def _split_rows(num_bytes: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Cut rows 0..n into at most ``parts`` non-empty contiguous ranges of
    about equal bytes (a group counts at least one byte)."""
    n = len(num_bytes)
    if n == 0:
        return []
    parts = max(1, min(int(parts), n))
    cum = np.cumsum(np.maximum(num_bytes.astype(np.int64), 1))
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts, side="left") + 1
    bounds = sorted(set([0, *(int(c) for c in cuts if 0 < c < n), n]))
    return list(zip(bounds[:-1], bounds[1:]))


def _plain(v):
    """numpy values as plain Python ones, so Arrow takes them in nested rows."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _read_rows(path, storage_options, snapshot, start: int, stop: int):
    """A read task's body: the groups at index rows [start, stop) of the
    pinned snapshot, as Arrow blocks (runs in a Ray worker)."""
    ds = GroupedDataset(path, storage_options=storage_options, snapshot=snapshot)
    rows, size = [], 0
    for row in range(start, stop):
        g = ds.group_at(row)
        examples = [{k: _plain(v) for k, v in ex.items()} for ex in g.examples()]
        if len(examples) != len(g):
            raise ValueError(f"{path} (snapshot {snapshot}): group {g.id!r} at index row {row} read "
                             f"{len(examples)} examples, the index records {len(g)}")
        rows.append({"group_id": g.id, "num_examples": len(examples), "examples": examples})
        size += g.num_bytes
        if len(rows) >= BLOCK_GROUPS or size >= BLOCK_BYTES:
            yield pa.Table.from_pylist(rows)
            rows, size = [], 0
    if rows:
        yield pa.Table.from_pylist(rows)


class GroupDatasource(Datasource):
    """Ray Data datasource over a grouped dataset's index: one row per group
    (``group_id``, ``num_examples``, ``examples``: a list of example dicts),
    in dataset order, read from the snapshot ``snapshot``."""

    def __init__(self, path, *, storage_options: dict | None = None, snapshot: str | None = None):
        ds = GroupedDataset(path, storage_options=storage_options, snapshot=snapshot)
        self.path = ds.path
        self.storage_options = storage_options
        self.snapshot = ds.snapshot  # pinned: the one current now, when none was given
        idx = ds.index
        self._num_bytes = np.asarray(idx.column("num_bytes").to_numpy(zero_copy_only=False), dtype=np.int64)
        self._num_examples = np.asarray(ds.group_num_examples(), dtype=np.int64)

    def get_name(self) -> str:
        return "TorchGrouper"

    def estimate_inmemory_data_size(self) -> int | None:
        return int(self._num_bytes.sum())

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list:
        tasks = []
        path, opts, snap = self.path, self.storage_options, self.snapshot
        for start, stop in _split_rows(self._num_bytes, parallelism if parallelism and parallelism > 0 else 1):
            meta = BlockMetadata(num_rows=stop - start, size_bytes=int(self._num_bytes[start:stop].sum()),
                                 exec_stats=None, input_files=None)
            tasks.append(ReadTask(lambda a=start, b=stop: _read_rows(path, opts, snap, a, b), meta,
                                  per_task_row_limit=per_task_row_limit))
        return tasks


def to_ray_dataset(path, *, storage_options: dict | None = None, snapshot: str | None = None,
                   override_num_blocks: int | None = None, ray_remote_args: dict | None = None):
    """A ``ray.data.Dataset`` with one row per group of the grouped dataset at
    ``path``: ``group_id``, ``num_examples`` and ``examples`` (the group's
    examples as a list of dicts, in their stored order), in dataset order.

    The snapshot current at this call (or ``snapshot``) is pinned: every read
    task reads it, whatever is committed to ``path`` later.  Read tasks run in
    Ray workers, each reading a contiguous, byte-balanced range of groups by
    ranged reads, so ``path`` must be reachable from every node (an object
    store URL on a cluster).  ``override_num_blocks``: the number of read
    tasks (default: Ray's choice from the cluster's CPUs, at most one per
    group); ``ray_remote_args``: passed to the read tasks (``num_cpus``,
    ``memory``, ...).
    """
    import ray.data

    try:
        source = GroupDatasource(os.fspath(path), storage_options=storage_options, snapshot=snapshot)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"to_ray_dataset: no grouped dataset at {os.fspath(path)!r}: {e}") from e
    kw = {}
    if override_num_blocks is not None:
        kw["override_num_blocks"] = int(override_num_blocks)
    if ray_remote_args:
        kw["ray_remote_args"] = dict(ray_remote_args)
    return ray.data.read_datasource(source, **kw)
