"""ShardWriter on its own: shards roll over at group boundaries past the byte
size, the index rows point at each group's bytes, stock tarfile reads every
shard, abort leaves no staged shard behind, label counts add up."""
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import textwrap

import fsspec
import numpy as np
import pytest

from torch_grouper import format as fmt
from torch_grouper.codec import encode
from torch_grouper.labels import label_columns
from torch_grouper.tario import END_OF_ARCHIVE, member
from torch_grouper.writer import ShardWriter, index_table


def piece(gid, examples, id_type="str", first=0):
    """A piece as the engine hands it over: (hash, canon, n, words, bytes,
    the tar members' bytes, [(member name, data)])."""
    canon = fmt.canonical_group_id(gid, id_type)
    h = fmt.group_hash(canon)
    blob, names, nbytes, nwords = [], [], 0, 0
    for i, ex in enumerate(examples, first):
        members, b, w = encode(ex)
        key = fmt.sample_key(h, 0, i)
        for suffix, data in members:
            blob += member(f"{key}.{suffix}", data)
            names.append((f"{key}.{suffix}", data))
        nbytes += b
        nwords += w
    return h, canon, len(examples), nwords, nbytes, b"".join(blob), names


def groups_of(n, seed=0):
    rng = np.random.default_rng(seed)
    return {f"g{k}": [{"k": k, "i": i, "t": "word " * int(rng.integers(0, 40))}
                      for i in range(int(rng.integers(1, 12)))] for k in range(n)}


def write(fs, root, pieces, shard_bytes, id_type="str", labels=None, tmp_dir=None, task=0):
    w = ShardWriter(fs, root, task, shard_bytes, id_type, labels is not None, tmp_dir)
    for j, (h, canon, n, nw, nb, blob, _) in enumerate(pieces):
        w.add_piece(h, canon, n, nw, nb, len(blob), io.BytesIO(blob), None if labels is None else labels[j])
    return w.close()


def sorted_pieces(groups, id_type="str"):
    return sorted((piece(g, exs, id_type) for g, exs in groups.items()), key=lambda p: (p[0], p[1]))


def test_shards_roll_over_at_group_boundaries_past_the_byte_size(tmp_path):
    groups = groups_of(40)
    pieces = sorted_pieces(groups)
    shard_bytes = 6_000
    rows, shards = write(fsspec.filesystem("file"), str(tmp_path), pieces, shard_bytes)
    # the expected cut, computed from the pieces' sizes alone
    expect, pos = [], None
    for p in pieces:
        if pos is None or pos >= shard_bytes:
            expect.append([])
            pos = 0
        expect[-1].append(p)
        pos += len(p[5])
    assert [s["path"] for s in shards] == [fmt.shard_name(0, k) for k in range(len(expect))]
    assert len(shards) >= 4
    for s, ps in zip(shards, expect):
        data = (tmp_path / s["path"]).read_bytes()
        assert data == b"".join(p[5] for p in ps) + END_OF_ARCHIVE  # groups contiguous, in order
        assert s["num_bytes"] == len(data) and s["sha256"] == hashlib.sha256(data).hexdigest()
        assert s["num_groups"] == len(ps) and s["num_examples"] == sum(p[2] for p in ps)
        body = len(data) - len(END_OF_ARCHIVE)
        assert body - len(ps[-1][5]) < shard_bytes  # closed at the first boundary past the size
    assert all(s["num_bytes"] - len(END_OF_ARCHIVE) >= shard_bytes for s in shards[:-1])


def test_a_group_larger_than_the_shard_size_gets_a_shard_of_its_own(tmp_path):
    pieces = sorted_pieces({"big": [{"t": "x" * 5000}] * 3, "a": [{"t": "y"}], "b": [{"t": "z"}]})
    rows, shards = write(fsspec.filesystem("file"), str(tmp_path), pieces, 1000)
    assert len(shards) == 3 and [s["num_groups"] for s in shards] == [1, 1, 1]
    big = next(s for s in shards if s["num_examples"] == 3)
    assert big["num_bytes"] > 15_000


def test_index_rows_point_at_each_groups_bytes_and_tarfile_reads_every_shard(tmp_path):
    groups = groups_of(25, seed=1)
    pieces = sorted_pieces(groups)
    rows, shards = write(fsspec.filesystem("file"), str(tmp_path), pieces, 5_000)
    table = index_table([rows], "str")
    assert table.schema.names == list(fmt.INDEX_COLUMNS)
    by_id = {fmt.decode_group_id(p[1], "str"): p for p in pieces}
    assert table["group_id"].to_pylist() == [fmt.decode_group_id(p[1], "str") for p in pieces]
    for r in table.to_pylist():
        p = by_id[r["group_id"]]
        raw = (tmp_path / r["shard"]).read_bytes()
        assert raw[r["offset"]:r["offset"] + r["length"]] == p[5]
        assert (r["num_examples"], r["num_words"], r["num_bytes"]) == (p[2], p[3], p[4])
        with tarfile.open(fileobj=io.BytesIO(raw[r["offset"]:r["offset"] + r["length"]] + END_OF_ARCHIVE)) as t:
            assert [(m.name, t.extractfile(m).read()) for m in t.getmembers()] == p[6]
    everything = []
    for s in shards:
        with tarfile.open(tmp_path / s["path"]) as t:  # a stock reader, the whole shard
            everything += [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    assert everything == [nd for p in pieces for nd in p[6]]
    assert table["num_examples"].to_pylist() == [p[2] for p in pieces]
    assert sum(s["num_examples"] for s in shards) == sum(len(v) for v in groups.values())


def test_pieces_of_one_group_are_joined_and_counted(tmp_path):
    exs = [{"i": i, "t": "a b c"} for i in range(9)]
    parts = [piece("u", exs[:4]), piece("u", exs[4:5], first=4), piece("u", exs[5:], first=5)]
    labels = [{"x": 3, "y": 1}, {"z": 1}, {"y": 2, "x": 2}]
    rows, shards = write(fsspec.filesystem("file"), str(tmp_path), parts, 10, labels=labels)
    assert len(shards) == 1 and shards[0]["num_groups"] == 1  # never split, however small the size
    assert rows["label_counts"] == [{"x": 5, "y": 3, "z": 1}]
    whole = piece("u", exs)
    assert (tmp_path / shards[0]["path"]).read_bytes() == whole[5] + END_OF_ARCHIVE
    table = index_table([rows], "str")
    assert table.to_pylist()[0]["num_words"] == 27 and table["length"].to_pylist() == [len(whole[5])]
    assert table["label_counts"].to_pylist() == [[("x", 5), ("y", 3), ("z", 1)]]


def test_label_rows_over_tasks_and_id_types(tmp_path):
    fs = fsspec.filesystem("file")
    a = sorted_pieces({3: [{"v": 1}], -7: [{"v": 2}]}, id_type="int")
    b = sorted_pieces({2**62: [{"v": 3}]}, id_type="int")
    by_id = {3: {"1": 1}, -7: {"b": 2}, 2**62: {"b": 1, "1": 4}}
    ids = [fmt.decode_group_id(p[1], "int") for p in a + b]
    ra, _ = write(fs, str(tmp_path), a, 100, id_type="int", labels=[by_id[g] for g in ids[:2]], task=0)
    rb, _ = write(fs, str(tmp_path), b, 100, id_type="int", labels=[by_id[g] for g in ids[2:]], task=1)
    table = index_table([ra, rb], "int")
    assert str(table.schema.field("group_id").type) == "int64"
    assert table["group_id"].to_pylist() == ids
    for name, col in label_columns([by_id[g] for g in ids]).items():
        assert table[name].to_pylist() == col.to_pylist()
    assert table["shard"].to_pylist() == [fmt.shard_name(0, 0), fmt.shard_name(0, 1), fmt.shard_name(1, 0)]
    ids = sorted_pieces({b"\x00\xff": [{"v": 1}]}, id_type="bytes")
    (tmp_path / "b").mkdir()
    rows, _ = write(fs, str(tmp_path / "b"), ids, 100, id_type="bytes")
    assert index_table([rows], "bytes")["group_id"].to_pylist() == [b"\x00\xff"]
    assert index_table([], "str").num_rows == 0


def test_a_short_spill_file_is_an_error(tmp_path):
    h, canon, n, nw, nb, blob, _ = piece("u", [{"t": "x"}])
    w = ShardWriter(fsspec.filesystem("file"), str(tmp_path), 0, 1000, "str")
    with pytest.raises(IOError, match=f"spill file ended {len(blob) - 100} bytes early"):
        w.add_piece(h, canon, n, nw, nb, len(blob), io.BytesIO(blob[:100]))
    w.abort()


def test_abort_leaves_no_staged_shard_behind(tmp_path):
    """On an object store a shard is staged in tmp_dir and uploaded when
    finished: abort removes the partial one, and it never reaches the store."""
    fs = fsspec.filesystem("memory")
    root = "/abort-test"
    fs.mkdir(root)
    staging = tmp_path / "staging"
    staging.mkdir()
    pieces = sorted_pieces(groups_of(12, seed=2))
    w = ShardWriter(fs, root, 0, 3_000, "str", tmp_dir=str(staging))
    for h, canon, n, nw, nb, blob, _ in pieces[:-1]:
        w.add_piece(h, canon, n, nw, nb, len(blob), io.BytesIO(blob))
    done = [s["path"] for s in w.shards]
    assert done and len(os.listdir(staging)) == 1  # the open shard, staged locally
    w.abort()
    assert os.listdir(staging) == [] and w.file is None
    assert sorted(fs.ls(root, detail=False)) == [f"{root}/{p}" for p in done]  # finished shards only
    for p in done:
        assert fs.cat_file(f"{root}/{p}").endswith(END_OF_ARCHIVE)
    fs.rm(root, recursive=True)


def test_abort_on_a_local_disk_closes_the_open_shard(tmp_path):
    """On a local disk shards are written in place, in the staged snapshot
    folder, which the snapshot's abort removes as a whole."""
    pieces = sorted_pieces(groups_of(3))
    w = ShardWriter(fsspec.filesystem("file"), str(tmp_path), 0, 1 << 20, "str")
    h, canon, n, nw, nb, blob, _ = pieces[0]
    w.add_piece(h, canon, n, nw, nb, len(blob), io.BytesIO(blob))
    f = w.file
    w.abort()
    assert f.closed and w.file is None and w.shards == []
    w.abort()  # twice is harmless


def test_partition_shard_bytes_and_its_deprecated_alias(tmp_path):
    import warnings

    import torch_grouper as tg
    from helpers import digest

    exs = [{"g": f"u{i % 11}", "t": "x" * (i % 97)} for i in range(400)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns about nothing
        m = tg.partition(exs, "g", tmp_path / "new", shard_bytes=2_000, num_workers=1, progress=False)
    assert m["partition"]["shard_size"] == 2_000 and len(m["shards"]) > 3  # the manifest key of the format
    assert all(s["num_bytes"] >= 2_000 for s in m["shards"][:-1])
    with pytest.warns(DeprecationWarning, match=r"shard_size=\.\.\.\) is deprecated; use shard_bytes="):
        tg.partition(exs, "g", tmp_path / "old", shard_size=2_000, num_workers=1, progress=False)
    assert digest(tmp_path / "old") == digest(tmp_path / "new")
    with pytest.raises(TypeError, match="pass shard_bytes only"):
        tg.partition(exs, "g", tmp_path / "both", shard_bytes=2_000, shard_size=2_000, progress=False)
    with pytest.raises(ValueError, match="shard_bytes must be positive, got 0"):
        tg.partition(exs, "g", tmp_path / "zero", shard_bytes=0, progress=False)
    assert not (tmp_path / "both").exists() and not (tmp_path / "zero").exists()
    splits = tg.partition({"a": exs[:200], "b": exs[200:]}, "g", tmp_path / "splits", shard_bytes=1_000,
                          num_workers=1, progress=False)
    assert {s: m["partition"]["shard_size"] for s, m in splits.items()} == {"a": 1_000, "b": 1_000}
    assert tg.partition(exs[:5], "g", tmp_path / "default", progress=False)["partition"]["shard_size"] == 256 << 20


def test_the_write_path_imports_no_read_side_module():
    """partition() and everything it imports, followed through the package's
    relative imports, reaches neither stats (reporting) nor the reader."""
    import ast

    pkg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "torch_grouper")

    def imports(mod):
        path = os.path.join(pkg, *mod.split(".")) + ".py"
        base = mod.split(".")[:-1]  # the package a relative import starts from
        if not os.path.exists(path):
            path = os.path.join(pkg, *mod.split("."), "__init__.py")
            base = mod.split(".")
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                parent = base[:len(base) - node.level + 1]
                target = parent + (node.module.split(".") if node.module else [])
                for alias in node.names:
                    sub = ".".join(target + [alias.name])
                    if os.path.exists(os.path.join(pkg, *sub.split(".")) + ".py"):
                        yield sub
                    elif target:
                        yield ".".join(target)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n == "torch_grouper" or n.startswith("torch_grouper.") for n in names), \
                    f"{mod} imports the package by its name"

    seen, todo = set(), ["pipeline"]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        todo.extend(imports(mod))
    assert {"writer", "labels", "format", "_version", "engines.local", "sources"} <= seen
    assert not seen & {"stats", "dataset", "views", "verify", "flower", "transforms"}, sorted(seen)


def test_no_module_imports_the_package_face():
    """Modules import each other, never ``torch_grouper`` itself (its
    ``__init__`` imports them all); ``__version__`` comes from ``_version``."""
    pkg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "torch_grouper")
    import ast

    bad = []
    for dirpath, _, files in os.walk(pkg):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):  # code, not docstrings
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom):
                        names = [node.module or ""] if not node.level else (
                            [a.name for a in node.names] if not node.module else [])
                    else:
                        continue
                    if any(n == "torch_grouper" or n.startswith("torch_grouper.") or n == "__version__"
                           for n in names):
                        bad.append(f"{os.path.relpath(path, pkg)}:{node.lineno}: {ast.unparse(node)}")
    assert bad == []


def test_partition_does_not_import_torch(tmp_path):
    """The package face imports the read side (PyTorch datasets) on first use:
    a partition, in this process or in a cluster's worker, never imports torch."""
    code = textwrap.dedent("""
        import sys
        import torch_grouper as tg
        from torch_grouper.engines import ray as _ray_engine  # what a Ray worker imports
        m = tg.partition([{"u": str(i % 3), "x": i} for i in range(30)], "u", sys.argv[1], progress=False)
        assert m["num_groups"] == 3
        assert "torch" not in sys.modules, "partition imported torch"
        assert len(tg.GroupedDataset(sys.argv[1])) == 3 and "torch" in sys.modules
        assert sorted(n for n in tg.__all__ if not hasattr(tg, n)) == []
    """)
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "o")], check=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
