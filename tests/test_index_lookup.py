"""The read-side index: group ids held as Arrow buffers, shard numbers as a
dictionary, ``position_of`` by binary search over sorted group hashes with
the id compared on a hash match.  Checked against a plain dict, with real
and with forced-colliding hashes; and nothing per group is a Python object."""
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

import torch_grouper as tg
from torch_grouper import dataset
from torch_grouper import format as fmt

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
ID_SETS = st.one_of(
    st.sets(st.text(max_size=12), min_size=1, max_size=40).map(lambda s: ("str", sorted(s))),
    st.sets(INT64, min_size=1, max_size=40).map(lambda s: ("int", sorted(s))),
    st.sets(st.binary(max_size=12), min_size=1, max_size=40).map(lambda s: ("bytes", sorted(s))),
)
ARROW = {"str": pa.string(), "int": pa.int64(), "bytes": pa.binary()}


def lookup_of(id_type, ids, permute=None, build=False):
    arr = pa.array(ids, type=ARROW[id_type])
    if permute is not None:
        arr = arr.take(pa.array(permute))
    gids = dataset._GroupIds.from_column(pa.chunked_array([arr]), id_type)
    look = dataset._HashLookup(gids)
    if build:
        look.build()
    return gids, look


def others(id_type, ids):
    """Ids of the same type that are not in ``ids``."""
    out = {"str": ["", "absent", "é"], "int": [0, -1, 1 << 62], "bytes": [b"", b"absent", b"\0"]}[id_type]
    return [x for x in out if x not in set(ids)]


def check_against_dict(id_type, ids, gids, look):
    oracle = {g: i for i, g in enumerate(gids.tolist())}
    assert len(oracle) == len(gids) == len(ids)
    for g, row in oracle.items():
        assert gids[row] == g and type(gids[row]) is type(g)
        assert gids.canon(row) == fmt.canonical_group_id(g, id_type)
        assert look.row(fmt.canonical_group_id(g, id_type)) == row
    for g in others(id_type, ids):
        assert look.row(fmt.canonical_group_id(g, id_type)) is None


@settings(max_examples=150, deadline=None)
@given(ID_SETS, st.randoms(use_true_random=False))
def test_lookup_matches_a_dict(case, rnd):
    id_type, ids = case
    perm = list(range(len(ids)))
    rnd.shuffle(perm)
    gids, look = lookup_of(id_type, ids, perm, build=True)
    assert look.sorted_hashes.dtype == np.uint64 and np.all(look.sorted_hashes[:-1] <= look.sorted_hashes[1:])
    want = sorted(fmt.group_hash(gids.canon(i)) for i in range(len(gids)))
    assert look.sorted_hashes.tolist() == want  # the format's group hash, not another
    check_against_dict(id_type, ids, gids, look)


class _Colliding:
    """A stand-in for blake2b whose 8-byte digests take only three values."""

    def __init__(self, data, digest_size):
        self.v = len(bytes(data)) % 3

    def digest(self):
        return self.v.to_bytes(8, "big")


@settings(max_examples=80, deadline=None)
@given(ID_SETS, st.randoms(use_true_random=False), st.booleans(), st.booleans())
def test_colliding_hashes_are_told_apart_by_the_id(case, rnd, in_hash_order, build):
    id_type, ids = case
    real = dataset._blake2b
    dataset._blake2b = _Colliding
    try:
        perm = list(range(len(ids)))
        if in_hash_order:  # as the writer orders rows: by hash, then canonical id
            perm.sort(key=lambda i: (len(fmt.canonical_group_id(ids[i], id_type)) % 3,
                                     fmt.canonical_group_id(ids[i], id_type)))
        else:
            rnd.shuffle(perm)
        gids, look = lookup_of(id_type, ids, perm, build=build)
        check_against_dict(id_type, ids, gids, look)
        assert len(set(look.sorted_hashes.tolist())) <= 3
    finally:
        dataset._blake2b = real


def test_hits_in_a_hash_ordered_index_hash_only_the_rows_probed(monkeypatch):
    """A lookup in the writer's (hash-ordered) index builds nothing per group:
    it hashes about log2(n) rows; a miss builds the sorted hashes once."""
    ids = sorted((f"g{i}" for i in range(4096)), key=lambda g: fmt.group_hash(g.encode()))
    gids, look = lookup_of("str", ids)
    calls = []
    real = dataset._blake2b
    monkeypatch.setattr(dataset, "_blake2b", lambda data, digest_size: calls.append(1) or real(data, digest_size=8))
    for row in (0, 1000, 4095):
        calls.clear()
        assert look.row(ids[row].encode()) == row
        assert len(calls) <= 2 * 13 + 2 and look.sorted_hashes is None
    assert look.row(b"absent") is None and look.sorted_hashes is not None and look.order is None
    _, shuffled = lookup_of("str", ids[::-1])
    assert shuffled.row(ids[7].encode()) == 4095 - 7 and shuffled.order is not None


def test_ids_in_hash_order_need_no_permutation():
    ids = sorted((f"g{i}" for i in range(50)), key=lambda g: fmt.group_hash(g.encode()))
    gids, look = lookup_of("str", ids, build=True)
    assert look.order is None
    _, shuffled = lookup_of("str", ids[::-1], build=True)
    assert shuffled.order is not None and shuffled.order.dtype.kind == "i"


def test_take_keeps_the_ids_at_the_rows():
    ids = ["", "a", "ünï", "x" * 40, "b/c"]
    for id_type, vals in (("str", ids), ("bytes", [x.encode() for x in ids]), ("int", [5, -3, 0, 1 << 40, 7])):
        gids, _ = lookup_of(id_type, vals)
        rows = np.array([4, 0, 2, 2])
        sub = gids.take(rows)
        assert sub.tolist() == [vals[i] for i in rows] == [sub[i] for i in range(4)]
        assert gids.take(np.array([], dtype=np.int64)).tolist() == []


def test_shard_codes_number_shards_in_order_of_first_appearance():
    a = pa.array(["s2", "s1", "s2", None, "s3"]).dictionary_encode()
    b = pa.array(["s3", "s4", "s1"]).dictionary_encode()
    names, codes = dataset._shard_codes(pa.chunked_array([a, b]))
    assert names == ["s2", "s1", None, "s3", "s4"]
    assert codes.tolist() == [0, 1, 0, 2, 3, 3, 4, 1] and codes.dtype == np.int32
    names, codes = dataset._shard_codes(pa.chunked_array([pa.array(["b", "a", "b"])]))  # not a dictionary
    assert names == ["b", "a"] and codes.tolist() == [0, 1, 0]


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """600 groups of mixed sizes over several shards."""
    exs = [{"u": f"user-{i % 600}", "i": i} for i in range(1500)]
    path = tmp_path_factory.mktemp("many") / "d"
    tg.partition(exs, "u", path, num_workers=2, shard_bytes=100_000, progress=False)
    return path, exs


def test_dataset_lookup_against_the_index(many):
    path, _ = many
    ds = tg.GroupedDataset(path)
    index_ids = tg.load_index(path)["group_id"].to_pylist()
    assert ds.group_ids() == index_ids and len(ds) == 600
    assert ds.group_ids_at([5, 0, 599]) == [index_ids[5], index_ids[0], index_ids[599]]
    for row, gid in enumerate(index_ids):
        assert ds.position_of(gid) == row
    for bad in ("user-600", "", b"user-1", 1):
        with pytest.raises(KeyError, match=re.escape(repr(bad))):
            ds.position_of(bad)
    want = [e for e in many[1] if e["u"] == "user-7"]
    assert ds["user-7"].examples() == want


def test_no_python_object_per_group(many):
    """The index, the lookup and a whole stream hold numpy / Arrow arrays, never
    a list or dict with an entry per group."""
    path, _ = many
    ds = tg.GroupedDataset(path)
    n = len(ds)
    assert sum(len(g) for g in ds) == 1500
    ds.position_of("user-3")
    assert ds._by_id.sorted_hashes is None  # a hit in the writer's index hashes only the rows probed
    with pytest.raises(KeyError):
        ds.position_of("absent")
    c = ds._columns()
    assert isinstance(c["ids"], dataset._GroupIds) and isinstance(ds._by_id, dataset._HashLookup)
    assert len(c["shard_names"]) == len(ds.manifest["shards"]) < n
    held = list(c.values()) + [getattr(c["ids"], k) for k in c["ids"].__slots__] + \
        [getattr(ds._by_id, k) for k in ds._by_id.__slots__] + list(vars(ds).values())
    for v in held:
        if isinstance(v, (list, dict, tuple, set)):
            assert len(v) < n, f"a {type(v).__name__} of {len(v)} entries"
        if isinstance(v, np.ndarray) and len(v) == n:
            assert v.dtype != object
    assert ds._index is None  # the full table (a string per shard row) was not read for streaming
    for k in ("offset", "length", "num_examples", "num_bytes", "num_words"):
        assert isinstance(c[k], np.ndarray) and c[k].dtype == np.int64
    assert c["shard"].dtype == np.int32 and ds._by_id.sorted_hashes.dtype == np.uint64


def test_index_rows_out_of_hash_order(many, tmp_path):
    """An index whose rows are not in hash order (another writer) is looked up
    through the permutation."""
    import shutil

    path = tmp_path / "d"
    shutil.copytree(many[0], path)
    p = os.path.join(tg.GroupedDataset(path).root, fmt.INDEX)
    t = pq.read_table(p)
    t = t.take(pa.array(np.arange(t.num_rows)[::-1].copy()))
    pq.write_table(t, p)
    ds = tg.GroupedDataset(path)
    ids = t["group_id"].to_pylist()
    for row, gid in enumerate(ids):
        assert ds.position_of(gid) == row
    assert ds._by_id.order is not None
    assert ds["user-9"].examples() == [e for e in many[1] if e["u"] == "user-9"]


def test_views_look_up_their_own_rows(many):
    path, _ = many
    ds = tg.GroupedDataset(path)
    parts = ds.split_groups({"a": 0.5, "b": 0.5}, seed=3)
    seen = []
    for v in parts.values():
        ids = v.group_ids()
        seen += ids
        for row, gid in enumerate(ids):
            assert v.position_of(gid) == row and v[gid].id == gid
        for gid in set(ds.group_ids()) - set(ids):
            with pytest.raises(KeyError):
                v.position_of(gid)
    assert sorted(seen) == sorted(ds.group_ids())


@pytest.mark.parametrize("id_type", ["int", "bytes"])
def test_int_and_bytes_ids_end_to_end(tmp_path, id_type):
    vals = [0, -5, 1 << 62, -(1 << 63), 17] if id_type == "int" else [b"", b"\0\xff", b"a/b", b"..", b"z" * 30]
    exs = [{"k": v, "i": i} for i, v in enumerate(vals * 2)]
    tg.partition(exs, "k", tmp_path / "d", num_workers=1, progress=False)
    ds = tg.GroupedDataset(tmp_path / "d")
    for v in vals:
        assert [e["i"] for e in ds[v]] == [i for i, e in enumerate(exs) if e["k"] == v]
    with pytest.raises(KeyError, match="of type"):
        ds.position_of("0")
