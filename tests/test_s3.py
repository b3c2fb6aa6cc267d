"""Real S3 API (moto's server on 127.0.0.1, started here): partition to it, stream
from it with DataLoader workers, random access, cohorts."""
from collections import Counter

import pytest
from torch.utils.data import DataLoader

import torch_grouper as tg

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")


def test_partition_to_s3_and_stream_back(s3, tmp_path):
    exs = [{"g": f"user{i % 11}", "i": i, "t": "x y " * (i % 5)} for i in range(2000)]
    m = tg.partition(exs, "g", "s3://bucket/fed", num_workers=2, shard_bytes=20_000, storage_options=s3,
                     progress=False)
    assert len(m["shards"]) > 2
    fs = s3fs.S3FileSystem(**s3)
    ds = tg.GroupedDataset("s3://bucket/fed", storage_options=s3)
    assert fs.exists(f"bucket/fed/snapshots/{m['snapshot']}/manifest.json") and ds.snapshot == m["snapshot"]
    ds = tg.GroupedDataset("s3://bucket/fed", storage_options=s3, shuffle=True, seed=1)
    seen = Counter()
    for g in DataLoader(ds, batch_size=None, num_workers=2):
        seen[g.id] += 1
        assert [e["i"] for e in g] == [e["i"] for e in exs if e["g"] == g.id]
    assert seen == Counter({f"user{k}": 1 for k in range(11)})
    assert [e["i"] for e in ds["user3"]] == [e["i"] for e in exs if e["g"] == "user3"]
    cohort = next(iter(ds.cohorts(4, seed=0)))
    assert len({g.id for g in cohort}) == 4 and all(len(g) > 0 for g in cohort)
    # a local copy of the same partition is byte-identical
    tg.partition(exs, "g", tmp_path / "local", num_workers=1, shard_bytes=20_000, progress=False)
    local = tg.GroupedDataset(tmp_path / "local").root
    for s in m["shards"]:
        assert fs.cat_file(f"bucket/fed/snapshots/{m['snapshot']}/{s['path']}") == open(f"{local}/{s['path']}", "rb").read()


def test_s3_sources_and_existing_output(s3):
    fs = s3fs.S3FileSystem(**s3)
    fs.pipe("bucket/in/a.jsonl", b"".join(b'{"u": "%d", "i": %d}\n' % (i % 3, i) for i in range(300)))
    tg.partition("s3://bucket/in/*.jsonl", "u", "s3://bucket/out", storage_options=s3, progress=False)
    assert len(tg.GroupedDataset("s3://bucket/out", storage_options=s3)) == 3
    with pytest.raises(FileExistsError, match="already holds a complete torch_grouper dataset"):
        tg.partition("s3://bucket/in/a.jsonl", "u", "s3://bucket/out", storage_options=s3, progress=False)
    with pytest.raises(ValueError, match="is not a torch_grouper dataset"):
        tg.GroupedDataset("s3://bucket/in", storage_options=s3)
