"""The Ray engine writes the bytes of the local engine: on a local Ray with
two CPUs, on a three-node local cluster with source and output on S3, when a
worker dies, when the driver is killed, when a node is removed, and for a
``ray.data.Dataset`` source."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ray = pytest.importorskip("ray")

import torch_grouper as tg  # noqa: E402
from torch_grouper import storage  # noqa: E402
from torch_grouper.engines import LocalEngine, resolve_engine  # noqa: E402
from torch_grouper.engines.ray import RayEngine  # noqa: E402
from torch_grouper.partitioners import DirichletPartitioner  # noqa: E402
from helpers import RAY_RUNTIME_ENV as RUNTIME_ENV, ROOT  # noqa: E402

pytestmark = pytest.mark.ray

KW = dict(shard_bytes=60_000, memory_budget=150_000, progress=False)
PLAN = dict(task_min_bytes=20_000)  # several write tasks on a small corpus


def digest(url, opts=None) -> dict:
    """sha256 of every file of the current snapshot of a dataset (any store), by name."""
    folder = tg.GroupedDataset(url, storage_options=opts).root
    fs = storage.location(url, opts).fs
    return {os.path.basename(p): hashlib.sha256(fs.cat_file(p)).hexdigest() for p in sorted(fs.find(folder))}


def rows(n=3000):
    return [{"url": f"https://s{(i * 7919) % 53}.example.org/{i}", "user": f"u{(i * 31) % 97}",
             "text": "a b " * (i % 30), "label": i % 7, "i": i} for i in range(n)]


def write_jsonl(path, exs):
    with open(path, "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in exs)
    return str(path)


def url_head(ex):
    return ex["url"][8:11]


def dirichlet():
    return DirichletPartitioner(6, "label", alpha=0.5, seed=1, min_partition_size=1)


KEYS = {"column": lambda: "user", "function": lambda: url_head, "dirichlet": dirichlet}


# ------------------------------------------------------------ same bytes, one node
@pytest.mark.parametrize("key", sorted(KEYS))
@pytest.mark.parametrize("kind", ["files", "iterable", "hf"])
def test_same_bytes_as_the_local_engine(local_ray, tmp_path, key, kind):
    exs = rows()
    if kind == "files":
        src = write_jsonl(tmp_path / "src.jsonl", exs)
    elif kind == "hf":
        datasets = pytest.importorskip("datasets")
        src = datasets.Dataset.from_list(exs)
    else:
        src = exs
    # a chunk of 1500 examples (~1.5 MB of tar members) spills several runs into its task's one blob
    parts = {"column": 64, "function": 7, "dirichlet": 1024}[key]  # any cut of the shuffle: the same bytes
    m_ray = tg.partition(src, KEYS[key](), tmp_path / "ray",
                         engine=RayEngine(slice_bytes=20_000, chunk_examples=1500, parts=parts, **PLAN), **KW)
    m_loc = tg.partition(src, KEYS[key](), tmp_path / "loc",
                         engine=LocalEngine(2, slice_bytes=50_000, **PLAN), **KW)
    assert m_ray["num_examples"] == 3000 and len(m_ray["shards"]) > 3
    assert m_ray["num_groups"] == m_loc["num_groups"] > 5
    assert digest(tmp_path / "ray") == digest(tmp_path / "loc")  # shards, index, manifest: every byte


def test_engine_ray_by_name_and_progress(local_ray, tmp_path, capsys):
    m = tg.partition(rows(500), "user", tmp_path / "o", engine="ray", shard_bytes=20_000, progress=True)
    assert m["num_examples"] == 500 and m["num_groups"] == 97
    assert "partition: read" in capsys.readouterr().err
    assert isinstance(resolve_engine("ray", 3), RayEngine) and resolve_engine("ray", 3).num_workers == 3
    assert [ex["i"] for ex in tg.GroupedDataset(tmp_path / "o")["u31"]] == [1, 98, 195, 292, 389, 486]


def test_bad_example_is_named_from_the_task(local_ray, tmp_path):
    exs = rows(100) + [{"url": "x"}]
    with pytest.raises(tg.PartitionError, match=r"^example 100: has no key column 'user'") as e:
        tg.partition(exs, "user", tmp_path / "o", engine=RayEngine(chunk_examples=30), progress=False)
    assert type(e.value) is tg.PartitionError  # the task's own error, not Ray's wrapper
    assert not (tmp_path / "o").exists()


def test_memory_stores_are_refused(local_ray, tmp_path):
    with pytest.raises(ValueError, match=r"output memory://ray-out.*memory:// store lives in one process"):
        tg.partition(rows(10), "user", "memory://ray-out", engine=RayEngine(), progress=False)


# ------------------------------------------------------------ faults, one node
def kill_once(ex):
    """A key function whose worker process kills itself the first time it sees example 1234."""
    if ex["i"] == 1234:
        marker = os.path.join(os.environ["TG_TEST_MARKERS"], "killed")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    return ex["user"]


def test_worker_killed_mid_task_is_retried_with_the_same_bytes(local_ray, tmp_path, monkeypatch):
    markers = tmp_path / "markers"
    markers.mkdir()
    # the marker folder reaches the workers in the examples
    src = write_jsonl(tmp_path / "src.jsonl", [dict(e, m=str(markers)) for e in rows()])

    def key(ex):
        os.environ["TG_TEST_MARKERS"] = ex["m"]
        return kill_once(ex)

    tg.partition(src, key, tmp_path / "ray", engine=RayEngine(slice_bytes=20_000, **PLAN), **KW)
    assert (markers / "killed").exists()  # the worker did die once
    tg.partition(src, key, tmp_path / "loc", engine=LocalEngine(2, **PLAN), **KW)  # the marker is there: no kill
    assert digest(tmp_path / "ray") == digest(tmp_path / "loc") and len(digest(tmp_path / "loc")) > 4


DRIVER = textwrap.dedent("""
    import os, sys, time, ray
    sys.path[:0] = [{root!r}, {tests!r}]
    ray.init(address={address!r}, log_to_driver=False)
    import torch_grouper as tg
    from torch_grouper.engines.ray import RayEngine

    def slow(ex):
        if ex["i"] == 0:
            open({started!r}, "w").close()
        time.sleep(0.002)
        return ex["user"]

    tg.partition({src!r}, slow, {out!r}, overwrite=True, engine=RayEngine(slice_bytes=20_000, task_min_bytes=20_000),
                 shard_bytes=60_000, memory_budget=150_000, progress=False)
    open({done!r}, "w").close()
""")


@pytest.mark.slow  # ~40 s: a second driver process imports Ray and torch
def test_driver_killed_leaves_the_previous_snapshot_and_a_rerun_gives_the_same_bytes(local_ray, tmp_path):
    src = write_jsonl(tmp_path / "src.jsonl", rows())
    out = tmp_path / "out"
    tg.partition(rows(200), "user", out, engine=RayEngine(), **KW)  # the previous snapshot
    before = digest(out)
    started, done = tmp_path / "started", tmp_path / "done"
    script = DRIVER.format(root=ROOT, tests=os.path.join(ROOT, "tests"),
                           address=ray.get_runtime_context().gcs_address, started=str(started), src=src,
                           out=str(out), done=str(done))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, **RUNTIME_ENV["env_vars"]})
    try:
        deadline = time.time() + 120
        while not started.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert started.exists(), "the driver's map tasks never started"
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not done.exists() and proc.returncode == -signal.SIGKILL
    assert digest(out) == before  # the previous snapshot is current and intact
    assert len(tg.GroupedDataset(out)) == 97
    tg.partition(src, "user", out, overwrite=True, engine=RayEngine(slice_bytes=20_000, **PLAN), **KW)
    tg.partition(src, "user", tmp_path / "loc", engine=LocalEngine(2, **PLAN), **KW)
    assert digest(out) == digest(tmp_path / "loc")


# ------------------------------------------------------------ ray.data
def test_ray_dataset_source_in_row_order(local_ray, tmp_path):
    import ray.data

    exs = [{k: v for k, v in e.items() if k != "text"} for e in rows(2000)]
    ds = ray.data.from_items(exs, override_num_blocks=7)
    m = tg.partition(ds, "user", tmp_path / "ray", engine=RayEngine(**PLAN), **KW)
    assert m["num_examples"] == 2000
    tg.partition(exs, "user", tmp_path / "list", engine=LocalEngine(2, **PLAN), **KW)
    a, b = digest(tmp_path / "ray"), digest(tmp_path / "list")
    assert {k: v for k, v in a.items() if k != "manifest.json"} == {k: v for k, v in b.items()
                                                                     if k != "manifest.json"}
    got = [ex["i"] for ex in tg.GroupedDataset(tmp_path / "ray")["u31"]]
    assert got == [e["i"] for e in exs if e["user"] == "u31"]


# ------------------------------------------------------------ the shuffle's parts
@pytest.mark.parametrize("parts", [64, 1, 7, 1024])
def test_map_parts_hold_each_bucket_range_once(tmp_path, parts):
    """A map task's runs, cut into PARTS objects by bucket range: for any
    bucket range, the part ranges a write task reads (steps.task_inputs over
    the part runs, run-major) are exactly the original runs' bytes of that
    range, in run order, and only parts overlapping the range are read."""
    import random

    from torch_grouper import format as fmt
    from torch_grouper.engines import ray as ray_engine
    from torch_grouper.engines.steps import MapContext, map_slice, task_inputs
    from torch_grouper.sources import as_source

    src = as_source(rows(2000))
    chunk = next(src.chunks(max_examples=2000))
    spill = tmp_path / "spill"
    spill.mkdir()
    ctx = MapContext(src, lambda ex: ex["user"] + ex["url"][8:11], str(spill), 100_000)
    want = map_slice(ctx, chunk)  # several runs (a small budget), kept as files
    assert len(want.runs) > 2
    originals = [open(r.path, "rb").read() for r in want.runs]
    res, *blobs = ray_engine._map_task(ctx, chunk, None, 7, str(tmp_path), parts)
    assert len(blobs) == parts
    assert sorted(map(str, tmp_path.rglob("*.run"))) == sorted(r.path for r in want.runs)  # the task removed its own
    assert sum(map(len, blobs)) == sum(map(len, originals))
    blobs = {f"ray-map-7-{p}": bytes(b) for p, b in enumerate(blobs)}
    rng = random.Random(0)
    cuts = [(0, fmt.NUM_BUCKETS), (0, 1), (5, 6)] + [tuple(sorted(rng.sample(range(fmt.NUM_BUCKETS + 1), 2)))
                                                       for _ in range(40)]
    for lo, hi in cuts:
        got = b"".join(blobs[p][a:b] for p, a, b in task_inputs(res.runs, lo, hi))
        exp = b"".join(data[r.offsets[lo]:r.offsets[hi]] for data, r in zip(originals, want.runs))
        assert got == exp, (lo, hi)
        touched = {int(p.rsplit("-", 1)[1]) for p, _, _ in task_inputs(res.runs, lo, hi)}
        bounds = ray_engine.part_bounds(parts)
        first = max(p for p in range(parts) if bounds[p] <= lo)
        last = max(p for p in range(parts) if bounds[p] <= max(lo, hi - 1))
        assert touched <= set(range(first, last + 1)), (lo, hi, touched)


# ------------------------------------------------------------ starting Ray (last: it ends the module's Ray)
def test_num_cpus_starts_a_local_ray_of_that_size(local_ray, tmp_path):
    """RayEngine(num_cpus=N) with no address starts a new local Ray of N CPUs
    (address "local"), not a connection to whatever runs on the machine."""
    ray.shutdown()
    engine = RayEngine(num_cpus=1, init_kwargs=dict(runtime_env=RUNTIME_ENV, include_dashboard=False,
                                                     log_to_driver=False))
    m = tg.partition(rows(200), "user", tmp_path / "o", engine=engine, shard_bytes=20_000, progress=False)
    assert m["num_examples"] == 200
    assert ray.cluster_resources()["CPU"] == 1 and engine.num_workers == 1
