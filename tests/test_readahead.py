"""Read-ahead (``ReadOptions.readahead``): a stream fetches the shard ranges of
its next groups ahead, on several threads, holding at most the configured
bytes; it yields exactly the same examples as without, on local disk and on
S3, and every group is still checked (errors name the shard and offset)."""
import os
import re

import pytest
from torch.utils.data import DataLoader

import torch_grouper as tg
from torch_grouper import dataset
from helpers import mixed_examples, same

OFF = tg.ReadOptions(readahead=0)
SMALL = tg.ReadOptions(readahead=40_000, readahead_requests=3)  # a few groups at a time, some groups larger
CUT = tg.ReadOptions(readahead=20_000, readahead_requests=2, whole_read=3_000, window=1_000)  # windowed groups


def corpus():
    """Groups of very different sizes (1 to 60 examples, a large one), over several shards, and the
    awkward ids and value types of helpers.mixed_examples."""
    exs = mixed_examples(200)
    for g in range(40):
        for i in range(1 + (g * 7) % 13):
            exs.append({"gid": f"g{g}", "i": i, "text": f"{g}-{i} " * (10 + 20 * (g % 5))})
    exs += [{"gid": "big", "i": i, "text": "x" * 300 + str(i)} for i in range(60)]  # 61 kB: above SMALL
    return exs


def stream(path, opts, storage_options=None, workers=0, **kw):
    ds = tg.GroupedDataset(path, storage_options=storage_options, read_options=opts, **kw)
    it = ds if workers == 0 else DataLoader(ds, batch_size=None, num_workers=workers)
    return [(g.id, list(g)) for g in it]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ra") / "ds")
    m = tg.partition(corpus(), "gid", path, shard_bytes=20_000, progress=False)
    assert len(m["shards"]) > 3
    return path


def check_same(a, b):
    assert [gid for gid, _ in a] == [gid for gid, _ in b]
    for (gid, x), (_, y) in zip(a, b):
        assert same(x, y), gid


@pytest.mark.parametrize("opts", [tg.ReadOptions(), SMALL, CUT], ids=["default", "small", "windowed"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_same_examples_with_and_without_readahead_local(local, opts, shuffle):
    want = stream(local, OFF, shuffle=shuffle, seed=3)
    assert sum(len(x) for _, x in want) == len(corpus())
    check_same(stream(local, opts, shuffle=shuffle, seed=3), want)


def test_same_examples_in_dataloader_workers_local(local):
    want = sorted(stream(local, OFF), key=lambda t: repr(t[0]))
    check_same(sorted(stream(local, SMALL, workers=2), key=lambda t: repr(t[0])), want)


def test_same_examples_on_s3(s3, local):
    url = "s3://bucket/readahead"
    tg.partition(corpus(), "gid", url, shard_bytes=20_000, storage_options=s3, progress=False)
    want = stream(local, OFF)
    for opts in (OFF, tg.ReadOptions(), SMALL, CUT):
        check_same(stream(url, opts, s3), want)
    check_same(stream(url, SMALL, s3, shuffle=True, seed=1), stream(local, OFF, shuffle=True, seed=1))
    got = sorted(stream(url, tg.ReadOptions(), s3, workers=2), key=lambda t: repr(t[0]))
    check_same(got, sorted(want, key=lambda t: repr(t[0])))


class Spy:
    """Counts the reads through the streaming handle, and watches each stream's read-ahead."""

    def __init__(self, monkeypatch):
        self.handle_reads = 0
        self.aheads = []
        orig_handle, orig_ahead = dataset._Reader._read_handle, dataset._Reader.read_ahead

        def handle(reader, *a):
            self.handle_reads += 1
            return orig_handle(reader, *a)

        def ahead(reader, locs):
            a = orig_ahead(reader, locs)
            self.aheads.append(a)
            return a

        monkeypatch.setattr(dataset._Reader, "_read_handle", handle)
        monkeypatch.setattr(dataset._Reader, "read_ahead", ahead)


def test_groups_are_served_from_the_readahead(local, monkeypatch):
    spy = Spy(monkeypatch)
    want = stream(local, OFF)
    assert spy.handle_reads == len(want) and spy.aheads == [None]  # without: one handle read per group
    spy.handle_reads = 0
    check_same(stream(local, tg.ReadOptions()), want)
    assert spy.handle_reads == 0  # every group came from the read-ahead
    larger = larger_than(local, SMALL.readahead)
    assert "big" in larger and len(larger) < len(want) / 4
    spy.handle_reads = 0
    check_same(stream(local, SMALL), want)
    assert spy.handle_reads == len(larger)  # only the groups larger than the read-ahead's bytes


def larger_than(path, n):
    return [r["group_id"] for r in tg.load_index(path).to_pylist() if r["length"] > n]


def test_readahead_holds_at_most_its_bytes(local, monkeypatch):
    spy = Spy(monkeypatch)
    ds = tg.GroupedDataset(local, read_options=SMALL)
    held = []
    for g in ds:
        a = spy.aheads[-1]
        held.append(a.held_bytes)
        list(g)
    assert 0 < max(held) <= SMALL.readahead and spy.aheads[-1].max_held <= SMALL.readahead
    assert max(held) > SMALL.readahead // 2  # it does read ahead (more than the current range)
    assert ds._reader._aheads == []  # let go when the stream ends


def test_a_stream_left_early_lets_its_readahead_go(local, monkeypatch):
    spy = Spy(monkeypatch)
    ds = tg.GroupedDataset(local, read_options=SMALL)
    it = iter(ds)
    next(it)
    assert ds._reader._aheads == [spy.aheads[0]] and spy.aheads[0].held_bytes > 0
    it.close()
    assert ds._reader._aheads == [] and spy.aheads[0].held_bytes == 0
    assert spy.aheads[0]._pool._shutdown


def test_resumed_stream_reads_ahead_from_where_it_resumes(local, monkeypatch):
    ds = tg.GroupedDataset(local, read_options=SMALL)
    it = iter(ds)
    first = [(next(it).id) for _ in range(7)]
    state = ds.state_dict()
    it.close()
    want = stream(local, OFF)
    spy = Spy(monkeypatch)
    ds2 = tg.GroupedDataset(local, read_options=SMALL)
    ds2.load_state_dict(state)
    rest = [(g.id, list(g)) for g in ds2]
    assert first == [gid for gid, _ in want[:7]]
    check_same(rest, want[7:])
    larger = set(larger_than(local, SMALL.readahead))
    assert spy.handle_reads == len([gid for gid, _ in want[7:] if gid in larger])


def damage(path, gid, at, data):
    """Overwrite bytes of group ``gid``'s range (``at`` bytes into it); returns (shard file, group offset)."""
    row = next(r for r in tg.load_index(path).to_pylist() if r["group_id"] == gid)
    f = os.path.join(tg.GroupedDataset(path).root, row["shard"])
    with open(f, "r+b") as fh:
        fh.seek(row["offset"] + at)
        fh.write(data)
    return row["shard"], row["offset"]


def error_of(path, opts):
    with pytest.raises((tg.TarFormatError, tg.GroupMismatchError, ValueError)) as e:
        stream(path, opts)
    return str(e.value)


@pytest.mark.parametrize("opts", [tg.ReadOptions(), SMALL, CUT], ids=["default", "small", "windowed"])
def test_damage_is_found_and_named_with_readahead(tmp_path, opts):
    path = str(tmp_path / "ds")
    tg.partition(corpus(), "gid", path, shard_bytes=20_000, progress=False)
    shard, offset = damage(path, "g7", 0, b"0123456789abcdef_zz")  # the first member's sample key
    msg = error_of(path, opts)
    assert re.search(re.escape(shard) + r".*byte offset " + str(offset), msg), msg
    assert msg == error_of(path, OFF)  # the same error as without read-ahead


def test_truncated_shard_is_named_with_readahead(tmp_path):
    path = str(tmp_path / "ds")
    tg.partition(corpus(), "gid", path, shard_bytes=20_000, progress=False)
    rows = tg.load_index(path).to_pylist()
    last = max(rows, key=lambda r: (r["shard"], r["offset"]))
    f = os.path.join(tg.GroupedDataset(path).root, last["shard"])
    os.truncate(f, last["offset"] + last["length"] // 2)
    msg = error_of(path, tg.ReadOptions())
    assert last["shard"] in msg and "shard ends early" in msg and "byte offset" in msg, msg
    assert msg == error_of(path, OFF)


def test_a_failed_readahead_range_is_read_again(local, monkeypatch):
    """A range whose read failed (after its retries) is read by the ordinary
    path when its groups are reached: the stream is still complete."""
    fails = []

    def broken(self, shard, start, end):
        fails.append((shard, start))
        raise OSError(f"read {shard} bytes {start}-{end}: connection reset")

    monkeypatch.setattr(dataset._ReadAhead, "_fetch", broken)
    check_same(stream(local, SMALL), stream(local, OFF))
    assert len(fails) > 3


def test_read_options_readahead_is_checked():
    assert tg.ReadOptions(readahead=0).readahead == 0
    with pytest.raises(ValueError, match=r"ReadOptions.readahead must be an int >= 0, got -1"):
        tg.ReadOptions(readahead=-1)
    with pytest.raises(ValueError, match=r"ReadOptions.readahead_requests must be an int >= 1, got 0"):
        tg.ReadOptions(readahead_requests=0)
    with pytest.raises(ValueError, match=r"ReadOptions.readahead must be an int >= 0, got True"):
        tg.ReadOptions(readahead=True)


def test_ranges_coalesce_contiguous_groups_of_one_shard(local):
    reader = tg.GroupedDataset(local, read_options=tg.ReadOptions(readahead=4_000, readahead_requests=1))._reader
    ahead = dataset._ReadAhead(reader, iter(()))
    assert ahead.chunk == 2_000
    locs = [(0, "a", 0, 500), (1, "a", 500, 700), (2, "a", 1200, 900),  # 0-1200, then 2100 > 2000: cut
            (3, "a", 2100, 100), (4, "b", 2200, 100),  # another shard at the same offset: cut
            (5, "b", 2300, 5_000),  # larger than the read-ahead's bytes: read when reached, not ahead
            (6, "b", 7300, 10), (7, "b", 9000, 10)]  # not contiguous: cut
    assert list(ahead._ranges(iter(locs))) == [("a", 0, 1200, 1), ("a", 1200, 2200, 3), ("b", 2200, 2300, 4),
                                               ("b", 7300, 7310, 6), ("b", 9000, 9010, 7)]
    ahead.close()
