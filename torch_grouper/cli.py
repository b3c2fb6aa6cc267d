"""Command line: ``torch-grouper partition|stats|verify|snapshots|vacuum`` (also ``python -m torch_grouper``)."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="torch-grouper", description="Group-structured datasets for PyTorch.")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("partition", help="partition files into per-group shards")
    a.add_argument("source", nargs="+", help="JSONL / Parquet / CSV / text files, globs or URLs")
    a.add_argument("output")
    g = a.add_mutually_exclusive_group(required=True)
    g.add_argument("--key", help="column holding the group id")
    g.add_argument("--url-domain", metavar="COLUMN", help="group by the host of a URL column")
    a.add_argument("--workers", type=int, default=None)
    a.add_argument("--shard-size", type=int, default=256 << 20)
    a.add_argument("--overwrite", action="store_true")
    s = sub.add_parser("stats", help="group statistics of a dataset (from its index)")
    s.add_argument("path")
    s.add_argument("--plot", help="write a PNG of the group-size distribution")
    s.add_argument("--json", action="store_true")
    v = sub.add_parser("verify", help="check a dataset's files against its manifest")
    v.add_argument("path")
    v.add_argument("--snapshot", help="check this snapshot instead of the current one")
    h = sub.add_parser("snapshots", help="list a dataset's commits (oldest first)")
    h.add_argument("path")
    c = sub.add_parser("vacuum", help="remove old snapshots and those of writers that are gone")
    c.add_argument("path")
    c.add_argument("--keep", type=int, default=2, help="newest committed snapshots to keep (default 2)")
    c.add_argument("--older-than", type=float, default=0.0, metavar="SECONDS",
                   help="keep snapshots superseded less than this long ago (default 0)")
    c.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    args = p.parse_args(argv)

    import torch_grouper as tg
    from torch_grouper.stats import format_summary, plot_group_sizes, summary

    if args.cmd == "partition":
        key = tg.UrlDomainKey(args.url_domain) if args.url_domain else args.key
        src = args.source if len(args.source) > 1 else args.source[0]
        m = tg.partition(src, key, args.output, num_workers=args.workers, shard_size=args.shard_size,
                         overwrite=args.overwrite)
        print(f"{m['num_examples']:,} examples, {m['num_groups']:,} groups, {len(m['shards'])} shards "
              f"-> {args.output} ({m['elapsed_s']:.2f} s)")
    elif args.cmd == "snapshots":
        import time

        for e in tg.list_snapshots(args.path):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["committed_at"]))
            parts = f"  parts: {', '.join(e['parts'])}" if e["parts"] else ""
            print(f"{e['sequence']:>6}  {e['snapshot']}  {when}  "
                  f"{'available' if e['available'] else 'removed'}{parts}")
    elif args.cmd == "vacuum":
        removed = tg.vacuum(args.path, keep=args.keep, older_than=args.older_than, dry_run=args.dry_run)
        for sid in removed:
            print(f"{'would remove' if args.dry_run else 'removed'} snapshot {sid}")
        print(f"{args.path}: {len(removed)} snapshot(s) {'to remove' if args.dry_run else 'removed'}")
    elif args.cmd == "verify":
        problems = tg.verify(args.path, snapshot=args.snapshot)
        for line in problems:
            print(line)
        print(f"{args.path}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    else:
        st = summary(tg.GroupedDataset(args.path))
        print(json.dumps(st, indent=1) if args.json else format_summary(st))
        if args.plot:
            print(f"plot: {plot_group_sizes(args.path, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
