"""Input adapters: turn what the user passes to ``partition`` into slices.

A *slice* is a small picklable description of a unit of map work (a byte
range of a JSON Lines file, a row range of a Hugging Face ``Dataset``, some
row groups of a Parquet file, a chunk of a Python iterable).  Slices are
numbered in input order; an example's position is (slice number, ordinal in
the slice), which is what keeps groups in input order whatever the number of
workers.

Every slice iterator yields ``(example, raw_json, loc)``: ``raw_json`` is the
example's JSON text when the source already holds it (JSON Lines), else None;
``loc`` locates the example for error messages (a row index or byte offset).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import fsspec

SLICE_BYTES = 8 << 20  # byte range of one file slice
HF_SLICE_ROWS = 20_000
CHUNK_EXAMPLES = 5_000  # examples per chunk of a streamed (iterable) source

_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")
_EXT_KIND = {
    ".jsonl": "json", ".json": "json", ".ndjson": "json",
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv", ".tsv": "csv",
    ".txt": "text", ".text": "text",
}


class SourceError(ValueError):
    """The source cannot be read; the message names the file or example."""


@dataclass
class Source:
    """What the engine needs from an input."""

    description: str
    kind: str
    slices: list = field(default_factory=list)  # empty for streamed sources
    features: dict | None = None  # HF Features as a dict, when known
    image_fields: tuple = ()
    fingerprint: str | None = None
    obj: Any = None  # the HF Dataset, for row-range slices
    stream: Iterable | None = None  # a streamed source, chunked by the engine
    storage_options: dict | None = None

    # ------------------------------------------------------------ reading
    def iter_slice(self, s) -> Iterator[tuple[dict, bytes | None, Any]]:
        kind = s[0]
        if kind == "chunk":
            _, start, payload = s
            # our own hand-off from the main process (see chunks), never data from a shard
            for i, ex in enumerate(pickle.loads(payload)):
                yield ex, None, start + i
        elif kind == "rows":
            yield from _iter_hf_rows(self.obj, s[1], s[2])
        elif kind == "json":
            yield from _iter_lines(s[1], s[2], s[3], self.storage_options, parse_json=True)
        elif kind == "text":
            yield from _iter_lines(s[1], s[2], s[3], self.storage_options, parse_json=False)
        elif kind == "parquet":
            yield from _iter_parquet(s[1], s[2], self.storage_options)
        elif kind == "csv":
            yield from _iter_csv(s[1], self.storage_options)
        else:  # pragma: no cover
            raise AssertionError(kind)

    def iter_column(self, s, col):
        """Like ``iter_slice``, but only ``col`` needs to be present in the
        examples (for a partitioner's first pass); reads only that column from
        datasets and Parquet files, and nothing at all when ``col`` is None."""
        kind = s[0]
        if kind == "rows":
            a, b = s[1], s[2]
            if col is None:
                for i in range(a, b):
                    yield {}, None, i
                return
            if col not in self.obj.column_names:
                raise SourceError(f"the dataset has no column {col!r} (columns: {self.obj.column_names})")
            values = self.obj.select_columns([col]).with_format("arrow")[a:b][col].to_pylist()
            for i, v in enumerate(values):
                yield {col: v}, None, a + i
        elif kind == "parquet" and col is not None:
            yield from _iter_parquet(s[1], s[2], self.storage_options, columns=[col])
        else:
            yield from self.iter_slice(s)

    def file_no(self, s) -> int:
        """Which input file a slice reads (0 for non-file sources)."""
        return s[-1] if self.kind == "files" else 0

    def where(self, s, loc) -> str:
        kind = s[0]
        if kind == "chunk":
            return f"example {loc}"
        if kind == "rows":
            return f"example {loc} (row {loc} of the dataset)"
        if kind in ("json", "text"):
            return f"{s[1]}: line at byte {loc}"
        return f"{s[1]}: row {loc}"

    def chunks(self, max_bytes: int = 4 << 20) -> Iterator[tuple]:
        """Cut a streamed source into chunk slices (runs in the main process).

        A chunk closes at CHUNK_EXAMPLES examples or about ``max_bytes`` of
        string / binary data, so a few large examples never make a huge chunk.
        """
        buf: list = []
        start = 0
        size = 0
        for ex in self.stream:
            buf.append(ex)
            size += _approx_size(ex)
            if len(buf) >= CHUNK_EXAMPLES or size >= max_bytes:
                size = 0
                yield ("chunk", start, _pickle_chunk(buf, start))
                start += len(buf)
                buf = []
        if buf:
            yield ("chunk", start, _pickle_chunk(buf, start))


def _pickle_chunk(buf: list, start: int) -> bytes:
    """A chunk's examples pickled for the hand-off to a worker; an example that
    cannot be pickled raises PartitionError naming it and its field."""
    try:
        return pickle.dumps(buf, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # noqa: BLE001 - PicklingError, TypeError, AttributeError, RecursionError...
        from .engines.local import PartitionError

        for i, ex in enumerate(buf):
            fields = list(ex.items()) if isinstance(ex, dict) else [(None, ex)]
            for k, v in fields:
                try:
                    pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception as err:  # noqa: BLE001
                    what = "the example" if k is None else f"field {k!r}"
                    if isinstance(err, RecursionError):
                        why = "is nested too deeply"
                    else:
                        why = f"({type(v).__name__}) cannot be pickled: {type(err).__name__}: {err}"
                    raise PartitionError(
                        f"example {start + i}: {what} {why}; examples of an iterable source are pickled "
                        f"to reach the worker processes"
                    ) from None
        raise PartitionError(f"examples {start}-{start + len(buf) - 1} cannot be pickled to reach the worker "
                             f"processes: {type(e).__name__}: {e}") from None


def iter_examples(source: Source):
    """Every example of a source, in input order, in this process."""
    if source.stream is not None:
        yield from source.stream
        return
    for s in source.slices:
        for ex, _, _ in source.iter_slice(s):
            yield ex


def _approx_size(ex) -> int:
    n = 64
    if isinstance(ex, dict):
        for v in ex.values():
            if isinstance(v, (str, bytes, bytearray)):
                n += len(v)
            elif hasattr(v, "nbytes"):
                n += int(v.nbytes)
            else:
                n += 16
    return n


# ---------------------------------------------------------------- dispatch
def as_source(obj, storage_options: dict | None = None, parallelism: int = 1) -> Source:
    """Recognise the kind of source and describe it.

    ``parallelism`` (the number of workers) sets how finely the source is cut
    into slices, a multiple of it where possible, so no worker idles at the
    end.  The output never depends on it: an example's position is its row
    index or byte offset in its file, whatever the slicing.
    """
    if isinstance(obj, Source):
        return obj
    # an HF object can only exist if its module is loaded: don't pay the import otherwise
    datasets = sys.modules.get("datasets")
    if datasets is not None and isinstance(obj, datasets.DatasetDict):
        raise SourceError(
            f"got a DatasetDict with splits {list(obj)}; pass one split, e.g. source=dsdict['train']"
        )
    if datasets is not None and isinstance(obj, datasets.Dataset):
        return _hf_source(obj, parallelism)
    if datasets is not None and isinstance(obj, datasets.IterableDataset):
        feats = obj.features
        return Source(
            description=f"HF IterableDataset ({obj.n_shards} shard(s))",
            kind="iterable",
            features=feats.to_dict() if feats is not None else None,
            image_fields=_image_fields(feats),
            stream=_HFStream(obj),
        )
    if isinstance(obj, (str, os.PathLike)) or (
        isinstance(obj, (list, tuple)) and obj and all(isinstance(p, (str, os.PathLike)) for p in obj)
    ):
        return _file_source(obj, storage_options, parallelism)
    if isinstance(obj, dict):
        raise SourceError("got a dict; pass an iterable of example dicts (or a datasets.Dataset)")
    if isinstance(obj, Iterable):
        return Source(description=f"iterable ({type(obj).__name__})", kind="iterable", stream=obj)
    raise SourceError(
        f"cannot partition an object of type {type(obj).__name__}: pass a datasets.Dataset / IterableDataset, "
        f"a path, glob or list of JSONL / Parquet / CSV / text files, or an iterable of dicts"
    )


def _image_fields(features) -> tuple:
    if features is None:
        return ()
    import datasets

    return tuple(k for k, f in features.items() if isinstance(f, datasets.Image))


def _n_slices(units: int, per_slice: int, parallelism: int) -> int:
    """How many slices to cut ``units`` into: at most ``per_slice`` each, at
    least two per worker, and a multiple of the worker count."""
    n = max(-(-units // per_slice), 2 * parallelism)
    n = -(-n // parallelism) * parallelism
    return max(1, min(n, units))


def _hf_source(ds, parallelism) -> Source:
    import datasets

    img = _image_fields(ds.features)
    features = ds.features.to_dict()
    for k in img:  # keep the encoded bytes; never decode and re-encode
        ds = ds.cast_column(k, datasets.Image(decode=False))
    n = len(ds)
    step = -(-n // _n_slices(n, HF_SLICE_ROWS, parallelism)) if n else 1
    slices = [("rows", a, min(n, a + step)) for a in range(0, n, step)]
    return Source(
        description=f"HF Dataset ({n} rows, columns {ds.column_names})",
        kind="hf",
        slices=slices,
        features=features,
        image_fields=img,
        fingerprint=getattr(ds, "_fingerprint", None),
        obj=ds,
    )


class _HFStream:
    """An HF IterableDataset as a re-iterable stream (image columns undecoded)."""

    def __init__(self, ds):
        import datasets

        for k in _image_fields(ds.features):
            ds = ds.cast_column(k, datasets.Image(decode=False))
        self.ds = ds

    def __iter__(self):
        return iter(self.ds)


def _iter_hf_rows(ds, start: int, stop: int):
    arrow = ds.with_format("arrow")
    step = 2_000
    for a in range(start, stop, step):
        rows = arrow[a : min(stop, a + step)].to_pylist()
        for i, ex in enumerate(rows):
            yield ex, None, a + i


# ------------------------------------------------------------------- files
def _expand(paths, storage_options):
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = os.fspath(p)
        fs, _, _ = fsspec.get_fs_token_paths(p, storage_options=storage_options or {})
        if any(c in p for c in "*?["):
            found = sorted(fs.glob(p))
            if not found:
                raise SourceError(f"no file matches {p!r}")
            out.extend((fs, f) for f in found)
        else:
            root = fs._strip_protocol(p)
            if not fs.exists(root):
                raise SourceError(f"input file {p!r} does not exist")
            if fs.isdir(root):
                found = sorted(f for f in fs.find(root) if _kind_of(f, None) is not None)
                if not found:
                    raise SourceError(f"directory {p!r} holds no JSONL, Parquet, CSV or text files")
                out.extend((fs, f) for f in found)
            else:
                out.append((fs, root))
    return out


def _strip_compression(path: str) -> str:
    base = path.lower()
    for c in _COMPRESSED:
        if base.endswith(c):
            return base[: -len(c)]
    return base


def _kind_of(path: str, default):
    base = _strip_compression(path)
    for ext, kind in _EXT_KIND.items():
        if base.endswith(ext):
            return kind
    return default


def _file_source(paths, storage_options, parallelism) -> Source:
    files = _expand(paths, storage_options)
    infos = [fs.info(f) for fs, f in files]
    total = sum(int(i.get("size") or 0) for i in infos)
    step = max(min(SLICE_BYTES // 4, 1 << 20), -(-total // _n_slices(total, SLICE_BYTES, parallelism)))
    slices = []
    kinds = set()
    fp = hashlib.sha256()
    for fno, ((fs, f), info) in enumerate(zip(files, infos)):
        kind = _kind_of(f, None)
        if kind is None:
            raise SourceError(
                f"{f}: unknown file type; expected .jsonl/.json, .parquet, .csv/.tsv or .txt "
                f"(optionally compressed), or load it with datasets.load_dataset and pass the Dataset"
            )
        kinds.add(kind)
        size = int(info.get("size") or 0)
        url = fs.unstrip_protocol(f) if fs.protocol not in ("file", ("file", "local")) else f
        # surrogateescape: a local file name that is not UTF-8 (os.fsdecode) hashes as its bytes
        fp.update(f"{url}\0{size}\0{info.get('mtime', info.get('LastModified', ''))}\0".encode(
            "utf-8", "surrogateescape"))
        compressed = f.lower().endswith(_COMPRESSED)
        if kind in ("json", "text"):
            if compressed or size <= step:
                slices.append((kind, url, 0, None, fno))
            else:
                for a in range(0, size, step):
                    slices.append((kind, url, a, min(size, a + step), fno))
        elif kind == "parquet":
            import pyarrow.parquet as pq

            with fs.open(f, "rb") as fh:
                nrg = pq.ParquetFile(fh).metadata.num_row_groups
            per = max(1, -(-nrg // (2 * parallelism)))
            for a in range(0, max(nrg, 1), per):
                slices.append(("parquet", url, list(range(a, min(nrg, a + per))), fno))
        else:
            slices.append(("csv", url, fno))
    if len(kinds) > 1:
        raise SourceError(f"input files mix kinds {sorted(kinds)}; partition one kind at a time")
    return Source(
        description=f"{len(files)} {kinds.pop()} file(s)",
        kind="files",
        slices=slices,
        fingerprint=fp.hexdigest(),
        storage_options=storage_options,
    )


_scan_json = json.JSONDecoder().scan_once


def _iter_lines(url, start, end, storage_options, parse_json):
    """Lines whose first byte lies in [start, end) (end None: to the end of file)."""
    loads = json.loads
    scan = _scan_json
    stop = (1 << 62) if end is None else end
    with fsspec.open(url, "rb", compression="infer", **(storage_options or {})) as f:
        pos = 0
        if start:
            f.seek(start - 1)
            pos = start - 1 + len(f.readline())  # the line holding byte start-1 is not ours
        rest = b""
        while pos < stop:
            # read up to the slice end (the line that crosses it comes in small reads)
            block = f.read(max(64 << 10, min(4 << 20, stop - pos - len(rest))))
            if pos == 0 and block.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
                block = block[3:]
                pos = 3
            if block:
                lines = (rest + block).split(b"\n")
                rest = lines.pop()
            else:
                lines = [rest] if rest else []
            for line in lines:
                loc = pos
                pos += len(line) + 1
                if loc >= stop:
                    return
                if line[-1:] == b"\r":
                    line = line[:-1]
                if not parse_json:
                    yield {"text": line.decode("utf-8")}, None, loc
                    continue
                if not line or line.isspace():
                    continue
                try:  # fast path: a UTF-8 object spanning the whole line
                    text = line.decode("utf-8")
                    ex, used = scan(text, 0)
                    if used != len(text) and not text[used:].isspace():
                        raise ValueError
                except (ValueError, StopIteration, RecursionError):
                    try:
                        ex = loads(line)
                    except ValueError as e:
                        raise SourceError(f"{url}: line at byte {loc}: invalid JSON ({e})") from None
                    except RecursionError:
                        raise SourceError(f"{url}: line at byte {loc}: JSON nested too deeply to read") from None
                if type(ex) is not dict:
                    raise SourceError(
                        f"{url}: line at byte {loc}: a JSON Lines example must be an object, "
                        f"not {type(ex).__name__}"
                    )
                yield ex, line, loc
            if not block:
                return


PARQUET_BATCH_BYTES = 4 << 20  # decoded bytes per record batch read from a Parquet file
PARQUET_MAX_BATCH_ROWS = 4096
PARQUET_BUFFER = 1 << 20  # read column chunks through a buffer of this size, page by page


def _parquet_batch_rows(md, i: int, columns) -> int:
    """Rows per record batch of row group ``i`` so that one batch decodes to
    about PARQUET_BATCH_BYTES, from the group's uncompressed size per row (a
    row group of any size is then read a few MB at a time)."""
    rg = md.row_group(i)
    if rg.num_rows <= 0:
        return 1
    size = 0
    for j in range(rg.num_columns):
        c = rg.column(j)
        if columns is None or c.path_in_schema.split(".")[0] in columns:
            size += c.total_uncompressed_size
    per_row = max(1, size // rg.num_rows)
    return max(1, min(PARQUET_MAX_BATCH_ROWS, PARQUET_BATCH_BYTES // per_row))


def _iter_parquet(url, row_groups, storage_options, columns=None):
    """Rows of some row groups, each with its row number in the file.

    Memory stays bounded whatever the size of a row group: column chunks are
    read through a small buffer (not pre-buffered whole) and decoded in record
    batches of a few MB."""
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    local = "file" in ((fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol)
    # a local file is read by Arrow itself: through a Python file object every
    # page read is one more copy of the page
    with contextlib.nullcontext(path) if local else fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f, buffer_size=PARQUET_BUFFER, pre_buffer=False)
        if columns and any(c not in pf.schema_arrow.names for c in columns):
            raise SourceError(f"{url}: no column {columns[0]!r} (columns: {pf.schema_arrow.names})")
        md = pf.metadata
        row = sum(md.row_group(i).num_rows for i in range(row_groups[0])) if row_groups else 0
        for i in row_groups:
            size = _parquet_batch_rows(md, i, columns)
            for batch in pf.iter_batches(batch_size=size, row_groups=[i], columns=columns, use_threads=False):
                for ex in batch.to_pylist():
                    yield ex, None, row
                    row += 1


def _iter_csv(url, storage_options):
    import datasets

    extra = {"sep": "\t"} if _strip_compression(url).endswith(".tsv") else {}
    ds = datasets.load_dataset(
        "csv", data_files=[url], split="train", streaming=True, storage_options=storage_options, **extra
    )
    for i, ex in enumerate(ds):
        yield ex, None, i
