"""Input adapters: turn what the user passes to ``partition`` into slices.

A *slice* is one unit of map work: a small picklable object of one of the
``Slice`` classes below (a byte range of a JSON Lines or text file, some row
groups of a Parquet file, a CSV file, a row range of a Hugging Face
``Dataset``, a chunk of a Python iterable).  Slices are numbered in input
order; an example's position is (``file_no``, its row index or byte offset
in that file), which is what keeps groups in input order whatever the number
of workers.

Every slice has the same four ways in:

- ``iter()`` yields ``(example, raw_json, loc)``: ``raw_json`` is the
  example's JSON text when the source already holds it (JSON Lines), else
  None; ``loc`` is the example's position (a row index or byte offset);
- ``iter_column(col)`` is ``iter()`` where only ``col`` needs to be present
  (a partitioner's first pass: Parquet files and datasets read that column
  only);
- ``where(loc)`` names the example at ``loc`` in error messages;
- ``iter_batches()`` yields the same examples as Arrow record batches.

A new kind of input is one ``Slice`` subclass (plus, for files, its
extensions in ``FILE_SLICES``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator, Sized

import fsspec

from . import storage
from .codec import scan_json

SLICE_BYTES = 8 << 20  # default byte range of one file slice
HF_SLICE_ROWS = 20_000
CHUNK_EXAMPLES = 5_000  # examples per chunk of a streamed (iterable) source
BATCH_ROWS = 4096  # default rows per record batch of ``Slice.iter_batches``

_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")


class SourceError(ValueError):
    """The source cannot be read; the message names the file or example."""


# ------------------------------------------------------------------ slices
class Slice:
    """One unit of map work.  Subclasses are small picklable dataclasses."""

    #: the input file this slice reads (its number in the source's file list); 0 for non-file sources
    file_no: int = 0
    #: the slice's number of examples when known without reading it (progress totals), else None
    num_rows: int | None = None

    def iter(self) -> Iterator[tuple[dict, bytes | None, Any]]:
        """``(example, raw_json or None, loc)`` for each example, in input order."""
        raise NotImplementedError

    def iter_column(self, col: str | None) -> Iterator[tuple[dict, bytes | None, Any]]:
        """Like ``iter``, but only ``col`` needs to be present in the examples
        (None: no column at all).  The default reads whole examples."""
        return self.iter()

    def where(self, loc) -> str:
        """Where the example at ``loc`` is, for error messages."""
        raise NotImplementedError

    def iter_batches(self, batch_rows: int = BATCH_ROWS):
        """The slice's examples as ``pyarrow.RecordBatch``es of at most
        ``batch_rows`` rows, in input order.  This default builds them from
        ``iter()`` with Arrow's type inference (``RecordBatch.from_pylist``);
        slices that hold Arrow data natively yield it as it is."""
        import pyarrow as pa

        rows: list = []
        for ex, _, _ in self.iter():
            rows.append(ex)
            if len(rows) >= batch_rows:
                yield pa.RecordBatch.from_pylist(rows)
                rows = []
        if rows:
            yield pa.RecordBatch.from_pylist(rows)


@dataclass
class ChunkSlice(Slice):
    """Examples of a streamed source, pickled in the main process for the
    hand-off to a worker (``Source.chunks``); ``start`` is the first one's
    position in the stream."""

    start: int
    payload: bytes = field(repr=False)

    def iter(self):
        start = self.start
        # our own hand-off from the main process (see chunks), never data from a shard
        for i, ex in enumerate(pickle.loads(self.payload)):
            yield ex, None, start + i

    def where(self, loc) -> str:
        return f"example {loc}"


@dataclass
class HFRowsSlice(Slice):
    """Rows ``[start, stop)`` of a Hugging Face ``datasets.Dataset``."""

    dataset: Any = field(repr=False, compare=False)
    start: int
    stop: int

    def iter(self):
        arrow = self.dataset.with_format("arrow")
        step = 2_000
        stop = self.stop
        for a in range(self.start, stop, step):
            rows = arrow[a : min(stop, a + step)].to_pylist()
            for i, ex in enumerate(rows):
                yield ex, None, a + i

    def iter_column(self, col):
        a, b = self.start, self.stop
        if col is None:
            for i in range(a, b):
                yield {}, None, i
            return
        ds = self.dataset
        if col not in ds.column_names:
            raise SourceError(f"the dataset has no column {col!r} (columns: {ds.column_names})")
        values = ds.select_columns([col]).with_format("arrow")[a:b][col].to_pylist()
        for i, v in enumerate(values):
            yield {col: v}, None, a + i

    @property
    def num_rows(self) -> int:
        return self.stop - self.start

    def where(self, loc) -> str:
        return f"example {loc} (row {loc} of the dataset)"

    def iter_batches(self, batch_rows: int = BATCH_ROWS):
        arrow = self.dataset.with_format("arrow")
        for a in range(self.start, self.stop, batch_rows):
            yield from arrow[a : min(self.stop, a + batch_rows)].to_batches()


@dataclass
class FileSlice(Slice):
    """Part of one input file.  Subclasses name the file format they read
    (``format``, recorded in the source description) and cut a file into
    slices (``cut``)."""

    url: str
    file_no: int
    storage_options: dict | None = field(default=None, repr=False)

    format: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]]

    @classmethod
    def cut(cls, fs, path: str, url: str, size: int, step: int, file_no: int, storage_options,
            parallelism: int) -> list:
        """The slices of one file (``step``: the target bytes per slice)."""
        return [cls(url, file_no, storage_options)]

    def where(self, loc) -> str:
        return f"{self.url}: row {loc}"


@dataclass
class _LineSlice(FileSlice):
    """Lines whose first byte lies in ``[start, end)`` (``end`` None: to the
    end of the file, which is how a compressed file is read, whole)."""

    start: int = 0
    end: int | None = None

    _parse_json: ClassVar[bool]

    @classmethod
    def cut(cls, fs, path, url, size, step, file_no, storage_options, parallelism):
        if path.lower().endswith(_COMPRESSED) or size <= step:
            return [cls(url, file_no, storage_options, 0, None)]
        return [cls(url, file_no, storage_options, a, min(size, a + step)) for a in range(0, size, step)]

    def where(self, loc) -> str:
        return f"{self.url}: line at byte {loc}"

    def iter(self):
        url, start, end, storage_options, parse_json = (
            self.url, self.start, self.end, self.storage_options, self._parse_json)
        loads = json.loads
        scan = scan_json
        stop = (1 << 62) if end is None else end
        with fsspec.open(url, "rb", compression="infer", **(storage_options or {})) as f:
            pos = 0
            if start and start <= 3 and f.read(3) == b"\xef\xbb\xbf":
                pos = 3  # a cut inside the byte order mark: the first line (at byte 3) is ours
            elif start:
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


@dataclass
class JsonLinesSlice(_LineSlice):
    """A byte range of a JSON Lines file: one example (a JSON object) per line."""

    format: ClassVar[str] = "json"
    extensions: ClassVar[tuple[str, ...]] = (".jsonl", ".json", ".ndjson")
    _parse_json: ClassVar[bool] = True


@dataclass
class TextSlice(_LineSlice):
    """A byte range of a text file: one example ``{"text": line}`` per line."""

    format: ClassVar[str] = "text"
    extensions: ClassVar[tuple[str, ...]] = (".txt", ".text")
    _parse_json: ClassVar[bool] = False


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


@dataclass
class ParquetSlice(FileSlice):
    """Some row groups of a Parquet file; ``loc`` is the row number in the file.

    Memory stays bounded whatever the size of a row group: column chunks are
    read through a small buffer (not pre-buffered whole) and decoded in record
    batches of a few MB."""

    row_groups: list = field(default_factory=list)
    num_rows: int | None = None  # rows of these row groups, from the file's metadata

    format: ClassVar[str] = "parquet"
    extensions: ClassVar[tuple[str, ...]] = (".parquet", ".pq")

    @classmethod
    def cut(cls, fs, path, url, size, step, file_no, storage_options, parallelism):
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as fh:
            md = pq.ParquetFile(fh).metadata
        nrg = md.num_row_groups
        per = max(1, -(-nrg // (2 * parallelism)))
        return [cls(url, file_no, storage_options, list(range(a, min(nrg, a + per))),
                    sum(md.row_group(i).num_rows for i in range(a, min(nrg, a + per))))
                for a in range(0, max(nrg, 1), per)]

    def iter(self):
        return self._rows(None)

    def iter_column(self, col):
        return self._rows(None if col is None else [col])

    def _rows(self, columns):
        for batch, row in self._batches(columns, PARQUET_MAX_BATCH_ROWS):
            for ex in batch.to_pylist():
                yield ex, None, row
                row += 1

    def iter_batches(self, batch_rows: int = BATCH_ROWS):
        for batch, _ in self._batches(None, batch_rows):
            yield batch

    def _batches(self, columns, max_rows):
        """``(record batch, row number of its first row in the file)``."""
        import pyarrow.parquet as pq

        url, row_groups = self.url, self.row_groups
        fs, path, _ = storage.location(url, self.storage_options)
        local = storage.is_local(fs)
        # a local file is read by Arrow itself: through a Python file object every
        # page read is one more copy of the page
        with contextlib.nullcontext(path) if local else fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f, buffer_size=PARQUET_BUFFER, pre_buffer=False)
            if columns and any(c not in pf.schema_arrow.names for c in columns):
                raise SourceError(f"{url}: no column {columns[0]!r} (columns: {pf.schema_arrow.names})")
            md = pf.metadata
            row = sum(md.row_group(i).num_rows for i in range(row_groups[0])) if row_groups else 0
            for i in row_groups:
                size = min(max_rows, _parquet_batch_rows(md, i, columns))
                for batch in pf.iter_batches(batch_size=size, row_groups=[i], columns=columns,
                                             use_threads=False):
                    yield batch, row
                    row += batch.num_rows


@dataclass
class CsvSlice(FileSlice):
    """A whole CSV (or, by extension, TSV) file, read by ``datasets``' CSV loader."""

    format: ClassVar[str] = "csv"
    extensions: ClassVar[tuple[str, ...]] = (".csv", ".tsv")

    def iter(self):
        import datasets

        url = self.url
        extra = {"sep": "\t"} if _strip_compression(url).endswith(".tsv") else {}
        ds = datasets.load_dataset(
            "csv", data_files=[url], split="train", streaming=True, storage_options=self.storage_options,
            **extra
        )
        for i, ex in enumerate(ds):
            yield ex, None, i


#: the slice class of each file format, in the order extensions are matched
FILE_SLICES: tuple[type[FileSlice], ...] = (JsonLinesSlice, ParquetSlice, CsvSlice, TextSlice)


# ------------------------------------------------------------------ source
@dataclass
class Source:
    """What the engine needs from an input: its slices (or, for a streamed
    source, the stream the engine cuts into ``ChunkSlice``s with ``chunks``)."""

    description: str
    kind: str  # the kind of source: "files", "hf" (a datasets.Dataset) or "iterable"
    slices: list = field(default_factory=list)  # Slice objects; empty for streamed sources
    features: dict | None = None  # HF Features as a dict, when known
    image_fields: tuple = ()
    fingerprint: str | None = None
    stream: Iterable | None = None  # a streamed source, chunked by the engine
    storage_options: dict | None = None

    def num_examples_hint(self) -> int | None:
        """The number of examples when it is known without reading them (a
        ``datasets.Dataset``, Parquet files' row counts, a list), else None."""
        if self.stream is not None:
            return len(self.stream) if isinstance(self.stream, Sized) else None
        rows = [s.num_rows for s in self.slices]
        return sum(rows) if all(r is not None for r in rows) else None

    def chunks(self, max_bytes: int = 4 << 20, max_examples: int | None = None) -> Iterator[ChunkSlice]:
        """Cut a streamed source into chunk slices (runs in the main process).

        A chunk closes at ``max_examples`` (default CHUNK_EXAMPLES) examples or
        about ``max_bytes`` of string / binary data, so a few large examples
        never make a huge chunk.
        """
        limit = CHUNK_EXAMPLES if max_examples is None else max_examples
        buf: list = []
        start = 0
        size = 0
        for ex in self.stream:
            buf.append(ex)
            size += _approx_size(ex)
            if len(buf) >= limit or size >= max_bytes:
                size = 0
                yield ChunkSlice(start, _pickle_chunk(buf, start))
                start += len(buf)
                buf = []
        if buf:
            yield ChunkSlice(start, _pickle_chunk(buf, start))


def _pickle_chunk(buf: list, start: int) -> bytes:
    """A chunk's examples pickled for the hand-off to a worker; an example that
    cannot be pickled raises PartitionError naming it and its field."""
    try:
        return pickle.dumps(buf, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # noqa: BLE001 - PicklingError, TypeError, AttributeError, RecursionError...
        from .engines.steps import PartitionError

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
        for ex, _, _ in s.iter():
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
def as_source(obj, storage_options: dict | None = None, parallelism: int = 1, *,
              slice_bytes: int | None = None, hf_slice_rows: int | None = None) -> Source:
    """Recognise the kind of source and describe it.

    ``parallelism`` (the number of workers) sets how finely the source is cut
    into slices, a multiple of it where possible, so no worker idles at the
    end; ``slice_bytes`` (file sources) and ``hf_slice_rows`` (datasets) cap
    a slice's size (default SLICE_BYTES, HF_SLICE_ROWS).  The output never
    depends on them: an example's position is its row index or byte offset
    in its file, whatever the slicing.
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
        return _hf_source(obj, parallelism, HF_SLICE_ROWS if hf_slice_rows is None else hf_slice_rows)
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
        return _file_source(obj, storage_options, parallelism, SLICE_BYTES if slice_bytes is None else slice_bytes)
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


def _hf_source(ds, parallelism, slice_rows) -> Source:
    import datasets

    img = _image_fields(ds.features)
    features = ds.features.to_dict()
    for k in img:  # keep the encoded bytes; never decode and re-encode
        ds = ds.cast_column(k, datasets.Image(decode=False))
    n = len(ds)
    step = -(-n // _n_slices(n, slice_rows, parallelism)) if n else 1
    slices = [HFRowsSlice(ds, a, min(n, a + step)) for a in range(0, n, step)]
    return Source(
        description=f"HF Dataset ({n} rows, columns {ds.column_names})",
        kind="hf",
        slices=slices,
        features=features,
        image_fields=img,
        fingerprint=getattr(ds, "_fingerprint", None),
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


# ------------------------------------------------------------------- files
def _expand(paths, storage_options):
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = os.fspath(p)
        fs = storage.filesystem(p, storage_options)
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
                found = sorted(f for f in fs.find(root) if _file_format(f) is not None)
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


def _file_slice_class(path: str):
    """The slice class reading ``path`` (by its extension, less a compression suffix), or None."""
    base = _strip_compression(path)
    for cls in FILE_SLICES:
        for ext in cls.extensions:
            if base.endswith(ext):
                return cls
    return None


def _file_format(path: str):
    cls = _file_slice_class(path)
    return None if cls is None else cls.format


def _file_source(paths, storage_options, parallelism, slice_bytes) -> Source:
    files = _expand(paths, storage_options)
    infos = [fs.info(f) for fs, f in files]
    total = sum(int(i.get("size") or 0) for i in infos)
    step = max(min(slice_bytes // 4, 1 << 20), -(-total // _n_slices(total, slice_bytes, parallelism)))
    slices = []
    formats = set()
    fp = hashlib.sha256()
    for fno, ((fs, f), info) in enumerate(zip(files, infos)):
        cls = _file_slice_class(f)
        if cls is None:
            raise SourceError(
                f"{f}: unknown file type; expected .jsonl/.json, .parquet, .csv/.tsv or .txt "
                f"(optionally compressed), or load it with datasets.load_dataset and pass the Dataset"
            )
        formats.add(cls.format)
        size = int(info.get("size") or 0)
        url = storage.full_url(fs, f)
        # surrogateescape: a local file name that is not UTF-8 (os.fsdecode) hashes as its bytes
        fp.update(f"{url}\0{size}\0{info.get('mtime', info.get('LastModified', ''))}\0".encode(
            "utf-8", "surrogateescape"))
        slices.extend(cls.cut(fs, f, url, size, step, fno, storage_options, parallelism))
    if len(formats) > 1:
        raise SourceError(f"input files mix formats {sorted(formats)}; partition one format at a time")
    return Source(
        description=f"{len(files)} {formats.pop()} file(s)",
        kind="files",
        slices=slices,
        fingerprint=fp.hexdigest(),
        storage_options=storage_options,
    )


