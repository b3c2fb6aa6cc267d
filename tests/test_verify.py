"""verify() finds each kind of damage and names the file."""
import json
import os
import re
from pathlib import Path

import pytest

import torch_grouper as tg
from torch_grouper.cli import main


@pytest.fixture
def dataset(tmp_path):
    exs = [{"g": f"u{i % 9}", "i": i, "t": "w" * (i % 50)} for i in range(1500)]
    tg.partition(exs, "g", tmp_path / "d", shard_bytes=10_000, progress=False)
    ds = tg.GroupedDataset(tmp_path / "d")
    shards = [s["path"] for s in ds.manifest["shards"]]
    assert len(shards) >= 3 and tg.verify(tmp_path / "d") == []
    return tmp_path / "d", shards, Path(ds.root)  # the dataset, its shards, its snapshot folder


def test_flipped_byte(dataset):
    d, shards, f = dataset
    p = f / shards[1]
    raw = bytearray(p.read_bytes())
    raw[700] ^= 0x01
    p.write_bytes(bytes(raw))
    (problem,) = tg.verify(d)
    assert shards[1] in problem and "sha256" in problem and "corrupted" in problem


def test_truncated_missing_foreign(dataset, capsys):
    d, shards, f = dataset
    p = f / shards[0]
    p.write_bytes(p.read_bytes()[:1000])
    os.remove(f / shards[2])
    (f / "stray.txt").write_text("?")
    problems = tg.verify(d)
    assert any(shards[0] in x and "truncated" in x for x in problems)
    assert any(shards[2] in x and x.endswith("missing") for x in problems)
    assert any("stray.txt" in x and "foreign file" in x for x in problems)
    assert len(problems) == 3
    assert main(["verify", str(d)]) == 1
    assert "3 problem(s)" in capsys.readouterr().out


def test_index_and_manifest_damage(dataset):
    d, _, f = dataset
    idx = f / "index.parquet"
    raw = bytearray(idx.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    idx.write_bytes(bytes(raw))
    assert any("index.parquet" in x for x in tg.verify(d))
    os.remove(f / "manifest.json")
    assert re.match(rf"{d}: snapshot {f.name} is not available .*its files are missing", tg.verify(d)[0])


def test_reading_damaged_shards_names_shard_and_offset(dataset):
    d, shards, f = dataset
    index = tg.load_index(d).to_pylist()
    victim = next(r for r in index if r["shard"] == shards[1])
    p = f / shards[1]
    raw = bytearray(p.read_bytes())
    raw[victim["offset"] + 512] = ord("!")  # the first example's JSON no longer starts with {
    p.write_bytes(bytes(raw))
    ds = tg.GroupedDataset(d)
    with pytest.raises(tg.TarFormatError, match=rf"{shards[1]}: group at byte offset {victim['offset']}: "
                                                r"member '.*\.json' does not decode"):
        list(ds[victim["group_id"]])
    with pytest.raises(tg.TarFormatError, match=shards[1]):
        for g in ds:
            list(g)
    skipping = tg.GroupedDataset(d, on_error="skip")
    with pytest.warns(UserWarning, match=rf"skipping damaged group '{victim['group_id']}'"):
        got = [g.id for g in skipping]
    assert len(got) == len(index) - 1 and [s[0] for s in skipping.skipped] == [victim["group_id"]]
    # truncation: the shard ends early
    q = f / shards[2]
    q.write_bytes(q.read_bytes()[:2000])
    last = [r for r in index if r["shard"] == shards[2]][-1]
    with pytest.raises(tg.TarFormatError, match=rf"{shards[2]}: byte offset \d+: shard ends early"):
        list(tg.GroupedDataset(d)[last["group_id"]])


def test_pickle_and_object_arrays_never_load(tmp_path):
    import io
    import tarfile

    import numpy as np

    tg.partition([{"g": "a", "v": 1}], "g", tmp_path / "d", progress=False)
    shard = tg.shard_urls(tmp_path / "d")[0]
    members = []
    with tarfile.open(shard) as t:
        for m in t.getmembers():
            members.append((m.name, t.extractfile(m).read()))
    key = members[0][0].split(".")[0]
    obj = io.BytesIO()
    np.save(obj, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    for name, data, message in [(f"{key}.evil.pickle", b"\x80\x04K\x01.", "never unpickles"),
                                (f"{key}.arr.npy", obj.getvalue(), "allow_pickle=False")]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
            for n, d in members + [(name, data)]:
                info = tarfile.TarInfo(n)
                info.size = len(d)
                t.addfile(info, io.BytesIO(d))
        from torch_grouper.codec import assemble
        from torch_grouper.tario import iter_members

        with pytest.raises(tg.TarFormatError, match=message):
            list(assemble(iter_members(buf.getvalue(), "x.tar"), "x.tar", 0))


def test_unknown_format_version_refused(dataset):
    d, _, f = dataset
    m = json.load(open(f / "manifest.json"))
    m["format_version"] = 99
    (f / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="dataset format version 99 is not supported"):
        tg.GroupedDataset(d)
    (f / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        tg.GroupedDataset(d)
