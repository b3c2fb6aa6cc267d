"""``verify(path)``: check a dataset against its manifest, naming every problem."""
from __future__ import annotations

import hashlib
import os
import posixpath

import fsspec

from . import format as fmt


def _sha256(fs, path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with fs.open(path, "rb", block_size=8 << 20) as f:
        while True:
            chunk = f.read(8 << 20)
            if not chunk:
                return h.hexdigest(), n
            h.update(chunk)
            n += len(chunk)


def verify(path, storage_options: dict | None = None) -> list[str]:
    """Check every file of the dataset at ``path``; returns the problems found
    (an empty list when the dataset is intact).

    Finds a missing manifest, index or shard, a shard or index whose size or
    sha256 differs from the manifest (a flipped byte, a truncated file), and
    files that are not part of the dataset.  Each problem names the file."""
    url = os.fspath(path)
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    root = root.rstrip("/") or "/"
    problems: list[str] = []
    try:
        manifest = fmt.parse_manifest(fs.cat_file(posixpath.join(root, fmt.MANIFEST)), url)
    except FileNotFoundError:
        return [f"{url}: no manifest.json (not a dataset, or a partition that did not finish)"]
    except ValueError as e:
        return [str(e)]
    expected = {fmt.MANIFEST: None, manifest["index"]["path"]: manifest["index"]}
    expected.update({s["path"]: s for s in manifest["shards"]})
    present = {posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)}
    for name in sorted(present - set(expected)):
        problems.append(f"{posixpath.join(url, name)}: foreign file, not part of the dataset")
    for name, info in expected.items():
        if info is None:
            continue
        where = posixpath.join(url, name)
        if name not in present:
            problems.append(f"{where}: missing")
            continue
        digest, size = _sha256(fs, posixpath.join(root, name))
        if size != info["num_bytes"]:
            problems.append(f"{where}: {size} bytes, the manifest says {info['num_bytes']}"
                            f"{' (truncated)' if size < info['num_bytes'] else ''}")
        elif digest != info["sha256"]:
            problems.append(f"{where}: sha256 {digest[:12]}... differs from the manifest's "
                            f"{info['sha256'][:12]}... (corrupted)")
    return problems
