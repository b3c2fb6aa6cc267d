"""Examples <-> WebDataset sample members.

One example is one WebDataset sample.  Its members are:

* ``KEY.json`` (always present): every field whose value is JSON data
  (str, int, float incl. nan/inf, bool, None, lists, nested dicts), as one
  UTF-8 JSON object;
* ``KEY.<field>.bin`` for a ``bytes`` field;
* ``KEY.<field>.npy`` for a numpy array (``numpy.save`` format, never pickled);
* ``KEY.<field>.<png|jpg|...>`` for an image (its encoded bytes; a
  ``PIL.Image`` is encoded as PNG, an HF ``Image`` feature keeps its bytes).

Field names are percent-encoded in member names (no dots, no slashes), so a
name from the data never becomes a path.  Decoding is driven by the member
extension alone, so a shard is self-describing.  Nothing is ever unpickled.

Encoding: ``encode`` (one example -> its members).  Decoding, the mirror:
``decode_field`` (one non-JSON member -> a field), ``assemble`` (members of
consecutive samples -> example dicts, checked against the group's hash) and
``decode_group`` (the tar bytes of one group -> its examples: the streaming
hot path, a tight loop over JSON-only samples that hands anything else to
``tario.checked_members`` and ``assemble``).
"""
from __future__ import annotations

import io
import json
import re
import sys
from zlib import adler32
from urllib.parse import quote, unquote

import numpy as np

from .tario import (ADLER_CHECKSUM_BASE, BLOCK, CHECKSUM_OFFSET, NAME_END, SIZE_OFFSET, SUMMED_END, TEMPLATE_MID,
                    TEMPLATE_MID_OFFSET, TEMPLATE_MTIME, TEMPLATE_MTIME_OFFSET, TEMPLATE_TAIL, TYPEFLAG_OFFSET,
                    GroupMismatchError, TarFormatError, checked_members, member, member_bytes)

IMAGE_EXTS = ("png", "jpg", "jpeg", "gif", "webp", "bmp", "tiff")
PICKLE_EXTS = ("pickle", "pkl", "pyd", "pth", "pt")


class EncodeError(ValueError):
    """An example cannot be stored; the message names the field."""


def field_member(name: str, ext: str) -> str:
    if not isinstance(name, str) or not name:
        raise EncodeError(f"field name {name!r} must be a non-empty string")
    return quote(name, safe="").replace(".", "%2E") + "." + ext


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(o)


_encode_json = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=_json_default
).encode
_encode_json_ascii = json.JSONEncoder(separators=(",", ":"), default=_json_default).encode


# ASCII whitespace as str.split() sees it -> b" ", anything else -> b"x"
_WS_TABLE = bytes((32 if chr(i).isspace() else 120) if i < 128 else 120 for i in range(256))


#: the non-ASCII characters str.split() splits on (tests check the list against every code point)
NON_ASCII_SPACE = ("\x85", "\xa0", "\u1680", *map(chr, range(0x2000, 0x200B)), "\u2028", "\u2029", "\u202f",
                   "\u205f", "\u3000")
_NON_ASCII_WS = re.compile(b"|".join(re.escape(c.encode()) for c in NON_ASCII_SPACE))


def count_words(s: str) -> int:
    """``len(s.split())``, without building the list for long text: the
    words are counted over the UTF-8 bytes, a byte that is not whitespace
    after one that is (or at the start) starting a word.  The non-ASCII
    whitespace characters are blanked first (in UTF-8 their byte sequences
    occur only as those characters), so the count is exact for any text."""
    if len(s) < 64:
        return len(s.split())
    if s.isascii():
        t = s.encode("ascii").translate(_WS_TABLE)
    else:
        try:
            b = s.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            return len(s.split())
        t = b.translate(_WS_TABLE)
        if _NON_ASCII_WS.search(b) is not None:
            t = bytearray(t)
            for m in _NON_ASCII_WS.finditer(b):
                t[m.start():m.end()] = b" " * (m.end() - m.start())
    return t.count(b" x") + (t[:1] == b"x")


def count_example_words(ex: dict) -> int:
    """Words of an example: ``count_words`` over its top-level string fields."""
    return sum(count_words(v) for v in ex.values() if type(v) is str)


def _image_ext(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\0", b"MM\0*"):
        return "tiff"
    return "bin"


def _find_bad(value, path: str, keys_only: bool = False):
    """Locate the first value JSON cannot hold, or the first dict key that is
    not a str (which JSON would refuse or silently turn into one); returns
    (path, value, is_key) or None (``keys_only``: look for keys only).  Walks
    iteratively, so deep nesting is found, not a RecursionError; a cycle is
    walked once."""
    stack = [(value, path)]
    seen = set()
    while stack:
        value, path = stack.pop()
        if isinstance(value, (dict, list, tuple)):
            if id(value) in seen:
                continue
            seen.add(id(value))
        if isinstance(value, dict):
            items = []
            for k, v in value.items():
                if not isinstance(k, str):
                    return (path, k, True)
                items.append((v, f"{path}.{k}"))
            stack.extend(reversed(items))
        elif isinstance(value, (list, tuple)):
            if keys_only:  # only containers can hold a key
                stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(value)))
                             if isinstance(v, (dict, list, tuple)))
            else:
                stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(value))))
        elif keys_only or value is None or isinstance(value, (str, bool, int, float, np.generic)):
            continue
        else:
            return (path, value, False)
    return None


def _key_message(path: str, key) -> str:
    return (f"field {path.lstrip('.')!r} (key {key!r}): dict keys must be strings, not {type(key).__name__} "
            f"(JSON cannot store the key as it is)")


_CONTAINERS = (dict, list, tuple)
_SCALARS = frozenset((str, int, float, bool, type(None)))
_STR = frozenset((str,))


def _has_non_str_key(values) -> bool:
    """Whether a dict inside ``values`` (at any depth) has a key that is not a
    str.  Lists of plain scalars are passed over at C speed."""
    stack = [values]
    pop, extend = stack.pop, stack.extend
    while stack:
        v = pop()
        if isinstance(v, dict):
            if not _STR.issuperset(map(type, v)) and not all(isinstance(k, str) for k in v):
                return True
            v = v.values()
        if not _SCALARS.issuperset(map(type, v)):
            extend([x for x in v if isinstance(x, _CONTAINERS)])
    return False


def _depth_exceeds(value, limit: int) -> bool:
    """Whether lists / dicts nest deeper than ``limit`` (iterative)."""
    stack = [(value, 0)]
    while stack:
        value, d = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, (list, tuple)):
            continue
        if d >= limit:
            return True
        stack.extend((v, d + 1) for v in value)
    return False


def _encode_image(name: str, v) -> tuple[str, bytes]:
    if isinstance(v, dict):  # HF Image feature with decode=False
        data = v.get("bytes")
        if data is None and v.get("path"):
            import fsspec

            with fsspec.open(v["path"], "rb") as f:
                data = f.read()
        if not isinstance(data, (bytes, bytearray)):
            raise EncodeError(f"field {name!r}: image has neither bytes nor a readable path")
        data = bytes(data)
        return field_member(name, _image_ext(data)), data
    buf = io.BytesIO()
    v.save(buf, format="PNG")
    return field_member(name, "png"), buf.getvalue()


def encode(ex: dict, image_fields=(), raw_json: bytes | None = None):
    """Encode one example. Returns ``(members, num_bytes, num_words)``.

    ``members`` is a list of ``(suffix, data)``; the sample key is added by
    the writer.  ``raw_json`` is the example's JSON text when the source
    already holds it (JSON Lines), and is then stored as is.
    """
    if not isinstance(ex, dict):
        raise EncodeError(f"an example must be a dict, not {type(ex).__name__}")
    words = 0
    binary = None
    for k, v in ex.items():
        t = type(v)
        if t is str:
            words += count_words(v)
        elif t is bytes or t is bytearray or t is memoryview or t is np.ndarray or k in image_fields or (
            "PIL.Image" in sys.modules and isinstance(v, sys.modules["PIL.Image"].Image)
        ):
            if binary is None:
                binary = []
            binary.append(k)
    members = []
    if raw_json is not None and binary is None:
        members.append(("json", raw_json))
    else:
        jpart = ex if binary is None else {k: v for k, v in ex.items() if k not in binary}
        for k in jpart:
            if not isinstance(k, str):
                raise EncodeError(f"field name {k!r} is not a string")
        try:
            try:
                text = _encode_json(jpart).encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: keep them, escaped
                text = _encode_json_ascii(jpart).encode("ascii")
        except RecursionError:
            where = next((k for k, v in jpart.items() if _depth_exceeds(v, 500)), None)
            raise EncodeError(f"{'' if where is None else f'field {where!r}: '}value is nested too deeply "
                              f"to be stored as JSON") from None
        except (TypeError, ValueError) as e:
            bad = _find_bad(jpart, "")
            if bad is None:
                raise EncodeError(f"example cannot be stored as JSON: {e}") from None
            path, val, is_key = bad
            if is_key:
                raise EncodeError(_key_message(path, val)) from None
            raise EncodeError(
                f"field {path.lstrip('.')!r}: value of type {type(val).__name__} cannot be stored "
                f"(store str, int, float, bool, None, lists, dicts with str keys, bytes, "
                f"numpy arrays or images)"
            ) from None
        if text.find(b"{", 1) >= 0 and _has_non_str_key(jpart.values()):  # a nested dict (or a "{" in a str)
            bad = _find_bad(jpart, "", keys_only=True)
            if bad is not None:
                raise EncodeError(_key_message(bad[0], bad[1]))
        members.append(("json", text))
        for k in binary or ():
            v = ex[k]
            if k in image_fields or not isinstance(v, (bytes, bytearray, memoryview, np.ndarray)):
                members.append(_encode_image(k, v))
            elif isinstance(v, np.ndarray):
                if v.dtype.hasobject:
                    raise EncodeError(f"field {k!r}: numpy array of dtype object cannot be stored")
                buf = io.BytesIO()
                np.save(buf, v, allow_pickle=False)
                members.append((field_member(k, "npy"), buf.getvalue()))
            else:
                members.append((field_member(k, "bin"), bytes(v)))
    nbytes = 0
    for _, d in members:
        nbytes += len(d)
    return members, nbytes, words


def encode_sample(key: str, ex: dict, image_fields=(), raw_json: bytes | None = None):
    """One example as the bytes of its tar members under sample key ``key``.
    Returns ``(tar bytes, num_bytes, num_words)``; raises ``EncodeError``.

    With ``raw_json`` (the JSON text ``ex`` was parsed from, so it holds JSON
    values only), the example is the line as it is, one ``KEY.json`` member:
    the fast path of JSON Lines sources, the same bytes ``encode`` gives."""
    if raw_json is not None:
        return member_bytes(key + ".json", raw_json), len(raw_json), count_example_words(ex)
    members, nbytes, nwords = encode(ex, image_fields, raw_json)
    key += "."
    return b"".join(c for suffix, data in members for c in member(key + suffix, data)), nbytes, nwords


def decode_field(suffix: str, data):
    """Decode one non-JSON member into ``(field name, value)``."""
    name, _, ext = suffix.rpartition(".")
    if not name:
        name, ext = ext, "bin"
    name = unquote(name)
    if ext == "npy":
        # The header is checked against the member's size before anything is
        # allocated: a few bytes declaring a huge shape are refused, not tried.
        f = io.BytesIO(data)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format version {version} is not supported (1.0 and 2.0 are)")
        if dtype.hasobject:
            raise ValueError(".npy member holds an object array, which is not loaded (allow_pickle=False: "
                             "torch_grouper never unpickles shard data)")
        if any(d < 0 for d in shape):
            raise ValueError(f".npy header declares a negative shape {shape}")
        count = 1
        for d in shape:
            count *= d
        have = len(data) - f.tell()
        if count * dtype.itemsize != have:
            raise ValueError(f".npy header declares shape {shape} of {dtype} ({count * dtype.itemsize} bytes), "
                             f"but the member holds {have} bytes of data")
        arr = np.ndarray(count, dtype=dtype)  # as numpy.load does (zero-width dtypes included)
        if dtype.itemsize:
            arr[:] = np.frombuffer(data, dtype=dtype, count=count, offset=f.tell())
        return name, arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)
    if ext in PICKLE_EXTS:
        raise ValueError(f"member type .{ext} is a pickle; torch_grouper never unpickles shard data")
    return name, bytes(data)


# ------------------------------------------------------------------ assembling examples
#: ``scan_json(text, 0)`` -> (object, end): one JSON value from the start of
#: ``text`` (``json.JSONDecoder.scan_once``), without ``json.loads``' checks.
scan_json = json.JSONDecoder().scan_once
_loads = json.loads


def assemble(members, where: str = "", base: int = 0, hexh: bytes | None = None, gid=None):
    """Group consecutive members with one sample key into example dicts.

    ``members`` yields ``(name, data)`` or ``(name, data, byte offset)``.
    With ``hexh`` (the group's hash and ``_``), a member whose sample key
    does not start with it raises GroupMismatchError.  A member that does not
    decode (whatever the error) raises TarFormatError naming the shard, the
    byte offset and the member."""
    cur = None
    ex = None
    prefix = None if hexh is None else hexh.decode("ascii")
    for name, data, *at in members:
        off = at[0] if at else base
        dot = name.find(".")
        if dot <= 0:
            raise TarFormatError(f"{where}: group at byte offset {base}: member {name!r} at byte offset {off} "
                                 f"has no KEY.EXT name")
        key = name[:dot]
        suffix = name[dot + 1 :]
        if key != cur:
            if prefix is not None and not key.startswith(prefix):
                raise GroupMismatchError(
                    f"{where}: byte offset {off}: member {name!r} is not of group {gid!r} (its sample key "
                    f"does not start with the group's hash {prefix[:16]}): the index does not match the "
                    f"shard (a mixed-up or altered dataset)")
            if ex is not None:
                yield ex
            cur = key
            ex = None
        try:
            if suffix == "json":
                obj = _loads(data if type(data) is bytes else bytes(data))
                if type(obj) is not dict:
                    raise ValueError(f"JSON member holds a {type(obj).__name__}, not an object")
                ex = obj if ex is None else {**obj, **ex}
            else:
                if ex is None:
                    ex = {}
                k, v = decode_field(suffix, data)
                ex[k] = v
        except Exception as e:  # ValueError, MemoryError, RecursionError...: all name the member
            raise TarFormatError(f"{where}: group at byte offset {base}: member {name!r} does not decode "
                                 f"(corrupt data?) at byte offset {off}: {type(e).__name__}: {e}") from None
    if ex is not None:
        yield ex


def decode_group(buf: bytes, where: str, base: int, hexh: bytes, gid=None, tally=None) -> list:
    """All examples of group ``gid`` held in memory (the hot path of streaming).

    Equivalent to ``list(assemble(tario.checked_members(buf, ...), where,
    base, hexh, gid))`` in one tight loop for the common case (one
    ``KEY.json`` member per example whose key starts with ``hexh``, the
    group's hash and ``_``, under a header as this library writes it); from
    the first member that is anything else it takes the general path, which
    validates and names the byte offset of any damage (GroupMismatchError
    for a member of another group).  The tight loop checks every header in
    full too: its bytes outside the name, size and checksum fields must be
    the writer's (``tario.TEMPLATE_*``), and its checksum must match (the
    sum of its first ``tario.SUMMED_END`` bytes from one ``zlib.adler32``
    call, see ``tario.ADLER_CHECKSUM_BASE``); a header that fails either is handed to the
    general path, which raises on a bad checksum.  ``tally[0]`` (a one-item
    list) is increased by the bytes of member data decoded.
    """
    out = []
    append = out.append
    pos = 0
    end = len(buf)
    scan = scan_json
    startswith, endswith, find = buf.startswith, buf.endswith, buf.find
    # the fixed parts of a header as this library writes it (see tario._header)
    tail, tail_at = TEMPLATE_TAIL, TYPEFLAG_OFFSET
    mid, mid_at, mtime, mtime_at = TEMPLATE_MID, TEMPLATE_MID_OFFSET, TEMPLATE_MTIME, TEMPLATE_MTIME_OFFSET
    chk_at, chk_base, summed = CHECKSUM_OFFSET, ADLER_CHECKSUM_BASE, SUMMED_END
    size_at, name_end = SIZE_OFFSET, NAME_END
    size_end = size_at + 11  # the 11 octal digits (a size of 8 GiB or more is not this path's)
    block = BLOCK
    total = 0
    try:
        while pos + block <= end:
            # startswith(x, at) rather than slices: no new bytes object per member.  The tail holds
            # the type flag (a regular file), the magic and version and an empty name prefix.
            if not (startswith(tail, pos + tail_at) and startswith(hexh, pos) and startswith(mid, pos + mid_at)
                    and startswith(mtime, pos + mtime_at)):
                break  # not a plain member of this group as written here: the general path names it
            if not startswith(b"%06o\0 " % (chk_base + (adler32(buf[pos:pos + summed]) & 0xFFFF)), pos + chk_at):
                break  # checksum: the general path checks it the long way and names the header
            name_stop = find(b"\0", pos, pos + name_end)
            if name_stop < 0 or not endswith(b".json", pos, name_stop) or find(b"/", pos, name_stop) >= 0:
                break
            size = int(buf[pos + size_at : pos + size_end], 8)
            data_end = pos + block + size
            nxt = data_end + (-size) % block
            if data_end > end:
                break
            if nxt < end and buf[nxt]:  # another member of this example follows?
                if buf[nxt + tail_at] not in (48, 0):
                    break  # a pax / long-name record: its member's key is not in this header
                key = buf[pos : name_stop - 4]  # "KEY."
                if buf[nxt : nxt + len(key)] == key:
                    break
            text = buf[pos + block : data_end].decode("utf-8")
            obj, stop = scan(text, 0)
            if stop != len(text) or type(obj) is not dict:
                break
            append(obj)
            total += size
            pos = nxt
        else:
            if tally is not None:
                tally[0] += total
            return out
    except Exception:  # anything unexpected: the general path validates and names it
        pass
    if tally is not None:
        tally[0] += total
    out.extend(assemble(checked_members(buf[pos:], where, base + pos, tally), where, base, hexh, gid))
    return out
