"""The Flower adapter (tox -e flower): flwr-datasets' own calls on GroupedPartitioner,
ids-only cohorts, GroupFedAvg's one-group-per-message rule, and a tiny Flower
simulation in which every client trains on exactly its group's examples."""
import hashlib
import json
import os
import socket
import sys
from collections import Counter

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import datasets
import flwr  # noqa: F401  (this environment must have Flower: no skip)
import matplotlib
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr_datasets.metrics import compute_counts
from flwr_datasets.partitioner import Partitioner
from flwr_datasets.visualization import plot_label_distributions

import torch_grouper as tg
from torch_grouper.flower import GroupedPartitioner, GroupFedAvg, load_client_data

matplotlib.use("Agg")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FEDSHAKESPEARE = os.path.join(ROOT, "data", "fedshakespeare", "fedshakespeare.jsonl.gz")
LABELS = ["cat", "dog", "emu", "fox"]


def _source(n=300):
    users = [f"user{(i * 7) % 13}" for i in range(n)]  # 13 groups of unequal label mixes
    return datasets.Dataset.from_dict(
        {"user": users, "label": [(i * i) % 4 if i % 5 else 0 for i in range(n)], "i": list(range(n)),
         "text": [f"ex {i} " * (i % 3) for i in range(n)]},
        features=datasets.Features({"user": datasets.Value("string"), "label": datasets.ClassLabel(names=LABELS),
                                    "i": datasets.Value("int64"), "text": datasets.Value("string")}))


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fl") / "users")
    tg.partition(_source(), "user", out, num_workers=2, shard_bytes=2_000, progress=False)
    return out


def _digest(examples):
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


# ------------------------------------------------------------------ Partitioner contract
def test_partitions_are_the_groups_in_index_order(grouped):
    p = GroupedPartitioner(grouped)
    ds = tg.GroupedDataset(grouped)
    index_ids = tg.load_index(grouped)["group_id"].to_pylist()
    assert isinstance(p, Partitioner) and p.is_dataset_assigned()
    assert p.num_partitions == len(index_ids) == 13
    for pid, gid in enumerate(index_ids):
        assert p.group_id(pid) == gid and p.partition_id(gid) == pid
        part = p.load_partition(pid)
        assert isinstance(part, datasets.Dataset)
        assert part.features == ds.features  # the manifest's features, ClassLabel included
        assert part.to_list() == ds[gid].examples()
    assert sum(len(p.load_partition(i)) for i in range(p.num_partitions)) == 300
    with pytest.raises(ValueError, match="partition_id 13 is out of range: .* has 13 partitions"):
        p.load_partition(13)
    with pytest.raises(TypeError, match="partition_id must be an int, got str"):
        p.load_partition("user1")
    with pytest.raises(TypeError, match="takes no dataset"):
        p.dataset = _source()


def test_compute_counts_equals_a_direct_count(grouped):
    p = GroupedPartitioner(grouped)
    ds = tg.GroupedDataset(grouped)
    ids = tg.load_index(grouped)["group_id"].to_pylist()
    direct = {pid: Counter(ex["label"] for ex in ds[gid]) for pid, gid in enumerate(ids)}
    counts = compute_counts(p, column_name="label")
    assert counts.shape == (13, 4) and list(counts.columns) == [0, 1, 2, 3]  # every ClassLabel value
    for pid in range(13):
        assert counts.loc[pid].to_dict() == {k: direct[pid].get(k, 0) for k in range(4)}
    verbose = compute_counts(p, column_name="label", verbose_names=True)
    assert list(verbose.columns) == LABELS
    # a plain (non-ClassLabel) column goes through partitioner.dataset.unique()
    users = compute_counts(p, column_name="user", max_num_partitions=5)
    assert users.shape == (5, 13)
    for pid in range(5):
        assert users.loc[pid].to_dict() == {u: (len(ds[ids[pid]]) if u == ids[pid] else 0) for u in ids}
    with pytest.raises(ValueError, match="'nope' is not present"):
        compute_counts(p, column_name="nope")


def test_plot_label_distributions_returns_a_figure(grouped, tmp_path):
    p = GroupedPartitioner(grouped)
    fig, ax, df = plot_label_distributions(p, label_name="label", legend=True)
    assert isinstance(fig, matplotlib.figure.Figure) and df.shape == (13, 4)
    assert df.to_numpy().sum() == 300
    fig.savefig(tmp_path / "labels.png")
    assert (tmp_path / "labels.png").stat().st_size > 1000
    fig, ax, df = plot_label_distributions(p, label_name="label", plot_type="heatmap", size_unit="percent")
    assert df.sum(axis=1).round(6).tolist() == [100.0] * 13


def test_dataset_view_small_materializes_large_is_refused(grouped):
    ds = tg.GroupedDataset(grouped)
    ids = tg.load_index(grouped)["group_id"].to_pylist()
    everything = [ex for gid in ids for ex in ds[gid]]
    view = GroupedPartitioner(grouped).dataset
    assert len(view) == view.num_rows == 300 and sorted(view.column_names) == ["i", "label", "text", "user"]
    assert view["i"] == [ex["i"] for ex in everything]  # dataset order: groups by index row
    assert view.unique("user") == ids
    small = GroupedPartitioner(grouped, max_rows=299)
    assert small.dataset.unique("label") == sorted(set(ex["label"] for ex in everything), key=[
        ex["label"] for ex in everything].index)
    assert compute_counts(small, column_name="label").to_numpy().sum() == 300  # needs no materializing
    with pytest.raises(ValueError, match="has 300 examples, more than max_rows=299: it is not materialized"):
        small.dataset["label"]
    with pytest.raises(ValueError, match="column 'nope' is not in"):
        small.dataset.unique("nope")


def test_partitioner_without_manifest_features(tmp_path):
    exs = [{"g": f"g{i % 4}", "y": ["a", "b", "c"][i % 3], "v": i} for i in range(40)]
    out = str(tmp_path / "plain")
    tg.partition(exs, "g", out, progress=False)
    p = GroupedPartitioner(tg.GroupedDataset(out))
    assert p.dataset.column_names == ["g", "y", "v"]
    counts = compute_counts(p, column_name="y")
    assert sorted(counts.columns) == ["a", "b", "c"]
    for pid in range(4):
        want = Counter(ex["y"] for ex in exs if ex["g"] == p.group_id(pid))
        assert counts.loc[pid].to_dict() == {k: want.get(k, 0) for k in "abc"}
    with pytest.raises(ValueError, match="map_groups transforms"):
        GroupedPartitioner(tg.GroupedDataset(out).map_groups(len))


def test_partitioner_on_s3(s3, grouped):
    tg.partition(_source(), "user", "s3://bucket/users", num_workers=2, shard_bytes=2_000, storage_options=s3,
                 progress=False)
    p = GroupedPartitioner("s3://bucket/users", storage_options=s3)
    local = tg.GroupedDataset(grouped)
    assert p.num_partitions == 13
    for pid in range(13):
        assert p.load_partition(pid).to_list() == local[p.group_id(pid)].examples()
    assert compute_counts(p, column_name="label").equals(compute_counts(GroupedPartitioner(grouped), "label"))


# ------------------------------------------------------------------ ids-only cohorts
@pytest.mark.parametrize("kw", [{}, {"replacement": "independent"}, {"replacement": "independent", "weighted": True}])
def test_cohort_ids_are_the_cohorts_ids_without_reading(grouped, kw, monkeypatch):
    ds = tg.GroupedDataset(grouped)
    drawn = [[g.id for g in c] for c in ds.cohorts(4, seed=3, rounds=7, **kw)]  # crosses epoch boundaries
    assert len({tuple(c) for c in drawn}) > 1

    def no_reads(*a, **k):
        raise AssertionError("cohort_ids read group data")

    monkeypatch.setattr(tg.dataset._Reader, "read", no_reads)
    fresh = tg.GroupedDataset(grouped)
    assert list(fresh.cohort_ids(4, seed=3, rounds=7, **kw)) == drawn
    assert [fresh.cohorts(4, seed=3, **kw).ids(r) for r in range(7)] == drawn
    with pytest.raises(ValueError, match="cohort size must be between 1 and the 13 groups, got 14"):
        fresh.cohort_ids(14)


# ------------------------------------------------------------------ GroupFedAvg
@pytest.fixture
def run_identity(monkeypatch):
    """Messages are made inside a run: outside one, Flower needs a run id."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def _sent(msgs):
    return [(m.metadata.dst_node_id, m.content["config"]["group-id"]) for m in msgs]


def test_group_fedavg_one_group_per_message(grouped, run_identity):
    ds = tg.GroupedDataset(grouped)
    strategy = GroupFedAvg(grouped, 5, seed=7, evaluate_cohort_size=2)
    arrays = ArrayRecord({})
    grid = FakeGrid([33, 11, 22])
    for rnd in (1, 2, 3, 4):
        msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord({"lr": 0.5}), grid))
        assert [gid for _, gid in _sent(msgs)] == ds.cohorts(5, seed=7).ids(rnd - 1)
        assert all(m.metadata.message_type == MessageType.TRAIN for m in msgs)
        cfg = msgs[0].content["config"]
        assert (cfg["lr"], cfg["server-round"], cfg["dataset"]) == (0.5, rnd, ds.url)
        # a cohort larger than the SuperNodes: dealt to all of them in turn (2, 2, 1)
        per_node = Counter(node for node, _ in _sent(msgs))
        assert set(per_node) == {11, 22, 33} and sorted(per_node.values()) == [1, 2, 2]
        ev = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid))
        assert [gid for _, gid in _sent(ev)] == ds.cohorts(2, seed=8).ids(rnd - 1)
        assert len({node for node, _ in _sent(ev)}) == 2  # cohort <= SuperNodes: distinct SuperNodes
        assert strategy.assignments[("train", rnd)] == _sent(msgs)
    assert list(GroupFedAvg(grouped, 3, evaluate_cohort_size=0).configure_evaluate(1, arrays, ConfigRecord(),
                                                                                 grid)) == []


def test_group_fedavg_cohort_larger_than_supernodes_can_be_an_error(grouped, run_identity):
    strict = GroupFedAvg(grouped, 4, max_messages_per_node=1)
    assert len(list(strict.configure_train(1, ArrayRecord({}), ConfigRecord(), FakeGrid([1, 2, 3, 4])))) == 4
    with pytest.raises(ValueError, match="round 1: a train cohort of 4 groups needs more than "
                                         "max_messages_per_node=1 message.* with 3 SuperNode"):
        strict.configure_train(1, ArrayRecord({}), ConfigRecord(), FakeGrid([1, 2, 3]))
    with pytest.raises(ValueError, match="cohort size must be between 1 and the 13 groups, got 20"):
        GroupFedAvg(grouped, 20)


def test_load_client_data_reads_the_messages_group(grouped, run_identity):
    ds = tg.GroupedDataset(grouped)
    msgs = list(GroupFedAvg(grouped, 3, seed=1).configure_train(1, ArrayRecord({}), ConfigRecord(),
                                                                FakeGrid([5])))
    assert len({m.content["config"]["group-id"] for m in msgs}) == 3
    for m in msgs:
        gid = m.content["config"]["group-id"]
        g = load_client_data(m)
        assert g.id == gid and g.examples() == ds[gid].examples()
        assert load_client_data(m, grouped, as_dataset=True).to_list() == ds[gid].examples()
        assert load_client_data({"group-id": gid}, grouped).examples() == ds[gid].examples()
    with pytest.raises(KeyError, match="no 'group-id' in the message config"):
        load_client_data(Message(RecordDict({"config": ConfigRecord({"lr": 1.0})}), dst_node_id=1,
                                 message_type=MessageType.TRAIN), grouped)
    with pytest.raises(KeyError, match="no group 'nobody'"):
        load_client_data({"group-id": "nobody"}, grouped)


# ------------------------------------------------------------------ a tiny simulation
def test_simulation_clients_train_on_exactly_their_groups(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import flower_simulation

    data = flower_simulation.partition_fedshakespeare(str(tmp_path / "fedshakespeare"), FEDSHAKESPEARE)
    report = tmp_path / "report.jsonl"
    flower_simulation.simulate(data, rounds=2, supernodes=3, cohort=5, eval_cohort=4, seed=11,
                               report_path=str(report), **{"local-steps": 2})
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    ds = tg.GroupedDataset(data)  # the independent read
    assert len(ds) == 1348
    for kind, size, seed in (("train", 5, 11), ("evaluate", 4, 12)):
        for rnd in (1, 2):
            got = [r for r in rows if (r["kind"], r["round"]) == (kind, rnd)]
            assert sorted(r["group_id"] for r in got) == sorted(ds.cohorts(size, seed=seed).ids(rnd - 1))
            for r in got:
                examples = ds[r["group_id"]].examples()
                assert (r["examples"], r["digest"]) == (len(examples), _digest(examples)), r["group_id"]
            per_node = Counter(r["node"] for r in got)
            assert len(per_node) == 3 and sorted(per_node.values()) == ([1, 2, 2] if size == 5 else [1, 1, 2])


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_flower_app_runs_with_flwr_run_offline(tmp_path):
    """examples/flower_app under `flwr run`, as its README says: local SuperLink, no network."""
    import shutil
    import signal
    import subprocess

    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import flower_simulation

    data = flower_simulation.partition_fedshakespeare(str(tmp_path / "fedshakespeare"), FEDSHAKESPEARE)
    home, report = tmp_path / "flwr-home", tmp_path / "report.jsonl"
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
           "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    app = tmp_path / "app"
    shutil.copytree(os.path.join(ROOT, "examples", "flower_app"), app)
    cmd = [os.path.join(bindir, "flwr"), "run", ".", "--stream", "--federation-config", "num-supernodes=2",
           "--run-config", f"dataset-path='{data}' num-server-rounds=1 cohort-size=3 eval-cohort-size=0 "
                           f"local-steps=1 report-path='{report}'"]
    try:
        out = subprocess.run(cmd, cwd=app, env=env, capture_output=True, text=True, timeout=300)
        log = out.stdout + out.stderr
        assert out.returncode == 0, log[-3000:]
        assert "round 1: train loss" in log, log[-3000:]
    finally:  # stop the SuperLink that flwr run started (it runs detached), found by its FLWR_HOME
        pids = subprocess.run(["pgrep", "-f", f"flower-superlink.*{home}"], capture_output=True, text=True).stdout
        for pid in pids.split():
            os.kill(int(pid), signal.SIGTERM)
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    ds = tg.GroupedDataset(data)
    assert sorted(r["group_id"] for r in rows) == sorted(ds.cohorts(3, seed=0).ids(0))
    for r in rows:
        examples = ds[r["group_id"]].examples()
        assert (r["kind"], r["examples"], r["digest"]) == ("train", len(examples), _digest(examples))


@pytest.mark.parametrize("shuffle", [True, False])
def test_same_partitions_as_federated_dataset(tmp_path, shuffle):
    """FederatedDataset(shuffle=True, seed=42), its default, equals partition(shuffle_seed=42);
    FederatedDataset(shuffle=False) equals the unshuffled partition."""
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import NaturalIdPartitioner

    rows = [{"user": f"u{(i * 7) % 13}", "i": i, "label": i % 3} for i in range(500)]
    files = tmp_path / "src"
    files.mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(files / "train.parquet"))
    fds = FederatedDataset(dataset="parquet", data_files={"train": str(files / "train.parquet")},
                           partitioners={"train": NaturalIdPartitioner(partition_by="user")},
                           shuffle=shuffle, seed=42)
    theirs = {}
    for pid in range(fds.partitioners["train"].num_partitions):
        part = fds.load_partition(pid, "train")
        theirs[part[0]["user"]] = part["i"]
    source = datasets.load_dataset("parquet", data_files={"train": str(files / "train.parquet")})
    tg.partition(source, "user", tmp_path / "ours", progress=False, shuffle_seed=42 if shuffle else None)
    ours = {g.id: [e["i"] for e in g] for g in tg.GroupedDataset(tmp_path / "ours" / "train")}
    assert ours == theirs
    assert any(v != sorted(v) for v in ours.values()) == shuffle
