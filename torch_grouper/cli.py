"""Command line (also ``python -m torch_grouper``)::

    torch-grouper partition SOURCE... OUTPUT (--key COLUMN | --url-domain COLUMN) [--shard-bytes N]
    torch-grouper stats PATH [--plot PNG] [--json]
    torch-grouper verify PATH [--snapshot ID]
    torch-grouper snapshots PATH
    torch-grouper vacuum PATH [--keep N] [--older-than SECONDS] [--dry-run]

``main(argv)`` returns the exit status: 0, 1 when ``verify`` finds problems,
2 for bad arguments (argparse's usage message).
"""
from __future__ import annotations

import argparse
import json
import sys

from .pipeline import DEFAULT_SHARD_BYTES


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="torch-grouper", description="Group-structured datasets for PyTorch.")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("partition", help="partition files into per-group shards")
    a.add_argument("source", nargs="+", help="JSONL / Parquet / CSV / text files, globs or URLs")
    a.add_argument("output")
    g = a.add_mutually_exclusive_group(required=True)
    g.add_argument("--key", help="column holding the group id")
    g.add_argument("--url-domain", metavar="COLUMN", help="group by the host of a URL column")
    a.add_argument("--workers", type=_positive_int, default=None, help="processes (default: CPU count)")
    a.add_argument("--shard-bytes", type=_positive_int, default=None, metavar="BYTES",
                   help=f"target bytes per tar shard (default {DEFAULT_SHARD_BYTES:,})")
    a.add_argument("--shard-size", type=_positive_int, default=None, help=argparse.SUPPRESS)  # deprecated name
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
    c.add_argument("--keep", type=_positive_int, default=2, help="newest committed snapshots to keep (default 2)")
    c.add_argument("--older-than", type=float, default=0.0, metavar="SECONDS",
                   help="keep snapshots superseded less than this long ago (default 0)")
    c.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    args = p.parse_args(argv)

    if args.cmd == "partition":
        from .partitioners import UrlDomainKey
        from .pipeline import partition

        if args.shard_size is not None:
            if args.shard_bytes is not None:
                p.error("partition: give --shard-bytes only (--shard-size is its deprecated name)")
            print("torch-grouper: --shard-size is deprecated; use --shard-bytes", file=sys.stderr)
            args.shard_bytes = args.shard_size
        key = UrlDomainKey(args.url_domain) if args.url_domain else args.key
        src = args.source if len(args.source) > 1 else args.source[0]
        m = partition(src, key, args.output, num_workers=args.workers,
                      shard_bytes=DEFAULT_SHARD_BYTES if args.shard_bytes is None else args.shard_bytes,
                      overwrite=args.overwrite)
        print(f"{m['num_examples']:,} examples, {m['num_groups']:,} groups, {len(m['shards'])} shards "
              f"-> {args.output} ({m['elapsed_s']:.2f} s)")
    elif args.cmd == "snapshots":
        import time

        from .snapshots import list_snapshots

        for e in list_snapshots(args.path):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["committed_at"]))
            parts = f"  parts: {', '.join(e['parts'])}" if e["parts"] else ""
            print(f"{e['sequence']:>6}  {e['snapshot']}  {when}  "
                  f"{'available' if e['available'] else 'removed'}{parts}")
    elif args.cmd == "vacuum":
        from .snapshots import vacuum

        removed = vacuum(args.path, keep=args.keep, older_than=args.older_than, dry_run=args.dry_run)
        for sid in removed:
            print(f"{'would remove' if args.dry_run else 'removed'} snapshot {sid}")
        print(f"{args.path}: {len(removed)} snapshot(s) {'to remove' if args.dry_run else 'removed'}")
    elif args.cmd == "verify":
        from .verify import verify

        problems = verify(args.path, snapshot=args.snapshot)
        for line in problems:
            print(line)
        print(f"{args.path}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    else:
        from .dataset import GroupedDataset
        from .stats import format_summary, plot_group_sizes, summary

        st = summary(GroupedDataset(args.path))
        print(json.dumps(st, indent=1) if args.json else format_summary(st))
        if args.plot:
            print(f"plot: {plot_group_sizes(args.path, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
