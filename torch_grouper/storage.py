"""Storage: where a dataset's bytes live, and the few ways they are touched.

Every module that reads or writes a dataset's files goes through here for:

* a URL or path -> ``(filesystem, root path, url)`` (``location``), and a
  filesystem made afresh for a URL (``filesystem``, e.g. after a fork);
* local disk or not (``is_local``): local disks get ``fsync``, renames and
  hard links; other stores get single PUTs and conditional writes;
* retried operations (``read_bytes``, ``list_names``, ``exists``, ``is_dir``,
  ``sha256_file``, ``upload``): transient errors are retried by ``torch_grouper.retry`` and end
  in a ``RetryError`` naming the operation and the path;
* staged uploads (``upload``: a file written in local temp space, put whole);
* atomic and conditional writes: ``write_whole`` (replace a file atomically)
  and ``create_exclusive`` (create a file only if it does not exist: the
  commit point of ``torch_grouper.snapshots``).

Another store (GCS, Azure, HDFS) is any fsspec filesystem; what it needs
beyond fsspec's interface is one branch in ``create_exclusive`` (its
conditional write) when ``pipe_file(mode="create")`` is not it.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import threading
import uuid
from typing import NamedTuple

import fsspec

from .retry import RetryError, retry

__all__ = ["Location", "location", "filesystem", "is_local", "is_memory", "full_url", "read_bytes",
           "list_names", "exists", "is_dir", "sha256_file", "upload", "write_whole", "create_exclusive", "RetryError"]

_memory_lock = threading.Lock()  # memory:// lives in one process: a lock makes its creates exclusive


class Location(NamedTuple):
    """A place on a filesystem: the fsspec filesystem, the root path on it
    (no trailing slash; ``"/"`` for the top) and the URL as the user gave it."""

    fs: fsspec.AbstractFileSystem
    root: str
    url: str


def location(path, storage_options: dict | None = None) -> Location:
    """The filesystem and root path of a local path or fsspec URL (``s3://``,
    ``gs://``, ``memory://``, ``file://``, ...); ``storage_options`` go to fsspec."""
    url = os.fspath(path)
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return Location(fs, root.rstrip("/") or "/", url)


def filesystem(url, storage_options: dict | None = None) -> fsspec.AbstractFileSystem:
    """A filesystem for ``url`` (made in the calling process: async filesystems
    such as s3fs are not fork-safe, so a forked reader makes its own)."""
    return fsspec.core.url_to_fs(os.fspath(url), **(storage_options or {}))[0]


def _protocol(fs) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def is_local(fs) -> bool:
    """Whether ``fs`` is the local disk (``file://`` or a plain path)."""
    return _protocol(fs) in ("file", "local")


def is_memory(fs) -> bool:
    """Whether ``fs`` is an in-process store (fsspec's ``memory://`` or a
    subclass of it): its files live in this process only, so worker
    processes must not write to it."""
    from fsspec.implementations.memory import MemoryFileSystem

    return isinstance(fs, MemoryFileSystem) or _protocol(fs) == "memory"


def full_url(fs, path: str) -> str:
    """``path`` on ``fs`` as stock readers open it: the path itself on a local
    disk, a URL with the protocol elsewhere."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


# ------------------------------------------------------------------ retried reads
def read_bytes(fs, path: str, start: int | None = None, end: int | None = None, *,
               what: str | None = None) -> bytes:
    """The bytes of ``path`` (``[start, end)`` when given), retried on transient
    errors; ``what`` names the read in the error (default: the path and range)."""
    if what is None:
        what = f"read {path}" if start is None and end is None else f"read {path} bytes {start}-{end}"
    if start is None and end is None:
        return retry(fs.cat_file, path, what=what)
    return retry(fs.cat_file, path, start=start, end=end, what=what)


def list_names(fs, folder: str) -> list[str]:
    """Names (not paths) of the entries of ``folder``, retried; FileNotFoundError
    when there is no such folder."""
    return [posixpath.basename(p.rstrip("/")) for p in retry(fs.ls, folder, detail=False, what=f"list {folder}")]


def exists(fs, path: str) -> bool:
    """Whether ``path`` exists, retried."""
    return retry(fs.exists, path, what=f"look up {path}")


def is_dir(fs, path: str) -> bool:
    """Whether ``path`` is a folder, retried."""
    return retry(fs.isdir, path, what=f"look up {path}")


def _sha256(fs, path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with fs.open(path, "rb", block_size=8 << 20) as f:
        while True:
            chunk = f.read(8 << 20)
            if not chunk:
                return h.hexdigest(), n
            h.update(chunk)
            n += len(chunk)


def sha256_file(fs, path: str, *, what: str | None = None) -> tuple[str, int]:
    """(sha256 hex digest, size in bytes) of ``path``, read in 8 MiB blocks; the
    whole read is retried on a transient error."""
    return retry(_sha256, fs, path, what=what or f"read {path}")


# ------------------------------------------------------------------ writes
def upload(fs, local_path: str, path: str) -> None:
    """Put the finished local file ``local_path`` (staged in temp space) at
    ``path`` on ``fs`` whole, retried; the local file is removed once it is up."""
    retry(fs.put_file, local_path, path, what=f"upload {path}")
    os.remove(local_path)


def create_exclusive(fs, path: str, data: bytes) -> None:
    """Write ``path`` whole, only if it does not exist; FileExistsError otherwise.

    Local disk: a temporary file hard-linked into place (atomic and
    exclusive); S3 / GCS and other fsspec stores: ``pipe_file(mode="create")``
    (a conditional PUT where the store has one); ``memory://``: under a
    process-wide lock (the store lives in one process)."""
    if is_local(fs):
        _via_temp(path, data, os.link)  # whole, and only if ``path`` does not exist
        _fsync_dir(posixpath.dirname(path))
    elif is_memory(fs):
        with _memory_lock:
            if fs.exists(path):
                raise FileExistsError(path)
            fs.pipe_file(path, data)
    else:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.pipe_file(path, data, mode="create")


def write_whole(fs, path: str, data: bytes) -> None:
    """Replace ``path`` atomically (rename locally; one PUT on object stores,
    retried): a reader sees the old bytes or the new, never a part."""
    if is_local(fs):
        _via_temp(path, data, os.replace)
    else:
        retry(fs.pipe_file, path, data, what=f"write {path}")


def _via_temp(path: str, data: bytes, place) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then
    ``place(tmp, path)`` (``os.link``: exclusive; ``os.replace``: atomic);
    the temporary file never outlives the call."""
    d = posixpath.dirname(path)
    os.makedirs(d, exist_ok=True)
    tmp = posixpath.join(d, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        place(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
