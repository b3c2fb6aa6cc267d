"""Minimal, fast POSIX tar (ustar + pax) writing and reading.

Python's ``tarfile`` builds a ``TarInfo`` object per member and is the
bottleneck when shards hold hundreds of thousands of small members
(benchmarks/partition_stream.py times plain webdataset, built on it).  What we write here is plain ustar that
``tarfile``, GNU tar, ``webdataset`` and ``datasets`` read; names longer than
100 bytes get a standard pax ``path`` record.

The reader accepts only regular files (plus the pax / GNU long-name records
that describe them).  Links, devices, directories and names that are
absolute or contain ``..`` are rejected with an error naming the byte offset.
"""
from __future__ import annotations

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)

# Fields of a ustar header block (POSIX.1-1988) that the reader looks at:
# byte offsets into the 512-byte block, and their ends.
NAME_OFFSET, NAME_END = 0, 100  # member name (NUL-padded)
SIZE_OFFSET, SIZE_END = 124, 136  # data size: 11 octal digits and a NUL (or GNU base-256)
CHECKSUM_OFFSET, CHECKSUM_END = 148, 156  # header checksum: octal; counted as 8 spaces itself
TYPEFLAG_OFFSET, TYPEFLAG_END = 156, 157  # b"0" or NUL: a regular file; b"x": pax record; b"L": GNU long name
MAGIC_OFFSET, MAGIC_END, MAGIC = 257, 262, b"ustar"  # the magic (then NUL or a space, and the version)
PREFIX_OFFSET, PREFIX_END = 345, 500  # name prefix (joined to the name with "/")


class TarFormatError(ValueError):
    """A shard is not a well-formed tar of regular files."""


class GroupMismatchError(TarFormatError):
    """A group read from a shard is not what the index says it is: a member
    whose sample key is not of the requested group, or another number of
    examples.  The index and the shards are from different datasets, or one
    of them was altered."""


def _template() -> tuple[bytearray, int]:
    h = bytearray(BLOCK)
    h[100:108] = b"0000644\0"  # mode
    h[108:116] = b"0000000\0"  # uid
    h[116:124] = b"0000000\0"  # gid
    h[136:148] = b"00000000000\0"  # mtime: 0, so output is reproducible
    h[148:156] = b"        "  # checksum placeholder (spaces)
    h[156:157] = b"0"  # regular file
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[329:337] = b"0000000\0"  # devmajor
    h[337:345] = b"0000000\0"  # devminor
    return h, sum(h)


_TEMPLATE, _TEMPLATE_SUM = _template()
_PADS = [b"\0" * ((BLOCK - i) % BLOCK) for i in range(BLOCK)]


def _size_field(size: int) -> bytes:
    if size < 0o77777777777:
        return b"%011o\0" % size
    # GNU base-256 for members of 8 GiB and more (read by tarfile and GNU tar)
    return bytes([0x80]) + size.to_bytes(11, "big")


_MID = bytes(_TEMPLATE[100:124])  # mode, uid, gid
_MTIME = bytes(_TEMPLATE[136:148])
_TAIL = {f: f + bytes(_TEMPLATE[157:BLOCK]) for f in (b"0", b"x")}

# A regular-file header as ``_header`` writes it, for the checked fast read
# (codec.decode_group): bytes [100:124] are TEMPLATE_MID, [136:148]
# TEMPLATE_MTIME and [156:512] TEMPLATE_TAIL (type flag "0", magic, version,
# devices, an empty name prefix); the name, size and checksum vary.  Its
# checksum is then ``_TEMPLATE_SUM - sum(TEMPLATE_MID) + sum(header[:SUMMED_END])``,
# and as those first 136 bytes sum to less than 65521, ``zlib.adler32`` of
# them gives that sum plus one exactly: checksum = ADLER_CHECKSUM_BASE +
# (adler32(header[:SUMMED_END]) & 0xFFFF), written as ``b"%06o\0 "``.
TEMPLATE_MID, TEMPLATE_MID_OFFSET = _MID, 100
TEMPLATE_MTIME, TEMPLATE_MTIME_OFFSET = _MTIME, 136
TEMPLATE_TAIL = _TAIL[b"0"]
SUMMED_END = 136
ADLER_CHECKSUM_BASE = _TEMPLATE_SUM - sum(_MID) - 1


def _header(name: bytes, size: int, typeflag: bytes = b"0") -> bytes:
    """A ustar header (name of at most 100 bytes), built by concatenation:
    this runs once per member written."""
    sf = b"%011o\0" % size if size < 0o77777777777 else _size_field(size)
    chk = _TEMPLATE_SUM + sum(name) + sum(sf) + typeflag[0] - 48
    return b"".join((name.ljust(100, b"\0"), _MID, sf, _MTIME, b"%06o\0 " % chk, _TAIL[typeflag]))


def member_bytes(name: str, data: bytes) -> bytes:
    """One tar member (header, data, padding) as one bytes object."""
    bname = name.encode("utf-8")
    n = len(data)
    if len(bname) <= 100:
        return b"".join((_header(bname, n), data, _PADS[n % BLOCK]))
    return b"".join(member(name, data))


def member(name: str, data: bytes) -> list[bytes]:
    """The byte chunks of one tar member (header, data, padding)."""
    bname = name.encode("utf-8")
    n = len(data)
    if len(bname) <= 100:
        return [_header(bname, n), data, _PADS[n % BLOCK]]
    rec = b" path=" + bname + b"\n"
    # the length prefix counts itself
    ln = len(rec) + 1
    while len(str(ln)) + len(rec) != ln:
        ln = len(str(ln)) + len(rec)
    pax = str(ln).encode() + rec
    return [
        _header(b"././@PaxHeader", len(pax), b"x"),
        pax,
        _PADS[len(pax) % BLOCK],
        _header(bname[:100], n),
        data,
        _PADS[n % BLOCK],
    ]


def _bad(where: str, offset: int, msg: str) -> TarFormatError:
    return TarFormatError(f"{where}: byte offset {offset}: {msg}")


def _parse_size(field: bytes, where: str, offset: int) -> int:
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    s = field.rstrip(b"\0 ").lstrip(b" ")
    try:
        return int(s, 8) if s else 0
    except ValueError:
        raise _bad(where, offset, f"corrupt tar header (size field {field!r})") from None


def check_name(name: str, where: str, offset: int) -> str:
    if not name or name.startswith("/") or ".." in name.split("/"):
        raise _bad(where, offset, f"unsafe member name {name!r}")
    return name


def walk(buf, where: str, base: int = 0, partial: bool = False):
    """Yield ``(unit start, name, data start, data end)`` for each regular-file
    member of a tar byte buffer; a unit is the member with the pax / GNU
    long-name records before it.

    ``base`` is the buffer's offset inside the shard, for error messages.
    Stops at the end-of-archive marker or the end of the buffer.  A member
    running past the end is an error (a truncated shard), unless ``partial``:
    then the walk just stops before its unit (a read window ends there).
    """
    pos = 0
    end = len(buf)
    longname = None
    unit = 0
    while pos + BLOCK <= end:
        h = buf[pos : pos + BLOCK]
        if h[MAGIC_OFFSET:MAGIC_END] != MAGIC:
            if not any(h):
                return
            raise _bad(where, base + pos, "not a tar header (corrupt or truncated shard)")
        size = _parse_size(h[SIZE_OFFSET:SIZE_END], where, base + pos)
        start = pos + BLOCK
        stop = start + size
        if stop > end:
            if partial:
                return
            raise _bad(where, base + pos, f"member of {size} bytes runs past the end of the data (truncated shard)")
        flag = h[TYPEFLAG_OFFSET:TYPEFLAG_END]
        if flag == b"0" or flag == b"\0":
            if longname is not None:
                name = longname
                longname = None
            else:
                name = bytes(h[NAME_OFFSET:NAME_END]).split(b"\0", 1)[0]
                prefix = bytes(h[PREFIX_OFFSET:PREFIX_END]).split(b"\0", 1)[0]
                if prefix:
                    name = prefix + b"/" + name
                name = name.decode("utf-8", "surrogateescape")
            if name[:1] == "/" or ".." in name:
                check_name(name, where, base + pos)
            yield unit, name, start, stop
            unit = stop + (-size) % BLOCK
        elif flag == b"x":
            longname = _pax_path(bytes(buf[start:stop]), where, base + pos) or longname
        elif flag == b"L":
            longname = bytes(buf[start:stop]).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif flag == b"g":
            pass
        else:
            raise _bad(where, base + pos, f"member type {flag!r} is not a regular file")
        pos = stop + (-size) % BLOCK


def iter_members(buf, where: str, base: int = 0):
    """Yield ``(name, data)`` for each regular-file member of a tar byte buffer
    holding whole members (see ``walk``)."""
    for _, name, start, stop in walk(buf, where, base):
        yield name, buf[start:stop]


def header_checksum_ok(header) -> bool:
    """Whether a 512-byte header block's stored checksum matches its bytes
    (the unsigned sum, or the signed sum some old writers stored)."""
    hdr = bytes(header)
    field = hdr[CHECKSUM_OFFSET:CHECKSUM_END].rstrip(b"\0 ").lstrip(b" ")
    summed = hdr[:CHECKSUM_OFFSET] + b"        " + hdr[CHECKSUM_END:]  # the checksum field counts as spaces
    unsigned = sum(summed)
    try:
        stored = int(field, 8)
    except ValueError:
        return False
    return stored == unsigned or stored == unsigned - 256 * sum(b > 127 for b in summed)


def checked_members(buf, where: str, base: int = 0, tally=None):
    """``(name, data, byte offset of its header)`` of each member, as
    ``iter_members``, after checking the header checksum of the member and of
    the record that starts its unit (a pax long name): a damaged name or size
    in a header is an error here, not a member read under another name.
    ``buf`` holds whole members only (a group, or a window cut at a sample
    boundary): bytes after the last member (an end-of-archive block, or
    records that are not members) are an error too, not members quietly left
    out.  ``tally[0]`` (a one-item list), when given, is increased by each
    member's data size."""
    done = 0
    for unit, name, start, stop in walk(buf, where, base):
        for h in {unit, start - BLOCK}:
            if not header_checksum_ok(buf[h : h + BLOCK]):
                raise _bad(where, base + h, "tar header checksum does not match (corrupt shard)")
        if tally is not None:
            tally[0] += stop - start
        yield name, buf[start:stop], base + start - BLOCK
        done = stop + (-(stop - start)) % BLOCK
    if done < len(buf):
        raise _bad(where, base + done, f"{len(buf) - done} bytes after the last member of the group are not a "
                                       f"member (corrupt shard, or an index that does not match it)")


def whole_samples(buf, where: str, base: int = 0) -> int:
    """Length of a prefix of ``buf`` (tar bytes starting at a member) holding
    only whole WebDataset samples (every member ``KEY.*`` of each sample key
    ``KEY``), from the headers alone.  Conservative: the last sample seen is
    left out, as the bytes after ``buf`` may continue it.  0 when ``buf`` does
    not hold one whole sample before the last."""
    sample_start = 0
    prev_key = None
    for unit, name, _, _ in walk(buf, where, base, partial=True):
        key = name.split(".", 1)[0]
        if key != prev_key:
            sample_start, prev_key = unit, key
    return sample_start


def _pax_path(data: bytes, where: str, offset: int):
    path = None
    i = 0
    while i < len(data):
        sp = data.find(b" ", i)
        if sp < 0:
            raise _bad(where, offset, "corrupt pax header")
        try:
            ln = int(data[i:sp])
        except ValueError:
            raise _bad(where, offset, "corrupt pax header") from None
        rec = data[sp + 1 : i + ln - 1]
        k, _, v = rec.partition(b"=")
        if k == b"path":
            path = v.decode("utf-8", "surrogateescape")
        i += ln
        if ln <= 0:
            raise _bad(where, offset, "corrupt pax header")
    return path
