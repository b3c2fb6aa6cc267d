#!/usr/bin/env python3
"""The main job: partition FedShakespeare, stream every group back, print
statistics, and plot the group-size distribution.  Progress bars go to
stderr and are closed (at their final counts) before each summary line is
printed, and every line is flushed at once, so a log of both streams reads
in order.

    python examples/fedshakespeare.py --out out/fedshakespeare --plot out/fedshakespeare_group_sizes.png
"""
import argparse
import functools
import os
import time

from torch.utils.data import DataLoader

import torch_grouper as tg
from torch_grouper.stats import format_summary, plot_group_sizes, summary

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "fedshakespeare", "fedshakespeare.jsonl.gz")
print = functools.partial(print, flush=True)  # noqa: A001 - in order with the bars on stderr


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=DATA)
    p.add_argument("--out", default="out/fedshakespeare")
    p.add_argument("--plot", default="out/fedshakespeare_group_sizes.png")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()

    t0 = time.perf_counter()
    m = tg.partition(a.source, key=lambda ex: f"{ex['play']}/{ex['speaker']}", output=a.out,
                     num_workers=a.workers, overwrite=True, shard_bytes=1 << 20)
    t1 = time.perf_counter()
    print(f"partitioned {m['num_examples']:,} speech turns into {m['num_groups']:,} groups "
          f"({len(m['shards'])} shards) at {a.out} in {t1 - t0:.2f} s")

    ds = tg.GroupedDataset(a.out)
    groups = examples = chars = 0
    biggest = None
    for g in DataLoader(ds, batch_size=None, num_workers=a.workers):
        groups += 1
        for ex in g:
            examples += 1
            chars += len(ex["text"])
        if biggest is None or len(g) > len(biggest[1]):
            biggest = (g.id, g.examples())
    t2 = time.perf_counter()
    assert groups == len(ds) and examples == ds.num_examples, "stream lost or duplicated data"
    print(f"streamed {groups:,} groups / {examples:,} examples / {chars:,} characters with "
          f"{a.workers} DataLoader workers in {t2 - t1:.2f} s ({examples / (t2 - t1):,.0f} examples/s)")
    gid, exs = biggest
    print(f"largest group: {gid!r} with {len(exs)} turns; first: {exs[0]['text'][:60]!r}")
    print(format_summary(summary(ds)))
    os.makedirs(os.path.dirname(os.path.abspath(a.plot)), exist_ok=True)
    print(f"plot: {plot_group_sizes(ds, a.plot, title='FedShakespeare')}")


if __name__ == "__main__":
    main()
