"""``tg.to_ray_dataset``: a grouped dataset read by Ray Data, one row per
group, every group exactly once with the examples that were partitioned, from
the snapshot current when it was called."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

import torch_grouper as tg  # noqa: E402
from torch_grouper import ray_data  # noqa: E402
from helpers import ROOT  # noqa: E402

pytestmark = pytest.mark.ray



def rows(n=1500, tag="a"):
    return [{"user": f"u{(i * 31) % 97}", "text": f"{tag} " * (i % 23), "i": i, "blob": bytes([i % 256]) * (i % 5)}
            for i in range(n)]


def by_group(exs, key):
    out = {}
    for ex in exs:
        out.setdefault(key(ex), []).append(ex)
    return out


def plain(v):
    if isinstance(v, np.ndarray):
        return [plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def read_all(rds) -> list:
    return [plain(r) for r in rds.take_all()]


KEYS = {"str": ("user", lambda ex: ex["user"]), "int": (lambda ex: ex["i"] % 13, lambda ex: ex["i"] % 13)}


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_every_group_exactly_once_with_its_examples(local_ray, tmp_path, kind):
    exs = rows()
    key, f = KEYS[kind]
    tg.partition(exs, key, tmp_path / "d", shard_bytes=20_000, progress=False)
    want = by_group(exs, f)
    rds = tg.to_ray_dataset(tmp_path / "d", override_num_blocks=5)
    assert rds.materialize().num_blocks() >= 5  # several read tasks share the groups
    got = read_all(rds)
    ids = [r["group_id"] for r in got]
    assert len(ids) == len(set(ids)) == len(want)  # each group once
    assert set(ids) == set(want)
    assert ids == tg.GroupedDataset(tmp_path / "d").group_ids()  # in dataset order
    for r in got:
        assert r["num_examples"] == len(want[r["group_id"]])
        assert r["examples"] == want[r["group_id"]]  # every field of every example, in order
    assert sum(r["num_examples"] for r in got) == len(exs)


def test_the_snapshot_is_pinned(local_ray, tmp_path):
    out = tmp_path / "d"
    first = rows(600, "a")
    tg.partition(first, "user", out, shard_bytes=20_000, progress=False)
    snap = tg.GroupedDataset(out).snapshot
    rds = tg.to_ray_dataset(out)  # nothing is read yet: Ray Data runs lazily
    second = rows(300, "b")
    tg.partition(second, "user", out, shard_bytes=20_000, progress=False, overwrite=True)
    assert tg.GroupedDataset(out).snapshot != snap
    got = read_all(rds)
    assert sum(r["num_examples"] for r in got) == 600
    assert {r["group_id"]: r["examples"] for r in got} == by_group(first, lambda ex: ex["user"])
    # a new call reads the new snapshot; snapshot= reads a named one
    assert sum(r["num_examples"] for r in read_all(tg.to_ray_dataset(out))) == 300
    assert sum(r["num_examples"] for r in read_all(tg.to_ray_dataset(out, snapshot=snap))) == 600


def test_missing_and_bad_paths_are_named(local_ray, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"to_ray_dataset: no grouped dataset at .*nowhere"):
        tg.to_ray_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty is not a torch_grouper dataset"):
        tg.to_ray_dataset(tmp_path / "empty")
    tg.partition(rows(50), "user", tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match=r"'nope' is not a snapshot id"):
        tg.to_ray_dataset(tmp_path / "d", snapshot="nope")


def test_import_does_not_import_ray():
    code = "import sys, torch_grouper as tg; assert callable(tg.to_ray_dataset); print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10_000), max_size=60), st.integers(1, 80))
def test_split_rows_covers_every_row_once(sizes, parts):
    ranges = ray_data._split_rows(np.array(sizes, dtype=np.int64), parts)
    assert len(ranges) <= parts
    assert [r for a, b in ranges for r in range(a, b)] == list(range(len(sizes)))
    assert all(b > a for a, b in ranges)
    w = [max(s, 1) for s in sizes]
    for a, b in ranges:  # balanced by bytes: a range passes its share by at most one group
        assert sum(w[a:b]) <= sum(w) / min(parts, len(w)) + max(w)
