"""Each slice class on its own: what it yields, its positions, its error
locations, its columns and its record batches."""
import json
import pickle

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_grouper.sources import (
    ChunkSlice,
    CsvSlice,
    FileSlice,
    HFRowsSlice,
    JsonLinesSlice,
    ParquetSlice,
    Slice,
    SourceError,
    TextSlice,
    as_source,
)


def rows_of(s):
    return [ex for ex, _, _ in s.iter()]


def batch_rows(s, **kw):
    out = []
    for b in s.iter_batches(**kw):
        assert isinstance(b, pa.RecordBatch)
        out.extend(b.to_pylist())
    return out


def write_jsonl(path, exs, newline="\n", bom=False):
    lines = [json.dumps(e, ensure_ascii=False) for e in exs]
    body = ("\ufeff" if bom else "") + "".join(line + newline for line in lines)
    path.write_bytes(body.encode("utf-8"))
    offsets, pos = [], 3 if bom else 0
    for line in lines:
        offsets.append(pos)
        pos += len((line + newline).encode("utf-8"))
    return offsets


# ------------------------------------------------------------------ JSON Lines
def test_json_lines_slice_yields_raw_lines_at_their_byte_offsets(tmp_path):
    exs = [{"g": i % 3, "t": "é" * i, "i": i} for i in range(40)]
    p = tmp_path / "a.jsonl"
    offsets = write_jsonl(p, exs)
    s = JsonLinesSlice(str(p), 7)
    got = list(s.iter())
    assert [ex for ex, _, _ in got] == exs
    assert [loc for _, _, loc in got] == offsets
    assert [json.loads(raw) for _, raw, _ in got] == exs  # the line as it is in the file
    assert s.file_no == 7 and s.where(offsets[5]) == f"{p}: line at byte {offsets[5]}"
    assert [ex for ex, _, _ in s.iter_column("g")] == exs
    assert batch_rows(s, batch_rows=16) == exs
    assert [len(b) for b in s.iter_batches(batch_rows=16)] == [16, 16, 8]
    # a byte range: the lines that start in it
    part = JsonLinesSlice(str(p), 7, start=offsets[10] - 1, end=offsets[20])
    assert [loc for _, _, loc in part.iter()] == offsets[10:20]


def test_json_lines_slice_names_file_and_byte_of_a_bad_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"a": 1}\n[1, 2]\n')
    with pytest.raises(SourceError, match=rf"{p}: line at byte 9: a JSON Lines example must be an object, not list"):
        rows_of(JsonLinesSlice(str(p), 0))


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(alphabet=st.sampled_from("ab é\u4e2d\\\"{}"), max_size=30), min_size=1, max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    crlf=st.booleans(),
    bom=st.booleans(),
    blank_every=st.integers(min_value=0, max_value=5),
)
def test_json_lines_cut_at_any_bytes_yields_every_line_once(tmp_path_factory, texts, cuts, crlf, bom, blank_every):
    """However a file is cut into byte ranges, the ranges' slices together
    yield every line exactly once, in order, at its byte offset."""
    p = tmp_path_factory.mktemp("cut") / "f.jsonl"
    nl = b"\r\n" if crlf else b"\n"
    body, expect, pos = bytearray(b"\xef\xbb\xbf" if bom else b""), [], 3 if bom else 0
    for i, t in enumerate(texts):
        if blank_every and i % blank_every == 0:  # blank lines are skipped
            body += nl
            pos += len(nl)
        line = json.dumps({"i": i, "t": t}, ensure_ascii=False).encode()
        expect.append((pos, {"i": i, "t": t}))
        body += line + nl
        pos += len(line) + len(nl)
    p.write_bytes(bytes(body))
    size = len(body)
    bounds = sorted({0, size, *[c % (size + 1) for c in cuts]})
    got = []
    for a, b in zip(bounds, bounds[1:]):
        got.extend((loc, ex) for ex, _, loc in JsonLinesSlice(str(p), 0, start=a, end=b).iter())
    assert got == expect


def test_text_slice_one_example_per_line(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("one\r\ntwo é\n\nfour\n".encode())
    s = TextSlice(str(p), 2)
    assert list(s.iter()) == [({"text": "one"}, None, 0), ({"text": "two é"}, None, 5), ({"text": ""}, None, 12),
                              ({"text": "four"}, None, 13)]
    assert s.where(5) == f"{p}: line at byte 5" and s.file_no == 2
    assert batch_rows(s) == rows_of(s) == [ex for ex, _, _ in s.iter_column("text")]


# --------------------------------------------------------------------- Parquet
@pytest.fixture
def parquet_file(tmp_path):
    rows = [{"g": f"c{i % 4}", "x": float(i), "i": i} for i in range(100)]
    p = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(rows), p, row_group_size=20)  # 5 row groups
    return p, rows


def test_parquet_slice_reads_its_row_groups_with_file_row_numbers(parquet_file):
    p, rows = parquet_file
    s = ParquetSlice(str(p), 3, row_groups=[2, 3])
    got = list(s.iter())
    assert [loc for _, _, loc in got] == list(range(40, 80))
    assert [ex for ex, _, _ in got] == rows[40:80]
    assert s.file_no == 3 and s.where(41) == f"{p}: row 41"
    assert list(s.iter_column("g")) == [({"g": r["g"]}, None, 40 + i) for i, r in enumerate(rows[40:80])]
    assert batch_rows(s) == rows[40:80]
    assert max(len(b) for b in s.iter_batches(batch_rows=7)) == 7 and batch_rows(s, batch_rows=7) == rows[40:80]
    with pytest.raises(SourceError, match=rf"{p}: no column 'nope' \(columns: \['g', 'x', 'i'\]\)"):
        list(s.iter_column("nope"))


def test_file_source_cuts_parquet_into_row_group_slices(parquet_file):
    p, rows = parquet_file
    src = as_source(str(p), parallelism=2)
    assert all(type(s) is ParquetSlice for s in src.slices) and len(src.slices) > 1
    assert [r for s in src.slices for r in rows_of(s)] == rows
    assert src.description == "1 parquet file(s)"


# -------------------------------------------------------------------------- CSV
def test_csv_slice(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("g,n\na,1\nb,2\nc,3\n")
    s = CsvSlice(str(p), 1)
    assert list(s.iter()) == [({"g": "a", "n": 1}, None, 0), ({"g": "b", "n": 2}, None, 1),
                              ({"g": "c", "n": 3}, None, 2)]
    assert s.where(2) == f"{p}: row 2" and s.file_no == 1
    assert batch_rows(s) == rows_of(s)
    [only] = as_source(str(p)).slices
    assert only == s.__class__(str(p), 0)


# ------------------------------------------------------------------ HF datasets
def test_hf_rows_slice():
    exs = [{"g": i % 3, "t": f"x{i}"} for i in range(50)]
    ds = datasets.Dataset.from_list(exs)
    s = HFRowsSlice(ds, 10, 30)
    assert list(s.iter()) == [(e, None, 10 + i) for i, e in enumerate(exs[10:30])]
    assert list(s.iter_column("g")) == [({"g": e["g"]}, None, 10 + i) for i, e in enumerate(exs[10:30])]
    assert list(s.iter_column(None)) == [({}, None, i) for i in range(10, 30)]
    assert s.where(12) == "example 12 (row 12 of the dataset)" and s.file_no == 0
    assert batch_rows(s) == exs[10:30]
    assert batch_rows(s, batch_rows=6) == exs[10:30]
    with pytest.raises(SourceError, match=r"the dataset has no column 'nope' \(columns: \['g', 't'\]\)"):
        list(s.iter_column("nope"))
    src = as_source(ds, parallelism=2, hf_slice_rows=7)
    assert [type(x) for x in src.slices] == [HFRowsSlice] * 8
    assert [e for x in src.slices for e in rows_of(x)] == exs


# ------------------------------------------------------------------- iterables
def test_chunk_slices_of_a_stream():
    exs = [{"g": i % 2, "b": bytes([i])} for i in range(10)]
    src = as_source(exs)
    assert src.slices == [] and src.kind == "iterable"
    chunks = list(src.chunks(max_examples=4))
    assert [type(c) for c in chunks] == [ChunkSlice] * 3 and [c.start for c in chunks] == [0, 4, 8]
    assert [(ex, loc) for c in chunks for ex, _, loc in c.iter()] == [(e, i) for i, e in enumerate(exs)]
    c = pickle.loads(pickle.dumps(chunks[1]))
    assert c == chunks[1] and c.where(5) == "example 5" and c.file_no == 0
    assert batch_rows(chunks[1]) == exs[4:8]


# ------------------------------------------------------------------ base class
def test_file_slices_pickle_and_read_the_same(tmp_path, parquet_file):
    p = tmp_path / "a.jsonl"
    write_jsonl(p, [{"i": i} for i in range(5)])
    for s in (JsonLinesSlice(str(p), 1, start=0, end=None), ParquetSlice(str(parquet_file[0]), 0, row_groups=[4])):
        again = pickle.loads(pickle.dumps(s))
        assert again == s and list(again.iter()) == list(s.iter())


def test_a_new_slice_kind_is_one_class():
    """A subclass that defines iter and where gets iter_column, file_no and
    record batches from the base class."""
    class Squares(Slice):
        def __init__(self, n):
            self.n = n

        def iter(self):
            for i in range(self.n):
                yield {"i": i, "sq": i * i}, None, i

        def where(self, loc):
            return f"square {loc}"

    s = Squares(5)
    assert rows_of(s) == [ex for ex, _, _ in s.iter_column("i")] == batch_rows(s, batch_rows=2)
    assert s.file_no == 0 and issubclass(JsonLinesSlice, FileSlice)


def test_unknown_and_mixed_file_formats(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x")
    with pytest.raises(SourceError, match=r"a\.bin: unknown file type"):
        as_source(str(tmp_path / "a.bin"))
    (tmp_path / "b.jsonl").write_text('{"a": 1}\n')
    (tmp_path / "c.txt").write_text("x\n")
    with pytest.raises(SourceError, match=r"input files mix formats \['json', 'text'\]"):
        as_source([str(tmp_path / "b.jsonl"), str(tmp_path / "c.txt")])
    src = as_source([str(tmp_path / "b.jsonl"), str(tmp_path / "b.jsonl")])
    assert [type(s) for s in src.slices] == [JsonLinesSlice] * 2 and [s.file_no for s in src.slices] == [0, 1]
