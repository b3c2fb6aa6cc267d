"""Bad arguments and bad input are refused before anything is read or written,
with errors that name the bad thing; resume states belong to one dataset."""
import errno
import hashlib
import json
import os
import re
import tarfile
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import torch_grouper as tg
from helpers import groupby, same
from torch_grouper.codec import EncodeError, encode


def ids(it):
    return [g.id for g in it]


@pytest.fixture(scope="module")
def d20(tmp_path_factory):
    """20 groups over several shards (so shuffled epochs differ)."""
    out = tmp_path_factory.mktemp("valid") / "d20"
    exs = [{"g": f"u{i % 20:02d}", "i": i} for i in range(400)]
    tg.partition(exs, "g", out, shard_bytes=1500, num_workers=1, progress=False)
    return out, exs


@pytest.fixture(scope="module")
def intds(tmp_path_factory):
    out = tmp_path_factory.mktemp("valid") / "ints"
    exs = [{"k": i % 5, "i": i} for i in range(50)]
    tg.partition(exs, "k", out, num_workers=1, progress=False)
    return out, exs


def reads_as(path, exs, key):
    """The dataset at ``path`` holds exactly ``exs`` grouped by ``key``."""
    expected = groupby(exs, key)
    got = {g.id: list(g) for g in tg.GroupedDataset(path)}
    return set(got) == set(expected) and all(same(got[k], v) for k, v in expected.items())


# ------------------------------------------------------------- rank / world_size
@pytest.mark.parametrize("kw, match", [
    ({"rank": 2, "world_size": 2}, r"0 <= rank < world_size, got rank=2, world_size=2"),
    ({"rank": 0, "world_size": 0}, r"world_size must be >= 1, got world_size=0"),
    ({"rank": -1, "world_size": 2}, r"got rank=-1, world_size=2"),
    ({"rank": 1}, r"both rank and world_size, or neither \(got rank=1, world_size=None\)"),
    ({"world_size": 2}, r"both rank and world_size, or neither \(got rank=None, world_size=2\)"),
    ({"rank": "0", "world_size": 2}, r"rank must be an int, got '0' of type str"),
    ({"rank": 0, "world_size": 2.0}, r"world_size must be an int, got 2.0 of type float"),
    ({"rank": True, "world_size": 2}, r"rank must be an int, got True of type bool"),
])
def test_rank_and_world_size_are_checked_first(d20, tmp_path, kw, match):
    out, _ = d20
    with pytest.raises(ValueError, match=match):
        tg.GroupedDataset(out, **kw)
    with pytest.raises(ValueError, match=match):  # before the path is even opened
        tg.GroupedDataset(tmp_path / "missing", **kw)


def test_valid_ranks_share_every_group_once(d20):
    out, _ = d20
    seen = Counter()
    for rank in range(3):
        seen.update(ids(tg.GroupedDataset(out, rank=np.int64(rank), world_size=3)))
    assert seen == Counter({f"u{k:02d}": 1 for k in range(20)})


# ------------------------------------------------------------------ fingerprint
def test_fingerprint_identifies_the_content(d20, tmp_path):
    out, exs = d20
    fp = tg.GroupedDataset(out).fingerprint
    assert re.fullmatch(r"[0-9a-f]{64}", fp)
    tg.partition(exs, "g", tmp_path / "same", shard_bytes=1500, num_workers=2, progress=False)
    assert tg.GroupedDataset(tmp_path / "same").fingerprint == fp  # same data elsewhere: same dataset
    other = [dict(e, i=e["i"] + 1) for e in exs]  # the same 20 groups and 400 examples, other values
    tg.partition(other, "g", tmp_path / "other", shard_bytes=1500, num_workers=1, progress=False)
    assert len(tg.GroupedDataset(tmp_path / "other")) == 20
    assert tg.GroupedDataset(tmp_path / "other").fingerprint != fp


def test_load_state_dict_refuses_another_datasets_state(d20, tmp_path):
    out, exs = d20
    tg.partition([dict(e, i=-e["i"]) for e in exs], "g", tmp_path / "other", shard_bytes=1500,
                 num_workers=1, progress=False)
    ds = tg.GroupedDataset(out, shuffle=True)
    it = iter(ds)
    next(it), next(it)
    st = ds.state_dict()
    assert st["fingerprint"] == ds.fingerprint
    other = tg.GroupedDataset(tmp_path / "other", shuffle=True)
    assert len(other) == len(ds)  # a group count check would let this through
    match = (rf"another dataset \(fingerprint {ds.fingerprint[:12]}\); {re.escape(str(tmp_path / 'other'))} "
             rf"has fingerprint {other.fingerprint[:12]}")
    with pytest.raises(ValueError, match=match):
        other.load_state_dict(st)
    with pytest.raises(ValueError, match=r"another dataset \(fingerprint None\)"):
        tg.GroupedDataset(out, shuffle=True).load_state_dict({k: v for k, v in st.items() if k != "fingerprint"})


@pytest.mark.parametrize("bad", [-3, 21, "3", 2.5, True, None])
def test_delivered_must_be_a_count_of_this_dataset(d20, bad):
    out, _ = d20
    st = {**tg.GroupedDataset(out).state_dict(), "delivered": bad}
    with pytest.raises(ValueError, match=rf"state\['delivered'\].* {re.escape(repr(bad))}|"
                                         rf"state\['delivered'\] = {bad} is more than the 20 groups"):
        tg.GroupedDataset(out).load_state_dict(st)


def test_delivered_beyond_this_readers_share_is_refused(d20):
    out, _ = d20
    ds = tg.GroupedDataset(out, rank=0, world_size=2)
    mine = len(ids(ds))
    assert 0 < mine < 20
    ds.load_state_dict({**ds.state_dict(), "delivered": mine + 1})  # within the dataset, beyond this reader
    with pytest.raises(ValueError, match=rf"reader 0 of 2 delivered {mine + 1} groups, but it has {mine} groups"):
        list(ds)
    ds.load_state_dict({**ds.state_dict(), "delivered": mine})
    assert ids(ds) == []  # every group of this reader was delivered


def test_resume_restores_the_saved_epoch(d20):
    out, _ = d20
    ds = tg.GroupedDataset(out, shuffle=True, seed=3)
    ds.set_epoch(3)
    epoch3 = ids(ds)
    assert epoch3 != ids(tg.GroupedDataset(out, shuffle=True, seed=3))  # epoch 0 differs
    it = iter(ds)
    head = [next(it).id for _ in range(7)]
    st = ds.state_dict()
    assert st["epoch"] == 3
    resumed = tg.GroupedDataset(out, shuffle=True, seed=3)  # no set_epoch: the state carries it
    resumed.load_state_dict(st)
    rest = ids(resumed)
    assert head + rest == epoch3  # exactly once, in epoch 3's order
    # set_epoch to another epoch between loading and iterating would mix two orders: refused
    again = tg.GroupedDataset(out, shuffle=True, seed=3)
    again.load_state_dict(st)
    again.set_epoch(4)
    with pytest.raises(ValueError, match="state was saved in epoch 3 after 7 groups, but this dataset is set "
                                         "to epoch 4"):
        list(again)


def test_state_after_a_finished_epoch_continues_with_a_full_epoch(d20):
    out, _ = d20
    ds = tg.GroupedDataset(out, shuffle=True, seed=2)
    full = ids(ds)
    st = ds.state_dict()
    resumed = tg.GroupedDataset(out, shuffle=True, seed=2)
    resumed.load_state_dict(st)
    assert ids(resumed) == full and len(full) == 20
    # a state taken at the last group (the epoch not yet closed): the rest of that
    # epoch is empty, and the next iteration is a full epoch
    it = iter(ds)
    for _ in range(20):
        next(it)
    st = ds.state_dict()
    resumed = tg.GroupedDataset(out, shuffle=True, seed=2)
    resumed.load_state_dict(st)
    assert ids(resumed) == []
    assert ids(resumed) == full


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_end_of_epoch_state(d20, workers):
    from torchdata.stateful_dataloader import StatefulDataLoader

    out, _ = d20
    loader = StatefulDataLoader(tg.GroupedDataset(out, shuffle=True, seed=4), batch_size=None, num_workers=workers)
    first = ids(loader)
    st = loader.state_dict()
    resumed = StatefulDataLoader(tg.GroupedDataset(out, shuffle=True, seed=4), batch_size=None,
                                 num_workers=workers)
    resumed.load_state_dict(st)
    nxt = ids(resumed)
    assert len(nxt) == 20 and sorted(nxt) == sorted(first) == [f"u{k:02d}" for k in range(20)]


# ------------------------------------------------------------------ lookups
@pytest.mark.parametrize("key, shown", [(1.0, r"1\.0 of type float"), (True, r"True of type bool"),
                                        (np.float64(1), r"np\.float64\(1\.0\) of type float64"),
                                        ("1", r"'1' of type str"), (np.bool_(True), r"np\.True_ of type bool")])
def test_int_ids_are_looked_up_by_int_only(intds, key, shown):
    out, _ = intds
    ds = tg.GroupedDataset(out)
    with pytest.raises(KeyError, match=rf"no group {shown} in .*: its group ids are int"):
        ds[key]


def test_numpy_ints_are_ints(intds):
    out, exs = intds
    ds = tg.GroupedDataset(out)
    for k in (np.int64(1), np.int32(1), np.uint8(1)):
        g = ds[k]
        assert g.id == 1 and type(g.id) is int
        assert [e["i"] for e in g] == [e["i"] for e in exs if e["k"] == 1]
    with pytest.raises(KeyError, match=r"no group 7 in"):
        ds[np.int64(7)]


def test_str_ids_are_not_found_by_int(d20):
    out, _ = d20
    ds = tg.GroupedDataset(out)
    with pytest.raises(KeyError, match=r"no group 1 of type int in .*: its group ids are str"):
        ds[1]
    assert len(ds[np.str_("u01")]) == 20


# ------------------------------------------------------------------ input values
def test_nested_dict_keys_must_be_strings(d20, tmp_path):
    out, exs = d20
    bad = [{"g": "a", "m": {"k": 1}}, {"g": "b", "m": {2: 3, None: 1, True: 7}}]
    with pytest.raises(tg.PartitionError, match=r"example 1 \(group 'b'\): field 'm' \(key 2\): dict keys must "
                                                r"be strings, not int"):
        tg.partition(bad, "g", tmp_path / "o", num_workers=1, progress=False)
    assert not (tmp_path / "o").exists()
    deep = [{"g": "a", "m": [1, {"x": {"y": {None: 1}}}], "b": b"bin"}]  # a bytes field: not the raw path
    with pytest.raises(tg.PartitionError, match=r"example 0 \(group 'a'\): field 'm\[1\]\.x\.y' \(key None\)"):
        tg.partition(deep, "g", tmp_path / "o", num_workers=2, progress=False)
    # refused before an existing dataset is touched
    tg.partition(exs, "g", tmp_path / "keep", num_workers=1, progress=False)
    with pytest.raises(tg.PartitionError, match=r"\(key 2\)"):
        tg.partition(exs + bad, "g", tmp_path / "keep", num_workers=1, overwrite=True, progress=False)
    assert reads_as(tmp_path / "keep", exs, lambda e: e["g"])
    # str keys, and "{" inside strings, are fine
    ok = [{"g": "a", "s": "{2: 3}", "m": {"2": 3, "n": {"null": None}}, "l": [{"k": [1, {}]}]}]
    tg.partition(ok, "g", tmp_path / "ok", num_workers=1, progress=False)
    assert reads_as(tmp_path / "ok", ok, lambda e: e["g"])


def _non_str_key(v) -> bool:
    if isinstance(v, dict):
        return any(not isinstance(k, str) or _non_str_key(x) for k, x in v.items())
    return isinstance(v, (list, tuple)) and any(_non_str_key(x) for x in v)


_scalars = st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=3)
_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=4) | st.tuples(c, c) | st.dictionaries(
    st.text(max_size=2) | st.integers(-2, 2) | st.none() | st.booleans(), c, max_size=3), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=3), _values, max_size=4))
def test_encode_refuses_exactly_the_non_str_keys(ex):
    if _non_str_key(ex):
        with pytest.raises(EncodeError, match=r"\(key .*\): dict keys must be strings"):
            encode(ex)
    else:
        (suffix, text), = encode(ex)[0]
        assert suffix == "json" and json.loads(text) == json.loads(json.dumps(ex))


def test_non_str_keys_in_dict_subclasses_and_tuples():
    from collections import OrderedDict

    for ex, shown in (({"m": OrderedDict([("a", 1), (3, 2)])}, r"field 'm' \(key 3\)"),
                      ({"m": (1, [{"k": {None: 1}}])}, r"field 'm\[1\]\[0\]\.k' \(key None\)"),
                      ({"m": [np.float32(1), {b"b": 1}]}, r"field 'm\[1\]' \(key b'b'\)")):
        with pytest.raises(EncodeError, match=shown):
            encode(ex)
    assert encode({"m": {np.str_("k"): [1.5] * 100}})[0] == [("json", b'{"m":{"k":[' + b",".join([b"1.5"] * 100) + b"]}}")]


def test_json_lines_nested_objects_round_trip(tmp_path):
    exs = [{"g": i % 3, "m": {"2": i, "null": [None, {"x": i}]}} for i in range(30)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(e) + "\n" for e in exs))
    tg.partition(tmp_path / "a.jsonl", "g", tmp_path / "o", num_workers=1, progress=False)
    assert reads_as(tmp_path / "o", exs, lambda e: e["g"])


@pytest.mark.parametrize("key, shown", [(2**63, "9223372036854775808"), (-(2**63) - 1, "-9223372036854775809"),
                                        (np.uint64(2**64 - 1), r"np\.uint64\(18446744073709551615\)")])
def test_int_keys_out_of_int64_are_refused_in_the_map_step(tmp_path, key, shown):
    exs = [{"k": 1}, {"k": key}, {"k": 3}]
    tg.partition([{"k": 5}], "k", tmp_path / "keep", num_workers=1, progress=False)
    with pytest.raises(tg.PartitionError, match=rf"example 1: group key {shown} is out of range; int group ids "
                                                rf"are stored as int64"):
        tg.partition(exs, "k", tmp_path / "keep", num_workers=1, overwrite=True, progress=False)
    assert reads_as(tmp_path / "keep", [{"k": 5}], lambda e: e["k"])  # the old dataset is intact


def test_int64_bounds_are_kept(tmp_path):
    exs = [{"k": 2**63 - 1, "i": 0}, {"k": -(2**63), "i": 1}, {"k": 0, "i": 2}]
    tg.partition(exs, "k", tmp_path / "o", num_workers=1, progress=False)
    assert reads_as(tmp_path / "o", exs, lambda e: e["k"])
    assert tg.GroupedDataset(tmp_path / "o")[-(2**63)].id == -(2**63)


@pytest.mark.parametrize("label", [b"x", (1, 2)])
def test_labels_must_be_json_scalars(tmp_path, label):
    exs = [{"g": "a", "l": "cat"}, {"g": "a", "l": 3}, {"g": "b", "l": label}]
    with pytest.raises(tg.PartitionError, match=rf"example 2: label {re.escape(repr(label))} in column 'l' is a "
                                                rf"{type(label).__name__}; labels must be str, int, float, bool "
                                                rf"or None"):
        tg.partition(exs, "g", tmp_path / "o", num_workers=1, label_column="l", progress=False)
    assert not (tmp_path / "o").exists()


def test_numpy_and_scalar_labels_are_counted(tmp_path):
    exs = [{"g": "a", "l": np.int64(1)}, {"g": "a", "l": 1}, {"g": "a", "l": None}, {"g": "b", "l": 2.5},
           {"g": "b", "l": "x"}]
    tg.partition(exs, "g", tmp_path / "o", num_workers=1, label_column="l", progress=False)
    counts = {r["group_id"]: dict(r["label_counts"]) for r in tg.load_index(tmp_path / "o").to_pylist()}
    assert counts == {"a": {"1": 2, "null": 1}, "b": {"2.5": 1, "x": 1}}


# ------------------------------------------------------------------ errors that name the thing
def test_disk_full_while_spilling_names_the_spill_file(tmp_path, monkeypatch):
    from torch_grouper.engines import local

    real_fdopen = os.fdopen
    writes = []

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def writelines(self, parts):
            writes.append(1)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(fd, *a, **kw):
        f = real_fdopen(fd, *a, **kw)
        return Full(f) if os.readlink(f"/proc/self/fd/{fd}").endswith(".run") else f

    tg.partition([{"g": "old"}], "g", tmp_path / "o", num_workers=1, progress=False)
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(local.os, "fdopen", fdopen)
    with pytest.raises(OSError, match=rf"cannot write spill file {re.escape(str(spill))}/torch_grouper-\d+-\w+/"
                                      rf"\w+\.run: No space left on device \(disk full\?\)") as ei:
        tg.partition([{"g": f"u{i}", "t": "x" * 100} for i in range(500)], "g", tmp_path / "o",
                     num_workers=1, overwrite=True, tmp_dir=str(spill), progress=False)
    assert ei.value.errno == errno.ENOSPC and writes
    assert os.listdir(spill) == []  # nothing left behind
    monkeypatch.undo()
    assert reads_as(tmp_path / "o", [{"g": "old"}], lambda e: e["g"])  # the old dataset is intact


@pytest.mark.parametrize("workers", [1, 2])
def test_unpicklable_value_names_example_and_field(tmp_path, workers):
    exs = [{"g": "a", "i": i} for i in range(7)] + [{"g": "b", "i": 7, "f": lambda: 1}]
    with pytest.raises(tg.PartitionError, match=r"example 7: field 'f' \(function\) cannot be pickled"):
        tg.partition(iter(exs), "g", tmp_path / "o", num_workers=workers, progress=False)
    assert not (tmp_path / "o").exists()


def nested(depth):
    x = []
    for _ in range(depth):
        x = [x]
    return x


@pytest.mark.parametrize("workers", [1, 2])
def test_deep_nesting_names_the_example(tmp_path, workers):
    exs = [{"g": "a", "x": [1]}, {"g": "a", "x": [2]}, {"g": "b", "ok": 1, "x": nested(5000)}]
    with pytest.raises(tg.PartitionError, match=r"example 2: field 'x' is nested too deeply"):
        tg.partition(exs, "g", tmp_path / "o", num_workers=workers, progress=False)
    with pytest.raises(EncodeError, match=r"field 'x': value is nested too deeply to be stored as JSON"):
        encode({"ok": 1, "x": nested(5000)})
    x = []
    x.append(x)
    with pytest.raises(EncodeError, match=r"Circular reference"):  # a cycle ends, it is not walked forever
        encode({"x": x})


def test_non_utf8_file_name(tmp_path):
    name = os.path.join(os.fsencode(tmp_path), b"data-\xff.jsonl")
    exs = [{"g": i % 3, "i": i} for i in range(20)]
    try:
        with open(name, "wb") as f:
            f.write("".join(json.dumps(e) + "\n" for e in exs).encode())
    except OSError:
        pytest.skip("this filesystem refuses non-UTF-8 file names")
    path = os.fsdecode(name)
    tg.partition(path, "g", tmp_path / "o", num_workers=1, progress=False)
    assert reads_as(tmp_path / "o", exs, lambda e: e["g"])
    with open(name, "ab") as f:
        f.write(b"{not json\n")
    with pytest.raises(tg.SourceError, match=rf"{re.escape(path)}: line at byte \d+: invalid JSON"):
        tg.partition(path, "g", tmp_path / "p", num_workers=1, progress=False)


# ------------------------------------------------------------------ input side: file numbers and positions
def dataset_files(out):
    """sha256 of every file of the dataset (its folder as GroupedDataset sees it)."""
    root = tg.GroupedDataset(out).root
    got = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            got[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return got


def sample_positions(out):
    """{(file number, position): the example's JSON} over every shard, by tarfile."""
    root = tg.GroupedDataset(out).root
    got = {}
    for name in sorted(os.listdir(root)):
        if not name.endswith(".tar"):
            continue
        with tarfile.open(os.path.join(root, name)) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                assert ext == "json" and (int(key[17:22]), int(key[22:])) not in got, m.name
                got[int(key[17:22]), int(key[22:])] = json.loads(tf.extractfile(m).read())
    return got


def check_across_workers(tmp_path, paths, exs, positions, monkeypatch):
    from torch_grouper import sources

    from torch_grouper.engines import LocalEngine

    cuts = {w: sources.as_source([str(p) for p in paths], parallelism=w, slice_bytes=3000).slices for w in (1, 2, 3)}
    per_file = {w: Counter(s.url for s in cuts[w]) for w in cuts}
    # the first file is cut into another number of slices for another worker count
    assert len({per_file[w][str(paths[0])] for w in cuts}) > 1
    digests = {}
    for w in (1, 2, 3):
        out = tmp_path / f"w{w}"
        tg.partition([str(p) for p in paths], "g", out, engine=LocalEngine(w, slice_bytes=3000), shard_bytes=4000,
                     progress=False)
        digests[w] = dataset_files(out)
        assert reads_as(out, exs, lambda e: e["g"])
        got = sample_positions(out)
        assert got == positions  # keys: the file's number and the example's row / byte offset in it
    assert len(digests[1]) > 3
    assert digests[1] == digests[2] == digests[3]


def test_jsonl_files_same_bytes_for_any_worker_count(tmp_path, monkeypatch):
    exs, positions, paths = [], {}, []
    for fno, n in enumerate((300, 170, 90)):  # three files of different sizes
        p = tmp_path / f"in{fno}.jsonl"
        off = 0
        with open(p, "wb") as f:
            for i in range(n):
                e = {"g": f"c{(i * 7 + fno) % 11}", "f": fno, "i": i, "t": "w" * (i % 13)}
                line = (json.dumps(e) + "\n").encode()
                positions[fno, off] = e
                off += len(line)
                f.write(line)
                exs.append(e)
        paths.append(p)
    check_across_workers(tmp_path, paths, exs, positions, monkeypatch)


def test_parquet_files_same_bytes_and_global_row_numbers(tmp_path, monkeypatch):
    exs, positions, paths = [], {}, []
    for fno, (n, rg) in enumerate(((240, 40), (150, 30))):  # 6 and 5 row groups
        rows = [{"g": f"c{(i * 5 + fno) % 9}", "f": fno, "i": i} for i in range(n)]
        p = tmp_path / f"in{fno}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), p, row_group_size=rg)
        assert pq.ParquetFile(p).metadata.num_row_groups >= 4
        positions.update(((fno, i), e) for i, e in enumerate(rows))  # position = row in the file
        exs.extend(rows)
        paths.append(p)
    check_across_workers(tmp_path, paths, exs, positions, monkeypatch)


def test_deeply_nested_json_line_names_file_and_byte(tmp_path):
    src = tmp_path / "deep.jsonl"
    src.write_text('{"g": "a"}\n' + '{"g": "b", "x": ' + "[" * 5000 + "]" * 5000 + "}\n")
    with pytest.raises(tg.SourceError, match=r"deep\.jsonl: line at byte 11: JSON nested too deeply"):
        tg.partition(src, "g", tmp_path / "o", progress=False)
