"""The Ray engine on a three-node local cluster (head + 2 workers, each with
its own CPUs, object-store cap, TMPDIR and HF cache), source and output on
S3: the bytes of the local engine, driver-only paths refused, a node removed
mid-run."""
import os
import tempfile
import threading
import time

import pytest

ray = pytest.importorskip("ray")

import torch_grouper as tg  # noqa: E402
from helpers import RAY_RUNTIME_ENV as RUNTIME_ENV  # noqa: E402
from test_ray import KEYS, KW, PLAN, digest, rows, write_jsonl  # noqa: E402
from torch_grouper.engines import LocalEngine  # noqa: E402
from torch_grouper.engines.ray import RayEngine  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # a cluster start costs ~30 s on two cores

STORE = 80 << 20  # each node's object-store cap (Ray's minimum is 75 MiB)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    base = tmp_path_factory.mktemp("nodes")

    def node_env(name):
        tmp, hf = base / name / "tmp", base / name / "hf"
        tmp.mkdir(parents=True)
        hf.mkdir()
        return {"TMPDIR": str(tmp), "HF_HOME": str(hf)}

    c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, object_store_memory=STORE,
                                                          include_dashboard=False, env_vars=node_env("head")))
    workers = [c.add_node(num_cpus=1, object_store_memory=STORE, env_vars=node_env(f"w{i}")) for i in (1, 2)]
    c.wait_for_nodes()
    ray.init(address=c.address, runtime_env=RUNTIME_ENV, log_to_driver=False)
    c.base, c.workers = base, workers
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def s3_src(s3, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(**s3)
    name = f"bucket/ray-{os.getpid()}-{time.monotonic_ns()}"
    fs.put(write_jsonl(tmp_path / "src.jsonl", rows()), f"{name}/src/src.jsonl")
    return f"s3://{name}", s3


class NodeKey:
    """``user`` as the key; notes which nodes' temp dirs the map tasks ran in."""

    def __init__(self, markers):
        self.markers = str(markers)

    every = 300

    def __call__(self, ex):
        if ex["i"] % self.every == 0:
            node = os.path.basename(os.path.dirname(tempfile.gettempdir())) or "driver"  # the driver: /tmp
            open(os.path.join(self.markers, node), "w").close()
        return ex["user"]


@pytest.mark.parametrize("key", sorted(KEYS))
def test_three_nodes_s3_same_bytes(cluster, s3_src, key):
    url, opts = s3_src
    m = tg.partition(f"{url}/src/src.jsonl", KEYS[key](), f"{url}/ray", storage_options=opts,
                     engine=RayEngine(slice_bytes=20_000, **PLAN), **KW)
    tg.partition(f"{url}/src/src.jsonl", KEYS[key](), f"{url}/loc", storage_options=opts,
                 engine=LocalEngine(2, **PLAN), **KW)
    assert m["num_examples"] == 3000 and len(m["shards"]) > 3
    assert digest(f"{url}/ray", opts) == digest(f"{url}/loc", opts)


def test_three_nodes_run_tasks_on_every_node(cluster, s3_src, tmp_path):
    url, opts = s3_src
    markers = tmp_path / "markers"
    markers.mkdir()
    tg.partition(f"{url}/src/src.jsonl", NodeKey(markers), f"{url}/ray", storage_options=opts,
                 engine=RayEngine(slice_bytes=10_000, **PLAN), **KW)
    assert len(os.listdir(markers)) >= 2, sorted(os.listdir(markers))  # nodes' own TMPDIRs: "head", "w1", "w2"
    assert set(os.listdir(markers)) <= {"head", "w1", "w2"}


def test_driver_only_paths_are_refused(cluster, s3_src, tmp_path):
    url, opts = s3_src
    local = write_jsonl(tmp_path / "src.jsonl", rows(10))
    with pytest.raises(ValueError, match=r"source file .*src.jsonl is on this machine's disk; on a Ray cluster of "
                                         r"more than one node.*RayEngine\(shared_disk=True\)"):
        tg.partition(local, "user", f"{url}/o", storage_options=opts, engine=RayEngine(), progress=False)
    with pytest.raises(ValueError, match=r"output .*/o2/snapshots/\w+ is on this machine's disk"):
        tg.partition(f"{url}/src/src.jsonl", "user", tmp_path / "o2", storage_options=opts, engine=RayEngine(),
                     progress=False)
    with pytest.raises(ValueError, match=r"tmp_dir='/tmp' is a folder of this machine"):
        tg.partition(f"{url}/src/src.jsonl", "user", f"{url}/o", storage_options=opts, engine=RayEngine(),
                     tmp_dir="/tmp", progress=False)
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(rows(10))
    ds.save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(ValueError, match=r"datasets.Dataset is backed by Arrow files of this machine"):
        tg.partition(datasets.load_from_disk(str(tmp_path / "hf")), "user", f"{url}/o", storage_options=opts,
                     engine=RayEngine(), progress=False)
    # in memory, a datasets.Dataset travels with the tasks
    m = tg.partition(ds, "user", f"{url}/o", storage_options=opts, engine=RayEngine(), progress=False)
    assert m["num_examples"] == 10


def test_three_nodes_shared_disk_same_bytes(cluster, tmp_path):
    """Paths every node mounts (here: one machine's disk) with shared_disk=True."""
    src = write_jsonl(tmp_path / "src.jsonl", rows())
    markers = tmp_path / "markers"
    markers.mkdir()
    m = tg.partition(src, NodeKey(markers), tmp_path / "ray",
                     engine=RayEngine(slice_bytes=20_000, shared_disk=True, **PLAN), **KW)
    assert m["num_examples"] == 3000 and len(m["shards"]) > 3
    assert len(os.listdir(markers)) >= 2  # the tasks ran on several nodes
    tg.partition(src, NodeKey(markers), tmp_path / "loc", engine=LocalEngine(2, **PLAN), **KW)
    assert digest(tmp_path / "ray") == digest(tmp_path / "loc")


class SlowKey(NodeKey):
    every = 1

    def __init__(self, markers):
        self.markers = str(markers)

    def __call__(self, ex):
        if ex["i"] == 0:
            open(os.path.join(self.markers, "started"), "w").close()
        time.sleep(0.003)
        return super().__call__(ex)


def test_worker_node_removed_mid_run_completes_with_the_same_bytes(cluster, s3_src, tmp_path):
    """Ray reruns the tasks that ran on the removed node, and rebuilds the map
    outputs lost with its object store from their lineage: the run completes."""
    url, opts = s3_src
    markers = tmp_path / "markers"
    markers.mkdir()
    started = markers / "started"
    out: dict = {}

    def run():
        try:
            out["m"] = tg.partition(f"{url}/src/src.jsonl", SlowKey(markers), f"{url}/ray", storage_options=opts,
                                    engine=RayEngine(slice_bytes=10_000, **PLAN), **KW)
        except BaseException as e:  # noqa: BLE001 - reported below
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 120
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert started.exists()
    while not (markers / "w2").exists() and time.time() < deadline:  # the node to remove is mapping
        time.sleep(0.05)
    time.sleep(0.5)
    cluster.remove_node(cluster.workers[-1], allow_graceful=False)
    t.join(300)
    assert not t.is_alive()
    assert "error" not in out, out.get("error")
    assert "w2" in os.listdir(markers)  # the removed node had run map tasks (their outputs were lost with it)
    tg.partition(f"{url}/src/src.jsonl", SlowKey(markers), f"{url}/loc", storage_options=opts,
                 engine=LocalEngine(2, **PLAN), **KW)
    assert digest(f"{url}/ray", opts) == digest(f"{url}/loc", opts)
