"""``verify(path)``: check a dataset against its manifest, naming every problem."""
from __future__ import annotations

import posixpath

from . import format as fmt
from . import snapshots, storage


def verify(path, storage_options: dict | None = None, *, snapshot: str | None = None) -> list[str]:
    """Check every file of the dataset at ``path`` (its current snapshot, or
    ``snapshot``); returns the problems found (an empty list when intact).

    Finds a missing manifest, index or shard, a shard or index whose size or
    sha256 differs from the manifest (a flipped byte, a truncated file), and
    files in the snapshot that are not part of the dataset.  Each problem
    names the file."""
    fs, root, url = storage.location(path, storage_options)
    problems: list[str] = []
    try:
        r = snapshots.resolve(fs, root, url, snapshot)
    except FileNotFoundError as e:
        return [str(e) if isinstance(e, snapshots.SnapshotNotFoundError) else
                f"{url}: no manifest.json (not a dataset, or a partition that did not finish)"]
    except ValueError as e:
        return [str(e)]
    folder, furl, manifest = r.root, r.url, r.manifest
    expected = {fmt.MANIFEST: None, manifest["index"]["path"]: manifest["index"]}
    expected.update({s["path"]: s for s in manifest["shards"]})
    for name in expected:
        if name != fmt.MANIFEST and not (name == fmt.INDEX or fmt.SHARD_RE.match(str(name))):
            problems.append(f"{furl}: the manifest lists {name!r}, which is not a file name of the format")
    if problems:
        return problems
    present = set(storage.list_names(fs, folder))
    if r.snapshot is None:  # version 1: the dataset's files share the top level with nothing else
        present -= fmt.OWNED_NAMES
    for name in sorted(present - set(expected)):
        if r.snapshot is not None and storage.is_dir(fs, posixpath.join(folder, name)):
            continue  # another dataset of the same snapshot
        problems.append(f"{posixpath.join(furl, name)}: foreign file, not part of the dataset")
    for name, info in expected.items():
        if info is None:
            continue
        where = posixpath.join(furl, name)
        if name not in present:
            problems.append(f"{where}: missing")
            continue
        digest, size = storage.sha256_file(fs, posixpath.join(folder, name), what=f"read {where}")
        if size != info["num_bytes"]:
            problems.append(f"{where}: {size} bytes, the manifest says {info['num_bytes']}"
                            f"{' (truncated)' if size < info['num_bytes'] else ''}")
        elif digest != info["sha256"]:
            problems.append(f"{where}: sha256 {digest[:12]}... differs from the manifest's "
                            f"{info['sha256'][:12]}... (corrupted)")
    return problems
