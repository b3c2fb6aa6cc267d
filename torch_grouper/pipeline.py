"""``partition()``: any dataset in, a grouped dataset (shards + index + manifest) out."""
from __future__ import annotations

import os
import posixpath
import time
import warnings

from . import format as fmt
from . import snapshots, storage
from ._version import __version__
from .engines import Job, resolve_engine
from .features import features_dict
from .labels import label_summary
from .partitioners import describe_key, key_function
from .sources import as_source
from .writer import index_table, json_safe, write_index, write_manifest

DEFAULT_SHARD_BYTES = 256 << 20  # bytes per tar shard
DEFAULT_MEMORY_BUDGET = 512 << 20


def partition(
    source,
    key,
    output: str | os.PathLike,
    *,
    num_workers: int | None = None,
    shard_bytes: int | None = None,
    shard_size: int | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    tmp_dir: str | None = None,
    progress: bool = True,
    label_column: str | None = None,
    keep_snapshots: int = snapshots.DEFAULT_KEEP,
    features=None,
    shuffle_seed: int | None = None,
    engine="local",
    _stage: "snapshots.Staged | None" = None,
    _part: str | None = None,
) -> dict:
    """Partition ``source`` into per-group WebDataset shards at ``output``.

    Args:
        source: a ``datasets.Dataset`` or ``datasets.IterableDataset``
            (streaming), a path / glob / list of JSON Lines, Parquet, CSV or
            text files (local or any fsspec URL, optionally compressed), or
            any iterable of example dicts.  A ``datasets.DatasetDict`` or a
            dict of such sources (``{"train": ..., "test": ...}``) gives one
            grouped dataset per split, ``output/SPLIT``, with the same key
            (so the same group ids), committed together; the call then
            returns ``{split: manifest}`` and each manifest's ``part`` names
            its split.
        key: a column name, or a callable ``example -> str | int | bytes``
            (lambdas are fine), or a key object from
            ``torch_grouper.partitioners``.
        output: the dataset directory, a local path or fsspec URL.
        num_workers: processes for the map and write steps (default: CPU count).
            The output is byte-identical for any value.
        shard_bytes: target bytes per tar shard (default
            ``DEFAULT_SHARD_BYTES``, 256 MiB).  Shards roll over at group
            boundaries; a group larger than this gets a shard of its own and
            is never split.  The manifest records it as ``partition.shard_size``
            (docs/FORMAT.md).
        shard_size: deprecated name of ``shard_bytes`` (a DeprecationWarning;
            not to be confused with ``ShardPartitioner(shard_size=)``, examples
            per label shard).
        overwrite: replace the dataset already at ``output`` (as a new
            snapshot: readers that opened the old one keep reading it).
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

        features: HF ``datasets.Features`` (or its dict form) describing the
            examples, recorded in the manifest; for sources that have none
            (JSON Lines, iterables), or to override the source's.  Numeric
            sequence and array fields then come back as numpy arrays
            (``torch_grouper.features``).
        shuffle_seed: shuffle a map-style source (``datasets.Dataset``, or each
            split of a ``DatasetDict``) with ``Dataset.shuffle(seed=...)``
            before partitioning, as flwr-datasets' ``FederatedDataset(shuffle=True,
            seed=...)`` does by default: the same seed gives the same
            partitions as it, and each group's examples are then in shuffled
            order.  None (the default): input order, as
            ``FederatedDataset(shuffle=False)`` and flwr-datasets' bare
            partitioners.
        engine: ``"local"`` (a ``torch_grouper.engines.LocalEngine`` with
            ``num_workers``), ``"ray"`` (a ``torch_grouper.engines.ray.RayEngine``:
            Ray tasks on the cluster at ``RAY_ADDRESS``, or on a local Ray;
            ``pip install 'torch-grouper[ray]'``), or an engine object such
            as ``LocalEngine(num_workers=4, slice_bytes=...)`` or
            ``RayEngine(address="ray://head:10001")`` (then leave
            ``num_workers`` out).  The output is the same bytes for any
            engine.  On a multi-node Ray cluster, sources and output must be
            in a store every node reaches (``s3://``, ``gs://``, ...).
        keep_snapshots: after the commit, remove all snapshots but this many
            newest ones (the new one and, by default, the one it replaced);
            see ``tg.vacuum``.

    Returns:
        The snapshot's manifest (a dict): counts, shards, schema, partition
        spec, plus ``snapshot`` (the new snapshot's id) and ``elapsed_s``.

    Every example is read, keyed and encoded before ``output`` is touched,
    so bad input (a missing key column, an unusable key, a value that cannot
    be stored) raises ``PartitionError`` naming the example.  The output is
    written as a new snapshot that becomes current in one atomic commit at
    the end (docs/FORMAT.md, "Commits"): until then readers see the dataset
    that was there, and a failure or crash at any point leaves it current
    and complete.  Of two partitions committing to one output, one wins and
    the other raises ``ConcurrentCommitError``.
    """
    shard_bytes = _shard_bytes_arg(shard_bytes, shard_size)
    splits = _splits_of(source) if _stage is None else None
    if splits is not None:  # one dataset per split, committed together
        manifests = partition_together(
            [(name, src, key) for name, src in splits.items()], output, overwrite=overwrite,
            storage_options=storage_options, keep_snapshots=keep_snapshots, num_workers=num_workers,
            shard_bytes=shard_bytes, memory_budget=memory_budget, tmp_dir=tmp_dir, progress=progress,
            label_column=label_column, features=features, shuffle_seed=shuffle_seed, engine=engine)
        return dict(zip(splits, manifests))
    t0 = time.perf_counter()
    if shuffle_seed is not None:
        source = _preshuffled(source, shuffle_seed)
    if shard_bytes <= 0:
        raise ValueError(f"shard_bytes must be positive, got {shard_bytes}")
    keyfn = key_function(key)
    storage_options = dict(storage_options or {})
    fs, root, out_url = storage.location(output, storage_options)
    own = _stage is None
    if own:
        if keep_snapshots < 1:
            raise ValueError(f"keep_snapshots must be >= 1, got {keep_snapshots}")
        base, old_v1 = _check_output(fs, root, out_url, overwrite)
        stage = snapshots.Staged(fs, root, out_url, base)
    else:
        stage = _stage
    engine = resolve_engine(engine, num_workers)
    src = as_source(source, storage_options, engine.num_workers, slice_bytes=engine.slice_bytes)
    if features is not None:
        src.features = features_dict(features)

    if label_column is None and getattr(keyfn, "label_stats", False):
        label_column = keyfn.label_column

    folder = stage.part_path(_part)

    def before_write():  # every example was read and encoded: stage the new snapshot
        stage.start()
        fs.makedirs(folder, exist_ok=True)

    try:
        res = engine.run(Job(
            src, keyfn, stage.part_url(_part), shard_bytes=shard_bytes, memory_budget=memory_budget,
            storage_options=storage_options, tmp_dir=tmp_dir, progress=progress, label_column=label_column,
            before_write=before_write,
        ))
        before_write()  # an empty source still makes a (complete, empty) dataset
        manifest = _write_snapshot_files(fs, folder, src, keyfn, res.num_examples, res.id_type, res.written,
                                         res.num_dropped, shard_bytes, label_column, _part)
        if own:
            stage.commit()
    except BaseException:
        if own:
            stage.abort()
        raise
    if own:
        _after_commit(fs, root, out_url, old_v1, keep_snapshots)
    manifest["snapshot"] = stage.id
    manifest["elapsed_s"] = round(time.perf_counter() - t0, 3)
    return manifest


def _shard_bytes_arg(shard_bytes, shard_size) -> int:
    """``partition``'s bytes per shard from its arguments: ``shard_size`` is
    the deprecated name of ``shard_bytes``."""
    if shard_size is not None:
        if shard_bytes is not None:
            raise TypeError("partition: pass shard_bytes only (shard_size is its deprecated name), not both")
        warnings.warn("partition(shard_size=...) is deprecated; use shard_bytes=... (bytes per tar shard)",
                      DeprecationWarning, stacklevel=3)
        return shard_size
    return DEFAULT_SHARD_BYTES if shard_bytes is None else shard_bytes


def _write_snapshot_files(fs, folder, src, keyfn, n, id_type, results, dropped, shard_bytes, label_column,
                          part=None) -> dict:
    """The index, then the snapshot's manifest (no timestamps, no snapshot id:
    the same input gives the same bytes)."""
    shards = [s for _, sh in results for s in sh]
    index = index_table([rows for rows, _ in results], id_type)
    index_info = write_index(fs, folder, index)
    num_bytes = int(sum(int(rows["num_bytes"].sum()) for rows, _ in results))
    manifest = {
        "format": fmt.FORMAT_NAME,
        "format_version": fmt.FORMAT_VERSION,
        "created_by": f"torch_grouper {__version__}",
        "num_groups": index.num_rows,
        "num_examples": n,
        "num_dropped": dropped,
        "num_bytes": num_bytes,
        "group_id_type": id_type,
        "features": src.features,
        "partition": {
            "key": json_safe(describe_key(keyfn)),
            "shard_size": shard_bytes,  # the format's name for bytes per shard
            "num_buckets": fmt.NUM_BUCKETS,
            "hash": "blake2b-64",
            "source": {"description": src.description, "fingerprint": src.fingerprint},
        },
        "index": index_info,
        "label_stats": ({"column": label_column, **label_summary(index)} if label_column else None),
        "shards": shards,
    }
    if part is not None:  # one of several datasets written together (a split, a party)
        manifest["part"] = part
    snapshots.checkpoint("index-written")
    write_manifest(fs, folder, manifest)
    snapshots.checkpoint("manifest-written")
    return manifest


def _preshuffled(source, seed):
    import sys

    datasets = sys.modules.get("datasets")
    if datasets is None or not isinstance(source, datasets.Dataset):
        raise ValueError(f"shuffle_seed shuffles a map-style datasets.Dataset (or DatasetDict) before "
                         f"partitioning; got {type(source).__name__}, whose order is its own")
    return source.shuffle(seed=seed)


def _splits_of(source) -> dict | None:
    """``{split name: source}`` for a ``datasets.DatasetDict`` or a dict of
    sources (datasets, paths, iterables), else None."""
    import sys

    datasets = sys.modules.get("datasets")
    if datasets is not None and isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return dict(source)
    if isinstance(source, dict) and source and all(isinstance(k, str) for k in source) and all(
            isinstance(v, (str, os.PathLike, list, tuple)) or (hasattr(v, "__iter__") and not isinstance(v, (dict, bytes)))
            for v in source.values()):
        return dict(source)
    return None


def _check_output(fs, root: str, url: str, overwrite: bool):
    """Refuse an output that holds a dataset (unless ``overwrite``) or other
    files; returns (the current commit or None, a version 1 manifest or None).
    Nothing is deleted here or anywhere else that is not the library's own."""
    if fs.exists(root) and not fs.isdir(root):
        raise FileExistsError(f"{url} exists and is not a directory")
    base = snapshots.current(fs, root)
    old_v1 = None
    if base is None:
        m = snapshots.top_manifest(fs, root, url)
        if m is not None and m.get("layout") != fmt.SNAPSHOT_LAYOUT:
            old_v1 = m
    if (base is not None or old_v1 is not None) and not overwrite:
        raise FileExistsError(
            f"{url} already holds a complete torch_grouper dataset; pass overwrite=True to replace it"
        )
    if fs.exists(root):
        names = storage.list_names(fs, root)
        mine = set(fmt.OWNED_NAMES)
        if old_v1 is not None:
            mine |= {old_v1["index"]["path"]} | {sh["path"] for sh in old_v1["shards"]}
        foreign = sorted(n for n in names if n not in mine)
        if foreign and not overwrite:
            raise FileExistsError(
                f"{url} is not empty and holds no torch_grouper dataset (found {foreign[:5]}); "
                f"choose an empty or new directory, or pass overwrite=True (files that are not "
                f"torch_grouper's are never deleted)"
            )
    return base, old_v1


def _after_commit(fs, root: str, url: str, old_v1: dict | None, keep: int) -> None:
    """After the commit: the top-level marker (replacing a version 1 manifest,
    whose files are then removed), then the vacuum.  The new snapshot is
    already current: a failure here only warns."""
    try:
        mpath = posixpath.join(root, fmt.MANIFEST)
        marker = fmt.dump_manifest(fmt.root_marker())
        try:
            have = storage.read_bytes(fs, mpath)
        except FileNotFoundError:
            have = None
        if have != marker:
            storage.write_whole(fs, mpath, marker)
        snapshots.checkpoint("marker-written")
        if old_v1 is not None:  # only the files the version 1 manifest lists
            names = [old_v1["index"]["path"]] + [sh["path"] for sh in old_v1["shards"]]
            old = [posixpath.join(root, n) for n in names if fmt.SHARD_RE.match(n) or n == fmt.INDEX]
            old = [p for p in old if fs.exists(p)]
            if old:
                fs.rm(old)
        snapshots.vacuum_root(fs, root, url, keep=keep)
    except Exception as e:  # noqa: BLE001 - committed already; say what was left
        warnings.warn(f"{url}: the new snapshot is committed, but cleaning up after it failed "
                      f"({type(e).__name__}: {e}); run torch_grouper.vacuum({url!r}) later", stacklevel=3)
    finally:
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
    jobs = []
    for p, cols in enumerate(parties):
        keep = cols + [key] if key is not None and key not in cols else cols

        def rows(keep=keep):
            for i, ex in enumerate(iter_examples(src)):
                row = {id_column: i}
                row.update((c, ex[c]) for c in keep)
                yield row

        jobs.append((f"party-{p}", rows(), key if key is not None else _Constant(p)))
    return partition_together(jobs, output, **kwargs)


def partition_together(jobs, output: str | os.PathLike, *, overwrite: bool = False,
                       storage_options: dict | None = None, keep_snapshots: int = snapshots.DEFAULT_KEEP,
                       **kwargs) -> list:
    """Write several datasets as parts of one snapshot, committed together.

    ``jobs`` is a list of ``(name, source, key)``; dataset ``name`` is read
    at ``output/name`` (``GroupedDataset(f"{output}/{name}")``).  Either all
    of them become current at once, or (on any error or crash) none does and
    the previous ones stay.  Other arguments go to ``partition``.  Returns
    the parts' manifests, in order."""
    names = [j[0] for j in jobs]
    for name in names:
        if not isinstance(name, str) or not fmt.PART_RE.match(name) or name in fmt.OWNED_NAMES:
            raise ValueError(f"dataset name {name!r} must be 1-100 letters, digits, '_', '-' or '.' "
                             f"(not starting with '.', and not {sorted(fmt.OWNED_NAMES)})")
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be distinct, got {names}")
    if keep_snapshots < 1:
        raise ValueError(f"keep_snapshots must be >= 1, got {keep_snapshots}")
    fs, root, out_url = storage.location(output, storage_options)
    base, old_v1 = _check_output(fs, root, out_url, overwrite)
    stage = snapshots.Staged(fs, root, out_url, base)
    manifests = []
    try:
        for name, source, key in jobs:
            manifests.append(partition(source, key, out_url, storage_options=storage_options, _stage=stage,
                                       _part=name, **kwargs))
        stage.start()
        stage.commit(parts=names)
    except BaseException:
        stage.abort()
        raise
    _after_commit(fs, root, out_url, old_v1, keep_snapshots)
    return manifests


class _Constant:
    """A key putting every example in one group."""

    def __init__(self, gid: int):
        self.gid = gid

    def __call__(self, ex) -> int:
        return self.gid

    def describe(self) -> dict:
        return {"type": "party", "party": self.gid}
