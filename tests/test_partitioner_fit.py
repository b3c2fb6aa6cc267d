"""Fitting a partitioner from a first pass's per-slice counts, and what its
``describe()`` records."""
import torch_grouper.partitioners as P
from torch_grouper.partitioners import SliceStart, fit_partitioner


def test_slice_starts_from_per_slice_counts():
    p = P.DirichletPartitioner(2, "label", alpha=1.0, min_partition_size=1, seed=0)
    per_slice = [(3, {"a": 2, "b": 1}), (0, {}), (4, {"b": 3, "c": 1}), (1, {"a": 1})]
    fitted = fit_partitioner(p, per_slice)
    assert fitted.starts == [SliceStart(0, {}), SliceStart(3, {"a": 2, "b": 1}), SliceStart(3, {"a": 2, "b": 1}),
                             SliceStart(7, {"a": 2, "b": 4, "c": 1})]
    assert (fitted.num_examples, fitted.num_labels) == (8, 3)
    assert sorted(p._plan) == ["a", "b", "c"]  # fitted on the totals


def test_collected_values_are_concatenated_in_slice_order():
    got = {}

    class Spy(P.ContinuousPartitioner):
        def fit(self, n, values):
            got["n"], got["values"] = n, values

    fitted = fit_partitioner(Spy(2, "x", 0.5), [(2, [1.0, 2.0]), (1, [3.0])])
    assert got == {"n": 3, "values": [1.0, 2.0, 3.0]}
    assert fitted.starts == [SliceStart(0, {}), SliceStart(2, {})] and fitted.num_labels == 0


def test_describe_records_parameters_not_the_fitted_plan():
    p = P.ShardPartitioner(3, "label", num_shards_per_partition=2, seed=7)
    before = p.describe()
    fit_partitioner(p, [(60, {i: 6 for i in range(10)})])
    assert p.describe() == before == {
        "type": "ShardPartitioner", "num_partitions": 3, "label_column": "label", "num_shards_per_partition": 2,
        "shard_size": None, "keep_incomplete_shard": False, "shuffle": True, "seed": 7}
    g = P.GroupedNaturalIdPartitioner("label", 2)
    fit_partitioner(g, [(5, {"a": 1, "b": 1, "c": 3})])
    assert g.describe()["num_partitions"] == 2  # known once fitted


def test_a_user_partitioner_describes_its_constructor_parameters():
    class EveryKth(P.Partitioner):
        def __init__(self, k: int, partition_by: str, *args, note=None):
            self.k = k
            self.label_column = partition_by
            self.note = note
            self.cache = {}  # not a parameter

        def fit(self, n, counts):
            self.plan = n

        def assign(self, ex, index, rank):
            return index % self.k

    p = EveryKth(3, "label", note=[1, 2])
    fit_partitioner(p, [(4, {"x": 4})])
    assert p.describe() == {"type": "EveryKth", "k": 3, "note": [1, 2], "label_column": "label"}
