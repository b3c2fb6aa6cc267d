"""The storage room: URL -> (filesystem, root), local or not, exclusive and
atomic writes, retried reads, staged uploads."""
import os
import threading
import uuid

import fsspec
import pytest

import torch_grouper as tg
from torch_grouper import storage
from torch_grouper.retry import RetryError


# ------------------------------------------------------------------ locations
def test_location_of_a_local_path(tmp_path):
    loc = storage.location(tmp_path)
    assert storage.is_local(loc.fs) and not storage.is_memory(loc.fs)
    assert loc.root == str(tmp_path) and loc.url == str(tmp_path)
    assert storage.full_url(loc.fs, loc.root) == str(tmp_path)  # stock readers get the plain path
    fs, root, url = storage.location(str(tmp_path) + "/")  # a Location unpacks as (fs, root, url)
    assert root == str(tmp_path) and url == str(tmp_path) + "/"
    assert storage.location("/").root == "/"


def test_location_of_a_file_url(tmp_path):
    loc = storage.location(f"file://{tmp_path}/sub/")
    assert storage.is_local(loc.fs)
    assert loc.root == f"{tmp_path}/sub"
    assert loc.url == f"file://{tmp_path}/sub/"


def test_location_of_a_memory_url():
    loc = storage.location("memory://tg-storage/a/b/")
    assert storage.is_memory(loc.fs) and not storage.is_local(loc.fs)
    assert loc.root == "/tg-storage/a/b"
    full = storage.full_url(loc.fs, loc.root)
    assert full.startswith("memory://") and storage.location(full).root == loc.root


def test_location_of_an_s3_url_with_storage_options(s3):
    loc = storage.location("s3://bucket/test_storage/loc/", s3)
    assert not storage.is_local(loc.fs) and not storage.is_memory(loc.fs)
    assert loc.root == "bucket/test_storage/loc"
    assert storage.full_url(loc.fs, loc.root) == "s3://bucket/test_storage/loc"
    storage.write_whole(loc.fs, loc.root + "/x.bin", b"on s3")  # the options reached the filesystem
    assert storage.read_bytes(loc.fs, loc.root + "/x.bin") == b"on s3"
    assert storage.filesystem("s3://bucket", s3).cat_file("bucket/test_storage/loc/x.bin") == b"on s3"


# ------------------------------------------------------------------ exclusive create
def _refuses_second_create(fs, path):
    storage.create_exclusive(fs, path, b"first")
    with pytest.raises(FileExistsError):
        storage.create_exclusive(fs, path, b"second")
    assert fs.cat_file(path) == b"first"


def test_create_exclusive_refuses_a_second_create_locally(tmp_path):
    fs = fsspec.filesystem("file")
    path = f"{tmp_path}/log/1.json"
    _refuses_second_create(fs, path)
    assert sorted(os.listdir(tmp_path / "log")) == ["1.json"]  # no temporary file left behind


def test_create_exclusive_refuses_a_second_create_in_memory():
    fs = fsspec.filesystem("memory")
    _refuses_second_create(fs, f"/tg-storage/{uuid.uuid4().hex}/1.json")


def test_create_exclusive_refuses_a_second_create_on_s3(s3):
    fs = fsspec.filesystem("s3", **s3)
    _refuses_second_create(fs, f"bucket/test_storage/{uuid.uuid4().hex}/_log/1.json")


def test_create_exclusive_one_winner_among_threads(tmp_path):
    fs = fsspec.filesystem("file")
    path = f"{tmp_path}/race.json"
    won, lost = [], []
    barrier = threading.Barrier(8)

    def attempt(i):
        barrier.wait()
        try:
            storage.create_exclusive(fs, path, b"writer %d" % i)
            won.append(i)
        except FileExistsError:
            lost.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7
    assert open(path, "rb").read() == b"writer %d" % won[0]


# ------------------------------------------------------------------ atomic write
class _DiesMidWrite:
    """A file that writes half of the data, then fails (a full disk, a kill)."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(28, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("existed", [True, False])
def test_write_whole_is_atomic_locally(tmp_path, monkeypatch, existed):
    fs = fsspec.filesystem("file")
    path = tmp_path / "manifest.json"
    if existed:
        path.write_bytes(b"old manifest")
    real_open = open
    monkeypatch.setattr(storage, "open", lambda p, mode="r": _DiesMidWrite(real_open(p, mode)), raising=False)
    with pytest.raises(OSError, match="No space left"):
        storage.write_whole(fs, str(path), b"new manifest " * 1000)
    monkeypatch.undo()
    # never a part of the new bytes under the name, and no temporary file left
    assert os.listdir(tmp_path) == (["manifest.json"] if existed else [])
    if existed:
        assert path.read_bytes() == b"old manifest"
    storage.write_whole(fs, str(path), b"new manifest")
    assert path.read_bytes() == b"new manifest" and os.listdir(tmp_path) == ["manifest.json"]


def test_write_whole_replaces_on_memory():
    fs = fsspec.filesystem("memory")
    path = f"/tg-storage/{uuid.uuid4().hex}/m.json"
    storage.write_whole(fs, path, b"one")
    storage.write_whole(fs, path, b"two")
    assert fs.cat_file(path) == b"two"


def test_upload_puts_the_staged_file_and_removes_it(tmp_path):
    fs = fsspec.filesystem("memory")
    staged = tmp_path / "shard.tar.part"
    staged.write_bytes(b"tar bytes")
    target = f"/tg-storage/{uuid.uuid4().hex}/shard-00000-000.tar"
    storage.upload(fs, str(staged), target)
    assert fs.cat_file(target) == b"tar bytes" and not staged.exists()


# ------------------------------------------------------------------ retried reads
class _Flaky:
    """A filesystem whose calls fail with a connection reset ``failures`` times first."""

    def __init__(self, fs, failures):
        self.fs, self.failures, self.calls = fs, failures, 0

    def _maybe_fail(self):
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionResetError(104, "Connection reset by peer")

    def cat_file(self, path, start=None, end=None):
        self._maybe_fail()
        return self.fs.cat_file(path, start=start, end=end)

    def ls(self, path, detail=False):
        self._maybe_fail()
        return self.fs.ls(path, detail=detail)

    def open(self, path, mode="rb", **kw):
        self._maybe_fail()
        return self.fs.open(path, mode, **kw)


@pytest.fixture
def stored():
    fs = fsspec.filesystem("memory")
    folder = f"/tg-storage/{uuid.uuid4().hex}"
    fs.pipe_file(f"{folder}/shard-00000-000.tar", bytes(range(256)) * 4)
    return fs, folder, f"{folder}/shard-00000-000.tar"


def test_retried_reads_recover_from_transient_errors(stored):
    import hashlib

    fs, folder, path = stored
    data = bytes(range(256)) * 4
    flaky = _Flaky(fs, failures=2)
    assert storage.read_bytes(flaky, path) == data and flaky.calls == 3
    flaky = _Flaky(fs, failures=1)
    assert storage.read_bytes(flaky, path, 10, 20) == data[10:20] and flaky.calls == 2
    flaky = _Flaky(fs, failures=1)
    assert storage.list_names(flaky, folder) == ["shard-00000-000.tar"] and flaky.calls == 2
    flaky = _Flaky(fs, failures=1)
    assert storage.sha256_file(flaky, path) == (hashlib.sha256(data).hexdigest(), len(data))


def test_retried_reads_give_up_naming_the_path(stored):
    fs, _, path = stored
    flaky = _Flaky(fs, failures=100)
    with pytest.raises(RetryError, match=rf"read {path} bytes 0-8: failed 4 times, giving up: "
                                         rf"ConnectionResetError"):
        storage.read_bytes(flaky, path, 0, 8)
    assert flaky.calls == 4
    assert tg.RetryError is RetryError


def test_missing_files_are_not_retried(stored):
    fs, folder, _ = stored
    flaky = _Flaky(fs, failures=0)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(flaky, f"{folder}/nothing.tar")
    assert flaky.calls == 1


def test_verify_reads_through_retries(monkeypatch):
    """verify (listing, hashing every file) survives transient errors of the store."""
    out = f"memory://tg-storage/{uuid.uuid4().hex}/ds"
    tg.partition([{"g": i % 3, "i": i} for i in range(30)], "g", out, num_workers=1, progress=False)
    mem = fsspec.implementations.memory.MemoryFileSystem
    failed = set()
    for name in ("cat_file", "ls", "_open", "exists", "isdir"):
        real = getattr(mem, name)

        def once(self, path, *a, _real=real, _name=name, **kw):
            if (_name, path) not in failed:  # the first call for each path fails
                failed.add((_name, path))
                raise ConnectionResetError(104, "Connection reset by peer")
            return _real(self, path, *a, **kw)

        monkeypatch.setattr(mem, name, once)
    assert tg.verify(out) == []
    assert {n for n, _ in failed} >= {"cat_file", "ls", "_open"}


def test_memory_output_with_worker_processes_is_complete():
    """memory:// lives in one process: shards written by pool workers would be
    lost while the commit named them.  Write tasks for it run in this process."""
    import uuid

    import torch_grouper as tg

    url = f"memory://workers-{uuid.uuid4().hex}/ds"
    exs = [{"u": i % 5, "t": i} for i in range(200)]
    m = tg.partition(exs, "u", url, num_workers=2, progress=False)
    assert m["num_groups"] == 5
    ds = tg.GroupedDataset(url)
    assert {g.id: [ex["t"] for ex in g] for g in ds} == {u: list(range(u, 200, 5)) for u in range(5)}
    assert tg.verify(url) == []
