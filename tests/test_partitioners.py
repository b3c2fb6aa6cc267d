"""flwr-datasets-style partitioners: exactly-once, sizes and constraints, seeded determinism."""
import hashlib
import json
import os
from collections import Counter

import datasets
import numpy as np
import pytest

import torch_grouper as tg
from helpers import digest
from torch_grouper import partitioners as P

N = 3000


def labelled(n=N, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(10, size=n, p=np.array([20, 15, 12, 10, 10, 9, 8, 7, 5, 4]) / 100)
    return [{"i": i, "label": int(labels[i]), "x": float(i % 7)} for i in range(n)]


def groups_of(path):
    """group id -> list of example 'i' (in stored order)."""
    return {g.id: [e["i"] for e in g] for g in tg.GroupedDataset(path)}


def run(tmp_path, source, part, name="o", workers=2):
    m = tg.partition(source, part, tmp_path / name, num_workers=workers, progress=False)
    return m, groups_of(tmp_path / name)


def assert_exactly_once(groups, n, dropped=0):
    seen = [i for ids in groups.values() for i in ids]
    assert len(seen) == len(set(seen)) == n - dropped
    for ids in groups.values():
        assert ids == sorted(ids)  # input order inside each group



def test_iid_matches_datasets_shard(tmp_path):
    exs = labelled()
    m, g = run(tmp_path, exs, P.IidPartitioner(7))
    assert_exactly_once(g, N)
    ds = datasets.Dataset.from_list(exs)
    for pid in range(7):
        assert g[pid] == ds.shard(7, pid, contiguous=True)["i"]


def test_size_and_id_to_size(tmp_path):
    exs = labelled()
    m, g = run(tmp_path, exs, P.SizePartitioner([100, 900, 1]), "s")
    assert {k: len(v) for k, v in g.items()} == {0: 100, 1: 900, 2: 1}
    assert m["num_dropped"] == N - 1001
    assert_exactly_once(g, N, dropped=N - 1001)
    for cls, fn in [(P.LinearPartitioner, lambda x: x), (P.SquarePartitioner, np.square),
                    (P.ExponentialPartitioner, np.exp)]:
        m, g = run(tmp_path, exs, cls(6), cls.__name__)
        assert_exactly_once(g, N)
        units = fn(np.arange(1, 7, dtype=float))
        expected = (units / units.sum() * N).astype(int)
        expected[-1] += N - expected.sum()
        assert [len(g[i]) for i in range(6)] == expected.tolist(), cls.__name__


def test_dirichlet_min_size_and_determinism(tmp_path):
    exs = labelled()
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps(e) + "\n" for e in exs))
    part = lambda: P.DirichletPartitioner(20, "label", alpha=0.3, min_partition_size=30, seed=7)  # noqa: E731
    digests = []
    for w in (1, 2, 3):
        m, g = run(tmp_path, src, part(), f"w{w}", workers=w)
        assert_exactly_once(g, N)
        assert len(g) == 20 and min(len(v) for v in g.values()) >= 30
        digests.append(digest(tmp_path / f"w{w}"))
    assert digests[0] == digests[1] == digests[2]
    # label skew: alpha 0.3 makes partitions far from the global label mix
    by_i = {e["i"]: e["label"] for e in exs}
    dominant = [Counter(by_i[i] for i in ids).most_common(1)[0][1] / len(ids) for ids in g.values()]
    assert np.mean(dominant) > 0.4
    # map-style and streaming sources give the same partitions
    hf = datasets.Dataset.from_list(exs)
    _, g_map = run(tmp_path, hf, part(), "hf")
    _, g_stream = run(tmp_path, hf.to_iterable_dataset(num_shards=4), part(), "stream")
    assert g_map == g_stream == g


def test_pathological_exactly_k_classes(tmp_path):
    exs = labelled()
    by_i = {e["i"]: e["label"] for e in exs}
    for mode in ("deterministic", "random", "first-deterministic"):
        m, g = run(tmp_path, exs, P.PathologicalPartitioner(12, "label", 3, class_assignment_mode=mode, seed=1), mode)
        assert_exactly_once(g, N, dropped=m["num_dropped"])
        assert all(len({by_i[i] for i in ids}) == 3 for ids in g.values()), mode
        if mode == "deterministic":
            assert m["num_dropped"] == 0


def test_shard_sizes(tmp_path):
    exs = labelled()
    by_i = {e["i"]: e["label"] for e in exs}
    m, g = run(tmp_path, exs, P.ShardPartitioner(10, "label", num_shards_per_partition=2, shard_size=100, seed=3))
    assert len(g) == 10 and all(len(v) == 200 for v in g.values())
    assert_exactly_once(g, N, dropped=N - 2000)
    # shards are runs of the label-sorted source: at most 2 labels per shard boundary region
    assert np.mean([len({by_i[i] for i in ids}) for ids in g.values()]) <= 4


def test_grouped_natural_id(tmp_path):
    exs = [{"i": i, "user": f"u{(i * 7) % 23}"} for i in range(500)]
    first_seen = list(dict.fromkeys(e["user"] for e in exs))
    m, g = run(tmp_path, exs, P.GroupedNaturalIdPartitioner("user", 5))  # allow-smaller: 4 groups of 5 + 3
    by_i = {e["i"]: e["user"] for e in exs}
    users = {pid: {by_i[i] for i in ids} for pid, ids in g.items()}
    assert [len(users[p]) for p in sorted(users)] == [5, 5, 5, 5, 3]
    assert users[0] == set(first_seen[:5])
    _, g2 = run(tmp_path, exs, P.GroupedNaturalIdPartitioner("user", 5, mode="allow-bigger"), "big")
    assert sorted(len({by_i[i] for i in ids}) for ids in g2.values()) == [5, 6, 6, 6]
    m3, g3 = run(tmp_path, exs, P.GroupedNaturalIdPartitioner("user", 5, mode="drop-reminder"), "drop")
    assert len(g3) == 4 and m3["num_dropped"] == sum(1 for e in exs if e["user"] in first_seen[20:])
    with pytest.raises(ValueError, match="strict mode needs the 23 unique ids to divide by group_size=5"):
        run(tmp_path, exs, P.GroupedNaturalIdPartitioner("user", 5, mode="strict"), "strict")


@pytest.mark.parametrize("part, message", [
    (lambda: P.DirichletPartitioner(100, "label", 0.5, min_partition_size=40),
     r"100 partitions of at least min_partition_size=40 need 4000 examples; the source has 3000"),
    (lambda: P.DirichletPartitioner(50, "label", 0.01, min_partition_size=50),
     r"after 11 draws from Dir\(alpha\) some partition still had fewer than min_partition_size=50"),
    (lambda: P.PathologicalPartitioner(5, "label", 11),
     r"num_classes_per_partition=11 is more than the 10 labels in column 'label'"),
    (lambda: P.ShardPartitioner(20, "label", num_shards_per_partition=2, shard_size=100),
     r"3000 examples make 30 usable shards of size 100, fewer than the 40 needed"),
    (lambda: P.SizePartitioner([2000, 2000]), r"partition sizes add up to 4000, more than the 3000 examples"),
    (lambda: P.IidPartitioner(5000), r"num_partitions=5000 is more than the 3000 examples"),
])
def test_impossible_configurations_fail_fast(tmp_path, part, message):
    with pytest.raises(ValueError, match=message):
        tg.partition(labelled(), part(), tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_bad_arguments_and_one_shot_iterators(tmp_path):
    with pytest.raises(ValueError, match="alpha must be a positive number or 3 positive numbers"):
        P.DirichletPartitioner(3, "label", alpha=[1, 2])
    with pytest.raises(ValueError, match="class_assignment_mode must be"):
        P.PathologicalPartitioner(3, "label", 1, class_assignment_mode="nope")
    with pytest.raises(ValueError, match="num_partitions must be a positive integer"):
        P.IidPartitioner(0)
    with pytest.raises(tg.PartitionError, match="needs a first pass over the data .* one-shot iterator"):
        tg.partition(iter(labelled()), P.IidPartitioner(3), tmp_path / "o", progress=False)
    with pytest.raises(tg.PartitionError, match="example 0: has no key column 'klass'"):
        tg.partition(labelled(), P.DirichletPartitioner(3, "klass", 1.0), tmp_path / "o", progress=False)
    with pytest.raises(TypeError, match="is applied by torch_grouper.partition"):
        P.IidPartitioner(3)({"a": 1})


def test_manifest_describes_partitioner(tmp_path):
    m, _ = run(tmp_path, labelled(), P.DirichletPartitioner(4, "label", alpha=[1, 2, 3, 4], seed=5))
    key = m["partition"]["key"]
    assert key["type"] == "DirichletPartitioner" and key["alpha"] == [1.0, 2.0, 3.0, 4.0]
    assert key["seed"] == 5 and key["label_column"] == "label"


def test_label_statistics_in_index_and_manifest(tmp_path):
    from torch_grouper.stats import plot_label_distribution, summary

    exs = labelled()
    m, g = run(tmp_path, exs, P.DirichletPartitioner(8, "label", alpha=0.5, seed=2))
    index = tg.load_index(tmp_path / "o")
    assert {"label_counts", "hellinger", "jensen_shannon"} <= set(index.column_names)
    by_i = {e["i"]: e["label"] for e in exs}
    glob = np.bincount([e["label"] for e in exs], minlength=10) / len(exs)
    hells = []
    for row in index.to_pylist():
        actual = Counter(str(by_i[i]) for i in g[row["group_id"]])
        assert dict(row["label_counts"]) == dict(actual)
        p = np.array([actual.get(str(k), 0) for k in range(10)]) / len(g[row["group_id"]])
        h = np.sqrt(0.5 * ((np.sqrt(p) - np.sqrt(glob)) ** 2).sum())
        assert abs(row["hellinger"] - h) < 1e-9
        mid = 0.5 * (p + glob)
        kl = lambda a, b: sum(x * np.log2(x / y) for x, y in zip(a, b) if x > 0)  # noqa: E731
        assert abs(row["jensen_shannon"] - np.sqrt(0.5 * kl(p, mid) + 0.5 * kl(glob, mid))) < 1e-9
        hells.append(h)
    ls = m["label_stats"]
    assert ls["column"] == "label" and ls["num_labels"] == 10
    assert abs(ls["hellinger"]["mean"] - np.mean(hells)) < 1e-9
    assert summary(tg.GroupedDataset(tmp_path / "o"))["num_examples"] == N
    png = plot_label_distribution(tmp_path / "o", str(tmp_path / "labels.png"), first=8)
    assert open(png, "rb").read(4) == b"\x89PNG"
    # any key, with label_column named: statistics for natural groups too
    m2 = tg.partition(exs, lambda e: e["i"] % 5, tmp_path / "nat", label_column="label", progress=False)
    assert m2["label_stats"]["hellinger"]["max"] < 0.1  # i % 5 is independent of the label
    # no label column: no statistics
    m3 = tg.partition(exs, lambda e: e["i"] % 5, tmp_path / "plain", progress=False)
    assert m3["label_stats"] is None and "hellinger" not in tg.load_index(tmp_path / "plain").column_names


def test_inner_dirichlet_sizes(tmp_path):
    exs = labelled()
    sizes = [500, 1000, 1500]
    m, g = run(tmp_path, exs, P.InnerDirichletPartitioner(sizes, "label", alpha=0.5, seed=3))
    assert [len(g[i]) for i in range(3)] == sizes
    assert_exactly_once(g, N)
    with pytest.raises(ValueError, match="partition sizes add up to 2999; they must add up to the 3000"):
        tg.partition(exs, P.InnerDirichletPartitioner([2999], "label", 1.0), tmp_path / "x", progress=False)


def test_continuous_sorts_by_property(tmp_path):
    exs = [{"i": i, "v": float((i * 7919) % 1000), "label": 0} for i in range(2000)]
    m, g = run(tmp_path, exs, P.ContinuousPartitioner(4, "v", strictness=1.0))
    assert [len(g[i]) for i in range(4)] == [500] * 4
    assert_exactly_once(g, 2000)
    v = {e["i"]: e["v"] for e in exs}
    tops = [max(v[i] for i in g[p]) for p in range(4)]
    bottoms = [min(v[i] for i in g[p]) for p in range(4)]
    assert all(tops[p] <= bottoms[p + 1] for p in range(3))  # strictness 1: ordered by the property
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps(e) + "\n" for e in exs))
    for w in (1, 3):
        run(tmp_path, src, P.ContinuousPartitioner(4, "v", 0.5, seed=1), f"c{w}", w)
    assert digest(tmp_path / "c1") == digest(tmp_path / "c3")
    with pytest.raises(ValueError, match="column 'v' holds None or NaN \\(first at example 1\\)"):
        tg.partition([{"v": 1.0}, {"v": None}], P.ContinuousPartitioner(1, "v", 0.5), tmp_path / "n", progress=False)


def test_dirichlet_process_parallel_and_skewed(tmp_path):
    exs = labelled()
    src = tmp_path / "s.jsonl"
    src.write_text("".join(json.dumps(e) + "\n" for e in exs))
    ds = []
    for w in (1, 2):
        m, g = run(tmp_path, src, P.DirichletProcessPartitioner(30, "label", alpha=0.2, seed=4), f"d{w}", w)
        assert_exactly_once(g, N)
        ds.append(digest(tmp_path / f"d{w}"))
    assert ds[0] == ds[1]
    assert m["label_stats"]["hellinger"]["mean"] > 0.3  # alpha 0.2: strong label skew


def test_distribution_partitioner(tmp_path):
    exs = labelled()
    rng = np.random.default_rng(0)
    dist = rng.random((10, 6))  # 30 partitions x 2 labels each, over 10 labels: 6 pieces per label
    part = P.DistributionPartitioner(dist, num_partitions=30, num_unique_labels_per_partition=2,
                                     partition_by="label", preassigned_num_samples_per_label=2)
    m, g = run(tmp_path, exs, part)
    assert_exactly_once(g, N, dropped=m["num_dropped"])
    assert m["num_dropped"] == 0  # with rescale, every example is placed
    by_i = {e["i"]: e["label"] for e in exs}
    for pid, ids in g.items():  # partition p holds labels p, p+1 (mod 10)
        assert {by_i[i] for i in ids} <= {pid % 10, (pid + 1) % 10}
    with pytest.raises(ValueError, match=r"distribution_array must have shape \(10, 6\)"):
        tg.partition(exs, P.DistributionPartitioner(dist[:, :5], 30, 2, "label", 2), tmp_path / "x", progress=False)


def test_vertical_partitioners(tmp_path):
    exs = [{"user": f"u{i % 4}", "a": i, "b": i * 2, "c": str(i), "d": i % 3, "y": i % 2} for i in range(200)]
    even = P.VerticalEvenPartitioner(2, active_party_columns="y", shared_columns="user", seed=1)
    cols = even.party_columns(list(exs[0]))
    assert sorted(c for p in cols for c in p if c not in ("user",)) == ["a", "b", "c", "d", "y"]
    assert all("user" in p for p in cols) and "y" in cols[-1]
    ms = tg.partition_vertical(exs, even, tmp_path / "v", progress=False)
    assert len(ms) == 2
    parties = [next(iter(tg.GroupedDataset(tmp_path / "v" / f"party-{p}"))) for p in range(2)]
    joined = {}
    for p, g in enumerate(parties):
        assert g.id == p and len(g) == 200
        for ex in g:
            assert set(ex) == set(cols[p]) | {"example_id"}
            joined.setdefault(ex["example_id"], {}).update(ex)
    assert [{k: v for k, v in joined[i].items() if k != "example_id"} for i in range(200)] == exs
    by_user = tg.partition_vertical(exs, P.VerticalSizePartitioner([0.5, 0.5], seed=2), tmp_path / "u",
                                    key="user", progress=False)
    assert [m["num_groups"] for m in by_user] == [4, 4]
    with pytest.raises(ValueError, match="partition_sizes add up to 3 columns"):
        tg.partition_vertical(exs, P.VerticalSizePartitioner([1, 2]), tmp_path / "bad", progress=False)


ALL = {
    "iid": lambda: P.IidPartitioner(7),
    "size": lambda: P.SizePartitioner([1000, 1500]),
    "linear": lambda: P.LinearPartitioner(5),
    "exponential": lambda: P.ExponentialPartitioner(4),
    "dirichlet": lambda: P.DirichletPartitioner(9, "label", 0.5, self_balancing=True, seed=11),
    "inner": lambda: P.InnerDirichletPartitioner([1000, 2000], "label", 0.4),
    "pathological": lambda: P.PathologicalPartitioner(8, "label", 2, seed=3),
    "shard": lambda: P.ShardPartitioner(6, "label", shard_size=150, keep_incomplete_shard=True),
    "distribution": lambda: P.DistributionPartitioner(np.ones((10, 4)), 20, 2, "label", 3),
    "continuous": lambda: P.ContinuousPartitioner(5, "x", 0.7),
    "process": lambda: P.DirichletProcessPartitioner(12, "label", 0.3),
    "grouped": lambda: P.GroupedNaturalIdPartitioner("label", 3),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_same_assignment_for_any_workers_and_source_kind(tmp_path, name, monkeypatch):
    """Byte-identical output for 1/2/3 workers over a JSON Lines file cut into many
    slices, and the same groups from a map-style dataset and its streaming form."""
    from torch_grouper.engines import LocalEngine

    exs = labelled()
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps(e) + "\n" for e in exs))
    for w in (1, 2, 3):
        tg.partition(src, ALL[name](), tmp_path / f"w{w}", engine=LocalEngine(w, slice_bytes=20_000), progress=False)
    assert digest(tmp_path / "w1") == digest(tmp_path / "w2") == digest(tmp_path / "w3")
    hf = datasets.Dataset.from_list(exs)
    _, g_map = run(tmp_path, hf, ALL[name](), "map")
    _, g_stream = run(tmp_path, hf.to_iterable_dataset(num_shards=3), ALL[name](), "stream")
    assert g_map == g_stream == groups_of(tmp_path / "w1")
