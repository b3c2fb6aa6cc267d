"""The same source and key give byte-identical output for any number of workers."""
import hashlib
import json
import os

import torch_grouper as tg
from conftest import mixed_examples


def digest(path):
    return {f: hashlib.sha256(open(os.path.join(path, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(path))}


def test_byte_identical_for_1_2_3_workers(tmp_path, monkeypatch):
    from torch_grouper import sources

    monkeypatch.setattr(sources, "SLICE_BYTES", 50_000)  # ~20 slices, shared out differently per worker count
    src = tmp_path / "src.jsonl"
    exs = [{"url": f"https://s{(i * 7919) % 97}.example.org/{i}", "text": "a b " * (i % 40), "i": i}
           for i in range(6000)]
    src.write_text("".join(json.dumps(e) + "\n" for e in exs))
    outs = []
    for w in (1, 2, 3):
        out = tmp_path / f"w{w}"
        # a small memory budget forces several spilled runs per worker
        tg.partition(src, tg.UrlDomainKey(), out, num_workers=w, shard_size=100_000,
                     memory_budget=200_000, progress=False)
        outs.append(digest(out))
    assert len(outs[0]) > 4  # several shards + index + manifest
    assert outs[0] == outs[1] == outs[2]


def test_iterable_and_binary_fields_deterministic(tmp_path):
    exs = mixed_examples(300)
    d = []
    for w in (1, 3):
        tg.partition(exs, "gid", tmp_path / f"o{w}", num_workers=w, shard_size=10_000, progress=False)
        d.append(digest(tmp_path / f"o{w}"))
    assert d[0] == d[1]
