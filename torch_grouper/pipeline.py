"""``partition()``: any dataset in, a grouped dataset (shards + index + manifest) out."""
from __future__ import annotations

import os
import posixpath
import time

import fsspec

from . import __version__
from . import format as fmt
from .engines import local
from .partitioners import describe_key, key_function
from .sources import as_source
from .stats import label_summary
from .writer import index_table, json_safe, write_index, write_manifest

DEFAULT_SHARD_SIZE = 256 << 20
DEFAULT_MEMORY_BUDGET = 512 << 20


def partition(
    source,
    key,
    output: str | os.PathLike,
    *,
    num_workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    storage_options: dict | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    tmp_dir: str | None = None,
    progress: bool = True,
    label_column: str | None = None,
) -> dict:
    """Partition ``source`` into per-group WebDataset shards at ``output``.

    Args:
        source: a ``datasets.Dataset`` or ``datasets.IterableDataset``
            (streaming), a path / glob / list of JSON Lines, Parquet, CSV or
            text files (local or any fsspec URL, optionally compressed), or
            any iterable of example dicts.
        key: a column name, or a callable ``example -> str | int | bytes``
            (lambdas are fine), or a key object from
            ``torch_grouper.partitioners``.
        output: the dataset directory, a local path or fsspec URL.
        num_workers: processes for the map and write steps (default: CPU count).
            The output is byte-identical for any value.
        shard_size: target bytes per shard.  Shards roll over at group
            boundaries; a group larger than this gets a shard of its own and
            is never split.
        overwrite: replace a complete dataset already at ``output``.
        storage_options: passed to fsspec for ``output`` and file sources.
        memory_budget: bytes of examples held in memory for sorting, over all
            workers; beyond it records spill to ``tmp_dir``.  Bounds memory
            whatever the input size and the size of the largest group.
        tmp_dir: local directory for spill files (default: the system temp dir).
        progress: show tqdm progress bars.
        label_column: count this column's values per group and record label
            skew (per-group label counts, Hellinger and Jensen-Shannon distance
            to the global label distribution) in the index and manifest.
            Label partitioners (Dirichlet, Pathological, Shard, ...) do this
            for their ``partition_by`` column unless told otherwise.

    Returns:
        The dataset's manifest (a dict): counts, shards, schema, partition spec.

    Every example is read, keyed and encoded before ``output`` is touched,
    so bad input (a missing key column, an unusable key, a value that cannot
    be stored) raises ``PartitionError`` naming the example and leaves any
    dataset already there intact.  ``manifest.json`` is written last.
    """
    t0 = time.perf_counter()
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    keyfn = key_function(key)
    storage_options = dict(storage_options or {})
    out_url = os.fspath(output)
    fs, root = fsspec.core.url_to_fs(out_url, **storage_options)
    root = root.rstrip("/") or "/"
    _check_output(fs, root, out_url, overwrite)
    if num_workers is None:
        num_workers = os.cpu_count() or 1
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    src = as_source(source, storage_options, num_workers)
    if src.slices:
        num_workers = min(num_workers, len(src.slices))

    if label_column is None and getattr(keyfn, "label_stats", False):
        label_column = keyfn.label_column

    def before_write():
        _clear_output(fs, root)

    n, kind, results, dropped = local.run(
        src, keyfn, out_url, num_workers=num_workers, shard_size=shard_size,
        memory_budget=memory_budget, storage_options=storage_options, tmp_dir=tmp_dir,
        progress=progress, before_write=before_write, stats_column=label_column,
    )
    if not results:  # an empty source still makes a (complete, empty) dataset
        fs.makedirs(root, exist_ok=True)
    shards = [s for _, sh in results for s in sh]
    index = index_table([rows for rows, _ in results], kind)
    index_info = write_index(fs, root, index)
    num_bytes = int(sum(int(rows["num_bytes"].sum()) for rows, _ in results))
    manifest = {
        "format": fmt.FORMAT_NAME,
        "format_version": fmt.FORMAT_VERSION,
        "created_by": f"torch_grouper {__version__}",
        "num_groups": index.num_rows,
        "num_examples": n,
        "num_dropped": dropped,
        "num_bytes": num_bytes,
        "group_id_type": kind,
        "features": src.features,
        "partition": {
            "key": json_safe(describe_key(keyfn)),
            "shard_size": shard_size,
            "num_buckets": fmt.NUM_BUCKETS,
            "hash": "blake2b-64",
            "source": {"description": src.description, "fingerprint": src.fingerprint},
        },
        "index": index_info,
        "label_stats": ({"column": label_column, **label_summary(index)} if label_column else None),
        "shards": shards,
    }
    write_manifest(fs, root, manifest)
    manifest["elapsed_s"] = round(time.perf_counter() - t0, 3)
    return manifest


def _check_output(fs, root: str, url: str, overwrite: bool) -> None:
    if fs.exists(posixpath.join(root, fmt.MANIFEST)):
        if not overwrite:
            raise FileExistsError(
                f"{url} already holds a complete torch_grouper dataset; pass overwrite=True to replace it"
            )
        return
    if fs.exists(root):
        if not fs.isdir(root):
            raise FileExistsError(f"{url} exists and is not a directory")
        foreign = [posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)]
        foreign = [p for p in foreign if not fmt.OWNED_RE.match(p)]
        if foreign and not overwrite:
            raise FileExistsError(
                f"{url} is not empty and holds no torch_grouper dataset (found {sorted(foreign)[:5]}); "
                f"choose an empty or new directory, or pass overwrite=True"
            )


def _clear_output(fs, root: str) -> None:
    """Remove a previous dataset (manifest first, so it stops being complete)."""
    manifest = posixpath.join(root, fmt.MANIFEST)
    if fs.exists(manifest):
        fs.rm(manifest)
    if fs.exists(root):
        owned = [p for p in fs.ls(root, detail=False) if fmt.OWNED_RE.match(posixpath.basename(p.rstrip("/")))]
        if owned:
            fs.rm(owned)
    else:
        fs.makedirs(root, exist_ok=True)
    fs.invalidate_cache(root)


def partition_vertical(source, partitioner, output: str | os.PathLike, *, key: str | None = None,
                       id_column: str = "example_id", **kwargs) -> list:
    """Split ``source``'s columns among parties (vertical federated learning).

    ``partitioner`` is a ``VerticalEvenPartitioner`` or ``VerticalSizePartitioner``
    (flwr-datasets' semantics and seeded column shuffle).  Party ``p`` becomes
    its own dataset at ``output/party-p``; its examples hold that party's
    columns plus ``id_column``, the example's index in the source, shared by
    all parties so their rows can be joined.  Each party dataset is one group
    (its party number), or, with ``key`` a column name (kept in every party),
    one group per value of that column.  Other arguments go to ``partition``.
    Returns the parties' manifests, in party order.
    """
    from .sources import iter_examples

    if key is not None and not isinstance(key, str):
        raise TypeError("partition_vertical: key must be a column name (kept in every party)")
    src = as_source(source, kwargs.get("storage_options"))
    first = next(iter_examples(src), None)
    if first is None:
        raise ValueError("partition_vertical: the source is empty")
    if id_column in first:
        raise ValueError(f"partition_vertical: the source already has a column {id_column!r}; "
                         f"choose another id_column")
    if key is not None and key not in first:
        raise ValueError(f"partition_vertical: no key column {key!r} (columns: {list(first)})")
    parties = partitioner.party_columns(list(first))
    out = os.fspath(output).rstrip("/")
    manifests = []
    for p, cols in enumerate(parties):
        keep = cols + [key] if key is not None and key not in cols else cols

        def rows(keep=keep):
            for i, ex in enumerate(iter_examples(src)):
                row = {id_column: i}
                row.update((c, ex[c]) for c in keep)
                yield row

        manifests.append(partition(rows(), key if key is not None else _Constant(p), f"{out}/party-{p}",
                                   **kwargs))
    return manifests


class _Constant:
    """A key putting every example in one group."""

    def __init__(self, gid: int):
        self.gid = gid

    def __call__(self, ex) -> int:
        return self.gid

    def describe(self) -> dict:
        return {"type": "party", "party": self.gid}
