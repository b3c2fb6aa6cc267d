"""Reading tar bytes (tario's walk, checked members, sample boundaries): what
``tario.member`` writes is walked back exactly, and damaged header fields are
errors naming the byte offset of the header."""
import re
import tarfile
import io

import pytest
from hypothesis import given, settings, strategies as st

from torch_grouper import tario
from torch_grouper.tario import BLOCK, END_OF_ARCHIVE, TarFormatError

_segment = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"), min_size=1,
                   max_size=60).filter(lambda s: s != "..")
_name = st.lists(_segment, min_size=1, max_size=4).map("/".join)  # some longer than 100 bytes: pax records
_members = st.lists(st.tuples(_name, st.binary(max_size=1200)), min_size=1, max_size=12)


def _write(members):
    """(tar bytes without the end-of-archive blocks, [(unit start, header offset, data start)])."""
    out, at = [], []
    pos = 0
    for name, data in members:
        chunks = tario.member(name, data)
        header = pos + sum(len(c) for c in chunks[:-3])  # the member's own header (after any pax record)
        at.append((pos, header, header + BLOCK))
        out += chunks
        pos += sum(len(c) for c in chunks)
    return b"".join(out), at


@settings(max_examples=150, deadline=None)
@given(_members)
def test_members_written_are_walked_back_exactly(members):
    buf, at = _write(members)
    walked = list(tario.walk(buf + END_OF_ARCHIVE, "t.tar"))
    assert [(name, buf[a:b]) for _, name, a, b in walked] == members
    assert [(unit, start) for unit, _, start, _ in walked] == [(u, s) for u, _, s in at]
    assert list(tario.iter_members(buf + END_OF_ARCHIVE, "t.tar")) == members
    checked = list(tario.checked_members(buf, "t.tar", 1000))
    assert [(n, bytes(d)) for n, d, _ in checked] == members
    assert [off for _, _, off in checked] == [1000 + h for _, h, _ in at]  # each header's offset in the shard
    for i in range(0, len(buf), BLOCK):  # every header we write has a right checksum
        if buf[i + tario.MAGIC_OFFSET:i + tario.MAGIC_END] == tario.MAGIC:
            assert tario.header_checksum_ok(buf[i:i + BLOCK])
    # what tarfile reads from the same bytes
    with tarfile.open(fileobj=io.BytesIO(buf + END_OF_ARCHIVE)) as t:
        assert [(m.name, t.extractfile(m).read()) for m in t.getmembers()] == [
            (n.rstrip("/"), d) for n, d in members]


def test_end_of_archive_in_a_group_is_not_a_member():
    buf, _ = _write([("k.json", b"{}")])
    with pytest.raises(TarFormatError, match=rf"t.tar: byte offset {len(buf)}: 1024 bytes after the last member"):
        list(tario.checked_members(buf + END_OF_ARCHIVE, "t.tar"))


@settings(max_examples=60, deadline=None)
@given(_members, st.data())
def test_corrupt_size_field_names_the_header_offset(members, data):
    buf, at = _write(members)
    i = data.draw(st.integers(0, len(members) - 1))
    _, header, _ = at[i]
    bad = bytearray(buf)
    bad[header + tario.SIZE_OFFSET:header + tario.SIZE_END] = b"0000000009x\0"
    with pytest.raises(TarFormatError, match=rf"^t\.tar: byte offset {500 + header}: corrupt tar header \(size field"):
        list(tario.walk(bytes(bad), "t.tar", 500))


@settings(max_examples=60, deadline=None)
@given(_members, st.data(), st.sampled_from(["checksum", "name", "size"]))
def test_damaged_header_fails_its_checksum_naming_the_offset(members, data, field):
    buf, at = _write(members)
    i = data.draw(st.integers(0, len(members) - 1))
    _, header, _ = at[i]
    bad = bytearray(buf)
    if field == "checksum":
        at_ = header + tario.CHECKSUM_OFFSET
        bad[at_:at_ + 6] = b"000000" if bad[at_:at_ + 6] != b"000000" else b"000001"
    elif field == "name":  # another name of the same length: walk alone would take it
        bad[header] = ord("A") if bad[header] != ord("A") else ord("B")
    else:  # a size one block smaller or larger: still octal, still inside the buffer maybe
        size = len(members[i][1])
        bad[header + tario.SIZE_OFFSET:header + tario.SIZE_END] = b"%011o\0" % (size ^ 1)
    with pytest.raises(TarFormatError, match=rf"^t\.tar: byte offset {7 + header}: "):
        list(tario.checked_members(bytes(bad), "t.tar", 7))


@pytest.mark.parametrize("record", ["pax", "member"])
def test_damaged_header_of_a_long_named_member(record):
    """A member with a pax ``path`` record has two headers: damage to either is found."""
    long_name = "k" * 16 + "_" + "0" * 18 + "." + "field" * 30
    buf, at = _write([("a.json", b"{}"), (long_name, b"payload")])
    unit, header, _ = at[1]
    assert header > unit  # the pax record comes first
    bad = bytearray(buf)
    at_ = unit if record == "pax" else header
    bad[at_ + 5] ^= 1  # a name byte
    with pytest.raises(TarFormatError, match=rf"^t\.tar: byte offset {at_}: tar header checksum does not match"):
        list(tario.checked_members(bytes(bad), "t.tar"))
    assert [n for n, _, _ in tario.checked_members(buf, "t.tar")] == ["a.json", long_name]


def test_truncated_member_names_its_header():
    buf, at = _write([("a.json", b"x" * 700), ("b.json", b"y" * 700)])
    cut = buf[: at[1][2] + 100]
    with pytest.raises(TarFormatError, match=rf"byte offset {at[1][1]}: member of 700 bytes runs past the end"):
        list(tario.walk(cut, "t.tar"))
    assert [n for _, n, _, _ in tario.walk(cut, "t.tar", partial=True)] == ["a.json"]


_samples = st.lists(st.lists(st.sampled_from(["json", "x.bin", "y.npy", "z." + "p" * 120]), min_size=1,
                             max_size=3, unique=True).map(sorted), min_size=1, max_size=8)


@settings(max_examples=100, deadline=None)
@given(_samples, st.data())
def test_whole_samples_cuts_at_a_sample_boundary(samples, data):
    """A window of tar bytes cut anywhere: the prefix returned holds whole
    samples only, and reaches the start of the last sample whose members are
    seen in the window (that one may go on past the cut)."""
    members, sample_of = [], []
    for k, exts in enumerate(samples):
        members += [(f"{k:016x}_{k:018d}.{e}", bytes([k]) * (k * 37 % 600)) for e in exts]
        sample_of += [k] * len(exts)
    buf, at = _write(members)
    sample_at = {}
    for m, k in enumerate(sample_of):
        sample_at.setdefault(k, at[m][0])
    cut = data.draw(st.integers(0, len(buf)))
    seen = [m for m in range(len(members)) if at[m][2] + len(members[m][1]) <= cut]  # whole in the window
    expected = sample_at[sample_of[seen[-1]]] if seen else 0
    assert tario.whole_samples(buf[:cut], "t.tar", 0) == expected
    if cut == len(buf):  # the last sample is left out: the next window may continue it
        assert expected == sample_at[len(samples) - 1]


def test_header_checksum_of_tarfile_headers():
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.USTAR_FORMAT) as t:
        info = tarfile.TarInfo("ünï.json")
        info.size = 2
        t.addfile(info, io.BytesIO(b"{}"))
    header = b.getvalue()[:BLOCK]
    assert tario.header_checksum_ok(header)
    assert not tario.header_checksum_ok(header[:10] + b"X" + header[11:])
    assert re.fullmatch(rb"[0-7 \0]{8}", header[tario.CHECKSUM_OFFSET:tario.CHECKSUM_END])
