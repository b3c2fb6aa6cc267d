"""GroupedDataset under DataLoader / StatefulDataLoader: every group exactly once."""
import pickle
from collections import Counter

import pytest
from torch.utils.data import DataLoader

import torch_grouper as tg
from helpers import groupby, mixed_examples, same


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "out"
    exs = [{"g": f"client{i % 37}", "i": i, "t": "w " * (i % 9)} for i in range(2000)]
    tg.partition(exs, "g", out, num_workers=2, shard_bytes=8_000, progress=False)
    return out, exs


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_dataloader_exactly_once(dataset_dir, workers):
    out, exs = dataset_dir
    ds = tg.GroupedDataset(out)
    expected = groupby(exs, lambda e: e["g"])
    seen = Counter()
    for g in DataLoader(ds, batch_size=None, num_workers=workers):
        seen[g.id] += 1
        assert len(g) == len(expected[g.id])
        assert [e["i"] for e in g] == [e["i"] for e in expected[g.id]]
    assert seen == Counter({k: 1 for k in expected})


def test_one_shard_many_workers_no_idle_reader(tmp_path):
    exs = [{"g": f"c{i % 10}", "i": i} for i in range(500)]
    tg.partition(exs, "g", tmp_path / "o", progress=False)
    ds = tg.GroupedDataset(tmp_path / "o")
    assert len(ds.manifest["shards"]) == 1
    shares = [list(tg.GroupedDataset(tmp_path / "o", rank=r, world_size=4)) for r in range(4)]
    assert all(shares)
    assert sorted(g.id for s in shares for g in s) == sorted(set(e["g"] for e in exs))


def test_stateful_dataloader_smoke(dataset_dir):
    from torchdata.stateful_dataloader import StatefulDataLoader

    out, exs = dataset_dir
    ids = [g.id for g in StatefulDataLoader(tg.GroupedDataset(out), batch_size=None, num_workers=2)]
    assert sorted(ids) == sorted(set(e["g"] for e in exs))


def test_groups_pickle_materialized(tmp_path):
    exs = mixed_examples(100)
    tg.partition(exs, "gid", tmp_path / "o", progress=False)
    ds = tg.GroupedDataset(tmp_path / "o")
    expected = groupby(exs, lambda e: e["gid"])
    for g in ds:
        back = pickle.loads(pickle.dumps(g))
        assert back.id == g.id and len(back) == len(g)
        assert all(same(a, b) for a, b in zip(back, expected[g.id]))
    ds2 = pickle.loads(pickle.dumps(ds))
    assert len(list(ds2)) == len(ds)


def test_random_access_equals_stream(tmp_path):
    exs = mixed_examples(300)
    tg.partition(exs, "gid", tmp_path / "o", shard_bytes=5_000, progress=False)
    ds = tg.GroupedDataset(tmp_path / "o")
    streamed = {g.id: list(g) for g in ds}
    assert sorted(ds.group_ids()) == sorted(streamed)
    for gid, examples in streamed.items():
        assert all(same(a, b) for a, b in zip(ds[gid], examples))


def test_workers_forked_after_reading_in_the_main_process_read_their_own_handles(tmp_path):
    """A forked DataLoader worker must not reuse the main process's open shard
    handles: their file offsets are shared with the parent and the siblings."""
    exs = [{"g": f"u{i % 40}", "i": i} for i in range(4000)]
    tg.partition(exs, "g", tmp_path / "o", progress=False, num_workers=1)
    ds = tg.GroupedDataset(tmp_path / "o")
    main = {g.id: [e["i"] for e in g] for g in ds}  # leaves open handles in this process
    for _ in range(3):
        assert {g.id: [e["i"] for e in g] for g in DataLoader(ds, batch_size=None, num_workers=2)} == main
