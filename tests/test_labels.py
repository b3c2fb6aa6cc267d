"""The label maths (torch_grouper.labels) against hand-computed values, and its
properties; the label counts a partition records match collections.Counter."""
import json
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

import torch_grouper as tg
from torch_grouper import labels as L


def test_hand_computed_distances():
    # two groups, one label each: global distribution (1/2, 1/2)
    hell, js, q = L.distances_to_global(np.array([[1, 0], [0, 3]], dtype=np.float64))
    assert q.tolist() == [0.25, 0.75]
    hell, js, q = L.distances_to_global(np.array([[1, 0], [0, 1]], dtype=np.float64))
    assert q.tolist() == [0.5, 0.5]
    # Hellinger: sqrt(1/2 ((1 - sqrt(1/2))^2 + (0 - sqrt(1/2))^2)) = sqrt(1 - sqrt(2)/2)
    assert hell.tolist() == pytest.approx([math.sqrt(1 - math.sqrt(2) / 2)] * 2, abs=1e-15)
    # JS: m = (3/4, 1/4); KL(p||m) = log2(4/3), KL(q||m) = 1/2 log2(4/3); JSD = 3/4 log2(4/3)
    assert js.tolist() == pytest.approx([math.sqrt(0.75 * math.log2(4 / 3))] * 2, abs=1e-15)
    assert L.kl_divergence(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(
        0.5 + 0.5 * math.log2(2 / 3), abs=1e-15)
    assert L.kl_divergence(np.array([0.0, 1.0]), np.array([0.5, 0.5])) == pytest.approx(1.0)  # 0 log 0 = 0
    disjoint = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert L.hellinger(*disjoint) == pytest.approx(1.0) and L.jensen_shannon(*disjoint) == pytest.approx(1.0)


def test_label_order_matrix_and_add_counts():
    assert sorted(["10", "2", "b", "a", "-1", "1.5", "null"], key=L.label_sort_key) == \
        ["-1", "1.5", "2", "10", "a", "b", "null"]
    labels, mat = L.label_matrix([{"b": 2, "10": 1}, {"2": 5}])
    assert labels == ["2", "10", "b"] and mat.dtype == np.int64
    assert mat.tolist() == [[0, 1, 2], [5, 0, 0]]
    into = {"x": 1}
    assert L.add_counts(into, {"y": 2, "x": 3}) is into and list(into.items()) == [("x", 4), ("y", 2)]


def test_label_columns_and_summary():
    counts = [{"b": 3, "a": 1}, {"a": 4}, {"10": 1, "2": 1}]
    cols = L.label_columns(counts)
    assert cols["label_counts"].type == pa.map_(pa.string(), pa.int64())
    assert cols["label_counts"].to_pylist() == [[("a", 1), ("b", 3)], [("a", 4)], [("2", 1), ("10", 1)]]
    _, mat = L.label_matrix(counts)
    hell, js, q = L.distances_to_global(mat.astype(np.float64))
    assert cols["hellinger"].to_pylist() == hell.tolist() and cols["jensen_shannon"].to_pylist() == js.tolist()
    assert q.tolist() == pytest.approx([1 / 10, 1 / 10, 5 / 10, 3 / 10])  # labels 2, 10, a, b
    s = L.label_summary(pa.table(cols))
    assert s["num_labels"] == 4
    assert s["global_distribution"] == {"2": 0.1, "10": 0.1, "a": 0.5, "b": 0.3}
    assert s["labels_per_group"] == {"mean": 5 / 3, "min": 1, "max": 2}
    assert s["hellinger"] == {"mean": pytest.approx(hell.mean()), "median": float(np.median(hell)),
                              "max": float(hell.max())}
    assert s["jensen_shannon"]["max"] == float(js.max())
    assert L.label_summary(pa.table({"group_id": ["a"]})) is None



@settings(max_examples=200, deadline=None)
@given(data=st.data(), width=st.integers(1, 6))
def test_distance_properties(data, width):
    a = np.array(data.draw(st.lists(st.integers(0, 50), min_size=width, max_size=width)), dtype=np.float64)
    b = np.array(data.draw(st.lists(st.integers(0, 50), min_size=width, max_size=width)), dtype=np.float64)
    if a.sum() == 0 or b.sum() == 0:
        return
    p, q = a / a.sum(), b / b.sum()
    for f in (L.hellinger, L.jensen_shannon):
        d = float(f(p, q))
        assert 0.0 <= d <= 1.0 + 1e-12
        assert float(f(q, p)) == d  # symmetric, bit for bit
        assert float(f(p, p)) == pytest.approx(0.0, abs=1e-7)
    if np.array_equal(p > 0, q > 0) and not np.allclose(p, q):
        assert float(L.hellinger(p, q)) > 0 and float(L.jensen_shannon(p, q)) > 0
    m = np.stack([a, b])
    hell, js, glob = L.distances_to_global(m)
    assert glob.sum() == pytest.approx(1.0)
    assert ((0 <= hell) & (hell <= 1 + 1e-12) & (0 <= js) & (js <= 1 + 1e-12)).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from("abcde"), st.integers(1, 9), min_size=1), min_size=1, max_size=8))
def test_identical_groups_are_at_distance_zero(groups):
    same = [dict(groups[0]) for _ in groups]  # every group has the global distribution
    hell, js, _ = L.distances_to_global(L.label_matrix(same)[1].astype(np.float64))
    assert np.allclose(hell, 0, atol=1e-7) and np.allclose(js, 0, atol=1e-7)


def test_partition_label_counts_match_counter(tmp_path):
    exs = [{"g": f"u{(i * 7) % 13}", "y": [3, "cat", True, None, 2.5, "10"][(i * i + i // 5) % 6]} for i in range(900)]
    files = []
    for k in range(3):  # three files: a group's examples come in several pieces, whose counts add up
        files.append(str(tmp_path / f"part{k}.jsonl"))
        with open(files[-1], "w") as f:
            f.writelines(json.dumps(ex) + "\n" for ex in exs[k * 300:(k + 1) * 300])
    m = tg.partition(files, "g", tmp_path / "d", label_column="y", num_workers=2, shard_bytes=4_000,
                     progress=False)
    index = tg.load_index(tmp_path / "d")
    want = {}
    for ex in exs:
        lab = ex["y"] if isinstance(ex["y"], str) else {True: "true", None: "null"}.get(ex["y"], str(ex["y"]))
        want.setdefault(ex["g"], Counter())[lab] += 1
    got = {gid: Counter(dict(lc)) for gid, lc in zip(index["group_id"].to_pylist(), index["label_counts"].to_pylist())}
    assert got == want
    total = sum(want.values(), Counter())
    assert m["label_stats"]["num_labels"] == len(total) == 6
    assert m["label_stats"]["global_distribution"] == {k: round(v / 900, 6) for k, v in total.items()}
    assert m["label_stats"] == {"column": "y", **L.label_summary(index)}
