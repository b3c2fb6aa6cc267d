"""Streaming through DataLoader workers vs in one process (examples/s and ratios).

    python benchmarks/loader.py /tmp/loader_ds --rounds 3 [--tree after=. --tree before=/work/main]

Make the dataset first (10,416 URL-domain groups of ~10 examples)::

    python -c "import torch_grouper as tg; tg.partition('/tmp/c4s_100k.jsonl', tg.UrlDomainKey('url'),
               '/tmp/loader_ds', num_workers=2, overwrite=True)"

Each measurement runs in a fresh process (``PYTHONPATH`` = the tree), one
epoch of the whole dataset, the consumer touching every field of every
example (it sums their lengths).  Modes, interleaved round by round (and tree
by tree): ``inproc`` (``for g in ds``), ``dl2`` (``DataLoader(ds,
num_workers=2, batch_size=None)``), ``sdl2`` (torchdata's
``StatefulDataLoader``, same arguments), and where the tree has
``GroupedDataset.loader``: ``loader2`` (``ds.loader(num_workers=2)``) and
``sloader2`` (``ds.loader(num_workers=2, stateful=True)``).  Printed: per
round each mode's examples/s, CPU seconds (this process + its workers) and
its rate relative to ``inproc`` of the same round and tree; then medians.
Checked reads stay on (the library default).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch_grouper as tg
from torch.utils.data import DataLoader
path, mode = sys.argv[1], sys.argv[2]
ds = tg.GroupedDataset(path)
if mode == "inproc":
    it = ds
elif mode == "dl2":
    it = DataLoader(ds, num_workers=2, batch_size=None)
elif mode == "sdl2":
    from torchdata.stateful_dataloader import StatefulDataLoader
    it = StatefulDataLoader(ds, num_workers=2, batch_size=None)
elif mode == "loader2":
    it = ds.loader(num_workers=2)
elif mode == "sloader2":
    it = ds.loader(num_workers=2, stateful=True)
def usage():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime
u0 = usage()
t0 = time.perf_counter()
n = total = 0
for g in it:
    for ex in g:
        n += 1
        for v in ex.values():
            total += len(v)
wall = time.perf_counter() - t0
del it
u1 = usage()
print(json.dumps({"examples": n, "chars": total, "wall": wall, "cpu_main": u1[0] - u0[0],
                  "cpu_workers": u1[1] - u0[1]}))
"""

MODES = ("inproc", "dl2", "sdl2", "loader2", "sloader2")


def has_loader(tree: str) -> bool:
    return os.path.exists(os.path.join(tree, "torch_grouper", "loader.py"))


def run(tree: str, path: str, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    out = subprocess.run([sys.executable, "-c", CHILD, path, mode], env=env, capture_output=True, text=True,
                         cwd="/tmp")
    if out.returncode:
        raise SystemExit(f"{tree} {mode} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tree", action="append", default=None,
                    help="NAME=PATH of a source tree to measure (repeatable; default: this tree)")
    ap.add_argument("--modes", default=",".join(MODES))
    args = ap.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [t.split("=", 1) for t in (args.tree or [f"this={here}"])]
    modes = args.modes.split(",")
    print(f"load average: {os.getloadavg()}, cpus: {os.cpu_count()}")
    results: dict = {}
    for r in range(args.rounds):
        for name, tree in trees:
            base = None
            for mode in modes:
                if mode in ("loader2", "sloader2") and not has_loader(tree):
                    continue
                m = run(tree, args.path, mode)
                rate = m["examples"] / m["wall"]
                if mode == "inproc":
                    base = rate
                ratio = rate / base if base else float("nan")
                results.setdefault((name, mode), []).append((rate, ratio, m["cpu_main"], m["cpu_workers"]))
                print(f"round {r} {name:>7} {mode:>8}: {rate:9.0f} examples/s  x{ratio:5.2f} of inproc  "
                      f"cpu main {m['cpu_main']:.2f} s + workers {m['cpu_workers']:.2f} s  "
                      f"({m['examples']} examples, {m['chars']} chars)", flush=True)
    print("\nmedians (ratio: per-round rate / inproc rate of the same round and tree)")
    for (name, mode), rows in results.items():
        rates, ratios, cm, cw = zip(*rows)
        print(f"{name:>7} {mode:>8}: {statistics.median(rates):9.0f} examples/s "
              f"[{min(rates):.0f}-{max(rates):.0f}]  x{statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}-{max(ratios):.2f}]  cpu {statistics.median(cm):.2f} + {statistics.median(cw):.2f} s")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
