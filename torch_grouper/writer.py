"""Group-contiguous shard writing, the index and the atomic commit.

``ShardWriter`` receives examples already sorted by group (the engine's
reduce step) and writes them as tar shards: a group's examples are
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

import pyarrow as pa
import pyarrow.parquet as pq

from . import format as fmt
from .tario import _PADS as PADS
from .tario import END_OF_ARCHIVE, member
from .tario import _header as header

FLUSH_BYTES = 8 << 20


class ShardWriter:
    """Writes the groups of one reduce task into ``shard-TASK-KKK.tar`` files."""

    def __init__(self, fs, root: str, task: int, shard_size: int, gid_kind: str):
        self.fs = fs
        self.root = root
        self.task = task
        self.shard_size = shard_size
        self.gid_kind = gid_kind
        self.part = -1
        self.file = None
        self.shards: list[dict] = []
        self.rows = {c: [] for c in fmt.INDEX_COLUMNS}
        self._prev_hash = None
        self._prev_canon = None
        self._salt = 0
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
        self.shard_groups += 1
        self.shard_examples += self.g_examples

    def add(self, ghash: int, canon: bytes, nwords: int, members: list) -> None:
        """Append one example; calls must come sorted by (group, input order)."""
        if canon != self._prev_canon or ghash != self._prev_hash:
            if self._open_group:
                self._end_group()
            if self.file is None or self.pos >= self.shard_size:
                if self.file is not None:
                    self._close_shard()
                self._open_shard()
            self._salt = self._salt + 1 if ghash == self._prev_hash else 0
            self._prev_hash, self._prev_canon = ghash, canon
            self._open_group = True
            self.g_offset = self.pos
            self.g_examples = self.g_bytes = self.g_words = 0
            r = self.rows
            r["group_id"].append(fmt.decode_group_id(canon, self.gid_kind))
            r["shard"].append(self.name)
            r["offset"].append(self.pos)
        key = fmt.sample_key(ghash, self._salt, self.g_examples) + "."
        buf = self.buf
        n0 = len(buf)
        for suffix, data in members:
            n = len(data)
            name = (key + suffix).encode()
            if len(name) <= 100:
                buf += header(name, n)
                buf += data
                buf += PADS[n & 511]
            else:
                for chunk in member(key + suffix, data):
                    buf += chunk
            self.g_bytes += n
        self.pos += len(buf) - n0
        self.g_examples += 1
        self.g_words += nwords
        if len(buf) >= FLUSH_BYTES:
            self._flush()

    def close(self) -> tuple[pa.Table, list[dict]]:
        if self._open_group:
            self._end_group()
            self._open_group = False
        if self.file is not None:
            self._close_shard()
        table = pa.table(self.rows, schema=fmt.index_schema(self.gid_kind))
        return table, self.shards

    def abort(self):
        if self.file is not None:
            try:
                self.file.close()
            except Exception:
                pass
            self.file = None


# ------------------------------------------------------------------ commit
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
