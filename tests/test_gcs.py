"""Real GCS JSON API (fake-gcs-server on 127.0.0.1, started by the ``gcs``
fixture in gcs_server.py): partition to gs:// with pool workers, stream with
DataLoader workers, random access, cohorts, JSON Lines read from gs://, shards
byte-identical to a local run, and two writers racing for one commit."""
import gzip
import json
import os
import subprocess
import sys
from collections import Counter

import fsspec
import pytest
from torch.utils.data import DataLoader

import torch_grouper as tg
import torchdata.nodes as tn
from torch_grouper.nodes import as_node
from gcs_server import PLAIN_GCSFS, PROBE_VAR, gcs_filesystem_class

gcsfs = pytest.importorskip("gcsfs")


def examples(n=2000, tag="a"):
    return [{"g": f"user{i % 11}", "i": i, "t": "x y " * (i % 5), "v": tag} for i in range(n)]


def expected(exs, key="g"):
    out: dict = {}
    for e in exs:
        out.setdefault(e[key], []).append(e)
    return out


def content(path, **kw):
    return {g.id: g.examples() for g in tg.GroupedDataset(path, **kw)}


class KeyInWorker:
    """A key function that checks, in partition's pool workers, that gs://
    gets gcsfs's plain HTTP filesystem (no gRPC probe)."""

    def __init__(self, column):
        self.column = column

    def __call__(self, ex):
        assert os.environ.get(PROBE_VAR) == "false" and gcs_filesystem_class() == PLAIN_GCSFS, (
            f"pid {os.getpid()}: {PROBE_VAR}={os.environ.get(PROBE_VAR)!r}, gs:// -> {gcs_filesystem_class()}")
        return ex[self.column]


def with_worker_fs(g):
    """map_groups function: what the DataLoader worker reading ``g`` uses for gs://."""
    return g.id, g.examples(), os.getpid(), os.environ.get(PROBE_VAR), gcs_filesystem_class()


def test_no_process_probes_buckets_over_grpc(gcs):
    """gcsfs's gRPC bucket probe (about a minute per bucket on an emulator) is
    off here and in every process started from here: a fresh interpreter that
    imports gcsfs from the inherited environment alone (as a spawned worker
    does) gets the plain HTTP filesystem; forked workers are checked in the
    tests below (KeyInWorker, with_worker_fs)."""
    assert os.environ[PROBE_VAR] == "false" and gcs_filesystem_class() == PLAIN_GCSFS
    assert type(fsspec.filesystem("gs", **gcs)) is gcsfs.core.GCSFileSystem
    code = "import fsspec; c = fsspec.get_filesystem_class('gs'); print(c.__module__ + '.' + c.__qualname__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == PLAIN_GCSFS


def test_partition_to_gcs_and_stream_back(gcs, tmp_path):
    exs = examples()
    want = expected(exs)
    m = tg.partition(exs, KeyInWorker("g"), "gs://bucket/fed", num_workers=2, shard_bytes=20_000, storage_options=gcs,
                     progress=False)
    assert len(m["shards"]) > 2 and m["num_groups"] == 11 and m["num_examples"] == len(exs)
    fs = gcsfs.GCSFileSystem(**gcs)
    assert fs.exists(f"bucket/fed/snapshots/{m['snapshot']}/manifest.json")
    ds = tg.GroupedDataset("gs://bucket/fed", storage_options=gcs, shuffle=True, seed=1)
    assert ds.snapshot == m["snapshot"]
    # DataLoader workers each read their share, every group exactly once
    seen = Counter()
    pids = set()
    for gid, got, pid, probe, cls in DataLoader(ds.map_groups(with_worker_fs), batch_size=None, num_workers=2):
        seen[gid] += 1
        pids.add(pid)
        assert got == want[gid]  # every field of every example, in input order
        assert (probe, cls) == ("false", PLAIN_GCSFS)
    assert seen == Counter({f"user{k}": 1 for k in range(11)}) and len(pids) == 2 and os.getpid() not in pids
    # the epoch order is the seeded one
    ds.set_epoch(1)
    assert [g.id for g in ds] == [ds.group_ids()[r] for r in ds.epoch_order(1)]
    # a torchdata.nodes pipeline: groups streamed from gs:// in ParallelMapper threads
    node = tn.ParallelMapper(as_node(ds), lambda g: (g.id, g.examples()), num_workers=4)
    assert dict(tn.Loader(node)) == want
    # random access and cohorts
    assert ds["user3"].examples() == want["user3"]
    with pytest.raises(KeyError, match="no group 'user99' in gs://bucket/fed"):
        ds["user99"]
    cohorts = ds.cohorts(4, seed=0, rounds=3)
    rounds = [[(g.id, g.examples()) for g in c] for c in cohorts]
    assert [[gid for gid, _ in r] for r in rounds] == list(ds.cohort_ids(4, seed=0, rounds=3))
    assert all(len({gid for gid, _ in r}) == 4 and all(exs_ == want[gid] for gid, exs_ in r) for r in rounds)
    assert tg.verify("gs://bucket/fed", storage_options=gcs) == []
    # a local run of the same input writes the same bytes
    tg.partition(exs, "g", tmp_path / "local", num_workers=1, shard_bytes=20_000, progress=False)
    local = tg.GroupedDataset(tmp_path / "local").root
    remote = [p.rsplit("/", 1)[1] for p in fs.find(f"bucket/fed/snapshots/{m['snapshot']}")]
    assert sorted(remote) == sorted(os.listdir(local))
    local_manifest = json.load(open(os.path.join(local, "manifest.json")))
    assert json.loads(fs.cat_file(f"bucket/fed/snapshots/{m['snapshot']}/manifest.json"))["shards"] == \
        local_manifest["shards"]  # names, sizes and checksums (the rest records the key function and times)
    for name in set(os.listdir(local)) - {"manifest.json"}:
        with open(os.path.join(local, name), "rb") as f:
            assert fs.cat_file(f"bucket/fed/snapshots/{m['snapshot']}/{name}") == f.read(), name


def test_jsonl_sources_read_from_gcs(gcs):
    fs = gcsfs.GCSFileSystem(**gcs)
    rows = [{"u": f"u{i % 7}", "i": i, "s": "é" * (i % 3)} for i in range(3000)]
    lines = [json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows]
    fs.pipe("bucket/in/a.jsonl", b"".join(lines[:2000]))  # cut into byte ranges for the workers
    fs.pipe("bucket/in/b.jsonl.gz", gzip.compress(b"".join(lines[2000:])))  # read whole by one worker
    tg.partition("gs://bucket/in/*.jsonl*", KeyInWorker("u"), "gs://bucket/out",
                 storage_options=gcs, num_workers=2, shard_bytes=10_000, progress=False)
    assert content("gs://bucket/out", storage_options=gcs) == expected(rows, "u")
    with pytest.raises(FileExistsError, match="already holds a complete torch_grouper dataset"):
        tg.partition("gs://bucket/in/a.jsonl", "u", "gs://bucket/out", storage_options=gcs, progress=False)
    with pytest.raises(ValueError, match="is not a torch_grouper dataset"):
        tg.GroupedDataset("gs://bucket/in", storage_options=gcs)


def test_concurrent_writers_one_wins_gcs(gcs):
    """Writer A is overtaken by writer B after A read its whole source and
    before A commits: B's commit wins, A raises ConcurrentCommitError and
    leaves nothing behind; the dataset reads back as B's, complete."""
    out = "gs://bucket/race"
    tg.partition(examples(100, "old"), "g", out, storage_options=gcs, progress=False)
    won = []

    def source_of_a():
        yield from examples(300, "A")
        won.append(tg.partition(examples(300, "B"), "g", out, overwrite=True, num_workers=1, storage_options=gcs,
                                progress=False))  # B commits while A is still running

    with pytest.raises(tg.ConcurrentCommitError, match=r"another partition committed snapshot [0-9a-f]{32} "
                                                       r"\(commit 2\) while this one was running"):
        tg.partition(source_of_a(), "g", out, overwrite=True, num_workers=2, storage_options=gcs, progress=False)
    assert len(won) == 1
    ds = tg.GroupedDataset(out, storage_options=gcs)
    assert ds.snapshot == won[0]["snapshot"]
    assert content(out, storage_options=gcs) == expected(examples(300, "B"))
    assert tg.verify(out, storage_options=gcs) == []
    assert [s["snapshot"] for s in tg.list_snapshots(out, storage_options=gcs)][-1] == won[0]["snapshot"]
    fs = gcsfs.GCSFileSystem(**gcs)
    fs.invalidate_cache()
    assert len(fs.ls("bucket/race/snapshots")) == 2  # the first one and B's; A's staged snapshot is gone
    assert fs.find("bucket/race/_leases") == []  # both writers released their lease


def test_exclusive_create_is_enforced_by_the_server(gcs):
    """The commit's primitive: a create that fails when the object exists
    (``ifGenerationMatch=0``), and leaves the first object as it was."""
    fs = gcsfs.GCSFileSystem(**gcs)
    fs.pipe_file("bucket/x/_log/1.json", b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file("bucket/x/_log/1.json", b"second", mode="create")
    assert fs.cat_file("bucket/x/_log/1.json") == b"first"
