"""Group-contiguous shard writing, the index and the atomic commit.

``ShardWriter`` receives the pieces of groups already sorted by group (the
engine's reduce step), each a run of finished tar members, and writes them
as tar shards: a group's examples are
contiguous, in input order, inside one shard; a shard rolls over at a group
boundary once it has reached the target size, so one huge group makes one
large shard and is never split or truncated.

``commit`` writes the index and then the manifest, which is the commit
point: a directory without ``manifest.json`` is never read as a dataset.
"""
from __future__ import annotations

import hashlib
import io
import json
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import format as fmt
from .tario import END_OF_ARCHIVE

FLUSH_BYTES = 8 << 20


class ShardWriter:
    """Writes the groups of one reduce task into ``shard-TASK-KKK.tar`` files."""

    def __init__(self, fs, root: str, task: int, shard_size: int, gid_kind: str, label_stats: bool = False):
        self.fs = fs
        self.root = root
        self.task = task
        self.shard_size = shard_size
        self.gid_kind = gid_kind
        self.part = -1
        self.file = None
        self.shards: list[dict] = []
        self.rows = {c: [] for c in fmt.INDEX_COLUMNS}
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
        self.file = self.fs.open(posixpath.join(self.root, self.name), "wb")
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
            if self.file is None or self.pos >= self.shard_size:
                if self.file is not None:
                    self._close_shard()
                self._open_shard()
            self._prev_hash, self._prev_canon = ghash, canon
            self._open_group = True
            self.g_offset = self.pos
            self.g_examples = self.g_bytes = self.g_words = 0
            self.g_labels = {}
            r = self.rows
            r["group_id"].append(fmt.decode_group_id(canon, self.gid_kind))
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
            g = self.g_labels
            for k, v in labels.items():
                g[k] = g.get(k, 0) + v

    def close(self) -> tuple[dict, list[dict]]:
        """Finish; returns (index rows as columns of Python lists, shard infos).

        No Arrow here: pyarrow imports pandas on its first conversion (~0.2 s),
        which would be paid again in every worker process."""
        if self._open_group:
            self._end_group()
            self._open_group = False
        if self.file is not None:
            self._close_shard()
        return self.rows, self.shards

    def abort(self):
        if self.file is not None:
            try:
                self.file.close()
            except Exception:
                pass
            self.file = None


# ------------------------------------------------------------------ commit
def _binary_array(values: list, typ) -> pa.Array:
    """A string/binary Array from encoded values (large_* past 2 GiB)."""
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    total = int(lengths.sum())
    small = total < 2**31
    offsets = np.zeros(len(values) + 1, dtype=np.int32 if small else np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if not small:
        typ = pa.large_string() if typ == pa.string() else pa.large_binary()
    return pa.Array.from_buffers(typ, len(values), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(values))])


def _int64_array(values: list) -> pa.Array:
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(np.asarray(values, dtype=np.int64))])


def index_table(row_columns: list, gid_kind: str) -> pa.Table:
    """The index Table from the writers' row columns, in dataset order.

    Built from buffers: ``pa.array``/``pa.table`` on Python lists import
    pandas (~0.2 s of CPU) the first time in each process."""
    schema = fmt.index_schema(gid_kind)
    cols = {c: [v for rc in row_columns for v in rc[c]] for c in schema.names}
    ids = cols["group_id"]
    if gid_kind == "int":
        gid = _int64_array(ids)
    elif gid_kind == "str":
        gid = _binary_array([g.encode("utf-8") for g in ids], pa.string())
    else:
        gid = _binary_array(ids, pa.binary())
    arrays = [gid, _binary_array([x.encode() for x in cols["shard"]], pa.string())]
    arrays += [_int64_array(cols[c]) for c in schema.names[2:]]
    table = pa.Table.from_arrays(arrays, names=schema.names)
    if row_columns and "label_counts" in row_columns[0]:
        from .stats import label_columns

        counts = [c for rc in row_columns for c in rc["label_counts"]]
        for name, arr in label_columns(counts).items():
            table = table.append_column(name, arr)
    return table


def write_index(fs, root: str, table: pa.Table) -> dict:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=1 << 20)
    raw = sink.getvalue()
    with fs.open(posixpath.join(root, fmt.INDEX), "wb") as f:
        f.write(raw)
    return {"path": fmt.INDEX, "num_rows": table.num_rows, "num_bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest()}


def write_manifest(fs, root: str, manifest: dict) -> None:
    """The commit point: after this the directory is a complete dataset."""
    with fs.open(posixpath.join(root, fmt.MANIFEST), "wb") as f:
        f.write(fmt.dump_manifest(manifest))


def json_safe(obj):
    """Make a parameter description JSON-serialisable (for the manifest)."""
    try:
        json.dumps(obj)
        return obj
    except (TypeError, ValueError):
        return repr(obj)
