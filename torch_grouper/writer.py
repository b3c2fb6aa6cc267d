"""Group-contiguous shard writing, the index and the atomic commit.

``ShardWriter`` receives the pieces of groups already sorted by group (the
engine's reduce step), each a run of finished tar members, and writes them
as tar shards: a group's examples are
contiguous, in input order, inside one shard; a shard rolls over at a group
boundary once it has reached the target size, so one huge group makes one
large shard and is never split or truncated.

The index and then the snapshot's manifest are written into the staged
snapshot folder; the commit itself is ``snapshots.Staged.commit``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import format as fmt
from .labels import add_counts, label_columns
from .retry import retry
from .storage import is_local, upload, write_whole
from .tario import END_OF_ARCHIVE

FLUSH_BYTES = 8 << 20


class ShardWriter:
    """Writes the groups of one reduce task into ``shard-TASK-KKK.tar`` files.

    ``shard_bytes``: a shard is closed at the first group boundary at or past
    this many bytes.  ``id_type``: the group ids' type in the format ("str",
    "int" or "bytes").  ``label_stats``: sum the pieces' label counts per
    group (the index's label columns)."""

    def __init__(self, fs, root: str, task: int, shard_bytes: int, id_type: str, label_stats: bool = False,
                 tmp_dir: str | None = None):
        self.fs = fs
        self.root = root
        self.task = task
        self.shard_bytes = shard_bytes
        self.id_type = id_type
        self.part = -1
        self.file = None
        self.shards: list[dict] = []
        self.rows = {c: [] for c in fmt.INDEX_COLUMNS}
        self.tmp_dir = tmp_dir
        self.staged = None
        self.label_stats = label_stats
        if label_stats:
            self.rows["label_counts"] = []
        self._prev_hash = None
        self._prev_canon = None
        self._open_group = False

    # ----------------------------------------------------------- shards
    def _open_shard(self):
        self.part += 1
        self.name = fmt.shard_name(self.task, self.part)
        target = posixpath.join(self.root, self.name)
        if is_local(self.fs):
            self.file = retry(self.fs.open, target, "wb", what=f"open {target} for writing")
            self.staged = None
        else:  # remote: stage in bounded local temp space, upload the finished shard
            fd, self.staged = tempfile.mkstemp(suffix=".tar", dir=self.tmp_dir)
            self.file = os.fdopen(fd, "wb")
        self.sha = hashlib.sha256()
        self.buf = bytearray()
        self.pos = 0  # bytes written to the shard so far (incl. buf)
        self.shard_groups = 0
        self.shard_examples = 0

    def _flush(self):
        if self.buf:
            self.file.write(self.buf)
            self.sha.update(self.buf)
            self.buf = bytearray()

    def _close_shard(self):
        self.buf += END_OF_ARCHIVE
        self.pos += len(END_OF_ARCHIVE)
        self._flush()
        self.file.close()
        if self.staged is not None:
            target = posixpath.join(self.root, self.name)
            upload(self.fs, self.staged, target)
            self.staged = None
        self.shards.append(
            {
                "path": self.name,
                "num_bytes": self.pos,
                "num_groups": self.shard_groups,
                "num_examples": self.shard_examples,
                "sha256": self.sha.hexdigest(),
            }
        )
        self.file = None

    # ----------------------------------------------------------- groups
    def _end_group(self):
        r = self.rows
        r["length"].append(self.pos - self.g_offset)
        r["num_examples"].append(self.g_examples)
        r["num_bytes"].append(self.g_bytes)
        r["num_words"].append(self.g_words)
        if self.label_stats:
            r["label_counts"].append(self.g_labels)
        self.shard_groups += 1
        self.shard_examples += self.g_examples

    def _write(self, data) -> None:
        if len(data) >= FLUSH_BYTES:
            self._flush()
            self.file.write(data)
            self.sha.update(data)
        else:
            self.buf += data
            if len(self.buf) >= FLUSH_BYTES:
                self._flush()
        self.pos += len(data)

    def add_piece(self, ghash: int, canon: bytes, n: int, nwords: int, nbytes: int,
                  blob_len: int, src, labels: dict | None = None) -> None:
        """Append ``n`` examples of one group: ``blob_len`` bytes of tar members
        read from the file object ``src``.  Calls come sorted by group, and a
        group's pieces in input order."""
        if canon != self._prev_canon or ghash != self._prev_hash:
            if self._open_group:
                self._end_group()
            if self.file is None or self.pos >= self.shard_bytes:
                if self.file is not None:
                    self._close_shard()
                self._open_shard()
            self._prev_hash, self._prev_canon = ghash, canon
            self._open_group = True
            self.g_offset = self.pos
            self.g_examples = self.g_bytes = self.g_words = 0
            self.g_labels = {}
            r = self.rows
            r["group_id"].append(fmt.decode_group_id(canon, self.id_type))
            r["shard"].append(self.name)
            r["offset"].append(self.pos)
        left = blob_len
        while left:
            chunk = src.read(min(left, FLUSH_BYTES))
            if not chunk:
                raise IOError(f"spill file ended {left} bytes early")
            self._write(chunk)
            left -= len(chunk)
        self.g_examples += n
        self.g_bytes += nbytes
        self.g_words += nwords
        if labels:
            add_counts(self.g_labels, labels)

    def close(self) -> tuple[dict, list[dict]]:
        """Finish; returns (index rows in compact columns, shard infos).

        Columns travel as numpy arrays and joined bytes (see ``_compact``), so
        a million groups cost the main process a few buffers, not a million
        Python objects.  No Arrow here: pyarrow imports pandas on its first
        conversion (~0.2 s),
        which would be paid again in every worker process."""
        if self._open_group:
            self._end_group()
            self._open_group = False
        if self.file is not None:
            self._close_shard()
        return _compact(self.rows, self.id_type), self.shards

    def abort(self):
        if self.file is not None:
            try:
                self.file.close()
            except Exception:
                pass
            self.file = None
        if self.staged:
            try:
                os.remove(self.staged)
            except OSError:
                pass


# ------------------------------------------------------------------ commit
def _compact(rows: dict, id_type: str) -> dict:
    """Index rows as numpy arrays and joined bytes (picklable, compact)."""
    ids = rows["group_id"]
    if id_type == "int":
        gid = np.asarray(ids, dtype=np.int64)
    else:
        enc = [g.encode("utf-8") for g in ids] if id_type == "str" else ids
        gid = (np.fromiter(map(len, enc), dtype=np.int64, count=len(enc)), b"".join(enc))
    names: dict = {}
    codes = np.fromiter((names.setdefault(x, len(names)) for x in rows["shard"]), dtype=np.int32,
                        count=len(rows["shard"]))
    out = {"group_id": gid, "shard": (list(names), codes)}
    for c in fmt.INDEX_COLUMNS[2:]:
        out[c] = np.asarray(rows[c], dtype=np.int64)
    if "label_counts" in rows:
        out["label_counts"] = rows["label_counts"]
    return out


def _buffers_array(lengths: np.ndarray, data: bytes, typ) -> pa.Array:
    small = int(lengths.sum()) < 2**31
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32 if small else np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if not small:
        typ = pa.large_string() if typ == pa.string() else pa.large_binary()
    return pa.Array.from_buffers(typ, len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def index_table(parts: list, id_type: str) -> pa.Table:
    """The index Table from the writers' compact columns, in dataset order.

    Built from buffers: ``pa.array``/``pa.table`` on Python lists import
    pandas (~0.2 s of CPU) the first time in each process."""
    schema = fmt.index_schema(id_type)
    if id_type == "int":
        gid = pa.Array.from_buffers(pa.int64(), sum(len(p["group_id"]) for p in parts),
                                    [None, pa.py_buffer(np.concatenate([p["group_id"] for p in parts] or
                                                                       [np.zeros(0, np.int64)]))])
    else:
        gid = _buffers_array(np.concatenate([p["group_id"][0] for p in parts] or [np.zeros(0, np.int64)]),
                             b"".join(p["group_id"][1] for p in parts),
                             pa.string() if id_type == "str" else pa.binary())
    shard_names = [n.encode() for p in parts for n in p["shard"][0]]
    shard_lengths = np.concatenate([np.asarray([len(n) for n in p["shard"][0]], dtype=np.int64)[p["shard"][1]]
                                    for p in parts] or [np.zeros(0, np.int64)])
    base, codes = 0, []
    for p in parts:
        codes.append(p["shard"][1].astype(np.int64) + base)
        base += len(p["shard"][0])
    codes = np.concatenate(codes) if codes else np.zeros(0, np.int64)
    shard = _buffers_array(shard_lengths, b"".join(shard_names[c] for c in codes), pa.string())
    arrays = [gid, shard]
    for c in schema.names[2:]:
        col = np.concatenate([p[c] for p in parts] or [np.zeros(0, np.int64)])
        arrays.append(pa.Array.from_buffers(pa.int64(), len(col), [None, pa.py_buffer(col)]))
    table = pa.Table.from_arrays(arrays, names=schema.names)
    if parts and "label_counts" in parts[0]:
        counts = [c for p in parts for c in p["label_counts"]]
        for name, arr in label_columns(counts).items():
            table = table.append_column(name, arr)
    return table


def write_index(fs, root: str, table: pa.Table) -> dict:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=1 << 20)
    raw = sink.getvalue()
    path = posixpath.join(root, fmt.INDEX)
    retry(fs.pipe_file, path, raw, what=f"write {path}")
    return {"path": fmt.INDEX, "num_rows": table.num_rows, "num_bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest()}


def write_manifest(fs, root: str, manifest: dict) -> None:
    """The snapshot's manifest, written whole (a temporary file and a rename on
    a local disk, one PUT on object stores).  The commit point is the commit
    log entry that follows (``snapshots.Staged.commit``)."""
    write_whole(fs, posixpath.join(root, fmt.MANIFEST), fmt.dump_manifest(manifest))


def json_safe(obj):
    """Make a parameter description JSON-serialisable (for the manifest)."""
    try:
        json.dumps(obj)
        return obj
    except (TypeError, ValueError):
        return repr(obj)
