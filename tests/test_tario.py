"""Our tar writer/reader agree with tarfile, and hostile tar members are rejected."""
import io
import tarfile

import pytest

from torch_grouper.tario import TarFormatError, iter_members, member, END_OF_ARCHIVE


def build(entries):
    return b"".join(c for name, data in entries for c in member(name, data)) + END_OF_ARCHIVE


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 70_000])
def test_tarfile_reads_what_we_write(size):
    long = "k" * 90 + "." + "f%2E" * 20 + ".bin"  # > 100 bytes: pax path record
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    raw = build([("a_1.json", b"{}"), (long, data), ("b_2.txt", b"hi")])
    assert len(raw) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        names = t.getnames()
        assert names == ["a_1.json", long, "b_2.txt"]
        assert t.extractfile(long).read() == data
    assert [(n, bytes(d)) for n, d in iter_members(raw, "x.tar")] == [("a_1.json", b"{}"), (long, data), ("b_2.txt", b"hi")]


def test_we_read_what_tarfile_writes():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data in [("k1.json", b"{}"), ("k" * 150 + ".bin", b"long")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    got = [(n, bytes(d)) for n, d in iter_members(buf.getvalue(), "x.tar")]
    assert got == [("k1.json", b"{}"), ("k" * 150 + ".bin", b"long")]


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_non_regular_members_rejected(kind):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        t.addfile(tarfile.TarInfo("ok.json"), io.BytesIO(b""))
        info = tarfile.TarInfo("evil")
        info.type = kind
        info.linkname = "/etc/passwd"
        t.addfile(info)
    with pytest.raises(TarFormatError, match=r"x\.tar: byte offset 512: member type .* is not a regular file"):
        list(iter_members(buf.getvalue(), "x.tar"))


@pytest.mark.parametrize("name", ["/abs.json", "../up.json", "a/../../b.json"])
def test_unsafe_names_rejected(name):
    raw = build([(name, b"{}")])
    with pytest.raises(TarFormatError, match="unsafe member name"):
        list(iter_members(raw, "x.tar"))


def test_truncated_and_garbage():
    raw = build([("a.json", b"{}" * 600)])
    with pytest.raises(TarFormatError, match=r"x\.tar: byte offset 0: member of 1200 bytes runs past the end"):
        list(iter_members(raw[:900], "x.tar"))
    with pytest.raises(TarFormatError, match=r"x\.tar: byte offset 100: not a tar header"):
        list(iter_members(b"\x01" * 512, "x.tar", base=100))


def test_word_count_matches_str_split():
    from torch_grouper.codec import count_words, encode

    cases = ["", " ", "a", " a b ", "a\x1cb\x1fc", "\t\na  b\r\n\x0b\x0c", "x" * 70 + " y" * 40,
             "wörds with  ünïcode\u3000and\xa0nbsp", "one" * 30, "a b c " * 20, " a b c" * 20,
             "a  b c" * 20, "a b\tc " * 20, "x y" * 40, "a\x1fb " * 30]
    for s in cases:
        assert count_words(s) == len(s.split()), s
        assert encode({"t": s})[2] == len(s.split()), s
