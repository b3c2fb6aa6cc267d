"""The on-disk layout of a torch_grouper dataset (format version 2; reads 1 and 2).

This is the only module that knows file names, the manifest, the index schema
and how sample keys are built; everything else asks it.  docs/FORMAT.md is the
human-readable contract.

A dataset is a directory (local path or any fsspec URL) holding::

    manifest.json         a constant marker naming the format and version 2
    _log/NNNN.json        the commit log; the newest entry names the current snapshot
    _leases/ID.json       leases of snapshots being written
    snapshots/ID/         one immutable snapshot:
        shard-TTTTT-KKK.tar   plain tar shards, one WebDataset sample per example
        index.parquet         one row per group (see INDEX_SCHEMA)
        manifest.json         the snapshot's manifest (no timestamps, no snapshot id)

``snapshots.py`` owns the commit protocol.  A version 1 dataset keeps the
three snapshot files at its top level with the manifest written last.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pyarrow as pa

FORMAT_NAME = "torch_grouper"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
INDEX = "index.parquet"
SHARD_RE = re.compile(r"^shard-\d{5}-\d{3,}\.tar$")
LOG_DIR = "_log"
LEASES_DIR = "_leases"
SNAPSHOTS_DIR = "snapshots"
SNAPSHOT_LAYOUT = "snapshots"
SNAPSHOT_ID_RE = re.compile(r"^[0-9a-f]{32}$")
#: Names of the datasets of a write of several at once (vertical parties, splits).
PART_RE = re.compile(r"^(?!\.)[A-Za-z0-9_.-]{1,100}$")
_LOG_RE = re.compile(r"^(\d{20})\.json$")
#: Top-level names of a version 2 dataset directory.
OWNED_NAMES = frozenset({MANIFEST, LOG_DIR, LEASES_DIR, SNAPSHOTS_DIR})

#: Number of hash buckets the map phase spills into.  Fixed (independent of
#: the number of workers) so that output is identical for any worker count.
NUM_BUCKETS = 1024
BUCKET_SHIFT = 64 - 10


def shard_name(task: int, part: int) -> str:
    return f"shard-{task:05d}-{part:03d}.tar"


def log_name(sequence: int) -> str:
    return f"{sequence:020d}.json"


def parse_log_name(name: str) -> int | None:
    m = _LOG_RE.match(name)
    return int(m.group(1)) if m else None


def root_marker() -> dict:
    """The constant top-level manifest.json of a version 2 dataset.  It holds no
    data: readers follow the commit log.  A release that reads only version 1
    refuses it ("format version 2 is not supported")."""
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "layout": SNAPSHOT_LAYOUT,
            "log": LOG_DIR, "snapshots": SNAPSHOTS_DIR}


def library_version() -> str:
    from ._version import __version__

    return __version__


# ----------------------------------------------------------------- group ids
def group_id_type(gid: Any) -> str | None:
    """The format's name for a group id's type, or None if not allowed."""
    t = type(gid)
    if t is str:
        return "str"
    if t is int:
        return "int"
    if t is bytes:
        return "bytes"
    if t is bool:
        return None
    # numpy integers and str subclasses are accepted as their base type
    if isinstance(gid, str):
        return "str"
    if isinstance(gid, bytes):
        return "bytes"
    if hasattr(gid, "__index__") and not isinstance(gid, float):
        return "int"
    return None


def canonical_group_id(gid: Any, id_type: str) -> bytes:
    """Bytes that identify a group id of type ``id_type`` (``group_id_type``);
    used for hashing and ordering.  An int id outside int64 raises
    OverflowError; a str with a lone surrogate, UnicodeEncodeError."""
    if id_type == "str":
        return str(gid).encode("utf-8")  # UnicodeEncodeError for lone surrogates
    if id_type == "int":
        v = int(gid)
        if not -(1 << 63) <= v < (1 << 63):  # the index stores int ids as int64
            raise OverflowError(f"int group id {v} is outside the int64 range [-2**63, 2**63)")
        return str(v).encode()
    return bytes(gid)


def group_hash(canon: bytes) -> int:
    """Stable 64-bit hash of a canonical group id (blake2b)."""
    return int.from_bytes(hashlib.blake2b(canon, digest_size=8).digest(), "big")


def decode_group_id(canon: bytes, id_type: str) -> Any:
    """The group id of type ``id_type`` from its canonical bytes."""
    if id_type == "str":
        return canon.decode("utf-8")
    if id_type == "int":
        return int(canon)
    return canon


def sample_key(ghash: int, file_no: int, position: int) -> str:
    """WebDataset sample key of one example: group hash + input position.

    ``HHHHHHHHHHHHHHHH_FFFFFPPPPPPPPPPPPP``: the group id's 64-bit hash
    (hex), the input file's number (0 for datasets and iterables) and the
    example's position in it (row index, or byte offset of its line), so
    keys are unique in the dataset, sort in input order within a group and
    do not depend on how the work was cut.  Keys never contain the raw group
    id (ids may hold dots, slashes, '..'), and hold no dot, so stock readers
    split ``KEY.EXT`` right.
    """
    return f"{ghash:016x}_{file_no:05d}{position:013d}"


def sample_key_prefix(ghash: int) -> str:
    """The group part of ``sample_key``: the 16 hex digits of the hash.  Made
    once per group; ``sample_key_at`` adds each example's position."""
    return f"{ghash:016x}"


def sample_key_at(prefix: str, file_no: int, position: int) -> str:
    """``sample_key(ghash, file_no, position)`` from ``sample_key_prefix(ghash)``
    (the per-example form, run once per example written)."""
    return f"{prefix}_{file_no:05d}{position:013d}"


# --------------------------------------------------------------------- index
def index_schema(id_type: str) -> pa.Schema:
    """The index's schema for group ids of type ``id_type``."""
    arrow_type = {"str": pa.string(), "int": pa.int64(), "bytes": pa.binary()}[id_type]
    return pa.schema(
        [
            ("group_id", arrow_type),
            ("shard", pa.string()),
            ("offset", pa.int64()),
            ("length", pa.int64()),
            ("num_examples", pa.int64()),
            ("num_bytes", pa.int64()),
            ("num_words", pa.int64()),
        ]
    )


INDEX_COLUMNS = tuple(index_schema("str").names)


# ------------------------------------------------------------------ manifest
def dump_manifest(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def parse_manifest(raw: bytes, where: str) -> dict:
    try:
        m = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"{where}: manifest.json is not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
        raise ValueError(f"{where}: manifest.json is not a torch_grouper manifest")
    v = m.get("format_version")
    if v not in READABLE_VERSIONS:
        raise ValueError(
            f"{where}: dataset format version {v!r} is not supported by this "
            f"torch_grouper (reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    return m
