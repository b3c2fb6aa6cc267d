"""Decoding is the mirror of encoding: examples encoded by ``codec.encode`` and
written as tar members come back equal from ``codec.decode_group`` (the
streaming fast path) and ``codec.assemble`` (the general path)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import torch_grouper as tg
from torch_grouper import codec, tario
from torch_grouper import format as fmt
from helpers import mixed_examples, same


def _group_bytes(examples, gid="g", file_no=0):
    """(tar bytes of a group's examples, its key prefix, member data bytes)."""
    canon = fmt.canonical_group_id(gid, fmt.group_id_type(gid))
    ghash = fmt.group_hash(canon)
    chunks, nbytes = [], 0
    for i, ex in enumerate(examples):
        members, n, _ = codec.encode(ex)
        nbytes += n
        key = fmt.sample_key(ghash, file_no, i)
        for suffix, data in members:
            chunks += tario.member(f"{key}.{suffix}", data)
    return b"".join(chunks), b"%016x_" % ghash, nbytes


def _both_paths(buf, hexh, gid="g"):
    tally = [0]
    fast = codec.decode_group(buf, "t.tar", 0, hexh, gid, tally)
    general = list(codec.assemble(tario.checked_members(buf, "t.tar", 0), "t.tar", 0, hexh, gid))
    return fast, general, tally[0]


def test_mixed_examples_come_back_equal():
    exs = [{k: v for k, v in ex.items() if k != "gid"} for ex in mixed_examples(200)]
    buf, hexh, nbytes = _group_bytes(exs)
    fast, general, tally = _both_paths(buf, hexh)
    assert len(fast) == len(general) == len(exs)
    assert all(same(a, b) for a, b in zip(fast, exs))
    assert all(same(a, b) for a, b in zip(general, exs))
    assert tally == nbytes  # the bytes of member data the index records for the group


def test_json_only_then_binary_examples():
    """The fast path takes the JSON-only run, the general path the rest."""
    exs = [{"t": "a" * i, "i": i, "f": [1.5, None]} for i in range(50)]
    exs += [{"t": "bin", "b": bytes(range(i)), "a": np.arange(i, dtype=np.uint16)} for i in range(5)]
    exs += [{"t": "json again", "n": float("-inf")}]
    buf, hexh, nbytes = _group_bytes(exs)
    fast, general, tally = _both_paths(buf, hexh)
    assert all(same(a, b) for a, b in zip(fast, exs)) and len(fast) == len(exs)
    assert all(same(a, b) for a, b in zip(general, exs)) and len(general) == len(exs)
    assert tally == nbytes


def test_json_after_other_members():
    """Samples from other writers may list KEY.json after the binary members."""
    key = "00000000000000ff_000000000000000001"
    members = [(f"{key}.b.bin", b"raw"), (f"{key}.json", b'{"x": 1, "b": "json loses"}')]
    buf = b"".join(c for n, d in members for c in tario.member(n, d))
    assert codec.decode_group(buf, "t.tar", 0, b"00000000000000ff_") == [{"x": 1, "b": b"raw"}]


def test_members_of_another_group_are_refused():
    buf, _, _ = _group_bytes([{"x": 1}, {"x": 2}], gid="mine")
    _, other, _ = _group_bytes([], gid="other")
    for decode in (lambda: codec.decode_group(buf, "t.tar", 4096, other, "other"),
                   lambda: list(codec.assemble(tario.iter_members(buf, "t.tar", 4096), "t.tar", 4096, other,
                                               "other"))):
        with pytest.raises(tg.GroupMismatchError, match=r"t\.tar: byte offset 4096: member '[0-9a-f]{16}_\d{18}"
                                                        r"\.json' is not of group 'other'"):
            decode()


def test_a_member_that_does_not_decode_is_named():
    key = "00000000000000ff_000000000000000000"
    buf = b"".join(tario.member(f"{key}.json", b"[1, 2]"))
    with pytest.raises(tg.TarFormatError, match=rf"t\.tar: group at byte offset 0: member '{key}\.json' does "
                                                rf"not decode .*at byte offset 0: ValueError: JSON member holds a "
                                                rf"list"):
        codec.decode_group(buf, "t.tar", 0, b"00000000000000ff_")


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
_example = st.dictionaries(st.text(min_size=1, max_size=12), _json | st.binary(max_size=40), min_size=1,
                           max_size=5)


def _equal(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None)
@given(st.lists(_example, max_size=12), st.sampled_from(["g", 7, b"\x00id"]))
def test_encoded_examples_decode_back(examples, gid):
    buf, hexh, nbytes = _group_bytes(examples, gid)
    fast, general, tally = _both_paths(buf, hexh, gid)
    assert len(fast) == len(general) == len(examples)
    assert all(_equal(a, b) for a, b in zip(fast, examples))
    assert all(_equal(a, b) for a, b in zip(general, examples))
    assert tally == nbytes
