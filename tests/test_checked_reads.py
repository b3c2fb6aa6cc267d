"""Checked reads: a group read from a mixed-up or altered dataset raises an
error naming the shard and byte offset, in every read path; it never returns
another group's examples.  And nothing from the data is a path or an
allocation size."""
import io
import os
import re
import shutil
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import torch_grouper as tg
from torch_grouper import dataset
from torch_grouper import format as fmt
from helpers import groupby, same


def dataset_dir(ds):
    """The folder holding the dataset's manifest.json, index.parquet and shards (local datasets)."""
    return ds.root


def index_path(path):
    return os.path.join(dataset_dir(tg.GroupedDataset(path)), fmt.INDEX)


def rewrite_index(path, change):
    """Rewrite the dataset's index.parquet with ``change(rows)`` applied (rows as dicts)."""
    p = index_path(path)
    table = pq.read_table(p)
    rows = table.to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), p)


def row_of(path, gid):
    return next(r for r in tg.load_index(path).to_pylist() if r["group_id"] == gid)


def examples():
    """JSON-only groups (the fast path) and groups with .npy/.bin members (the
    general path); groups of each kind have the same number of examples, so a
    swap is not given away by a count."""
    exs = []
    for g in ("alpha", "beta", "gamma"):
        for i in range(3):
            exs.append({"g": g, "i": i, "t": f"{g} text {i} " * (20 + i)})
    for g in ("arr/x", "arr..y"):
        for i in range(3):
            exs.append({"g": g, "i": i, "a": np.full(40 + i, i, np.float32), "raw": g.encode() * (i + 1)})
    return exs


@pytest.fixture
def data(tmp_path):
    exs = examples()
    path = tmp_path / "d"
    tg.partition(exs, "g", path, num_workers=1, progress=False)
    return path, groupby(exs, lambda e: e["g"])


def check_equal(got, want):
    assert len(got) == len(want)
    assert all(same(a, b) for a, b in zip(got, want))


def swap(path, a, b):
    ra, rb = row_of(path, a), row_of(path, b)

    def change(rows):
        for r in rows:
            if r["group_id"] == a:
                r["offset"], r["length"] = rb["offset"], rb["length"]
            elif r["group_id"] == b:
                r["offset"], r["length"] = ra["offset"], ra["length"]

    rewrite_index(path, change)
    return ra, rb


def mismatch(shard, offset, gid):
    return rf"{re.escape(shard)}: byte offset {offset}: .*group {re.escape(repr(gid))}"


def test_group_mismatch_error_is_a_tar_format_error():
    assert issubclass(tg.GroupMismatchError, tg.TarFormatError)
    assert "GroupMismatchError" in tg.__all__


@pytest.mark.parametrize("a, b", [("alpha", "gamma"), ("arr/x", "arr..y")], ids=["fast-path", "general-path"])
def test_swapped_index_rows_raise_in_every_read_path(data, a, b):
    path, want = data
    ra, rb = swap(path, a, b)
    assert ra["num_examples"] == rb["num_examples"]  # only the hash check can tell
    msg = mismatch(ra["shard"], rb["offset"], a)  # group a now points at b's bytes
    ds = tg.GroupedDataset(path)
    # streaming: every other group is still read right; a and b raise
    bad = set()
    for g in ds:
        try:
            got = list(g)
        except tg.GroupMismatchError as e:
            bad.add(g.id)
            if g.id == a:
                assert re.search(msg, str(e)), str(e)
            continue
        check_equal(got, want[g.id])
    assert bad == {a, b}
    # random access
    with pytest.raises(tg.GroupMismatchError, match=msg):
        list(ds[a])
    with pytest.raises(tg.GroupMismatchError, match=mismatch(rb["shard"], ra["offset"], b)):
        ds[b].examples()
    check_equal(list(ds["beta"]), want["beta"])
    # cohorts (random access on threads)
    with pytest.raises(tg.GroupMismatchError, match=r"byte offset \d+: .*group "):
        next(iter(ds.cohorts(len(ds), rounds=1)))
    # groups read window by window
    windows = dataset.ReadOptions(whole_read=600, window=700)
    with pytest.raises(tg.GroupMismatchError, match=msg):
        list(tg.GroupedDataset(path, read_options=windows)[a])
    check_equal(list(tg.GroupedDataset(path, read_options=windows)["beta"]), want["beta"])


def test_swapped_rows_skipped_with_on_error_skip(data):
    path, want = data
    swap(path, "alpha", "gamma")
    ds = tg.GroupedDataset(path, on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = {g.id: list(g) for g in ds}
    assert set(got) == set(want) - {"alpha", "gamma"}
    for gid, exs in got.items():
        check_equal(exs, want[gid])
    assert sorted(gid for gid, _ in ds.skipped) == ["alpha", "gamma"]
    assert all("does not match the shard" in err for _, err in ds.skipped)


def test_index_of_another_dataset(tmp_path):
    """The mixed-up dataset of a rewrite under an open reader: shards of one
    partition, the index of another."""
    one = [{"g": f"u{i % 7}", "i": i} for i in range(70)]
    two = [{"g": f"u{i % 5}", "i": -i, "pad": "x" * (i % 9)} for i in range(70)]
    tg.partition(one, "g", tmp_path / "one", num_workers=1, progress=False)
    tg.partition(two, "g", tmp_path / "two", num_workers=1, progress=False)
    shutil.copyfile(index_path(tmp_path / "two"), index_path(tmp_path / "one"))
    ds = tg.GroupedDataset(tmp_path / "one")
    assert len(ds.group_ids()) == 5
    for gid in ds.group_ids():  # never one's examples under two's rows
        with pytest.raises(tg.TarFormatError, match=r"shard-\d+-\d+\.tar: (group at )?byte offset \d+: "):
            list(ds[gid])


@pytest.mark.parametrize("delta", [1, -1])
def test_num_examples_off_by_one(data, delta):
    path, want = data
    r = row_of(path, "beta")

    def change(rows):
        for row in rows:
            if row["group_id"] == "beta":
                row["num_examples"] += delta

    rewrite_index(path, change)
    msg = (rf"{re.escape(r['shard'])}: byte offset {r['offset']}: group 'beta' holds "
           rf"(3|more than 2) examples \(\d+ bytes of member data\), the index says {3 + delta} \(\d+ bytes\)")
    ds = tg.GroupedDataset(path)
    with pytest.raises(tg.GroupMismatchError, match=msg):
        list(ds["beta"])
    with pytest.raises(tg.GroupMismatchError, match=msg):
        for g in ds:
            list(g)
    with pytest.raises(tg.GroupMismatchError, match=msg):
        next(iter(ds.cohorts(len(ds), rounds=1)))
    # window by window: checked once the group is fully read (or has too many)
    g = tg.GroupedDataset(path, read_options=dataset.ReadOptions(whole_read=600, window=700))["beta"]
    assert same(next(iter(g)), want["beta"][0])  # a consumer that stops early is not told
    got = []
    with pytest.raises(tg.GroupMismatchError, match=msg):
        for ex in g:
            got.append(ex)
    assert len(got) <= 3 + delta  # never more examples than the index says, even before the end


def test_group_range_cut_at_a_member_boundary(data):
    """An index length that leaves out the last member of the last example
    (same number of examples): found by the bytes of member data."""
    path, want = data
    r = row_of(path, "arr/x")
    p = os.path.join(dataset_dir(tg.GroupedDataset(path)), r["shard"])
    raw = open(p, "rb").read()
    last = max(m.start() for m in re.finditer(rb"[0-9a-f]{16}_\d{18}\.", raw[: r["offset"] + r["length"]]))

    def change(rows):
        for row in rows:
            if row["group_id"] == "arr/x":
                row["length"] = last - row["offset"]

    rewrite_index(path, change)
    msg = rf"byte offset {r['offset']}: group 'arr/x' holds 3 examples \(\d+ bytes of member data\), the index says 3"
    with pytest.raises(tg.GroupMismatchError, match=msg):
        list(tg.GroupedDataset(path)["arr/x"])
    with pytest.raises(tg.GroupMismatchError, match=msg):
        list(tg.GroupedDataset(path, read_options=dataset.ReadOptions(whole_read=600, window=700))["arr/x"])
    check_equal(list(tg.GroupedDataset(path)["arr..y"]), want["arr..y"])


@pytest.mark.parametrize("bad", ["../other/shard-00000-000.tar", "/tmp/shard-00000-000.tar",
                                 "sub/shard-00000-000.tar", "shard-00000-000.tar\n", "manifest.json",
                                 "shard-00000-000.tar/../shard-00000-000.tar"])
def test_shard_names_from_the_index_are_not_paths(tmp_path, data, bad):
    path, _ = data
    # a real shard where the bad name points, so that reading it would "work"
    os.makedirs(tmp_path / "other", exist_ok=True)
    shard = row_of(path, "alpha")["shard"]
    shutil.copyfile(os.path.join(dataset_dir(tg.GroupedDataset(path)), shard), tmp_path / "other" / shard)

    def change(rows):
        rows[1]["shard"] = bad

    rewrite_index(path, change)
    gid = tg.load_index(path)["group_id"][1].as_py()
    ds = tg.GroupedDataset(path)
    msg = rf"index row 1 \(group {re.escape(repr(gid))}\): shard name {re.escape(repr(bad))} is not a shard file name"
    with pytest.raises(ValueError, match=msg):
        list(ds)
    with pytest.raises(ValueError, match=msg):
        ds["alpha"]


@pytest.mark.parametrize("column", ["offset", "length", "num_examples"])
def test_negative_index_numbers_refused_at_load(data, column):
    path, _ = data

    def change(rows):
        rows[2][column] = -5

    rewrite_index(path, change)
    gid = tg.load_index(path)["group_id"][2].as_py()
    with pytest.raises(ValueError, match=rf"index row 2 \(group {re.escape(repr(gid))}\): {column} is -5, must be >= 0"):
        tg.GroupedDataset(path).group_ids()


def patch_shard(path, gid, old: bytes, new: bytes):
    """Replace ``old`` (once, inside group ``gid``'s bytes) with ``new`` of the same length."""
    assert len(old) == len(new)
    r = row_of(path, gid)
    p = os.path.join(dataset_dir(tg.GroupedDataset(path)), r["shard"])
    raw = bytearray(open(p, "rb").read())
    at = raw.find(old, r["offset"], r["offset"] + r["length"])
    assert at >= 0
    raw[at : at + len(old)] = new
    open(p, "wb").write(bytes(raw))
    return r


def test_npy_header_declaring_a_huge_shape(tmp_path):
    """A 200-byte .npy member declaring shape (10**12,): an error naming the
    member, not a 7 TiB allocation (MemoryError); skipped with on_error="skip"."""
    exs = [{"g": "evil", "a": np.zeros(9, np.float64)}, {"g": "fine", "a": np.ones(2, np.int8)}]
    path = tmp_path / "d"
    tg.partition(exs, "g", path, num_workers=1, progress=False)
    buf = io.BytesIO()
    np.save(buf, exs[0]["a"])
    assert len(buf.getvalue()) == 200
    header = buf.getvalue()[10:128]
    huge = header.replace(b"(9,), }", b"(1000000000000,), }").replace(b" " * 12 + b"\n", b"\n")
    assert len(huge) == len(header) and b"(1000000000000,)" in huge
    patch_shard(path, "evil", header, huge)
    ds = tg.GroupedDataset(path)
    msg = (r"shard-\d+-\d+\.tar: group at byte offset \d+: member '[0-9a-f]{16}_\d+\.a\.npy' does not decode "
           r".*shape \(1000000000000,\) of float64 \(8000000000000 bytes\), but the member holds 72 bytes")
    with pytest.raises(tg.TarFormatError, match=msg):
        list(ds["evil"])
    with pytest.raises(tg.TarFormatError, match=msg):
        for g in ds:
            list(g)
    skip = tg.GroupedDataset(path, on_error="skip")
    with pytest.warns(UserWarning, match="skipping damaged group 'evil'"):
        got = [(g.id, list(g)) for g in skip]
    assert [gid for gid, _ in got] == ["fine"] and same(got[0][1], [exs[1]])
    assert [gid for gid, _ in skip.skipped] == ["evil"]


def test_npy_header_must_match_the_member_size_exactly():
    from torch_grouper.codec import decode_field

    for arr in (np.arange(6, dtype=">f8").reshape(2, 3), np.asfortranarray(np.arange(6).reshape(2, 3)),
                np.zeros((0, 3), np.int8), np.array(7, np.uint16), np.array(["é", "x"])):
        buf = io.BytesIO()
        np.save(buf, arr)
        raw = buf.getvalue()
        name, back = decode_field("x.npy", raw)
        assert name == "x" and same(back, arr) and back.flags.writeable
        assert back.flags.f_contiguous == arr.flags.f_contiguous
        for damaged in (raw[:-1], raw + b"\0") if arr.nbytes else (raw + b"\0",):
            with pytest.raises(ValueError, match=r"\.npy header declares shape .* but the member holds"):
                decode_field("x.npy", damaged)


def test_every_decode_error_is_a_tar_format_error(tmp_path):
    """JSON nested deeper than the parser goes (RecursionError) is named as a
    damaged member, and skipped with on_error="skip"."""
    exs = [{"g": "deep", "t": "y" * 5000}, {"g": "ok", "t": "z"}]
    path = tmp_path / "d"
    tg.partition(exs, "g", path, num_workers=1, progress=False)
    old = b'{"g":"deep","t":"' + b"y" * 5000 + b'"}'
    patch_shard(path, "deep", old, b"[" * len(old))
    ds = tg.GroupedDataset(path)
    with pytest.raises(tg.TarFormatError, match=r"member '[0-9a-f_]+\.json' does not decode .*RecursionError"):
        list(ds["deep"])
    skip = tg.GroupedDataset(path, on_error="skip")
    with pytest.warns(UserWarning, match="skipping damaged group 'deep'"):
        assert [(g.id, list(g)) for g in skip] == [("ok", [exs[1]])]


def test_damaged_member_name_is_caught_by_the_header_checksum(data):
    """An extension changed in a tar header (.npy read as raw bytes) or a
    member hidden as a global pax record: an error, not an example with a
    field of the wrong type or missing."""
    path, want = data
    name = re.compile(rb"[0-9a-f]{16}_\d{18}\.a\.npy")
    r = row_of(path, "arr/x")
    p = os.path.join(dataset_dir(tg.GroupedDataset(path)), r["shard"])
    raw = open(p, "rb").read()
    key = name.search(raw, r["offset"]).group()
    patch_shard(path, "arr/x", key, key[:-1] + b"z")
    with pytest.raises(tg.TarFormatError, match=r"byte offset \d+: tar header checksum does not match"):
        list(tg.GroupedDataset(path)["arr/x"])
    # the last member of the group turned into a global pax record: walked over silently by a tar reader
    r = row_of(path, "arr..y")
    last = r["offset"] + r["length"]
    hdr = max(m.start() for m in re.finditer(rb"[0-9a-f]{16}_\d{18}\.", raw[:last]))
    raw = bytearray(open(p, "rb").read())
    assert raw[hdr + 156] == ord("0")
    raw[hdr + 156] = ord("g")
    open(p, "wb").write(bytes(raw))
    with pytest.raises(tg.TarFormatError, match=rf"byte offset {hdr}: .*(checksum|not a member)"):
        list(tg.GroupedDataset(path)["arr..y"])
    check_equal(list(tg.GroupedDataset(path)["alpha"]), want["alpha"])


@pytest.mark.parametrize("field", ["name", "mtime", "size"])
def test_damaged_header_of_a_json_member_fails_its_checksum(data, field):
    """JSON-only groups take the streaming fast path, which checks every header
    too: a digit changed in a member's name (the example still decodes), a
    changed byte of a fixed field, or of the size, is an error naming the
    header's byte offset, in the stream and in random access."""
    path, want = data
    r = row_of(path, "beta")
    p = os.path.join(dataset_dir(tg.GroupedDataset(path)), r["shard"])
    raw = bytearray(open(p, "rb").read())
    m = list(re.finditer(rb"[0-9a-f]{16}_\d{18}\.json", bytes(raw[r["offset"]:r["offset"] + r["length"]])))[1]
    hdr = r["offset"] + m.start()
    at = {"name": hdr + m.end() - m.start() - 6, "mtime": hdr + 140, "size": hdr + 134}[field]
    raw[at] = ord("7") if raw[at] != ord("7") else ord("6")
    open(p, "wb").write(bytes(raw))
    err = rf"{re.escape(r['shard'])}: byte offset {hdr}: tar header checksum does not match"
    with pytest.raises(tg.TarFormatError, match=err):
        list(tg.GroupedDataset(path)["beta"])
    with pytest.raises(tg.TarFormatError, match=err):
        for g in tg.GroupedDataset(path):
            list(g)
    check_equal(list(tg.GroupedDataset(path)["alpha"]), want["alpha"])


def test_json_groups_are_read_by_the_fast_path(data, monkeypatch):
    """Clean JSON-only groups never reach the general (slow) member walk."""
    from torch_grouper import codec

    path, want = data

    def general(*a, **k):
        raise AssertionError("general path used")

    monkeypatch.setattr(codec, "checked_members", general)
    for gid in ("alpha", "beta", "gamma"):
        check_equal(list(tg.GroupedDataset(path)[gid]), want[gid])
