"""Shards are plain tar files that stock readers open."""
import json
import tarfile

import datasets
import webdataset as wds

import torch_grouper as tg
from helpers import mixed_examples


def _dataset(tmp_path):
    exs = mixed_examples(200)
    tg.partition(exs, "gid", tmp_path / "out", num_workers=2, progress=False, shard_bytes=30_000)
    return exs, tg.shard_urls(tmp_path / "out")


def test_tarfile_reads_every_member(tmp_path):
    exs, shards = _dataset(tmp_path)
    assert len(shards) > 1
    n = 0
    keys = set()
    for s in shards:
        with tarfile.open(s) as t:
            for m in t.getmembers():
                assert m.isfile()
                key, _, ext = m.name.partition(".")
                assert "/" not in m.name and ".." not in m.name
                if ext == "json":
                    n += 1
                    keys.add(key)
                    json.loads(t.extractfile(m).read())
    assert n == len(exs) == len(keys)


def test_index_offsets_point_at_group_members(tmp_path):
    exs, shards = _dataset(tmp_path)
    index = tg.load_index(tmp_path / "out")
    for row in index.to_pylist():
        with open(f"{tg.GroupedDataset(tmp_path / 'out').root}/{row['shard']}", "rb") as f:
            f.seek(row["offset"])
            chunk = f.read(row["length"])
        with tarfile.open(fileobj=__import__("io").BytesIO(chunk + b"\0" * 1024)) as t:
            names = [m.name for m in t.getmembers() if m.name.endswith(".json")]
        assert len(names) == row["num_examples"]
        assert len({n.split("_")[0] for n in names}) == 1  # one group's key prefix


def test_webdataset_reads_every_sample(tmp_path):
    exs, shards = _dataset(tmp_path)
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode())
    assert len(samples) == len(exs)
    got = sorted(s["json"]["i"] for s in samples)
    assert got == list(range(len(exs)))
    with_arr = [s for s in samples if "arr.npy" in s]
    assert len(with_arr) == len(exs)


def test_hf_datasets_loads_webdataset(tmp_path):
    exs = [{"g": f"u{i % 5}", "text": f"t {i}", "i": i} for i in range(120)]
    tg.partition(exs, "g", tmp_path / "out", progress=False)
    shards = tg.shard_urls(tmp_path / "out")
    hf = datasets.load_dataset("webdataset", data_files={"train": shards}, split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert hf.num_rows == len(exs)
    assert sorted(r["json"]["i"] for r in hf) == list(range(len(exs)))
