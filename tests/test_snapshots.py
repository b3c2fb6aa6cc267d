"""Snapshot commits: a rewrite never hands a reader another group's data, a
crash or failure at any step leaves the old or the new dataset (never
neither), concurrent writers give one winner, nothing foreign is deleted."""
import errno
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import fsspec
import pytest
from torch.utils.data import DataLoader

import torch_grouper as tg
from torch_grouper import format as fmt
from torch_grouper import snapshots
from helpers import digest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def old_examples(n=2000):
    return [{"g": f"A{i % 300}", "i": i, "v": "old"} for i in range(n)]


def new_examples(n=2000):
    return [{"g": f"A{i % 300}", "i": -i, "v": "new"} for i in range(n)]  # same ids, other data


def content(path, **kw):
    ds = tg.GroupedDataset(path, **kw)
    return {g.id: [(e["i"], e["v"]) for e in g] for g in ds}


def expected(exs):
    out = {}
    for e in exs:
        out.setdefault(e["g"], []).append((e["i"], e["v"]))
    return out


# ------------------------------------------------------------ readers pin
def test_rewrite_under_an_open_reader_keeps_its_snapshot(tmp_path):
    out = tmp_path / "d"
    tg.partition(old_examples(), "g", out, shard_bytes=4_000, progress=False)
    ds = tg.GroupedDataset(out)
    pinned = ds.snapshot
    tg.partition(new_examples(), "g", out, shard_bytes=6_000, overwrite=True, progress=False)
    old, new = expected(old_examples()), expected(new_examples())
    for gid in random.Random(0).sample(sorted(old), 50):
        assert [(e["i"], e["v"]) for e in ds[gid]] == old[gid]  # never another group's or snapshot's data
    assert {g.id: [(e["i"], e["v"]) for e in g] for g in ds} == old
    # DataLoader workers (pickled dataset) and cohorts read the pinned snapshot too
    seen = {g.id: [(e["i"], e["v"]) for e in g] for g in DataLoader(ds, batch_size=None, num_workers=2)}
    assert seen == old
    cohort = next(iter(ds.cohorts(8, seed=0)))
    assert all([(e["i"], e["v"]) for e in g] == old[g.id] for g in cohort)
    copy = pickle.loads(pickle.dumps(ds))  # what a spawned worker or another host receives
    assert copy.snapshot == pinned and {g.id: [(e["i"], e["v"]) for e in g] for g in copy} == old
    # a new reader sees the new snapshot; the old one stays readable by id
    assert content(out) == new
    assert content(out, snapshot=pinned) == old
    assert tg.GroupedDataset(out).snapshot != pinned


def test_vacuum_keeps_newest_and_grace_and_names_removed_snapshots(tmp_path):
    out = tmp_path / "d"
    ids = [tg.partition([{"g": "a", "i": k}], "g", out, overwrite=True, progress=False, keep_snapshots=10)["snapshot"]
           for k in range(4)]
    assert [s["snapshot"] for s in tg.list_snapshots(out)] == ids
    assert tg.vacuum(out, keep=2, dry_run=True) == sorted(ids[:2])
    assert sorted(os.listdir(out / "snapshots")) == sorted(ids)
    assert tg.vacuum(out, keep=1, older_than=3600) == []  # all superseded just now: within the grace
    assert tg.vacuum(out, keep=2) == sorted(ids[:2])
    assert [s["available"] for s in tg.list_snapshots(out)] == [False, False, True, True]
    with pytest.raises(tg.SnapshotNotFoundError, match=rf"snapshot {ids[0]} is not available \(removed by vacuum"):
        tg.GroupedDataset(out, snapshot=ids[0])
    assert [e["i"] for e in tg.GroupedDataset(out, snapshot=ids[2])["a"]] == [2]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        tg.vacuum(out, keep=0)
    # the default after each partition: the new snapshot and the one it replaced
    tg.partition([{"g": "a", "i": 9}], "g", out, overwrite=True, progress=False)
    assert len(os.listdir(out / "snapshots")) == 2
    with pytest.raises(ValueError, match="is not a snapshot id"):
        tg.GroupedDataset(out, snapshot="../../etc")


def test_state_dict_records_the_snapshot(tmp_path):
    out = tmp_path / "d"
    tg.partition(old_examples(200), "g", out, progress=False)
    ds = tg.GroupedDataset(out)
    assert ds.state_dict()["snapshot"] == ds.snapshot


# ------------------------------------------------------------ concurrency
def _race(out, storage_options=None):
    """Writer A is overtaken by writer B just before A's commit: B must win,
    A must fail clearly and leave nothing visible."""
    fired = []

    def overtake(step):
        if step == "before-commit" and not fired:
            fired.append(1)
            tg.partition(new_examples(300), "g", out, overwrite=True, progress=False, num_workers=1,
                         storage_options=storage_options)

    orig = snapshots.checkpoint
    snapshots.checkpoint = overtake
    try:
        with pytest.raises(tg.ConcurrentCommitError, match=r"another partition committed snapshot [0-9a-f]{32} "
                                                           r"\(commit 2\) while this one was running"):
            tg.partition(old_examples(300), "g", out, overwrite=True, progress=False, num_workers=1,
                         storage_options=storage_options)
    finally:
        snapshots.checkpoint = orig
    assert fired


def test_concurrent_writers_one_wins_local(tmp_path):
    out = tmp_path / "d"
    tg.partition(old_examples(100), "g", out, progress=False)
    _race(out)
    assert content(out) == expected(new_examples(300))
    assert tg.verify(out) == []
    assert len(tg.list_snapshots(out)) == 2 and len(os.listdir(out / "snapshots")) == 2  # loser's is gone
    assert os.listdir(out / "_leases") == []


def test_concurrent_writers_one_wins_s3(s3):
    out = "s3://bucket/race"
    tg.partition(old_examples(100), "g", out, progress=False, storage_options=s3)
    _race(out, s3)  # moto enforces If-None-Match on the log entry
    assert content(out, storage_options=s3) == expected(new_examples(300))
    assert tg.verify(out, storage_options=s3) == []
    fs = fsspec.filesystem("s3", **s3)
    assert len(fs.ls("bucket/race/snapshots")) == 2


def test_concurrent_writers_one_wins_memory():
    out = "memory://tg-race/d"
    tg.partition(old_examples(100), "g", out, progress=False)
    _race(out)
    assert content(out) == expected(new_examples(300))


def test_s3_exclusive_create_is_enforced_by_the_server(s3):
    fs = fsspec.filesystem("s3", **s3)
    snapshots.create_exclusive(fs, "bucket/x/_log/1.json", b"first")
    with pytest.raises(FileExistsError):
        snapshots.create_exclusive(fs, "bucket/x/_log/1.json", b"second")
    assert fs.cat_file("bucket/x/_log/1.json") == b"first"


RACE = textwrap.dedent("""
    import sys, torch_grouper as tg
    out, tag = sys.argv[1], sys.argv[2]
    exs = [{"g": f"A{i % 50}", "i": i, "v": tag} for i in range(3000)]
    try:
        tg.partition(exs, "g", out, overwrite=True, progress=False, num_workers=1, shard_bytes=20_000)
        print("won")
    except tg.ConcurrentCommitError as e:
        print("lost", e)
""")


def test_concurrent_processes_never_mix(tmp_path):
    """Real processes writing at the same time: each either commits or fails
    with ConcurrentCommitError; the dataset is always exactly one writer's."""
    out = tmp_path / "d"
    env = dict(os.environ, PYTHONPATH=ROOT)
    for _ in range(2):
        ps = [subprocess.Popen([sys.executable, "-c", RACE, str(out), tag], env=env, stdout=subprocess.PIPE,
                               text=True) for tag in ("p", "q")]
        res = [p.communicate(timeout=300)[0].strip() for p in ps]
        assert all(r.startswith(("won", "lost")) for r in res), res
        assert any(r.startswith("won") for r in res)
        got = content(out)
        tags = {v for exs in got.values() for _, v in exs}
        assert len(tags) == 1 and len(got) == 50  # one writer's data, whole
        assert tg.verify(out) == []


# ------------------------------------------------------------ foreign files
def test_files_that_are_not_ours_are_never_deleted(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "index.parquet").write_bytes(b"user's own index")
    (out / "shard-00000-007.tar").write_bytes(b"user's own tar")
    with pytest.raises(FileExistsError, match=r"holds no torch_grouper dataset \(found \['index.parquet', "
                                              r"'shard-00000-007.tar'\]\)"):
        tg.partition([{"g": "a"}], "g", out, progress=False)
    tg.partition([{"g": "a"}], "g", out, overwrite=True, progress=False)
    assert (out / "index.parquet").read_bytes() == b"user's own index"
    assert (out / "shard-00000-007.tar").read_bytes() == b"user's own tar"
    assert [g.id for g in tg.GroupedDataset(out)] == ["a"]
    tg.partition([{"g": "b"}], "g", out, overwrite=True, progress=False, keep_snapshots=1)
    assert (out / "index.parquet").read_bytes() == b"user's own index"


# ------------------------------------------------------------ failures
def test_failures_during_overwrite_keep_the_old_dataset(tmp_path, monkeypatch):
    out = tmp_path / "d"
    tg.partition(old_examples(), "g", out, progress=False)
    old = expected(old_examples())
    # a failure injected at every step of the protocol before the commit point
    for step in ("staged", "index-written", "manifest-written", "before-commit"):
        def boom(s, step=step):
            if s == step:
                raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(snapshots, "checkpoint", boom)
        with pytest.raises(OSError, match="No space left"):
            tg.partition(new_examples(), "g", out, overwrite=True, progress=False, num_workers=1)
        monkeypatch.setattr(snapshots, "checkpoint", lambda s: None)
        assert content(out) == old, step
        assert tg.verify(out) == [] and len(os.listdir(out / "snapshots")) == 1, step  # staged one removed
    # a full disk while shards are written (in the write task)
    from torch_grouper import writer

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.ShardWriter, "_write", full)
    with pytest.raises(OSError, match="No space left"):
        tg.partition(new_examples(), "g", out, overwrite=True, progress=False, num_workers=1)
    monkeypatch.undo()
    assert content(out) == old and len(os.listdir(out / "snapshots")) == 1
    # bad input found while reading: nothing touched
    with pytest.raises(tg.PartitionError):
        tg.partition(new_examples() + [{"x": 1}], "g", out, overwrite=True, progress=False)
    assert content(out) == old and len(os.listdir(out / "snapshots")) == 1


KILL = textwrap.dedent("""
    import os, signal, sys
    import torch_grouper as tg
    from torch_grouper import snapshots
    src, out, step = sys.argv[1], sys.argv[2], sys.argv[3]
    if step != "-":
        def die(s):
            if s == step:
                os.killpg(os.getpgrp(), signal.SIGKILL)  # the partition and its workers, at this exact step
        snapshots.checkpoint = die
    print("ready", flush=True)
    tg.partition(src, "g", out, num_workers=2, shard_bytes=30_000, overwrite=True, progress=False)
""")

STEPS = ["staged", "index-written", "manifest-written", "before-commit", "committed", "marker-written", "vacuum"]


def _write_jsonl(path, exs):
    with open(path, "w") as f:
        for e in exs:
            f.write(json.dumps(e) + "\n")


def test_kill_at_every_step_and_at_random_times_leaves_old_or_new(tmp_path):
    old_src, new_src = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    _write_jsonl(old_src, old_examples(12_000))
    _write_jsonl(new_src, new_examples(12_000))
    env = dict(os.environ, PYTHONPATH=ROOT)

    def run(src, out, step="-", delay=None):
        """Run a partition; kill it at ``step`` or ``delay`` seconds after its imports;
        returns whether it was killed."""
        p = subprocess.Popen([sys.executable, "-c", KILL, str(src), str(out), step], env=env,
                             start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert p.stdout.readline() == b"ready\n"
        t0 = time.perf_counter()
        killed = False
        if delay is not None:
            time.sleep(delay)
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                killed = True
        rc = p.wait()
        run.elapsed = time.perf_counter() - t0
        return killed or rc == -signal.SIGKILL

    ref_old, ref_new = tmp_path / "ref_old", tmp_path / "ref_new"
    assert not run(old_src, ref_old)
    full = run.elapsed  # the partition alone, without the interpreter's start
    assert not run(new_src, ref_new)
    want = {"old": digest(ref_old), "new": digest(ref_new)}

    def check(out, what):
        """The dataset is the complete old or the complete new one; returns which."""
        assert tg.verify(out) == [], what
        got = digest(out)
        state = next((k for k, v in want.items() if v == got), None)
        assert state is not None, what
        assert len(tg.GroupedDataset(out)) == 300
        return state

    outcomes = {}
    out = tmp_path / "steps"
    assert not run(old_src, out)
    have, other = "old", "new"
    srcs = {"old": old_src, "new": new_src}
    for step in STEPS:  # each kill rewrites the dataset with the other data
        assert run(srcs[other], out, step), f"the writer was not killed at {step}"
        state = check(out, step)
        outcomes[step] = "previous" if state == have else "replacement"
        assert not run(srcs[other], out)  # a rerun succeeds
        assert check(out, f"rerun after {step}") == other
        assert os.listdir(out / "_leases") == []  # and the killed writer's lease and staged snapshot were cleaned
        assert len(os.listdir(out / "snapshots")) <= 2
        have, other = other, have
    assert outcomes == {"staged": "previous", "index-written": "previous", "manifest-written": "previous",
                        "before-commit": "previous", "committed": "replacement", "marker-written": "replacement",
                        "vacuum": "replacement"}
    rng = random.Random(1)
    kills = 0
    out = tmp_path / "random"
    assert not run(old_src, out)
    for k in range(12):  # random points of the whole run, alternating the data written
        kills += run(new_src if k % 2 == 0 else old_src, out, delay=rng.uniform(0, full))
        check(out, "random kill")
    assert kills >= 10
    assert not run(new_src, out)
    assert check(out, "final rerun") == "new"


def test_live_writers_staged_snapshot_survives_vacuum_dead_ones_do_not(tmp_path):
    out = tmp_path / "d"
    tg.partition([{"g": "a"}], "g", out, progress=False)
    holder = textwrap.dedent("""
        import sys, time, fsspec
        from torch_grouper import snapshots
        fs, root = fsspec.core.url_to_fs(sys.argv[1])
        st = snapshots.begin(fs, root, sys.argv[1]); st.start()
        print(st.id, flush=True); time.sleep(120)
    """)
    p = subprocess.Popen([sys.executable, "-c", holder, str(out)], env=dict(os.environ, PYTHONPATH=ROOT),
                         stdout=subprocess.PIPE, text=True)
    sid = p.stdout.readline().strip()
    try:
        assert (out / "snapshots" / sid).is_dir()
        assert tg.vacuum(out, keep=1) == []  # its writer lives (holds the flock)
        tg.partition([{"g": "b"}], "g", out, overwrite=True, progress=False)
        assert (out / "snapshots" / sid).is_dir()
        with pytest.raises(tg.SnapshotNotFoundError, match=f"snapshot {sid} is being written"):
            tg.GroupedDataset(out, snapshot=sid)
    finally:
        p.kill()
        p.wait()
    assert sid in tg.vacuum(out, keep=2)  # its writer is gone
    assert not (out / "snapshots" / sid).exists() and not (out / "_leases" / f"{sid}.json").exists()


def test_object_store_leases_expire_by_heartbeat_age():
    fs = fsspec.filesystem("memory")
    out = "memory://tg-lease/d"
    tg.partition([{"g": "a"}], "g", out, progress=False)
    fresh = snapshots.begin(fs, "/tg-lease/d", out)
    fresh.start()
    stale = snapshots.begin(fs, "/tg-lease/d", out)
    stale.start()
    lease = json.loads(fs.cat_file(stale.lease_path))
    lease["heartbeat"] -= 3600
    fs.pipe_file(stale.lease_path, json.dumps(lease).encode())
    assert tg.vacuum(out, keep=1, lease=600) == [stale.id]
    assert fs.exists(fresh.folder) and not fs.exists(stale.folder)
    fresh.abort()


def test_heartbeat_refreshes_the_lease(s3):
    fs = fsspec.filesystem("s3", **s3)
    st = snapshots.Staged(fs, "bucket/hb", "s3://bucket/hb", None, lease=0.4)
    st.start()
    first = json.loads(fs.cat_file(st.lease_path))["heartbeat"]
    time.sleep(0.6)
    assert json.loads(fs.cat_file(st.lease_path))["heartbeat"] > first
    st.abort()
    assert not fs.exists(st.lease_path)


# ------------------------------------------------------------ several datasets at once
def test_vertical_parties_commit_together_or_not_at_all(tmp_path, monkeypatch):
    from torch_grouper import partitioners as P

    rows = [{"a": i, "b": -i, "c": str(i)} for i in range(50)]
    out = tmp_path / "v"
    tg.partition_vertical(rows, P.VerticalEvenPartitioner(2, shuffle=False), out, progress=False)
    before = {p: content_rows(out / p) for p in ("party-0", "party-1")}
    calls = []
    from torch_grouper import pipeline

    real = pipeline._write_snapshot_files

    def fail_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "_write_snapshot_files", fail_second)
    with pytest.raises(OSError):
        tg.partition_vertical([{**r, "a": r["a"] + 1000} for r in rows], P.VerticalEvenPartitioner(2, shuffle=False),
                              out, overwrite=True, progress=False)
    monkeypatch.undo()
    assert {p: content_rows(out / p) for p in ("party-0", "party-1")} == before  # neither party changed
    tg.partition_vertical([{**r, "a": r["a"] + 1000} for r in rows], P.VerticalEvenPartitioner(2, shuffle=False),
                          out, overwrite=True, progress=False)
    after = {p: content_rows(out / p) for p in ("party-0", "party-1")}
    assert after != before and after["party-0"][0]["a"] == 1000
    with pytest.raises(ValueError, match=r"holds several datasets written together \(party-0, party-1\)"):
        tg.GroupedDataset(out)


def content_rows(path):
    return [e for g in tg.GroupedDataset(path) for e in g]


# ------------------------------------------------------------ format versions
def _make_v1(tmp_path, exs):
    """A version 1 dataset: the snapshot's files at the top level, manifest version 1."""
    src = tmp_path / "v2"
    tg.partition(exs, "g", src, progress=False)
    folder = tg.GroupedDataset(src).root
    v1 = tmp_path / "v1"
    v1.mkdir()
    for name in os.listdir(folder):
        data = open(os.path.join(folder, name), "rb").read()
        if name == "manifest.json":
            m = json.loads(data)
            m["format_version"] = 1
            data = fmt.dump_manifest(m)
        (v1 / name).write_bytes(data)
    return v1


def test_version_1_datasets_are_read_and_replaced_cleanly(tmp_path):
    v1 = _make_v1(tmp_path, old_examples(500))
    (v1 / "notes.txt").write_text("mine")
    ds = tg.GroupedDataset(v1)
    assert ds.snapshot is None and content(v1) == expected(old_examples(500))
    assert tg.verify(v1) == [f"{v1}/notes.txt: foreign file, not part of the dataset"]
    with pytest.raises(FileExistsError, match="already holds a complete torch_grouper dataset"):
        tg.partition(new_examples(500), "g", v1, progress=False)
    tg.partition(new_examples(500), "g", v1, overwrite=True, progress=False)
    assert content(v1) == expected(new_examples(500))
    assert sorted(os.listdir(v1)) == ["_leases", "_log", "manifest.json", "notes.txt", "snapshots"]
    # the top-level manifest now tells a release that reads only version 1 to stop
    marker = json.loads((v1 / "manifest.json").read_text())
    assert marker["format_version"] == 2 and "shards" not in marker and "index" not in marker


def test_more_than_1000_shards_in_one_write_task(tmp_path):
    # 1,100 groups in one hash bucket, so one write task, one shard each
    ids = []
    i = 0
    while len(ids) < 1100:
        gid = f"g{i}"
        if fmt.group_hash(gid.encode()) >> fmt.BUCKET_SHIFT == 0:
            ids.append(gid)
        i += 1
    exs = [{"g": gid, "t": "x" * 300} for gid in ids]
    out = tmp_path / "many"
    m = tg.partition(exs, "g", out, shard_bytes=1, progress=False, num_workers=1)
    names = [s["path"] for s in m["shards"]]
    assert len(names) == 1100 and "shard-00000-1000.tar" in names
    assert tg.verify(out) == [] and len(tg.GroupedDataset(out)) == 1100
    tg.partition(exs[:10], "g", out, shard_bytes=1, progress=False, overwrite=True)  # a rerun is allowed
    assert len(tg.GroupedDataset(out)) == 10


def test_leftovers_of_a_killed_run_never_block_a_rerun(tmp_path):
    out = tmp_path / "d"
    tg.partition([{"g": "a"}], "g", out, progress=False)
    stale = out / "snapshots" / ("f" * 32)
    stale.mkdir()
    (stale / "manifest.json.tmp").write_text("half")
    (stale / "shard-00000-000.tar").write_text("half")
    tg.partition([{"g": "b"}], "g", out, overwrite=True, progress=False)  # vacuum removes the dead run's folder
    assert not stale.exists()
    assert [g.id for g in tg.GroupedDataset(out)] == ["b"]


def test_a_commit_entry_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    fs = fsspec.filesystem("file")
    path = str(tmp_path / "_log" / fmt.log_name(1))

    def crash(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", crash)  # a crash after part of the entry was written
    with pytest.raises(OSError, match="I/O error"):
        snapshots.create_exclusive(fs, path, b'{"sequence": 1}' * 100)
    monkeypatch.undo()
    assert os.listdir(tmp_path / "_log") == []  # no partial entry, no temporary file
    snapshots.create_exclusive(fs, path, b"whole")
    assert open(path, "rb").read() == b"whole"


def test_full_disk_while_writing_shards_names_the_shard(tmp_path, monkeypatch):
    from torch_grouper import writer

    out = tmp_path / "d"
    tg.partition(old_examples(200), "g", out, progress=False)

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.ShardWriter, "_write", full)
    with pytest.raises(OSError, match=r"writing shard .*/d/snapshots/[0-9a-f]{32}/shard-00000-000\.tar: "
                                      r"No space left on device \(disk full\?\)"):
        tg.partition(new_examples(200), "g", out, overwrite=True, progress=False, num_workers=1)
    monkeypatch.undo()
    assert content(out) == expected(old_examples(200))
