"""Property-based tests: random examples and group ids round-trip exactly;
random damage to real shards, or an index that does not match them, never
gives wrong data.

A damaged shard (or index) read end to end (streaming, random access, windows, skip)
gives, for every group, its exact examples or a ``TarFormatError``.  The one
exception is damage inside a member's payload (its data, or a pax record's
path): a tar holds no checksum of payloads, so such a change can only be found
by ``tg.verify`` (sha256 of every shard); it may change the example that holds
those bytes, and nothing else: never another example, never another group's.
"""
import os
import shutil
import tempfile
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import torch_grouper as tg
from torch_grouper import dataset
from torch_grouper import format as fmt
from torch_grouper.tario import BLOCK, walk
from helpers import groupby, same


def dataset_dir(ds):
    """The folder holding the dataset's manifest.json, index.parquet and shards (local datasets)."""
    return ds.root


# ------------------------------------------------------------------ round trip
_text = st.text(max_size=12) | st.text(st.characters(exclude_categories=()), max_size=6)  # lone surrogates too
_name = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=10)  # a member's field name
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**62), 2**62) | st.floats() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_array = hnp.arrays(
    st.sampled_from([np.int8, np.uint16, np.int64, np.float32, np.float64, np.bool_, np.complex64, ">i4"]),
    hnp.array_shapes(min_dims=0, max_dims=3, max_side=3),
)
_example = st.tuples(
    st.dictionaries(_text, _json, max_size=4),
    st.dictionaries(_name, st.binary(max_size=40) | _array, max_size=2),
).map(lambda t: {**t[0], **t[1]})
_gids = st.sampled_from(["str", "int", "bytes"]).flatmap(lambda kind: st.lists(
    {"str": st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
            | st.sampled_from(["a/b", "..", "../x", ".", "a.b.c", "ünï", "/abs", ""]),
     "int": st.integers(-(2**63), 2**63 - 1),
     "bytes": st.binary(max_size=6)}[kind], min_size=1, max_size=5, unique=True))


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(gids=_gids, data=st.data())
def test_random_examples_and_group_ids_round_trip(gids, data):
    rows = data.draw(st.lists(st.tuples(st.sampled_from(gids), _example), min_size=1, max_size=12))
    exs = []
    for n, (gid, ex) in enumerate(rows):
        ex = dict(ex)
        ex["__g"], ex["__n"] = gid, n
        exs.append(ex)
    want = groupby(exs, lambda e: e["__g"])
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "d")
        tg.partition(exs, lambda e: e["__g"], out, num_workers=1, progress=False)
        ds = tg.GroupedDataset(out)
        streamed = {g.id: list(g) for g in ds}
        assert set(streamed) == set(want)
        for gid, exp in want.items():
            for got in (streamed[gid], list(ds[gid])):
                assert len(got) == len(exp)
                for a, b in zip(got, exp):
                    assert same(a, b), (gid, a, b)


# ------------------------------------------------------------------ damaged shards
LONG = "a_field_name_long_enough_to_need_a_pax_header_" * 3


def _fuzz_examples():
    """Every member kind: JSON-only groups (the fast path), .npy/.bin members
    (the general path), pax long names, and one group big enough for windows."""
    exs = []
    for i in range(40):
        g = ["json", "json2", "arr", "long", "big", "big", "big", 7 * "x/"][i % 8]
        ex = {"g": g, "i": i, "t": "wörds " * (i % 11), "f": [i * 0.5, None, {"k": True}]}
        if g == "arr":
            ex["a"] = np.arange(i % 5 + 1, dtype=np.float32)
            ex["raw"] = bytes([i]) * (i % 7)
        if g == "long":
            ex[LONG] = np.full(3, i, np.int16)
        if g == "big":
            ex["pad"] = "p" * (200 + 37 * i)
            if i % 3 == 0:
                ex["a"] = np.ones((2, 2), np.int64) * i
        exs.append(ex)
    return exs


@pytest.fixture(scope="module")
def damaged_base(tmp_path_factory):
    exs = _fuzz_examples()
    top = tmp_path_factory.mktemp("fuzz") / "d"
    tg.partition(exs, "g", top, num_workers=1, progress=False)
    ds = tg.GroupedDataset(top)
    rel = os.path.relpath(dataset_dir(ds), top)
    index = tg.load_index(top).to_pylist()
    shard = index[0]["shard"]
    assert {r["shard"] for r in index} == {shard}  # one shard: every group is exposed to the damage
    raw = open(os.path.join(dataset_dir(ds), shard), "rb").read()
    # payload byte ranges of each example (member data, pax record data): (gid, example number)
    payload = []  # (start, stop, gid, example)
    headers = []
    for r in index:
        k, prev = -1, None
        for unit, name, start, stop in walk(raw[r["offset"]: r["offset"] + r["length"]], "x", r["offset"]):
            key = name.split(".", 1)[0]
            if key != prev:
                k, prev = k + 1, key
            a, s, e = r["offset"] + unit, r["offset"] + start, r["offset"] + stop
            headers.extend(range(a, s, BLOCK))  # every header of the unit (pax record, then member)
            if s - BLOCK > a:  # a pax record's data
                payload.append((a + BLOCK, s - BLOCK, r["group_id"], k))
            payload.append((s, e, r["group_id"], k))
        assert k + 1 == r["num_examples"]
    return {"top": top, "rel": rel, "shard": shard, "raw": raw, "payload": payload, "headers": sorted(headers),
            "index": index, "want": groupby(exs, lambda e: e["g"])}


def _damage_strategy(base):
    n = len(base["raw"])
    pos = st.integers(0, n - 1) | st.builds(lambda h, o: min(h + o, n - 1), st.sampled_from(base["headers"]),
                                            st.integers(0, BLOCK - 1))
    flip = st.tuples(st.just("flip"), pos, st.integers(1, 255))
    over = st.tuples(st.just("overwrite"), pos, st.binary(min_size=1, max_size=600))
    splice = st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=1100))
    cut = st.tuples(st.just("truncate"), pos, st.just(None))
    rows = len(base["index"])
    # an index that does not match the shard: a row moved, resized, swapped with another, or miscounted
    index = st.tuples(st.just("index"), st.integers(0, rows - 1),
                      st.sampled_from(["offset", "length", "num_examples", "swap"]).flatmap(
                          lambda c: st.tuples(st.just(c), st.integers(0, rows - 1) if c == "swap" else
                                              st.integers(-3, 3) if c == "num_examples" else
                                              st.integers(-4, 4).map(lambda k: k * BLOCK) | st.integers(-700, 700))))
    return (st.lists(flip | over, min_size=1, max_size=3) | st.tuples(splice | cut).map(list)
            | st.lists(index, min_size=1, max_size=2))


def _apply(raw, ops):
    """The damaged bytes, and what may come back wrong: examples whose payload was touched."""
    b = bytearray(raw)
    touched = []  # (start, stop) ranges of the original bytes changed in place
    at = None  # a byte offset from which everything moved (insert) or is gone (truncate)
    for kind, p, arg in ops:
        if kind == "index":
            continue
        if kind == "flip":
            b[p] ^= arg
            touched.append((p, p + 1))
        elif kind == "overwrite":
            arg = arg[: len(b) - p]
            b[p : p + len(arg)] = arg
            touched.append((p, p + len(arg)))
        elif kind == "insert":
            b[p:p] = arg
            touched.append((p, p + 1))  # the example whose data holds the insertion point may change
            at = p
        else:
            del b[p:]
            at = p
    return bytes(b), touched, at


def _may_differ(base, touched):
    out = set()
    for s, e, gid, k in base["payload"]:
        if any(a < e and s < z for a, z in touched):
            out.add((gid, k))
    return out


def _check_group(gid, got, want, may_differ):
    """Exact, or differing only in examples whose own payload bytes were damaged."""
    assert len(got) == len(want), (gid, len(got), len(want))
    for k, (a, b) in enumerate(zip(got, want)):
        if not same(a, b):
            assert (gid, k) in may_differ, (gid, k, a, b)


def _windows(on):
    """Read options: groups over 1500 bytes read in 1000-byte windows (or the defaults)."""
    return dataset.ReadOptions(whole_read=1500, window=1000) if on else None


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_damaged_shards_never_give_wrong_data(damaged_base, data):
    base = damaged_base
    ops = data.draw(_damage_strategy(base))
    raw, touched, _ = _apply(base["raw"], ops)
    may = _may_differ(base, touched)
    want = base["want"]
    with tempfile.TemporaryDirectory() as tmp:
        top = os.path.join(tmp, "d")
        shutil.copytree(base["top"], top)
        with open(os.path.join(top, base["rel"], base["shard"]), "wb") as f:
            f.write(raw)
        rows = [dict(r) for r in base["index"]]
        for kind, i, (col, arg) in (op for op in ops if op[0] == "index"):
            if col == "swap":
                for c in ("offset", "length"):
                    rows[i][c], rows[arg][c] = rows[arg][c], rows[i][c]
            else:
                rows[i][col] = max(0, rows[i][col] + arg)
        if rows != base["index"]:
            path = os.path.join(top, base["rel"], fmt.INDEX)
            pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)
        for windows in (False, True):
            ds = tg.GroupedDataset(top, read_options=_windows(windows))
            seen = set()
            for g in ds:  # streaming, through the shard handle (fast path for JSON-only groups)
                seen.add(g.id)
                try:
                    got = list(g)
                except tg.TarFormatError:
                    continue
                _check_group(g.id, got, want[g.id], may)
            assert seen == set(want)
            for gid in want:  # random access (one ranged read per group)
                try:
                    got = ds[gid].examples()
                except tg.TarFormatError:
                    continue
                _check_group(gid, got, want[gid], may)
            skip = tg.GroupedDataset(top, on_error="skip", read_options=_windows(windows))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kept = [(g.id, list(g)) for g in skip]
            assert {gid for gid, _ in kept} | {gid for gid, _ in skip.skipped} == set(want)
            for gid, got in kept:
                _check_group(gid, got, want[gid], may)
