"""The shipped FedShakespeare data partitions and streams back exactly; stats and plots work."""
import gzip
import json
import os
from collections import Counter

import torch_grouper as tg
from torch_grouper.stats import format_summary, plot_group_sizes, summary

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "fedshakespeare", "fedshakespeare.jsonl.gz")


def test_fedshakespeare_roundtrip_and_stats(tmp_path):
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        exs = [json.loads(line) for line in f]
    key = lambda ex: f"{ex['play']}/{ex['speaker']}"  # noqa: E731
    sizes = Counter(key(e) for e in exs)
    assert len(exs) == 30207 and len(sizes) == 1348
    tg.partition(DATA, key, tmp_path / "fs", num_workers=2, shard_bytes=1 << 20, progress=False)
    ds = tg.GroupedDataset(tmp_path / "fs")
    assert len(ds) == len(sizes)
    by_group = {}
    for e in exs:
        by_group.setdefault(key(e), []).append(e)
    for g in ds:
        assert list(g) == by_group[g.id]
    s = summary(ds)
    assert s["num_examples"] == len(exs) and s["num_groups"] == len(sizes)
    assert s["num_examples_per_group"]["p100"] == max(sizes.values())
    assert s["num_words"] == sum(len(v.split()) for e in exs for v in e.values())
    assert "groups:   1,348" in format_summary(s)
    png = plot_group_sizes(ds, str(tmp_path / "sizes.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
