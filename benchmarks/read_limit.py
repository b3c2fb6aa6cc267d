#!/usr/bin/env python3
"""In-process streaming against the bare limit of reading the same shards.

    python benchmarks/read_limit.py /tmp/read_ds                  # this tree
    python benchmarks/read_limit.py /tmp/read_ds --tree /work/main --tree .   # A/B, interleaved

The bare limit walks every shard of the dataset's snapshot with a minimal
Python tar walk (read the file, parse each header's size, slice the member)
and ``json.loads`` each member: no checks at all.  The in-process stream is
``for g in GroupedDataset(path): for ex in g`` with checked reads on (every
member's header checksum and sample key verified).  Both consumers touch
every field of every example (sum of string lengths), so lazy decoding
cannot flatter a ratio.  Each measurement runs in its own process; rounds
interleave trees and the bare walk; medians, ranges and CPU seconds are
printed, and the ratio in-process / bare per tree (median of per-round
ratios).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

STREAM = """
import json, resource, sys, time
import torch_grouper as tg
tg.GroupedDataset  # the read side (it imports torch) is imported on first use: not inside the timing
t0, c0 = time.perf_counter(), time.process_time()
ds = tg.GroupedDataset(sys.argv[1])
n = total = 0
for g in ds:
    for ex in g:
        n += 1
        for v in ex.values():
            total += len(v) if isinstance(v, str) else 1
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "examples": n,
                  "total": total, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BARE = """
import json, os, resource, sys, time
t0, c0 = time.perf_counter(), time.process_time()
root, shards = sys.argv[1], sys.argv[2:]
loads = json.loads
n = total = 0
for name in shards:
    with open(os.path.join(root, name), "rb") as f:
        buf = f.read()
    pos, end = 0, len(buf)
    while pos + 512 <= end:
        if buf[pos] == 0:
            break  # end-of-archive
        size = int(buf[pos + 124:pos + 135], 8)
        member = buf[pos:pos + 100].split(b"\\0", 1)[0]
        start = pos + 512
        if member.endswith(b".json"):
            ex = loads(buf[start:start + size])
            n += 1
            for v in ex.values():
                total += len(v) if isinstance(v, str) else 1
        pos = start + size + (-size) % 512
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "examples": n,
                  "total": total, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code, args, pythonpath=None):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                       cwd="/tmp")
    if r.returncode:
        sys.exit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="a grouped dataset (e.g. c4s_100k partitioned by URL domain)")
    ap.add_argument("--tree", action="append", help="source tree(s) to import torch_grouper from "
                                                    "(default: this one); several: A/B interleaved")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    trees = [os.path.abspath(t) for t in (a.tree or [ROOT])]
    sys.path.insert(0, trees[-1])
    import torch_grouper as tg

    ds = tg.GroupedDataset(a.path)
    shards = [s["path"] for s in ds.manifest["shards"]]
    res: dict = {t: [] for t in trees}
    bare: list = []
    for r in range(a.rounds):
        b = run(BARE, [ds.root, *shards])
        bare.append(b)
        for t in trees:
            s = run(STREAM, [a.path], t)
            if (s["examples"], s["total"]) != (b["examples"], b["total"]):
                sys.exit(f"{t}: streamed {s['examples']} examples ({s['total']} field chars), the bare walk "
                         f"{b['examples']} ({b['total']})")
            res[t].append(s)
        print(f"round {r + 1}: bare {b['seconds']:.3f} s; " + "; ".join(
            f"{os.path.basename(t) or t} {res[t][-1]['seconds']:.3f} s" for t in trees), flush=True)

    def line(label, runs, ratios=None):
        w = [x["seconds"] for x in runs]
        c = [x["cpu_s"] for x in runs]
        out = (f"{label:<34} wall median {statistics.median(w):7.3f} s (range {min(w):.3f}-{max(w):.3f}), "
               f"CPU median {statistics.median(c):7.3f} s, peak RSS {max(x['rss_mb'] for x in runs):.0f} MB")
        if ratios:
            out += (f"\n{'':<34} time / bare: median {statistics.median(ratios):.3f}x "
                    f"(range {min(ratios):.3f}-{max(ratios):.3f}), CPU / bare CPU median "
                    f"{statistics.median([x['cpu_s'] / y['cpu_s'] for x, y in zip(runs, bare)]):.3f}x")
        return out

    print(f"\n{bare[0]['examples']:,} examples in {len(shards)} shards, {a.rounds} rounds "
          f"(load: {os.getloadavg()[0]:.2f})")
    print(line("bare walk + json.loads", bare))
    for t in trees:
        ratios = [x["seconds"] / y["seconds"] for x, y in zip(res[t], bare)]
        print(line(f"in-process stream ({t})", res[t], ratios))


if __name__ == "__main__":
    main()
