"""The columnar map step: a JSON Lines slice keyed by a column or a URL
domain, a block of lines at a time.

``map_slice`` (``engines/steps.py``) hands a slice here when it can
(``eligible``).  Each block of a few MB of whole lines is read at once and
split on newlines; each line is parsed by the scanner the per-example path
uses (so what is valid JSON and what its strings are cannot differ), its key
taken (``UrlDomainKey``: one regular expression for the URLs ``url_domain``
takes its fast path for, ``url_domain`` for the rest) and its words counted
(``codec.count_example_words``).  Group ids are canonicalised and hashed once
per distinct group, a run is sorted with numpy (a stable argsort of the
groups' ranks keeps input order inside a group), its tar headers are filled
in bulk (``_headers``) and its members written as (header, line, padding)
with no per-example copy: a member's data is the line as it is, as in the
per-example path.

The output is the bytes the per-example path writes: same sample keys,
headers, padding, counts, and runs in input order.  A block with a line the
columnar path does not take as it is (a blank line, a ``\\r``, blanks
around the object, invalid JSON, not an object, a missing or non-string key,
a key that is not valid Unicode, a URL ``url_domain`` refuses) is handed to
the per-example path (the buffered blocks are spilled first, so runs stay in
input order), which maps it or raises the same error, naming the file and
the line's byte offset.
"""
from __future__ import annotations

import re

import numpy as np

from .. import format as fmt
from ..codec import count_example_words, scan_json
from ..tario import BLOCK, _PADS, _TEMPLATE

BLOCK_BYTES = 4 << 20  # bytes of lines parsed at once
_BOM = b"\xef\xbb\xbf"


# ------------------------------------------------------------------ eligibility
def eligible(ctx, s, start) -> bool:
    """Whether ``map_slice`` may map slice ``s`` here."""
    from ..partitioners import ColumnKey, UrlDomainKey
    from ..sources import JsonLinesSlice

    return (type(s) is JsonLinesSlice and start is None and ctx.label_column is None
            and not ctx.source.image_fields and type(ctx.keyfn) in (ColumnKey, UrlDomainKey)
            and isinstance(ctx.keyfn.column, str) and 0 <= s.file_no < 100_000)


# ------------------------------------------------------------------ reading
def _blocks(s):
    """``(file offset, bytes)``: the slice's lines, a few MB of whole lines at
    a time (the last line of the file may lack its newline), read as
    ``_LineSlice.iter`` reads them: the lines whose first byte lies in
    ``[start, end)``."""
    import fsspec

    start, end = s.start, s.end
    stop = (1 << 62) if end is None else end
    with fsspec.open(s.url, "rb", compression="infer", **(s.storage_options or {})) as f:
        pos = 0
        if start and start <= 3 and f.read(3) == _BOM:
            pos = 3
        elif start:
            f.seek(start - 1)
            pos = start - 1 + len(f.readline())
        rest = b""
        while pos < stop:
            block = f.read(max(64 << 10, min(BLOCK_BYTES, stop - pos - len(rest))))
            if pos == 0 and block.startswith(_BOM):
                block = block[3:]
                pos = 3
            if block:
                data = rest + block if rest else block
                cut = data.rfind(b"\n")
                if cut < 0:
                    rest = data
                    continue
                chunk, rest = data[: cut + 1], data[cut + 1 :]
            else:
                chunk, rest = rest, b""
            if not chunk:
                return
            done = not block
            if pos + len(chunk) > stop:  # keep the lines that start before stop
                j = chunk.find(b"\n", stop - pos - 1)
                if j >= 0:
                    chunk = chunk[: j + 1]
                done = True
            yield pos, chunk
            pos += len(chunk)
            if done:
                return


class _Fallback(Exception):
    """This block goes the per-example way."""


def _rows(lines: list, keyfn):
    """Parse the block's lines as ``_LineSlice.iter`` does (the same JSON
    scanner) and return ``(group ids, words per line)``; _Fallback for any
    line the plain path treats specially (a blank line, a ``\\r``, blanks
    after the object, anything that is not a JSON object, a missing or
    non-string key)."""
    from ..partitioners import UrlDomainKey, url_domain

    scan = scan_json
    col = keyfn.column
    urls = type(keyfn) is UrlDomainKey
    plain = _PLAIN_URL.fullmatch
    ids: list = []
    words: list = []
    add_id, add_words = ids.append, words.append
    count = count_example_words
    try:
        for line in lines:
            text = line.decode("utf-8")
            ex, used = scan(text, 0)
            if used != len(text) or type(ex) is not dict:
                raise _Fallback
            v = ex[col]
            if type(v) is not str:
                raise _Fallback
            if urls:
                m = plain(v)
                v = m.group(1) if m is not None else url_domain(v)
            add_id(v)
            add_words(count(ex))
    except (ValueError, StopIteration, RecursionError, KeyError):  # UnicodeDecodeError is a ValueError
        raise _Fallback from None
    return ids, words


#: a URL that ``url_domain`` takes its fast path for (letters, "://", printable
#: ASCII without blanks), its domain (up to the first "/", "?" or "#") in group 1
_PLAIN_URL = re.compile(r"[A-Za-z]+://([!-\"$-.0->@-~]*)[!-~]*")


# ------------------------------------------------------------------ headers
_NAME_LEN = 40  # HHHHHHHHHHHHHHHH_FFFFFPPPPPPPPPPPPP.json
_POW10 = 10 ** np.arange(12, -1, -1, dtype=np.int64)
_OCT11 = 3 * np.arange(10, -1, -1, dtype=np.int64)
_OCT6 = 3 * np.arange(5, -1, -1, dtype=np.int64)
_TEMPLATE_ARR = np.frombuffer(bytes(_TEMPLATE), dtype=np.uint8)


def _headers(hexes: np.ndarray, fno: int, locs: np.ndarray, sizes: np.ndarray) -> bytes:
    """The ustar headers of members ``{hex}_{fno:05d}{loc:013d}.json`` of
    ``sizes`` bytes, one 512-byte block each (``tario._header``'s bytes).
    ``hexes`` is (n, 16) uint8 of the group hashes in hex."""
    n = len(locs)
    h = np.empty((n, BLOCK), dtype=np.uint8)
    h[:] = _TEMPLATE_ARR
    h[:, 0:16] = hexes
    h[:, 16] = ord("_")
    h[:, 17:22] = np.frombuffer(b"%05d" % fno, dtype=np.uint8)
    h[:, 22:35] = (locs[:, None] // _POW10) % 10 + 48
    h[:, 35:40] = np.frombuffer(b".json", dtype=np.uint8)
    h[:, 124:135] = ((sizes[:, None] >> _OCT11) & 7) + 48
    h[:, 135] = 0
    chk = h.sum(axis=1, dtype=np.int64)  # the checksum field holds spaces (template)
    h[:, 148:154] = ((chk[:, None] >> _OCT6) & 7) + 48
    h[:, 154] = 0
    h[:, 155] = 32
    return h.tobytes()


# ------------------------------------------------------------------ the map
class _Buffer:
    """Parsed blocks waiting for the next run, and the slice's groups."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.blocks: list = []  # (chunk, line starts, line ends, group index per line, words per line, file offset)
        self.size = 0
        self.canon: list = []  # per slice group: canonical bytes
        self.hashes: list = []
        self.hexes: list = []
        self.index: dict = {}  # group id -> slice group number

    def groups_of(self, ids: list) -> np.ndarray:
        """Slice group numbers of a list of str group ids."""
        index, seen = self.index, self.ctx.seen
        for gid in dict.fromkeys(ids):
            if gid in index:
                continue
            ck = (str, gid)
            hit = seen.get(ck)
            if hit is None:
                canon = gid.encode("utf-8")  # UnicodeEncodeError: checked by _rows' caller
                h = fmt.group_hash(canon)
                if len(seen) > _seen_max():
                    seen.clear()
                hit = seen[ck] = (canon, h, fmt.sample_key_prefix(h), "str")
            index[gid] = len(self.canon)
            self.canon.append(hit[0])
            self.hashes.append(hit[1])
            self.hexes.append(hit[2].encode("ascii"))
        return np.fromiter(map(index.__getitem__, ids), dtype=np.int64, count=len(ids))


def _seen_max() -> int:
    from .steps import _SEEN_MAX

    return _SEEN_MAX


def map_json(ctx, s, map_examples):
    """Map a JSON Lines slice (``eligible``); blocks the columnar path does not
    take go to ``map_examples(ctx, sub_slice, id_type, id_type_where)``, which
    returns a ``MapResult``.  Returns ``(runs, examples, id_type, id_type_where)``."""
    from dataclasses import replace

    buf = _Buffer(ctx)
    runs: list = []
    n = 0
    id_type = id_type_where = None
    budget = ctx.budget
    for pos, chunk in _blocks(s):
        lines = chunk.split(b"\n")
        if chunk.endswith(b"\n"):
            lines.pop()
        try:
            if id_type not in (None, "str") or pos + len(chunk) >= 10 ** 13:
                raise _Fallback  # the per-example path names the first key of the other type
            ids, words = _rows(lines, ctx.keyfn)
            groups = buf.groups_of(ids)
        except (_Fallback, UnicodeEncodeError):  # a lone surrogate: the per-example path names it
            if buf.blocks:
                runs.append(_spill(buf, ctx.spill_dir, s.file_no))
            sub = replace(s, start=pos, end=pos + len(chunk))
            res = map_examples(ctx, sub, id_type, id_type_where)
            runs.extend(res.runs)
            n += res.examples
            id_type, id_type_where = res.id_type, res.id_type_where
            continue
        if id_type is None:
            id_type, id_type_where = "str", s.where(pos)
        sizes = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
        locs = np.empty_like(sizes)
        locs[0] = pos
        np.cumsum(sizes[:-1] + 1, out=locs[1:])
        locs[1:] += pos
        buf.blocks.append((lines, groups, np.array(words, dtype=np.int64), locs, sizes))
        buf.size += len(chunk) + len(lines) * (BLOCK + 100)
        n += len(lines)
        if buf.size >= budget:
            runs.append(_spill(buf, ctx.spill_dir, s.file_no))
    if buf.blocks:
        runs.append(_spill(buf, ctx.spill_dir, s.file_no))
    return runs, n, id_type, id_type_where


def _spill(buf: _Buffer, spill_dir: str, fno: int):
    """Sort the buffered blocks by (group hash, group id, position) and write
    them as one run (the format of ``steps._write_run``)."""
    from .steps import _PIECE, _spill_file

    blocks = buf.blocks
    buf.blocks = []
    buf.size = 0
    groups = np.concatenate([b[1] for b in blocks])
    ng = len(buf.canon)
    # rank of each slice group in (hash, canon) order
    order_g = sorted(range(ng), key=lambda g: (buf.hashes[g], buf.canon[g]))
    rank = np.empty(ng, dtype=np.int64)
    rank[order_g] = np.arange(ng)
    order = np.argsort(rank[groups], kind="stable")  # rows are in input order: stable keeps it
    sgroups = groups[order]
    words = np.concatenate([b[2] for b in blocks])[order]
    locs = np.concatenate([b[3] for b in blocks])[order]
    sizes = np.concatenate([b[4] for b in blocks])[order]
    member_len = BLOCK + sizes + (-sizes % BLOCK)
    # group boundaries in the sorted rows
    cut = np.flatnonzero(np.diff(sgroups)) + 1
    gstart = np.concatenate(([0], cut))
    gend = np.concatenate((cut, [len(sgroups)]))
    g_words = np.add.reduceat(words, gstart)
    g_bytes = np.add.reduceat(sizes, gstart)
    g_blob = np.add.reduceat(member_len, gstart)
    hexes = np.frombuffer(b"".join(buf.hexes), dtype=np.uint8).reshape(ng, 16)
    # the members, in order: header, line, padding
    n = len(order)
    members: list = [None] * (3 * n)
    lines = [line for b in blocks for line in b[0]]
    members[1::3] = map(lines.__getitem__, order.tolist())
    del lines
    members[2::3] = map(_PADS.__getitem__, (sizes % BLOCK).tolist())
    step = 1 << 13
    for r in range(0, n, step):
        e = min(n, r + step)
        hb = _headers(hexes[sgroups[r:e]], fno, locs[r:e], sizes[r:e])
        members[3 * r : 3 * e : 3] = [hb[q : q + BLOCK] for q in range(0, len(hb), BLOCK)]
    pack = _PIECE.pack
    shift = fmt.BUCKET_SHIFT
    hashes, canons = buf.hashes, buf.canon

    def write(f):
        offsets = [0] * (fmt.NUM_BUCKETS + 1)
        bsizes: dict = {}
        pos = 0
        b = 0
        out: list = []
        pending = 0
        sl = sgroups.tolist()
        for i, j, gw, gb, blob_len in zip(gstart.tolist(), gend.tolist(), g_words.tolist(), g_bytes.tolist(),
                                          g_blob.tolist()):
            g = sl[i]
            h = hashes[g]
            canon = canons[g]
            bk = h >> shift
            while b <= bk:
                offsets[b] = pos
                b += 1
            bsizes[bk] = bsizes.get(bk, 0) + blob_len
            out.append(pack(h, len(canon), j - i, gw, gb, blob_len, 0))
            out.append(canon)
            out += members[3 * i : 3 * j]
            pos += _PIECE.size + len(canon) + blob_len
            pending += blob_len
            if pending >= 4 << 20:
                f.writelines(out)
                out = []
                pending = 0
        f.writelines(out)
        while b <= fmt.NUM_BUCKETS:
            offsets[b] = pos
            b += 1
        return offsets, bsizes

    return _spill_file(spill_dir, write)
