"""Every example comes back equal, in its group, in input order, from every kind of source."""
import json

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import torch_grouper as tg
from helpers import groupby, mixed_examples, same


def read_all(path, read_options=None):
    ds = tg.GroupedDataset(path, read_options=read_options)
    return {g.id: (len(g), list(g)) for g in ds}


def check(path, examples, key, read_options=None):
    expected = groupby(examples, key)
    got = read_all(path, read_options)
    assert set(got) == set(expected)
    ds = tg.GroupedDataset(path, read_options=read_options)
    for gid, exs in expected.items():
        n, back = got[gid]
        assert n == len(exs) == len(back), gid
        for a, b in zip(exs, back):
            assert same(a, b), (gid, a, b)
        assert same(list(ds[gid]), exs), gid  # random access: the same examples, none missing
    m = ds.manifest
    assert m["num_groups"] == len(expected)
    assert m["num_examples"] == len(examples)


@pytest.mark.parametrize("workers", [1, 2])
def test_mixed_types_iterable(tmp_path, workers):
    exs = mixed_examples()
    tg.partition(iter(exs), "gid", tmp_path / "out", num_workers=workers, progress=False, shard_bytes=20_000)
    check(tmp_path / "out", exs, lambda e: e["gid"])
    index = tg.load_index(tmp_path / "out")
    assert index.column_names == ["group_id", "shard", "offset", "length", "num_examples", "num_bytes", "num_words"]
    # several shards, rolled over at group boundaries, each group in one shard
    assert len(set(index["shard"].to_pylist())) > 1
    words = groupby(exs, lambda e: e["gid"])
    for row in index.to_pylist():
        assert row["num_words"] == sum(len(v.split()) for e in words[row["group_id"]] for v in e.values() if isinstance(v, str))


def test_callable_key_int_and_bytes(tmp_path):
    exs = [{"v": i, "s": f"t{i}"} for i in range(300)]
    tg.partition(exs, lambda e: e["v"] % 7, tmp_path / "int", num_workers=2, progress=False)
    check(tmp_path / "int", exs, lambda e: e["v"] % 7)
    assert tg.load_index(tmp_path / "int").schema.field("group_id").type == pa.int64()
    tg.partition(exs, lambda e: bytes([e["v"] % 5, 0, 255]), tmp_path / "bytes", num_workers=1, progress=False)
    check(tmp_path / "bytes", exs, lambda e: bytes([e["v"] % 5, 0, 255]))
    assert tg.GroupedDataset(tmp_path / "bytes")[b"\x01\x00\xff"].id == b"\x01\x00\xff"


def test_hf_dataset_with_features(tmp_path, png_bytes):
    feats = datasets.Features({
        "client": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["cat", "dog", "eel"]),
        "img": datasets.Image(),
        "emb": datasets.Sequence(datasets.Value("float32")),
        "grid": datasets.Array2D(shape=(2, 2), dtype="int32"),
    })
    rows = {
        "client": [f"c{i % 4}" for i in range(40)],
        "label": [i % 3 for i in range(40)],
        "img": [{"bytes": png_bytes((i, 0, 0)), "path": None} for i in range(40)],
        "emb": [[float(i), 0.5] for i in range(40)],
        "grid": [[[i, 1], [2, 3]] for i in range(40)],
    }
    ds = datasets.Dataset.from_dict(rows, features=feats)
    tg.partition(ds, "client", tmp_path / "out", num_workers=2, progress=False)
    out = tg.GroupedDataset(tmp_path / "out")
    assert out.features == feats
    expected = ds.cast_column("img", datasets.Image(decode=False)).with_format("arrow")[:].to_pylist()
    for e in expected:
        e["img"] = e["img"]["bytes"]  # images come back as their encoded bytes
        e["emb"] = np.asarray(e["emb"], np.float32)  # declared vectors and arrays as numpy arrays
        e["grid"] = np.asarray(e["grid"], np.int32)
    check(tmp_path / "out", expected, lambda e: e["client"])
    # the image member is a real PNG that stock tools decode
    g = out["c1"]
    assert next(iter(g))["img"].startswith(b"\x89PNG")


def test_hf_iterable_dataset(tmp_path):
    exs = [{"u": f"user{i % 9}", "x": i} for i in range(1000)]
    ids = datasets.Dataset.from_list(exs).to_iterable_dataset(num_shards=3)
    tg.partition(ids, "u", tmp_path / "out", num_workers=2, progress=False)
    check(tmp_path / "out", exs, lambda e: e["u"])


def test_file_sources(tmp_path):
    exs = [{"url": f"https://site{i % 13}.example.com/p/{i}", "text": f"w{i} x y", "n": i} for i in range(3000)]
    jl = tmp_path / "a.jsonl"
    jl.write_text("".join(json.dumps(e) + "\n" for e in exs[:1500]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(e) + "\n" for e in exs[1500:]))
    key = tg.UrlDomainKey("url")
    tg.partition(str(tmp_path / "*.jsonl"), key, tmp_path / "j", num_workers=2, progress=False)
    check(tmp_path / "j", exs, key)
    # Parquet with several row groups, read in parallel slices
    pq.write_table(pa.Table.from_pylist(exs), tmp_path / "d.parquet", row_group_size=200)
    tg.partition(tmp_path / "d.parquet", key, tmp_path / "p", num_workers=3, progress=False)
    check(tmp_path / "p", exs, key)
    # CSV (through datasets)
    datasets.Dataset.from_list(exs).to_csv(tmp_path / "c.csv", index=False)
    tg.partition(tmp_path / "c.csv", key, tmp_path / "c", num_workers=2, progress=False)
    check(tmp_path / "c", exs, key)
    # text: one example per line
    (tmp_path / "t.txt").write_text("".join(f"{e['text']}\n" for e in exs))
    tg.partition(tmp_path / "t.txt", lambda e: e["text"][1], tmp_path / "t", num_workers=2, progress=False)
    check(tmp_path / "t", [{"text": e["text"]} for e in exs], lambda e: e["text"][1])


def test_large_jsonl_split_in_byte_ranges(tmp_path, monkeypatch):
    """A file cut into many byte-range slices loses and duplicates no line (incl. a BOM and CRLF)."""
    from torch_grouper import sources
    from torch_grouper.engines import LocalEngine

    exs = [{"g": i % 17, "t": "z" * (i % 50), "i": i} for i in range(4000)]
    body = "\ufeff" + "".join(json.dumps(e) + ("\r\n" if e["i"] % 2 else "\n") for e in exs)
    (tmp_path / "big.jsonl").write_text(body, encoding="utf-8")
    tg.partition(tmp_path / "big.jsonl", "g", tmp_path / "o", engine=LocalEngine(2, slice_bytes=997), progress=False)
    check(tmp_path / "o", exs, lambda e: e["g"])
    assert len(sources.as_source(str(tmp_path / "big.jsonl"), slice_bytes=997).slices) > 10


def test_empty_source(tmp_path):
    tg.partition([], "g", tmp_path / "o", progress=False)
    ds = tg.GroupedDataset(tmp_path / "o")
    assert len(ds) == 0 and list(ds) == []


def test_group_larger_than_read_window(tmp_path):
    """A group bigger than the single-read window is streamed member by member."""
    from torch_grouper import dataset

    opts = dataset.ReadOptions(whole_read=4096)
    exs = [{"g": "big", "i": i, "b": np.full(300, i, np.int16), "pad": "p" * 700} for i in range(200)]
    exs += [{"g": "small", "i": -1, "b": np.zeros(1, np.int16), "pad": ""}]
    tg.partition(exs, "g", tmp_path / "o", num_workers=1, progress=False)
    check(tmp_path / "o", exs, lambda e: e["g"], opts)


def test_empty_dataset_random_access(tmp_path):
    tg.partition([], "g", tmp_path / "o", progress=False)
    ds = tg.GroupedDataset(tmp_path / "o")
    assert ds.group_ids() == []
    with pytest.raises(KeyError):
        ds["x"]


def test_jsonl_lines_longer_than_read_blocks(tmp_path):
    exs = [{"g": i % 3, "t": "w " * (50_000 + i)} for i in range(12)]
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(e) + "\n" for e in exs))
    tg.partition(tmp_path / "long.jsonl", "g", tmp_path / "o", num_workers=1, progress=False)
    check(tmp_path / "o", exs, lambda e: e["g"])


@pytest.mark.parametrize("window", [700, 2500, 9000, None])
def test_large_group_windows_cut_at_example_boundaries(tmp_path, window):
    """Groups read window by window: windows that end inside an example, inside
    a pax long-name record, or hold less than one example (None: one read)."""
    from torch_grouper import dataset

    opts = dataset.ReadOptions(whole_read=1000, window=window) if window is not None else None
    long_field = "a_field_name_long_enough_to_need_a_pax_header_" * 3
    exs = []
    for i in range(120):
        ex = {"g": "big" if i % 4 else "other", "i": i, "t": "x" * (i * 37 % 900)}
        if i % 3 == 0:
            ex["raw"] = bytes([i % 251]) * (i % 700)
        if i % 5 == 0:
            ex[long_field] = np.arange(i % 9, dtype=np.int32)
        exs.append(ex)
    tg.partition(exs, "g", tmp_path / "o", num_workers=1, progress=False)
    check(tmp_path / "o", exs, lambda e: e["g"], opts)
    ds = tg.GroupedDataset(tmp_path / "o", read_options=opts)
    back = list(ds["big"])  # random access, window by window
    expected = [e for e in exs if e["g"] == "big"]
    assert len(back) == len(expected) == 90 and all(same(a, b) for a, b in zip(back, expected))
