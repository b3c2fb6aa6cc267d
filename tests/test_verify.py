"""verify() finds each kind of damage and names the file."""
import json
import os

import pytest

import torch_grouper as tg
from torch_grouper.cli import main


@pytest.fixture
def dataset(tmp_path):
    exs = [{"g": f"u{i % 9}", "i": i, "t": "w" * (i % 50)} for i in range(1500)]
    tg.partition(exs, "g", tmp_path / "d", shard_size=10_000, progress=False)
    shards = [s["path"] for s in json.load(open(tmp_path / "d" / "manifest.json"))["shards"]]
    assert len(shards) >= 3 and tg.verify(tmp_path / "d") == []
    return tmp_path / "d", shards


def test_flipped_byte(dataset):
    d, shards = dataset
    p = d / shards[1]
    raw = bytearray(p.read_bytes())
    raw[700] ^= 0x01
    p.write_bytes(bytes(raw))
    (problem,) = tg.verify(d)
    assert shards[1] in problem and "sha256" in problem and "corrupted" in problem


def test_truncated_missing_foreign(dataset, capsys):
    d, shards = dataset
    p = d / shards[0]
    p.write_bytes(p.read_bytes()[:1000])
    os.remove(d / shards[2])
    (d / "stray.txt").write_text("?")
    problems = tg.verify(d)
    assert any(shards[0] in x and "truncated" in x for x in problems)
    assert any(shards[2] in x and x.endswith("missing") for x in problems)
    assert any("stray.txt" in x and "foreign file" in x for x in problems)
    assert len(problems) == 3
    assert main(["verify", str(d)]) == 1
    assert "3 problem(s)" in capsys.readouterr().out


def test_index_and_manifest_damage(dataset):
    d, _ = dataset
    idx = d / "index.parquet"
    raw = bytearray(idx.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    idx.write_bytes(bytes(raw))
    assert any("index.parquet" in x for x in tg.verify(d))
    os.remove(d / "manifest.json")
    assert "no manifest.json" in tg.verify(d)[0]
