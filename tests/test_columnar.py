"""The columnar map step (engines/columnar.py) writes the bytes of the
per-example path: same shards, index and manifest, same errors."""
import json
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torch_grouper as tg
from helpers import digest
from torch_grouper.codec import NON_ASCII_SPACE, count_words
from torch_grouper.engines import LocalEngine, columnar, steps


def _run(tmp_path, name, src, key, *, columnar_on=True, workers=1, monkeypatch=None, spy=None, **kw):
    """``("ok", digest)`` or ``("error", message)`` of one partition."""
    out = tmp_path / name
    kw.setdefault("engine", LocalEngine(workers, slice_bytes=kw.pop("slice_bytes", 1 << 20)))
    with monkeypatch.context() as m:
        if not columnar_on:
            m.setattr(columnar, "eligible", lambda *a: False)
        if spy is not None:
            real = columnar._spill

            def counted(*a):
                spy.append(1)
                return real(*a)
            m.setattr(columnar, "_spill", counted)
        try:
            tg.partition(str(src), key, out, progress=False, **kw)
        except (tg.PartitionError, ValueError) as e:
            return "error", str(e).replace(str(out), "OUT")
    return "ok", digest(out)


def _both(tmp_path, src, key, monkeypatch, name="", **kw):
    spy: list = []
    a = _run(tmp_path, "col" + name, src, key, monkeypatch=monkeypatch, spy=spy, **kw)
    b = _run(tmp_path, "ex" + name, src, key, columnar_on=False, monkeypatch=monkeypatch, **kw)
    return a, b, len(spy)


# ------------------------------------------------------------------ word count
def test_non_ascii_space_list_is_every_code_point_str_split_splits_on():
    assert NON_ASCII_SPACE == tuple(chr(c) for c in range(128, 0x110000) if chr(c).isspace())


_WS = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u200a\u200b\u2028\u2029\u202f\u205f\u3000\ufeff"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(list(_WS) + ["a", "é", "\u2019", "\U0001f600", "\ud800", "xy"]),
                          st.characters()), max_size=300))
def test_count_words_is_len_split_for_any_text(chars):
    s = "".join(chars)
    # short text is split; long text (64+ characters) is counted over its bytes
    for t in (s, s * (64 // max(1, len(s)) + 1), "x" * 64 + s, s + "y" * 64):
        assert count_words(t) == len(t.split()), t


# ------------------------------------------------------------------ bytes
def _corpus(path, n=3000, seed=0, extra=()):
    r = random.Random(seed)
    hosts = ["a.example.org", "B.example.com:8080", "ünï.example", "x" * 90, "h", "user@h.example"]
    lines = []
    for i in range(n):
        url = f"https://{r.choice(hosts)}{r.choice(['/', '?q=1', '#f', '', '/p/' + str(i)])}"
        text = " ".join(r.choice(["w", "wörd", "a\xa0b", "c\u3000d", "e\x1cf", "", "\u2028"]) for _ in range(r.randint(0, 30)))
        ex = {"url": url, "text": text, "n": i, "f": 0.5, "tags": ["x y", "z"], "sub": {"k": "v w"}}
        lines.append(json.dumps(ex, ensure_ascii=bool(i % 2)))
    for at, line in extra:
        lines.insert(at, line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_columnar_matches_per_example_on_urls_several_workers_and_slices(tmp_path, monkeypatch):
    src = _corpus(tmp_path / "c.jsonl")
    ref = _run(tmp_path, "ex", src, tg.UrlDomainKey("url"), columnar_on=False, monkeypatch=monkeypatch,
               slice_bytes=40_000, shard_bytes=100_000)
    assert ref[0] == "ok" and len(ref[1]) > 4
    for w in (1, 2, 3):
        spy: list = []
        got = _run(tmp_path, f"w{w}", src, tg.UrlDomainKey("url"), workers=w, monkeypatch=monkeypatch, spy=spy,
                   slice_bytes=40_000, shard_bytes=100_000)
        assert got == ref, w
        if w == 1:
            assert len(spy) >= 10  # the columnar path wrote the runs (one per slice)


def test_columnar_spilling_matches_in_memory(tmp_path, monkeypatch):
    src = _corpus(tmp_path / "c.jsonl", n=9000)
    monkeypatch.setattr(columnar, "BLOCK_BYTES", 64 << 10)  # many blocks per slice
    spy_small: list = []
    small = _run(tmp_path, "small", src, tg.UrlDomainKey("url"), monkeypatch=monkeypatch, spy=spy_small,
                 slice_bytes=64 << 20, memory_budget=1 << 20, shard_bytes=200_000)
    spy_big: list = []
    big = _run(tmp_path, "big", src, tg.UrlDomainKey("url"), monkeypatch=monkeypatch, spy=spy_big,
               slice_bytes=64 << 20, memory_budget=1 << 30, shard_bytes=200_000)
    ex = _run(tmp_path, "ex", src, tg.UrlDomainKey("url"), columnar_on=False, monkeypatch=monkeypatch,
              slice_bytes=64 << 20, shard_bytes=200_000)
    assert len(spy_big) == 2 and len(spy_small) >= 6  # one run per slice in memory; several spilled runs
    assert small == big == ex


def test_column_key_and_fallback_blocks_match(tmp_path, monkeypatch):
    # lines the columnar path hands to the per-example path, between ordinary ones
    odd = [(100, ""), (500, '  {"url": "http://sp.example/", "text": "lead"}'),
           (900, '{"url": "http://cr.example/", "text": "cr"}\r'),
           (1300, '{"url": "http://t.example/", "text": "trail"}   '),
           (1700, '{"url": "http://i.example/", "text": "dup", "text": "twice over"}'),
           (2100, '{"url": "http://[::1]:80/", "text": "v6"}'),
           (2500, '{"url": "HTTP://Case.Example/x", "text": "\\u00a0nb\\u0085sp"}')]
    src = _corpus(tmp_path / "c.jsonl", extra=odd)
    monkeypatch.setattr(columnar, "BLOCK_BYTES", 64 << 10)
    for i, key in enumerate((tg.UrlDomainKey("url"), "url", tg.ColumnKey("text"))):
        a, b, spills = _both(tmp_path, src, key, monkeypatch, str(i), slice_bytes=200_000, shard_bytes=150_000)
        assert a == b and a[0] == "ok", key
        assert spills >= 2, key  # columnar blocks before and after the per-example ones


@pytest.mark.parametrize("bad, message", [
    ('{"text": "no url"}', r"c\.jsonl: line at byte \d+: has no key column 'url' \(columns: text\)"),
    ('{"url": 5}', r"c\.jsonl: line at byte \d+: key function raised AttributeError"),
    ('{"url": "http://x.example/", "text": "x"', r"c\.jsonl: line at byte \d+: invalid JSON"),
    ('{"url": "http://x.example/", "text": "x"} 7', r"c\.jsonl: line at byte \d+: invalid JSON \(Extra data"),
    ('[1, 2]', r"c\.jsonl: line at byte \d+: a JSON Lines example must be an object, not list"),
    ('{"url": "http://\\ud800.example/"}', r"c\.jsonl: line at byte \d+: group key '\\ud800\.example' is not valid Unicode"),
    ('{"url": "http://[x y/"}', r"c\.jsonl: line at byte \d+: key function raised ValueError: Invalid IPv6 URL"),
    ('{"url": "http://[x/"}', None),  # url_domain's fast path: no error
    (b'{"url": "http://x.example/", "text": "\xff"}', r"c\.jsonl: line at byte \d+: invalid JSON"),
    (b'{"url": "http://x.example/", "text": "\xed\xa0\x80"}', None),  # json.loads reads it (surrogatepass)
])
def test_bad_line_gives_the_per_example_error(tmp_path, monkeypatch, bad, message):
    src = _corpus(tmp_path / "c.jsonl", n=1200)
    monkeypatch.setattr(columnar, "BLOCK_BYTES", 64 << 10)  # columnar blocks before and after the bad one
    raw = src.read_bytes().split(b"\n")
    raw.insert(700, bad if isinstance(bad, bytes) else bad.encode())
    src.write_bytes(b"\n".join(raw))
    a, b, _ = _both(tmp_path, src, tg.UrlDomainKey("url"), monkeypatch)
    assert a == b
    if message is None:
        assert a[0] == "ok"
    else:
        assert a[0] == "error"
        assert re.search(message, a[1]), a[1]


def test_mixed_key_types_error_names_both(tmp_path, monkeypatch):
    src = tmp_path / "c.jsonl"
    # int keys filling the first block exactly (per-example), then str keys in blocks the columnar path takes
    ints = [json.dumps({"k": i, "t": "x" * (63 - len(json.dumps({"k": i, "t": ""})))}) for i in range(1024)]
    assert sum(len(line) + 1 for line in ints) == 64 << 10
    src.write_text("".join(line + "\n" for line in ints) +
                   "".join(json.dumps({"k": str(i), "t": "x"}) + "\n" for i in range(8000)))
    monkeypatch.setattr(columnar, "BLOCK_BYTES", 64 << 10)
    a, b, _ = _both(tmp_path, src, "k", monkeypatch, slice_bytes=1 << 30)
    assert a == b and a[0] == "error"
    assert re.search(r"line at byte \d+: group key '0' is str but .*line at byte 0 gave a int key", a[1]), a[1]


def test_bulk_headers_are_tario_headers():
    import numpy as np

    from torch_grouper.tario import _header

    r = random.Random(1)
    for _ in range(200):
        h = r.getrandbits(64)
        loc, fno = r.randrange(10 ** 13), r.randrange(10 ** 5)
        size = r.choice([0, 1, 511, 512, 513, r.randrange(1 << 33)])
        name = f"{h:016x}_{fno:05d}{loc:013d}.json"
        got = columnar._headers(np.frombuffer(name[:16].encode(), np.uint8).reshape(1, 16), fno,
                                np.array([loc]), np.array([size]))
        assert got == _header(name.encode(), size), (name, size)


# ------------------------------------------------------------------ hypothesis
_keys = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "a/b", "..", "ünï", "\u2028", "x y", "\x00", "\ud800"]),
    st.builds(lambda s, h, rest: f"{s}://{h}{rest}", st.sampled_from(["http", "HTTPS", "a1", "", "x"]),
              st.text(max_size=8), st.sampled_from(["", "/", "?q", "#f", "/p q", "/é"])),
)
_values = st.one_of(st.text(max_size=20), st.integers(), st.floats(allow_nan=True), st.booleans(), st.none(),
                    st.lists(st.text(max_size=4), max_size=3), st.sampled_from(["\xa0 \x1c\u3000 w", "\x85x"]))


@st.composite
def _jsonl(draw):
    lines = []
    for _ in range(draw(st.integers(1, 25))):
        ex = draw(st.dictionaries(st.text(max_size=5), _values, max_size=4))
        if draw(st.integers(0, 9)):
            ex["u"] = draw(_keys)
        text = json.dumps(ex, ensure_ascii=draw(st.booleans()))
        text = draw(st.sampled_from(["{}", "{} ", " {}", "{}\r", "{}"])).replace("{}", text)
        lines.append(text)
    if draw(st.integers(0, 4)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", "  ", "[1]", "{", "7"])))
    return "\n".join(lines) + draw(st.sampled_from(["\n", ""]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_jsonl(), st.sampled_from(["url", "column"]))
def test_columnar_matches_per_example_on_generated_json_lines(tmp_path_factory, monkeypatch, text, kind):
    tmp = tmp_path_factory.mktemp("h")
    src = tmp / "g.jsonl"
    try:
        src.write_bytes(text.encode("utf-8", "surrogatepass"))
    except UnicodeEncodeError:  # pragma: no cover
        return
    key = tg.UrlDomainKey("u") if kind == "url" else "u"
    a, b, _ = _both(tmp, src, key, monkeypatch)
    assert a == b


def test_eligible_only_for_plain_keys_on_json_lines(tmp_path):
    src = _corpus(tmp_path / "c.jsonl", n=10)
    s = tg.sources.as_source(str(src)).slices[0]
    ctx = steps.MapContext(tg.sources.as_source(str(src)), tg.UrlDomainKey("url"), str(tmp_path), 1 << 20)
    assert columnar.eligible(ctx, s, None)
    assert not columnar.eligible(steps.MapContext(ctx.source, lambda e: e["url"], str(tmp_path), 1 << 20), s, None)
    assert not columnar.eligible(steps.MapContext(ctx.source, tg.UrlDomainKey("url"), str(tmp_path), 1 << 20,
                                                  label_column="n"), s, None)


def test_fallback_block_between_columnar_blocks_keeps_input_order(tmp_path, monkeypatch):
    # one group over the whole file; a per-example block in the middle of a slice
    lines = [json.dumps({"url": "http://one.example/", "text": f"t {i}"}) for i in range(20000)]
    lines[5000] = " " + lines[5000]  # leading blank: the per-example path takes that block
    src = tmp_path / "one.jsonl"
    src.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(columnar, "BLOCK_BYTES", 64 << 10)
    a, b, spills = _both(tmp_path, src, tg.UrlDomainKey("url"), monkeypatch, slice_bytes=1 << 30)
    assert a == b and a[0] == "ok"
    assert spills == 2  # the columnar blocks before and after it
