"""Splits as index views: group splits (stable, disjoint, covering) and
example splits (seeded, documented rounding, small groups), plus one grouped
dataset per source split."""
import math
from collections import Counter

import datasets
import pytest
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader

import torch_grouper as tg
from torch_grouper import views


def _examples(groups, per=lambda k: 1 + k % 7, tag=""):
    return [{"g": f"c{k}", "i": j, "t": tag} for k in groups for j in range(per(k))]


@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    out = tmp_path_factory.mktemp("splits") / "d"
    tg.partition(_examples(range(2000)), "g", out, progress=False, num_workers=1)
    return out


def test_group_splits_are_disjoint_cover_and_match_fractions(clients):
    ds = tg.GroupedDataset(clients)
    parts = ds.split_groups({"train": 0.8, "val": 0.1, "heldout": 0.1}, seed=0)
    ids = {k: set(v.group_ids()) for k, v in parts.items()}
    assert set().union(*ids.values()) == set(ds.group_ids())
    assert sum(len(v) for v in ids.values()) == len(ds)  # pairwise disjoint
    for name, f in (("train", 0.8), ("val", 0.1), ("heldout", 0.1)):
        sigma = math.sqrt(f * (1 - f) * len(ds))
        assert abs(len(parts[name]) - f * len(ds)) < 4 * sigma, name  # approximate, as documented
        assert len(parts[name]) == len(ids[name])
    # a view streams exactly its groups, once, across DataLoader workers
    seen = Counter(g.id for g in DataLoader(parts["val"], batch_size=None, num_workers=2))
    assert seen == Counter({gid: 1 for gid in ids["val"]})
    assert parts["val"].num_examples == sum(len(ds[g]) for g in ids["val"])
    # another seed gives another split; fractions below 1 leave groups out
    assert set(ds.split_groups({"a": 0.5, "b": 0.5}, seed=1)["a"].group_ids()) != \
        set(ds.split_groups({"a": 0.5, "b": 0.5}, seed=2)["a"].group_ids())
    assert len(ds.split_groups({"few": 0.05}, seed=0)["few"]) < 0.1 * len(ds)


def test_group_split_membership_is_stable_when_groups_are_added(clients, tmp_path):
    bigger = tmp_path / "bigger"
    # more groups, other data, another order: the shared groups keep their split
    tg.partition(_examples(reversed(range(3000)), per=lambda k: 2, tag="x"), "g", bigger, progress=False)
    a = tg.GroupedDataset(clients).split_groups({"train": 0.9, "heldout": 0.1}, seed=7)
    b = tg.GroupedDataset(bigger).split_groups({"train": 0.9, "heldout": 0.1}, seed=7)
    for name in ("train", "heldout"):
        shared = set(b[name].group_ids()) & set(tg.GroupedDataset(clients).group_ids())
        assert shared == set(a[name].group_ids())


def test_views_refuse_foreign_ids_and_states(clients):
    ds = tg.GroupedDataset(clients)
    parts = ds.split_groups({"train": 0.5, "heldout": 0.5}, seed=0)
    inside, outside = parts["train"].group_ids()[0], parts["heldout"].group_ids()[0]
    assert len(parts["train"][inside]) == len(ds[inside])
    with pytest.raises(KeyError, match=f"no group '{outside}'"):
        parts["train"][outside]
    fps = {ds.fingerprint, parts["train"].fingerprint, parts["heldout"].fingerprint}
    assert len(fps) == 3
    it = iter(parts["train"])
    next(it)
    state = parts["train"].state_dict()
    with pytest.raises(ValueError, match="state is for another dataset"):
        parts["heldout"].load_state_dict(state)
    with pytest.raises(ValueError, match="state is for another dataset"):
        ds.load_state_dict(state)
    again = ds.split_groups({"train": 0.5, "heldout": 0.5}, seed=0)["train"]
    again.load_state_dict(state)  # the same view definition: accepted
    assert len(list(again)) == len(parts["train"]) - 1
    with pytest.raises(ValueError, match="fractions sum to 1.2"):
        ds.split_groups({"a": 0.6, "b": 0.6})
    with pytest.raises(ValueError, match="fraction of 'a' must be a number in"):
        ds.split_groups({"a": -0.1})


def test_example_splits_partition_each_group(clients):
    ds = tg.GroupedDataset(clients).split_groups({"heldout": 0.2}, seed=0)["heldout"]
    parts = ds.split_examples({"personalize": 0.8, "test": 0.2}, seed=3, min_examples=2)
    assert parts["personalize"].group_ids() == parts["test"].group_ids()  # the same groups in both
    assert all(len(ds[g]) >= 2 for g in parts["test"].group_ids())
    assert len(parts["test"]) == sum(1 for g in ds.group_ids() if len(ds[g]) >= 2)
    for gid in parts["test"].group_ids():
        full = [e["i"] for e in ds[gid]]
        p, t = [e["i"] for e in parts["personalize"][gid]], [e["i"] for e in parts["test"][gid]]
        assert sorted(p + t) == sorted(full) and not set(p) & set(t)
        assert p == sorted(p) and t == sorted(t)  # input order kept in each part
        assert (len(p), len(t)) == tuple(views.example_part_sizes(len(full), {"p": 0.8, "t": 0.2}))
        # the same parts from the group itself
        assert {k: [e["i"] for e in v] for k, v in ds[gid].split({"personalize": 0.8, "test": 0.2},
                                                                  seed=3).items()} == {"personalize": p, "test": t}
    total = sum(len(g) for g in parts["test"])
    assert total == parts["test"].num_examples
    streamed = {g.id: [e["i"] for e in g] for g in DataLoader(parts["test"], batch_size=None, num_workers=2)}
    assert streamed == {g: [e["i"] for e in parts["test"][g]] for g in parts["test"].group_ids()}
    assert parts["test"].fingerprint != parts["personalize"].fingerprint


def test_small_groups_follow_the_documented_rule(tmp_path):
    out = tmp_path / "small"
    tg.partition([{"g": "one", "i": 0}] + [{"g": "three", "i": k} for k in range(3)], "g", out, progress=False)
    ds = tg.GroupedDataset(out)
    half = ds.split_examples({"a": 0.5, "b": 0.5}, seed=0)
    assert (len(half["a"]["one"]), len(half["b"]["one"])) == (1, 0)  # remainder to the first of the tied parts
    assert (len(half["a"]["three"]), len(half["b"]["three"])) == (2, 1)
    counts = ds.split_examples({"support": 2, "query": None}, seed=0)
    assert (len(counts["support"]["one"]), len(counts["query"]["one"])) == (1, 0)  # earlier parts filled first
    assert (len(counts["support"]["three"]), len(counts["query"]["three"])) == (2, 1)
    dropped = ds.split_examples({"a": 0.5, "b": 0.5}, seed=0, min_examples=2)
    assert dropped["a"].group_ids() == ["three"] or set(dropped["a"].group_ids()) == {"three"}
    with pytest.raises(KeyError):
        dropped["b"]["one"]
    with pytest.raises(ValueError, match="give fractions .* or counts"):
        ds.split_examples({"a": 2, "b": None, "c": None})


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 500), fr=st.lists(st.integers(1, 20), min_size=1, max_size=5))
def test_part_sizes_add_up(n, fr):
    total = sum(fr)
    parts = {f"p{k}": w / total for k, w in enumerate(fr)}
    sizes = views.example_part_sizes(n, parts)
    assert sum(sizes) == n and all(s >= 0 for s in sizes)
    assert all(abs(s - n * f) < 1 + 1e-9 for s, f in zip(sizes, parts.values()))
    counts = {f"p{k}": w for k, w in enumerate(fr)}
    sizes = views.example_part_sizes(n, counts)
    assert sum(sizes) == min(n, total) and all(s <= c for s, c in zip(sizes, fr))


def test_one_dataset_per_source_split(tmp_path):
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(_examples(range(30), tag="train")),
        "test": datasets.Dataset.from_list(_examples(range(20, 40), per=lambda k: 2, tag="test")),
    })
    out = tmp_path / "dd"
    ms = tg.partition(dd, "g", out, progress=False)
    assert list(ms) == ["train", "test"] and ms["train"]["part"] == "train" and ms["test"]["part"] == "test"
    train, test = tg.GroupedDataset(out / "train"), tg.GroupedDataset(out / "test")
    assert len(train) == 30 and len(test) == 20 and train.snapshot == test.snapshot
    assert {e["t"] for g in test for e in g} == {"test"}
    assert len(test["c25"]) == 2 and len(train["c25"]) == 1 + 25 % 7  # one id space
    with pytest.raises(ValueError, match=r"holds several datasets written together \(train, test\)"):
        tg.GroupedDataset(out)
    # a dict of plain sources works the same way
    ms = tg.partition({"a": _examples(range(3)), "b": _examples(range(2))}, "g", tmp_path / "plain", progress=False)
    assert {k: m["num_groups"] for k, m in ms.items()} == {"a": 3, "b": 2}


def test_shuffle_seed_is_datasets_shuffle_before_partitioning(tmp_path):
    rows = [{"g": f"c{i % 7}", "i": i} for i in range(300)]
    hf = datasets.Dataset.from_list(rows)
    tg.partition(hf, "g", tmp_path / "s", progress=False, shuffle_seed=42)
    shuffled = hf.shuffle(seed=42)
    want = {}
    for r in shuffled:
        want.setdefault(r["g"], []).append(r["i"])
    got = {g.id: [e["i"] for e in g] for g in tg.GroupedDataset(tmp_path / "s")}
    assert got == want and got["c0"] != sorted(got["c0"])
    with pytest.raises(ValueError, match="shuffle_seed shuffles a map-style datasets.Dataset"):
        tg.partition(rows, "g", tmp_path / "x", progress=False, shuffle_seed=1)
