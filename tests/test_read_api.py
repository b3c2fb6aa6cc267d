"""The reader's parameters (ReadOptions) and the public methods views read through."""
import pickle

import numpy as np
import pytest

import torch_grouper as tg
from torch_grouper.dataset import GroupLocation, ReadOptions
from helpers import same


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("read_api") / "d"
    exs = [{"g": f"u{i % 4}", "i": i, "t": "x" * (i * 53 % 400)} for i in range(120)]
    tg.partition(exs, "g", out, num_workers=1, progress=False)
    want = {}
    for ex in exs:
        want.setdefault(ex["g"], []).append(ex)
    return out, want


@pytest.mark.parametrize("field,value", [("whole_read", 0), ("window", -1), ("open_shards", 1.5),
                                         ("window", True)])
def test_read_options_are_checked(field, value):
    with pytest.raises(ValueError, match=rf"ReadOptions\.{field} must be an int >= 1, got {value!r}"):
        ReadOptions(**{field: value})


def test_read_options_must_be_read_options(data):
    with pytest.raises(TypeError, match="read_options must be a ReadOptions, got dict"):
        tg.GroupedDataset(data[0], read_options={"window": 10})


def test_groups_larger_than_whole_read_are_read_in_windows(data):
    path, want = data
    opts = ReadOptions(whole_read=1000, window=700)
    ds = tg.GroupedDataset(path, read_options=opts)
    sizes = []
    real = ds._reader.read

    def read(shard, offset, length, ranged=False):
        sizes.append(length)
        return real(shard, offset, length, ranged)

    ds._reader.read = read
    for gid, exs in want.items():
        sizes.clear()
        got = list(ds[gid])
        assert len(got) == len(exs) and all(same(a, b) for a, b in zip(got, exs))
        assert len(sizes) > 1 and sizes[0] == 700 and max(sizes) <= 4 * 700  # windows, widened for big examples
    ds = tg.GroupedDataset(path)  # defaults: each group in one read
    assert ds._reader.options == ReadOptions()
    # the options travel with the dataset to DataLoader workers
    assert pickle.loads(pickle.dumps(tg.GroupedDataset(path, read_options=opts)))._reader.options == opts


def test_public_methods_views_use(data):
    path, want = data
    ds = tg.GroupedDataset(path, rank=1, world_size=3)
    assert ds.reader_share() == (1, 3, False)
    assert tg.GroupedDataset(path).reader_share() == (0, 1, False)
    ids = ds.group_ids()
    assert ds.group_ids_at([3, 0]) == [ids[3], ids[0]]
    assert ds.group_num_examples().tolist() == [len(want[g]) for g in ids]
    g = ds.group_at(2, materialize=True)
    assert g.id == ids[2] and g._examples is not None and all(same(a, b) for a, b in zip(g, want[ids[2]]))
    lazy = ds.group_at(2)
    assert lazy._examples is None and isinstance(lazy._src, GroupLocation)
    assert lazy._src.num_examples == len(want[ids[2]]) and lazy._src.ranged
    assert lazy._src.key_prefix.endswith(b"_") and len(lazy._src.key_prefix) == 17
    counted = ds.map_groups(len)
    assert counted.group_at(1) == len(want[ids[1]])  # after map_groups
    part = ds.split_examples({"a": 0.5, "b": 0.5}, seed=1)["a"]
    assert len(part.group_at(0).examples()) == len(want[ids[0]]) // 2  # after the view's example split
    assert np.array_equal(part.group_num_examples(), ds.group_num_examples())
