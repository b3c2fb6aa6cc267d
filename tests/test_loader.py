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


# ------------------------------------------------------------------ GroupLoader (ds.loader)
import json

import numpy as np
import torch
from hypothesis import given, settings, strategies as st
from torchdata.stateful_dataloader import StatefulDataLoader

from torch_grouper import loader as tgl
from torch_grouper import tario
from torch_grouper.codec import assemble
from torch_grouper.transforms import Batch


def _plain(exs):
    """Examples as comparable values (numpy arrays as lists)."""
    return [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ex.items()} for ex in exs]


def _all_same(got, want):
    return len(got) == len(want) and all(same(a, b) for a, b in zip(got, want))


@pytest.fixture(scope="module")
def json_dir(tmp_path_factory):
    """Plain JSON examples (the fast path), groups of very different sizes, several shards."""
    out = tmp_path_factory.mktemp("json") / "out"
    exs = [{"g": f"user{(i * 7) % 53 if i % 5 else 0}", "i": i, "text": "word " * (i % 40), "f": i / 7,
            "tags": ["a", {"b": [i, None, True]}], "u": "é\u2028😀"} for i in range(3000)]
    tg.partition(exs, "g", out, num_workers=2, shard_bytes=60_000, progress=False)
    return out


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    """Binary, array and special-float fields: groups that travel decoded."""
    out = tmp_path_factory.mktemp("mixed") / "out"
    tg.partition(mixed_examples(300), "gid", out, shard_bytes=5_000, progress=False)
    return out


def _reference(path):
    return {g.id: list(g) for g in tg.GroupedDataset(path)}


@pytest.mark.parametrize("stateful", [False, True])
@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("which", ["json_dir", "mixed_dir"])
def test_group_loader_every_group_once_same_examples_and_order_as_dataloader(request, which, workers, stateful):
    path = request.getfixturevalue(which)
    ref = _reference(path)
    ds = tg.GroupedDataset(path)
    got = list(ds.loader(num_workers=workers, stateful=stateful, bundle_bytes=20_000))
    assert Counter(g.id for g in got) == Counter({k: 1 for k in ref})
    for g in got:
        assert _all_same(list(g), ref[g.id]), g.id
        assert len(g) == len(ref[g.id]) and g.num_bytes > 0
    want = [g.id for g in DataLoader(ds, num_workers=workers, batch_size=None)]
    if workers <= 1:  # one reader: DataLoader's sequence (workers take turns a bundle at a time, not a group)
        assert [g.id for g in got] == want


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_dataloader_and_stateful_dataloader_compare_every_example(json_dir, mixed_dir, workers):
    for path in (json_dir, mixed_dir):
        ref = _reference(path)
        for cls in (DataLoader, StatefulDataLoader):
            seen = Counter()
            for g in cls(tg.GroupedDataset(path), num_workers=workers, batch_size=None):
                seen[g.id] += 1
                assert _all_same(list(g), ref[g.id])
            assert seen == Counter({k: 1 for k in ref})


def test_group_loader_default_bundles_and_splits(json_dir):
    ds = tg.GroupedDataset(json_dir, shuffle=True, seed=3)
    ref = _reference(json_dir)
    got = list(ds.loader(num_workers=2))
    assert sorted(g.id for g in got) == sorted(ref) and all(_all_same(list(g), ref[g.id]) for g in got)
    assert [g.id for g in ds.loader(num_workers=1)] == [g.id for g in ds]  # the shuffled order
    train = ds.split_groups({"train": 0.7, "rest": 0.3})["train"]
    assert [g.id for g in train.loader(num_workers=1, bundle_bytes=2_000)] == [g.id for g in train]
    assert sorted(g.id for g in train.loader(num_workers=2, bundle_bytes=2_000)) == sorted(g.id for g in train)
    part = ds.split_examples({"a": 0.5, "b": 0.5}, seed=1)["a"]
    want = {g.id: list(g) for g in part}
    got = {g.id: list(g) for g in part.loader(num_workers=2, bundle_bytes=2_000)}
    assert got == want


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("which", ["json_dir", "mixed_dir"])
def test_group_loader_resumes_exactly_at_every_kind_of_cut(request, which, workers):
    path = request.getfixturevalue(which)
    ds = tg.GroupedDataset(path, shuffle=True, seed=1)
    full = [(g.id, _plain(g)) for g in ds.loader(num_workers=workers, stateful=True, bundle_bytes=4_000)]
    n = len(full)
    sizes = [len(b.rows) for b in tgl._Bundles(ds, 4_000)] if workers == 0 else None
    cuts = {0, 1, 2, n // 3, n // 2, n - 1, n}
    if sizes:  # just before, at and after a bundle's end
        cuts |= {sizes[0] - 1, sizes[0], sizes[0] + 1}
    for cut in sorted(cuts):
        a = ds.loader(num_workers=workers, stateful=True, bundle_bytes=4_000)
        it = iter(a)
        head = [(g.id, _plain(g)) for g in (next(it) for _ in range(cut))]
        state = a.state_dict()
        b = tg.GroupedDataset(path, shuffle=True, seed=1).loader(num_workers=workers, stateful=True,
                                                                 bundle_bytes=4_000)
        b.load_state_dict(state)
        assert b.state_dict() == state
        rest = [(g.id, _plain(g)) for g in b]
        assert len(head) + len(rest) == n, cut
        assert all(x[0] == y[0] and _all_same(x[1], y[1]) for x, y in zip(head + rest, full)), cut
    # a state saved after the epoch ended continues with a whole epoch
    a = ds.loader(num_workers=workers, stateful=True, bundle_bytes=4_000)
    list(a)
    b = ds.loader(num_workers=workers, stateful=True, bundle_bytes=4_000)
    b.load_state_dict(a.state_dict())
    assert [x.id for x in b] == [x[0] for x in full]


def test_group_loader_state_refusals(json_dir):
    ds = tg.GroupedDataset(json_dir)
    with pytest.raises(TypeError, match="stateful=True"):
        ds.loader(num_workers=0).state_dict()
    a = ds.loader(num_workers=0, stateful=True, bundle_bytes=4_000)
    st_ = a.state_dict()
    with pytest.raises(ValueError, match="bundle_bytes=4000"):
        ds.loader(num_workers=0, stateful=True, bundle_bytes=5_000).load_state_dict(st_)
    with pytest.raises(ValueError, match=r"state\['taken'\] must be an int >= 0, got -1"):
        a.load_state_dict({**st_, "taken": -1})
    with pytest.raises(ValueError, match="from GroupLoader.state_dict"):
        a.load_state_dict({"taken": 0})
    with pytest.raises(TypeError, match="does not take batch_size"):
        ds.loader(batch_size=4)
    with pytest.raises(ValueError, match="bundle_bytes must be an int >= 1, got 0"):
        ds.loader(bundle_bytes=0)
    with pytest.raises(ValueError, match="without a shuffle buffer"):
        tg.GroupLoader(ds.examples(shuffle_buffer=10))
    with pytest.raises(TypeError, match="GroupedDataset or its examples"):
        tg.GroupLoader([1, 2])


@pytest.mark.parametrize("workers", [0, 2])
def test_group_loader_flat_examples(json_dir, mixed_dir, workers):
    for path in (json_dir, mixed_dir):
        ds = tg.GroupedDataset(path)
        want = list(DataLoader(ds.examples(), num_workers=workers, batch_size=None,
                               collate_fn=lambda x: x))  # (group id, example), as the flat view yields them
        got = list(tg.GroupLoader(ds.examples(), num_workers=workers, bundle_bytes=2_000))
        assert len(got) == len(want) == ds.num_examples
        if workers == 0:
            assert [gid for gid, _ in got] == [gid for gid, _ in want]
            assert all(same(a, b) for (_, a), (_, b) in zip(got, want))
        by_group = {}  # with two workers the interleaving differs: compare group by group
        for gid, ex in want:
            by_group.setdefault(gid, []).append(ex)
        for gid, ex in got:
            assert same(ex, by_group[gid].pop(0))
        assert not any(by_group.values())


def test_group_loader_flat_examples_resume_inside_a_group(json_dir):
    ds = tg.GroupedDataset(json_dir)
    full = [(gid, ex["i"]) for gid, ex in tg.GroupLoader(ds.examples(), num_workers=2, stateful=True, bundle_bytes=3_000)]
    for cut in (0, 5, 777, len(full) - 1):
        a = tg.GroupLoader(ds.examples(), num_workers=2, stateful=True, bundle_bytes=3_000)
        it = iter(a)
        head = [(gid, ex["i"]) for gid, ex in (next(it) for _ in range(cut))]
        b = tg.GroupLoader(ds.examples(), num_workers=2, stateful=True, bundle_bytes=3_000)
        b.load_state_dict(a.state_dict())
        assert head + [(gid, ex["i"]) for gid, ex in b] == full, cut


class _TokensTensor:
    """A map_groups function returning tensors (a picklable class)."""

    def __call__(self, g):
        ids = torch.tensor([ex["i"] for ex in g], dtype=torch.int64)
        return {"id": g.id, "ids": ids, "lens": torch.tensor([len(ex["text"]) for ex in g])}


@pytest.mark.parametrize("workers", [0, 2])
def test_map_groups_tensors_cross_through_shared_memory(json_dir, workers):
    ds = tg.GroupedDataset(json_dir).map_groups(_TokensTensor())
    ref = {g.id: [ex["i"] for ex in g] for g in tg.GroupedDataset(json_dir)}
    for it in (ds.loader(num_workers=workers, bundle_bytes=3_000), DataLoader(ds, num_workers=workers,
                                                                               batch_size=None)):
        got = list(it)
        assert sorted(o["id"] for o in got) == sorted(ref)
        for o in got:
            assert isinstance(o["ids"], torch.Tensor) and o["ids"].tolist() == ref[o["id"]]
            assert o["ids"].is_shared() == (workers > 0)  # moved by torch's shared memory, not as lists


class _NumpyBatches:
    """Batches with numpy fields (a picklable class)."""

    def __call__(self, g):
        exs = list(g)
        return [{"i": np.array([e["i"] for e in exs[k:k + 4]]), "text": [e["text"] for e in exs[k:k + 4]]}
                for k in range(0, len(exs), 4)]


def test_map_groups_outputs_are_converted_as_dataloader_does(json_dir):
    """numpy arrays in map_groups outputs become tensors in the worker (torch's
    default_convert, as DataLoader(batch_size=None)) and cross in shared memory."""
    ds = tg.GroupedDataset(json_dir).map_groups(_NumpyBatches())
    got = list(ds.loader(num_workers=1, bundle_bytes=3_000))
    want = list(DataLoader(ds, num_workers=1, batch_size=None))
    assert len(got) == len(want) == len(ds)
    for a, b in zip(got, want):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert isinstance(x["i"], torch.Tensor) and x["i"].tolist() == y["i"].tolist()
            assert x["i"].is_shared() and x["text"] == y["text"]
    assert len(list(tg.GroupedDataset(json_dir).map_groups(Batch(4)).loader(num_workers=2))) == len(ds)


def _damage(path, where: str):
    """Change one byte of the largest group: in its first member's header
    (padding of the name field: the header checksum then fails) or in that
    member's JSON text."""
    ds = tg.GroupedDataset(path)
    c = ds._columns()
    row = int(np.argmax(c["length"]))
    shard = c["shard_names"][c["shard"][row]]
    off = int(c["offset"][row])
    p = f"{ds.root}/{shard}"
    data = bytearray(open(p, "rb").read())
    if where == "header":
        assert data[off + 99] == 0
        data[off + 99] = 0x41
    elif where == "text":  # the first member's JSON: "{" -> "["
        assert data[off + 512] == ord("{")
        data[off + 512] = ord("[")
    else:  # the first member's JSON becomes a list of the same length: valid JSON, not an example
        size = int(data[off + 124:off + 135], 8)
        data[off + 512:off + 512 + size] = b"[1" + b" " * (size - 3) + b"]"
    open(p, "wb").write(bytes(data))
    return shard, off


@pytest.mark.parametrize("where,match", [("header", "tar header checksum does not match"),
                                         ("text", "does not decode"), ("list", "holds a list")])
@pytest.mark.parametrize("workers", [0, 2])
def test_group_loader_damage_raises_naming_shard_and_offset(tmp_path, where, match, workers):
    exs = [{"g": f"u{i % 5}", "i": i, "text": "x" * (i % 50)} for i in range(400)]
    tg.partition(exs, "g", tmp_path / "o", progress=False)
    shard, off = _damage(tmp_path / "o", where)
    with pytest.raises(tg.TarFormatError, match=match) as got:
        list(tg.GroupedDataset(tmp_path / "o").loader(num_workers=workers, bundle_bytes=1_000))
    assert shard in str(got.value) and f"byte offset {off}" in str(got.value)


def _tar_group(exs, prefix: bytes) -> bytes:
    return b"".join(tario.member_bytes(f"{prefix.decode()}{k:06x}.json", json.dumps(ex).encode()) for k, ex in
                    enumerate(exs))


_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                       lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                       max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(groups=st.lists(st.lists(st.dictionaries(st.text(max_size=5), _values, max_size=4), min_size=1, max_size=5),
                       min_size=1, max_size=4),
       flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), max_size=2))
def test_json_bundle_accepts_only_what_the_checked_path_reads_the_same(groups, flips):
    """The bundle fast path never yields other examples than the fully
    checked path (checksums, names, keys, counts) would, whatever bytes are
    changed; when it declines a group, that group takes the checked path."""
    prefixes = [f"{k:016x}_".encode() for k in range(len(groups))]
    bufs = [bytearray(_tar_group(exs, p)) for exs, p in zip(groups, prefixes)]
    for pos, x in flips:  # damage: xor a byte somewhere in the bundle
        i = pos % len(bufs)
        bufs[i][pos // len(bufs) % len(bufs[i])] ^= x
    bufs = [bytes(b) for b in bufs]
    counts, nbytes = [len(g) for g in groups], [sum(len(json.dumps(e).encode()) for e in g) for g in groups]
    text, ok = tgl.json_bundle(bufs, prefixes, counts, nbytes)
    try:
        decoded = json.loads(str(text, "utf-8")) if text is not None else None
    except (ValueError, RecursionError):
        decoded = None
    if decoded is not None and (len(decoded) != sum(c for c, k in zip(counts, ok) if k)
                                or not all(type(e) is dict for e in decoded)):
        decoded = None
    at = 0
    for buf, exs, p, n, nb, good in zip(bufs, groups, prefixes, counts, nbytes, ok):
        if not good:
            continue
        members = list(tario.checked_members(buf, "t", 0))  # headers, checksums: must pass
        assert len(members) == n and sum(len(d) for _, d, _ in members) == nb
        assert all(name.startswith(p.decode()) and name.endswith(".json") for name, _, _ in members)
        if decoded is not None:  # the main process takes the text: it must be what the checked path gives
            assert decoded[at:at + n] == list(assemble(members, "t", 0, p))
        at += n
    if not flips:
        assert ok.all() and decoded == [e for g in groups for e in g]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_stateful_dataloader_resumes_after_a_worker_finished_its_share(json_dir, workers):
    """A worker whose share is done stays done in a saved state (it used to
    restart its share when the state was loaded)."""
    ds = tg.GroupedDataset(json_dir, shuffle=True, seed=1)
    full = [g.id for g in StatefulDataLoader(ds, num_workers=workers, batch_size=None)]
    n = len(full)
    for cut in (n // 2, n - 3, n - 1, n):
        a = StatefulDataLoader(ds, num_workers=workers, batch_size=None)
        it = iter(a)
        head = [next(it).id for _ in range(cut)]
        b = StatefulDataLoader(tg.GroupedDataset(json_dir, shuffle=True, seed=1), num_workers=workers,
                               batch_size=None)
        b.load_state_dict(a.state_dict())
        assert head + [g.id for g in b] == full, cut


def test_json_bundle_checks_each_groups_count_and_bytes():
    """Members moved from one group to the next (same total) are refused."""
    a = [{"x": k} for k in range(3)]
    b = [{"x": k} for k in range(3, 5)]
    pre = [b"0" * 16 + b"_"] * 2
    bufs = [_tar_group(a, pre[0]), _tar_group(b, pre[1])]
    nb = [sum(len(json.dumps(e)) for e in g) for g in (a, b)]
    text, ok = tgl.json_bundle(bufs, pre, [3, 2], nb)
    assert ok.tolist() == [True, True] and json.loads(text) == a + b
    assert tgl.json_bundle(bufs, pre, [4, 1], nb)[1].tolist() == [False, False]
    assert tgl.json_bundle(bufs, pre, [3, 2], [nb[0] + 1, nb[1]])[1].tolist() == [False, True]
