"""torchdata.nodes sources: every group (and example) exactly once, exact
resume of a whole pipeline from ``Loader.state_dict()``, epochs, ranks."""
import json
import pickle
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

tn = pytest.importorskip("torchdata.nodes")

import torch_grouper as tg  # noqa: E402
from torch_grouper.nodes import ExampleNode, GroupNode, as_node  # noqa: E402


def make_examples(n=600):
    return [{"g": f"user{(i * 7) % 23}", "i": i, "text": "w " * (i % 9), "x": i / 3, "raw": bytes([i % 256]) * (i % 4),
             "lst": [i, "é", None]} for i in range(n)]


EXAMPLES = make_examples()
BY_GROUP: dict = {}
for _e in EXAMPLES:
    BY_GROUP.setdefault(_e["g"], []).append(_e)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("nodes") / "d"
    tg.partition(EXAMPLES, "g", out, shard_bytes=3_000, num_workers=1, progress=False)
    assert len(tg.GroupedDataset(out).manifest["shards"]) > 3  # several shards: shuffling has something to permute
    return out


def ids(items):
    return [g.id for g in items]


def summarize(g):
    """What the pipeline's mapper makes of a group (runs in ParallelMapper threads)."""
    return g.id, [e["i"] for e in g]


def pipeline(ds, *, batch=3):
    node = tn.ParallelMapper(as_node(ds), summarize, num_workers=2)
    return tn.Loader(tn.Prefetcher(tn.Batcher(node, batch_size=batch, drop_last=False), prefetch_factor=2))


def flat(batches):
    return [x for b in batches for x in b]


# ------------------------------------------------------------ exactly once
def test_group_node_yields_every_group_once_with_all_its_examples(data):
    ds = tg.GroupedDataset(data)
    got = list(as_node(ds))
    assert Counter(ids(got)) == Counter({gid: 1 for gid in BY_GROUP})
    for g in got:
        assert g.examples() == BY_GROUP[g.id]  # every field of every example, in input order
    assert ids(got) == ids(ds)  # the DataLoader path's order


def test_views_as_nodes_map_groups_split_and_flat(data):
    ds = tg.GroupedDataset(data, shuffle=True, seed=3)
    assert [x for x in as_node(ds.map_groups(summarize))] == [summarize(g) for g in ds]
    parts = ds.split_groups({"a": 0.5, "b": 0.5}, seed=0)
    a, b = ids(as_node(parts["a"])), ids(as_node(parts["b"]))
    assert a and b and not set(a) & set(b) and Counter(a + b) == Counter({gid: 1 for gid in BY_GROUP})
    pairs = list(as_node(ds.examples()))
    assert Counter((gid, e["i"]) for gid, e in pairs) == Counter((e["g"], e["i"]) for e in EXAMPLES)
    assert all(e == EXAMPLES[e["i"]] and gid == e["g"] for gid, e in pairs)
    mixed = list(as_node(ds.examples(shuffle_buffer=50, seed=1)))
    assert mixed == list(ds.examples(shuffle_buffer=50, seed=1))  # the same stream as the flat view's
    assert sorted(e["i"] for _, e in mixed) == list(range(len(EXAMPLES)))
    with pytest.raises(TypeError, match="as_node takes a GroupedDataset or its examples.. view, got list"):
        as_node([1, 2])


def test_pipeline_output_is_every_group_once(data):
    ds = tg.GroupedDataset(data, shuffle=True, seed=5)
    out = flat(pipeline(ds))
    assert [gid for gid, _ in out] == ids(ds)
    assert dict(out) == {gid: [e["i"] for e in exs] for gid, exs in BY_GROUP.items()}


# ------------------------------------------------------------ exact resume
@pytest.mark.parametrize("stop", [0, 1, 4, 7, 8])  # 23 groups in batches of 3: 8 batches; 8 = after the last
def test_pipeline_stopped_mid_epoch_resumes_with_exactly_the_rest(data, stop):
    full = list(pipeline(tg.GroupedDataset(data, shuffle=True, seed=7)))
    loader = pipeline(tg.GroupedDataset(data, shuffle=True, seed=7))
    it = iter(loader)
    head = [next(it) for _ in range(stop)]
    sd = loader.state_dict()
    sd = pickle.loads(pickle.dumps(json.loads(json.dumps(sd))))  # plain data: saves with torch.save or JSON
    del it, loader
    fresh = pipeline(tg.GroupedDataset(data, shuffle=True, seed=7))  # another process would open it anew
    fresh.load_state_dict(sd)
    rest = list(fresh)
    assert head == full[:stop]
    if stop < len(full):
        assert rest == full[stop:]
    else:  # saved after the last batch: a Loader restarts with the next epoch
        ds1 = tg.GroupedDataset(data, shuffle=True, seed=7)
        ds1.set_epoch(1)
        assert [gid for gid, _ in flat(rest)] == ids(ds1)


def test_group_node_state_is_the_datasets_state_dict(data):
    ds = tg.GroupedDataset(data, shuffle=True, seed=2)
    node = as_node(ds)
    order = ids(node)
    node.reset(None)  # epoch 1
    first = [next(node) for _ in range(5)]
    state = node.state_dict()
    ref = tg.GroupedDataset(data, shuffle=True, seed=2)
    ref.set_epoch(1)
    it = iter(ref)
    assert ids(first) == ids([next(it) for _ in range(5)])
    assert state == ref.state_dict() and state["epoch"] == 1 and state["delivered"] == 5
    node2 = as_node(tg.GroupedDataset(data, shuffle=True, seed=2))
    node2.reset(state)
    assert ids(node2) == ids(it)
    assert ds.epoch == 0 and ids(ds) == order  # the dataset handed to as_node was not moved
    # the dataset's own state_dict (the DataLoader path's) resumes a node too
    ref2 = tg.GroupedDataset(data, shuffle=True, seed=2)
    it2 = iter(ref2)
    head = [next(it2) for _ in range(9)]
    node3 = as_node(tg.GroupedDataset(data, shuffle=True, seed=2))
    node3.reset(ref2.state_dict())
    assert ids(head) + ids(node3) == order


def test_epochs_reshuffle_and_start_at_the_datasets_epoch(data):
    ds = tg.GroupedDataset(data, shuffle=True, seed=11)
    ds.set_epoch(4)
    loader = pipeline(ds)
    epochs = [[gid for gid, _ in flat(loader)] for _ in range(3)]
    for k, order in enumerate(epochs):
        ref = tg.GroupedDataset(data, shuffle=True, seed=11)
        ref.set_epoch(4 + k)
        assert order == ids(ref)
        assert sorted(order) == sorted(BY_GROUP)
    assert epochs[0] != epochs[1] != epochs[2]
    still = pipeline(tg.GroupedDataset(data))
    assert [[gid for gid, _ in flat(still)] for _ in range(2)] == [ids(tg.GroupedDataset(data))] * 2


# ------------------------------------------------------------ ranks
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_read_disjoint_shares(data, world):
    shares = [ids(as_node(tg.GroupedDataset(data, shuffle=True, seed=1, rank=r, world_size=world)))
              for r in range(world)]
    assert all(shares)
    assert Counter(sum(shares, [])) == Counter({gid: 1 for gid in BY_GROUP})
    # a rank resumes its own state, and refuses another rank's
    n0 = as_node(tg.GroupedDataset(data, shuffle=True, seed=1, rank=0, world_size=world))
    next(n0)
    sd = n0.state_dict()
    n0b = as_node(tg.GroupedDataset(data, shuffle=True, seed=1, rank=0, world_size=world))
    n0b.reset(sd)
    assert ids(n0b) == shares[0][1:]
    other = as_node(tg.GroupedDataset(data, shuffle=True, seed=1, rank=1, world_size=world))
    with pytest.raises(ValueError, match=rf"state was saved by reader 0 of {world}; this node is reader 1 of {world}"):
        other.reset(sd)


def test_foreign_and_malformed_states_are_refused(data, tmp_path):
    tg.partition(EXAMPLES[:100], "g", tmp_path / "other", progress=False)
    sd = as_node(tg.GroupedDataset(tmp_path / "other")).state_dict()
    with pytest.raises(ValueError, match="state is for another dataset"):
        as_node(tg.GroupedDataset(data)).reset(sd)
    with pytest.raises(ValueError, match="state was saved with seed=0, shuffle=False"):
        as_node(tg.GroupedDataset(data, shuffle=True)).reset(as_node(tg.GroupedDataset(data)).state_dict())
    with pytest.raises(ValueError, match="state must be a dict"):
        as_node(tg.GroupedDataset(data)).reset([1])
    ex = as_node(tg.GroupedDataset(data).examples())
    with pytest.raises(ValueError, match="state was saved with a shuffle buffer; this node has shuffle_buffer=0"):
        ex.reset(as_node(tg.GroupedDataset(data).examples(shuffle_buffer=5)).state_dict())
    with pytest.raises(ValueError, match=r"state\['taken'\] must be an int >= 0, got -1"):
        ex.reset({**as_node(tg.GroupedDataset(data).examples()).state_dict(), "taken": -1})
    with pytest.raises(TypeError, match="expected ds.examples"):
        ExampleNode(tg.GroupedDataset(data))
    with pytest.raises(TypeError, match="expected a GroupedDataset, got list"):
        GroupNode([])


# ------------------------------------------------------------ flat examples
@settings(max_examples=25, deadline=None)
@given(stop=st.integers(0, len(EXAMPLES)), buffer=st.sampled_from([0, 64]), epoch=st.integers(0, 2))
def test_example_node_resumes_exactly_anywhere(data, stop, buffer, epoch):
    ds = tg.GroupedDataset(data, shuffle=True, seed=4)
    ds.set_epoch(epoch)
    full = list(as_node(ds.examples(shuffle_buffer=buffer, seed=9)))
    assert len(full) == len(EXAMPLES)
    node = as_node(ds.examples(shuffle_buffer=buffer, seed=9))
    head = [next(node) for _ in range(stop)]
    sd = json.loads(json.dumps(node.state_dict()))
    again = as_node(tg.GroupedDataset(data, shuffle=True, seed=4).examples(shuffle_buffer=buffer, seed=9))
    again.reset(sd)
    assert head + list(again) == full
