"""Snapshot commits: immutable snapshot folders made current by one atomic log entry.

A dataset directory (format version 2) holds::

    manifest.json          a constant marker: {"format": "torch_grouper", "format_version": 2, ...}
    _log/SEQUENCE.json     the commit log: one entry per commit, each created exclusively;
                           the entry with the highest sequence number names the current snapshot
    snapshots/ID/          one snapshot: manifest.json, index.parquet, shard-*.tar (or, for a
                           write of several datasets at once, one folder per part: ID/PART/...)
    _leases/ID.json        the lease of a snapshot being written (removed at commit)

The protocol (docs/FORMAT.md, "Commits"):

1. A writer reads the current sequence number ``n`` (0 for none), reads and
   encodes its whole input, then stages a new snapshot under a fresh random
   id: a lease file first, then the shards, the index and the snapshot's
   manifest.  Nothing of this is visible: readers follow the log only.
2. It commits by *creating* ``_log/(n+1).json``, exclusively: ``os.link`` of
   a fully written temporary file on a local disk, ``If-None-Match: *`` on
   S3, ``mode="create"`` on other fsspec stores.  Exactly one writer can
   create an entry, so of two concurrent writers one wins and the other
   fails with ``ConcurrentCommitError`` and removes its staged snapshot.
3. After the commit: the root marker is written (replacing a version 1
   manifest, whose files are then removed), the lease is dropped, and old
   snapshots are vacuumed (by default all but the two newest).

A crash at any point before step 2 leaves the previous snapshot current and
complete; from step 2 on the new one is.  Staged snapshots of dead writers
are removed by ``vacuum``: on a local disk as soon as their writer's
``flock`` is gone, on object stores once their lease is older than
``lease`` seconds (writers refresh it every ``lease / 4`` seconds).
Log entries are never deleted (they are small): a sequence number is never
reused, so a stale writer can never create an entry that is not the newest.

The exclusive create and the atomic write are ``torch_grouper.storage``'s
(``create_exclusive``, ``write_whole``); this module holds the protocol.
"""
from __future__ import annotations

import json
import os
import posixpath
import threading
import time
import uuid
from dataclasses import dataclass

from . import format as fmt
from .retry import retry
from . import storage
from .storage import create_exclusive, is_local, is_memory, list_names, location, read_bytes

#: Seconds after which the staged snapshot of a writer that stopped refreshing its
#: lease counts as abandoned (object stores; local disks use flock instead).
DEFAULT_LEASE = 15 * 60
#: Snapshots kept by the vacuum that follows each commit (the current one and the previous).
DEFAULT_KEEP = 2

class ConcurrentCommitError(RuntimeError):
    """Another writer committed to the same dataset while this one ran."""


class SnapshotNotFoundError(FileNotFoundError):
    """A snapshot asked for by id is not (or no longer) in the dataset."""


def checkpoint(step: str) -> None:
    """Called at each step of the commit protocol; does nothing.

    Fault-injection tests replace it (in a subprocess) to kill the writer at
    an exact step; see tests/test_snapshots.py."""


def join_url(url: str, *parts: str) -> str:
    return posixpath.join(url.rstrip("/") or "/", *parts)


# -------------------------------------------------------------------- log
@dataclass(frozen=True)
class Entry:
    """One commit: sequence number, snapshot id, the parts (None: one dataset)
    and when it was committed (seconds since the epoch)."""

    sequence: int
    snapshot: str
    parts: tuple | None
    committed_at: float
    previous: str | None = None


def _entry_from(raw: bytes, where: str) -> Entry:
    try:
        d = json.loads(raw)
        e = Entry(int(d["sequence"]), str(d["snapshot"]), tuple(d["parts"]) if d.get("parts") else None,
                  float(d["committed_at"]), d.get("previous"))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{where}: damaged commit log entry ({err})") from None
    if not fmt.SNAPSHOT_ID_RE.match(e.snapshot) or (e.parts and not all(fmt.PART_RE.match(p) for p in e.parts)):
        raise ValueError(f"{where}: commit log entry names an invalid snapshot or part")
    return e


def _log_sequences(fs, root: str) -> list[int]:
    log = posixpath.join(root, fmt.LOG_DIR)
    try:
        names = list_names(fs, log)
    except FileNotFoundError:
        return []
    seqs = []
    for n in names:
        s = fmt.parse_log_name(n)
        if s is not None:
            seqs.append(s)
    return sorted(seqs)


def read_entry(fs, root: str, seq: int) -> Entry:
    path = posixpath.join(root, fmt.LOG_DIR, fmt.log_name(seq))
    e = _entry_from(read_bytes(fs, path), path)
    if e.sequence != seq:
        raise ValueError(f"{path}: commit log entry says sequence {e.sequence}")
    return e


def current(fs, root: str) -> Entry | None:
    """The newest commit, or None when the dataset has none."""
    fs.invalidate_cache(posixpath.join(root, fmt.LOG_DIR))
    seqs = _log_sequences(fs, root)
    return read_entry(fs, root, seqs[-1]) if seqs else None


def history(fs, root: str) -> list[Entry]:
    """Every commit, oldest first."""
    fs.invalidate_cache(posixpath.join(root, fmt.LOG_DIR))
    return [read_entry(fs, root, s) for s in _log_sequences(fs, root)]


# ------------------------------------------------------------------ staging
class Staged:
    """A snapshot being written: its folder, its lease, and the commit."""

    def __init__(self, fs, root: str, url: str, base: Entry | None, lease: float = DEFAULT_LEASE):
        self.fs, self.root, self.url = fs, root, url
        self.base = base
        self.id = uuid.uuid4().hex
        self.lease = lease
        self.folder = posixpath.join(root, fmt.SNAPSHOTS_DIR, self.id)
        self.folder_url = join_url(url, fmt.SNAPSHOTS_DIR, self.id)
        self.lease_path = posixpath.join(root, fmt.LEASES_DIR, f"{self.id}.json")
        self._lock_fd = None
        self._stop = threading.Event()
        self._thread = None
        self.started = False
        self.committed: Entry | None = None

    def part_url(self, part: str | None) -> str:
        return self.folder_url if part is None else join_url(self.folder_url, part)

    def part_path(self, part: str | None) -> str:
        return self.folder if part is None else posixpath.join(self.folder, part)

    def _lease_bytes(self) -> bytes:
        return json.dumps({"snapshot": self.id, "heartbeat": time.time(), "pid": os.getpid(),
                           "host": os.uname().nodename if hasattr(os, "uname") else ""}).encode()

    def start(self) -> None:
        """Take the lease and create the snapshot folder (nothing visible yet)."""
        if self.started:
            return
        fs = self.fs
        if is_local(fs):
            import fcntl

            os.makedirs(posixpath.dirname(self.lease_path), exist_ok=True)
            fd = os.open(self.lease_path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, self._lease_bytes())
            self._lock_fd = fd
            os.makedirs(self.folder, exist_ok=True)
        else:
            fs.makedirs(posixpath.dirname(self.lease_path), exist_ok=True)
            retry(fs.pipe_file, self.lease_path, self._lease_bytes(), what=f"write {self.lease_path}")
            if not is_memory(fs):
                self._thread = threading.Thread(target=self._heartbeat, name="torch_grouper-lease", daemon=True)
                self._thread.start()
            fs.makedirs(self.folder, exist_ok=True)
        self.started = True
        checkpoint("staged")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease / 4):
            try:
                self.fs.pipe_file(self.lease_path, self._lease_bytes())
            except Exception:  # noqa: BLE001 - the next beat tries again; commit checks the lease
                pass

    def commit(self, parts: list | None = None) -> Entry:
        """Make the staged snapshot current: create the next log entry.

        Raises ConcurrentCommitError (after removing the staged snapshot) when
        another writer committed first."""
        fs = self.fs
        if not is_local(fs) and not fs.exists(self.lease_path):
            self.abort()
            raise ConcurrentCommitError(
                f"{self.url}: the staged snapshot {self.id} was removed as abandoned while it was being "
                f"written (its lease expired); nothing was committed")
        seq = (self.base.sequence if self.base else 0) + 1
        entry = Entry(seq, self.id, tuple(parts) if parts else None, time.time(),
                      self.base.snapshot if self.base else None)
        data = json.dumps({"sequence": entry.sequence, "snapshot": entry.snapshot,
                           "parts": list(entry.parts) if entry.parts else None,
                           "committed_at": entry.committed_at, "previous": entry.previous,
                           "created_by": f"torch_grouper {fmt.library_version()}"},
                          indent=1).encode() + b"\n"
        path = posixpath.join(self.root, fmt.LOG_DIR, fmt.log_name(seq))
        checkpoint("before-commit")
        try:
            retry(create_exclusive, fs, path, data, what=f"commit {path}")
        except FileExistsError:
            other = None
            try:
                other = read_entry(fs, self.root, seq)
            except Exception:  # noqa: BLE001 - the message is enough without it
                pass
            if other is not None and other.snapshot == self.id:
                # a retried create whose first attempt went through: the commit is ours
                self.committed = entry
                checkpoint("committed")
                self._release()
                return entry
            self.abort()
            raise ConcurrentCommitError(
                f"{self.url}: another partition committed snapshot "
                f"{other.snapshot if other else '?'} (commit {seq}) while this one was running; this run's "
                f"snapshot {self.id} was discarded and the dataset holds the other run's data"
            ) from None
        self.committed = entry
        checkpoint("committed")
        self._release()
        return entry

    def _release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            if is_local(self.fs):
                if self._lock_fd is not None:
                    os.unlink(self.lease_path)
            elif self.fs.exists(self.lease_path):
                self.fs.rm(self.lease_path)
        except OSError:
            pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def abort(self) -> None:
        """Remove the staged snapshot (the dataset stays as it was)."""
        if not self.started or self.committed is not None:
            return
        try:
            if self.fs.exists(self.folder):
                self.fs.rm(self.folder, recursive=True)
        except OSError:
            pass
        self._release()
        self.started = False


def begin(fs, root: str, url: str, lease: float = DEFAULT_LEASE) -> Staged:
    """A new staged snapshot on top of the current commit (nothing written yet)."""
    return Staged(fs, root, url, current(fs, root), lease)


# ------------------------------------------------------------------ reading
@dataclass
class Resolved:
    """Where a dataset's files are: the folder holding its manifest."""

    root: str  # filesystem path of the folder holding manifest.json, index and shards
    url: str  # the same as a URL (for messages and shard URLs)
    snapshot: str | None  # None for a version 1 dataset
    manifest: dict


def top_manifest(fs, root: str, url: str) -> dict | None:
    """The top-level manifest.json (a version 1 manifest or the version 2
    marker), or None when there is none."""
    mpath = posixpath.join(root, fmt.MANIFEST)
    try:
        raw = read_bytes(fs, mpath)
    except FileNotFoundError:
        return None
    return fmt.parse_manifest(raw, url)


def resolve(fs, root: str, url: str, snapshot: str | None = None) -> Resolved:
    """Find the files of the dataset at ``url`` (current snapshot, or ``snapshot``)."""
    entry = current(fs, root)
    if entry is not None or snapshot is not None:
        return _snapshot_files(fs, root, url, snapshot or entry.snapshot, None, entry, pinned=snapshot)
    m = top_manifest(fs, root, url)
    if m is not None:
        if m.get("layout") == fmt.SNAPSHOT_LAYOUT:
            raise ValueError(f"{url} holds no committed snapshot yet: a partition into it is running or did "
                             f"not finish; run it again")
        return Resolved(root, url, None, m)
    # a part of a dataset written together with others (partition_vertical, splits)
    parent, part = posixpath.split(root.rstrip("/"))
    if part and fmt.PART_RE.match(part) and parent:
        pentry = current(fs, parent)
        if pentry is not None and pentry.parts and part in pentry.parts:
            purl = posixpath.dirname(url.rstrip("/"))
            return _snapshot_files(fs, parent, purl, pentry.snapshot, part, pentry)
    if not storage.exists(fs, root):
        raise FileNotFoundError(f"{url} does not exist")
    names = storage.list_names(fs, root) if storage.is_dir(fs, root) else []
    if any(fmt.SHARD_RE.match(n) or n == fmt.INDEX or n == fmt.SNAPSHOTS_DIR for n in names):
        raise ValueError(
            f"{url} holds an incomplete torch_grouper dataset (no committed snapshot, no manifest.json): the "
            f"partition that wrote it did not finish; run it again")
    raise ValueError(f"{url} is not a torch_grouper dataset (no manifest.json)")


def _snapshot_files(fs, root, url, sid, part, entry, pinned=None) -> Resolved:
    if not fmt.SNAPSHOT_ID_RE.match(sid or ""):
        raise ValueError(f"{url}: {sid!r} is not a snapshot id")
    lease_path = posixpath.join(root, fmt.LEASES_DIR, f"{sid}.json")
    if pinned and fs.exists(lease_path) and _lease_alive(fs, lease_path, DEFAULT_LEASE, time.time()):
        raise SnapshotNotFoundError(f"{url}: snapshot {sid} is being written and is not committed")
    if part is None and pinned is None and entry is not None and entry.parts:
        raise ValueError(f"{url} holds several datasets written together ({', '.join(entry.parts)}): "
                         f"open one of them, e.g. {join_url(url, entry.parts[0])}")
    folder = posixpath.join(root, fmt.SNAPSHOTS_DIR, sid)
    furl = join_url(url, fmt.SNAPSHOTS_DIR, sid)
    if part is not None:
        folder, furl = posixpath.join(folder, part), join_url(furl, part)
    mpath = posixpath.join(folder, fmt.MANIFEST)
    try:
        raw = read_bytes(fs, mpath)
    except FileNotFoundError:
        raise SnapshotNotFoundError(
            f"{url}: snapshot {sid} is not available (removed by vacuum, or never committed); "
            f"{'open the dataset without snapshot= for the current one' if pinned else 'its files are missing'}"
        ) from None
    return Resolved(folder, furl, sid, fmt.parse_manifest(raw, furl))


# ------------------------------------------------------------------ vacuum
def _lease_alive(fs, lease_path: str, lease: float, now: float) -> bool:
    if is_local(fs):
        import fcntl

        try:
            fd = os.open(lease_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False  # nobody holds it: the writer is gone
        except OSError:
            return True
        finally:
            os.close(fd)
    try:
        d = json.loads(fs.cat_file(lease_path))
        return now - float(d["heartbeat"]) < lease
    except FileNotFoundError:
        return False
    except (ValueError, KeyError, TypeError):
        try:
            info = fs.info(lease_path)
            mtime = info.get("mtime") or info.get("LastModified") or info.get("updated")
            ts = mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime)
            return now - ts < lease
        except Exception:  # noqa: BLE001 - unknown age: keep it
            return True


def vacuum_root(fs, root: str, url: str, *, keep: int = DEFAULT_KEEP, older_than: float = 0.0,
                lease: float = DEFAULT_LEASE, dry_run: bool = False) -> list[str]:
    """Remove old snapshots and abandoned staged ones; returns the removed ids."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the current snapshot is never removed), got {keep}")
    if older_than < 0:
        raise ValueError(f"older_than must be >= 0 seconds, got {older_than}")
    entries = history(fs, root)
    now = time.time()
    keep_ids = {e.snapshot for e in entries[-keep:]}
    # grace: a snapshot superseded less than ``older_than`` seconds ago stays
    superseded_at = {}
    for prev, nxt in zip(entries, entries[1:]):
        superseded_at[prev.snapshot] = nxt.committed_at
    committed = {e.snapshot for e in entries}
    sdir = posixpath.join(root, fmt.SNAPSHOTS_DIR)
    try:
        present = [posixpath.basename(p.rstrip("/")) for p in fs.ls(sdir, detail=False)]
    except FileNotFoundError:
        present = []
    doomed = []
    for sid in sorted(present):
        if not fmt.SNAPSHOT_ID_RE.match(sid) or sid in keep_ids:
            continue
        if sid in committed:
            if now - superseded_at.get(sid, now) >= older_than:
                doomed.append(sid)
        elif not _lease_alive(fs, posixpath.join(root, fmt.LEASES_DIR, f"{sid}.json"), lease, now):
            doomed.append(sid)  # staged by a writer that is gone
    if any(sid not in committed for sid in doomed):
        # a writer drops its lease only after its commit: read the log again, so a
        # snapshot committed since the first read is never taken for an abandoned one
        committed_now = {e.snapshot for e in history(fs, root)}
        doomed = [sid for sid in doomed if sid in committed or sid not in committed_now]
    if not dry_run:  # leases left by writers killed right after their commit
        ldir = posixpath.join(root, fmt.LEASES_DIR)
        try:
            leases = [posixpath.basename(p.rstrip("/")) for p in fs.ls(ldir, detail=False)]
        except FileNotFoundError:
            leases = []
        for name in leases:
            sid = name[:-5] if name.endswith(".json") else ""
            if sid in committed and not _lease_alive(fs, posixpath.join(ldir, name), lease, now):
                fs.rm(posixpath.join(ldir, name))
    removed = []
    for sid in doomed:
        removed.append(sid)
        if dry_run:
            continue
        checkpoint("vacuum")
        fs.rm(posixpath.join(sdir, sid), recursive=True)
        lease_path = posixpath.join(root, fmt.LEASES_DIR, f"{sid}.json")
        if fs.exists(lease_path):
            fs.rm(lease_path)
    fs.invalidate_cache(sdir)
    return removed


# ------------------------------------------------------------------ public API
def vacuum(path, *, keep: int = DEFAULT_KEEP, older_than: float = 0.0, lease: float = DEFAULT_LEASE,
           storage_options: dict | None = None, dry_run: bool = False) -> list[str]:
    """Remove old snapshots of the dataset at ``path``; returns their ids.

    Keeps the ``keep`` newest committed snapshots (the current one always)
    and any older one superseded less than ``older_than`` seconds ago.  Also
    removes snapshots staged by writers that are gone (a local writer's
    ``flock`` is released; on object stores, a lease not refreshed for
    ``lease`` seconds), never a live writer's.  A reader that pinned a removed
    snapshot gets ``SnapshotNotFoundError`` naming it.  ``partition`` runs
    this with ``keep=2`` after each commit."""
    fs, root, url = location(path, storage_options)
    return vacuum_root(fs, root, url, keep=keep, older_than=older_than, lease=lease, dry_run=dry_run)


def list_snapshots(path, *, storage_options: dict | None = None) -> list[dict]:
    """The dataset's commits, oldest first: ``{"sequence", "snapshot", "parts",
    "committed_at", "available"}`` (``available``: its files are still there)."""
    fs, root, url = location(path, storage_options)
    sdir = posixpath.join(root, fmt.SNAPSHOTS_DIR)
    try:
        present = {posixpath.basename(p.rstrip("/")) for p in fs.ls(sdir, detail=False)}
    except FileNotFoundError:
        present = set()
    return [{"sequence": e.sequence, "snapshot": e.snapshot, "parts": list(e.parts) if e.parts else None,
             "committed_at": e.committed_at, "available": e.snapshot in present} for e in history(fs, root)]
