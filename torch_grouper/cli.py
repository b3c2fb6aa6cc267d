"""Command line (also ``python -m torch_grouper``)::

    torch-grouper partition SOURCE... OUTPUT (--key COLUMN | --url-domain COLUMN | --partitioner NAME ...)
    torch-grouper stats PATH [--plot PNG] [--json]
    torch-grouper show PATH GROUP_ID [--n N] [--width CHARS]
    torch-grouper plot PATH... [--sizes PNG] [--labels PNG] [--compare PNG]
    torch-grouper verify PATH [--snapshot ID]
    torch-grouper snapshots PATH
    torch-grouper vacuum PATH [--keep N] [--older-than SECONDS] [--dry-run]

``partition`` reads JSON Lines, Parquet, CSV or text files, or a Hugging
Face dataset (``--hf PATH``: saved with ``save_to_disk``, or a local dataset
script or folder ``datasets.load_dataset`` reads), and groups it by a column
(``--key``), by the host of a URL column (``--url-domain``), or with any
built-in partitioner and its parameters::

    $ torch-grouper partition --hf data/mnist out/mnist_dir --partitioner dirichlet \\
          --num-partitions 100 --partition-by label --alpha 0.5 --seed 42

Each constructor parameter of the partitioner is an option (``--alpha``,
``--min-partition-size``, ``--no-shuffle``, ...; ``ShardPartitioner``'s
``shard_size`` is ``--label-shard-size``), or ``--param NAME=VALUE``.

``main(argv)`` returns the exit status: 0; 1 when ``verify`` finds problems
or a command fails on its input (a message ``torch-grouper CMD: error: ...``
on stderr); 2 for bad arguments (argparse's usage message).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
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


# ------------------------------------------------------------ partitioners
def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


#: partitioners that take a Python function: not usable from the command line
_NOT_ON_THE_COMMAND_LINE = {"IdToSizeFncPartitioner": "it takes a Python function; use linear, square or exponential"}


def partitioner_classes() -> dict:
    """``{command-line name: class}`` of the built-in partitioners
    (``DirichletPartitioner`` is ``dirichlet``)."""
    from . import partitioners as P

    out = {}
    for name, cls in vars(P).items():
        if (isinstance(cls, type) and issubclass(cls, P.Partitioner) and cls is not P.Partitioner
                and not name.startswith("_") and name.endswith("Partitioner")
                and name not in _NOT_ON_THE_COMMAND_LINE):
            out[_kebab(name[: -len("Partitioner")])] = cls
    return dict(sorted(out.items()))


def _params_of(cls) -> dict:
    """``{name: inspect.Parameter}`` of a partitioner's constructor."""
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _flag(name: str) -> str:
    return "--label-shard-size" if name == "shard_size" else "--" + name.replace("_", "-")


def _float_or_floats(text: str):
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or comma-separated numbers: {text!r}") from None
    return vals[0] if len(vals) == 1 else vals


def _ints(text: str) -> list:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated integers: {text!r}") from None


def _seed(text: str):
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer or 'none': {text!r}") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _bool(text: str) -> bool:
    t = text.lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not true or false: {text!r}")


def _array(text: str):
    """A 2-D array: JSON text, or a .json / .npy file."""
    import numpy as np

    try:
        if text.endswith(".npy") and os.path.exists(text):
            return np.load(text, allow_pickle=False)
        if os.path.exists(text):
            with open(text) as f:
                text = f.read()
        return np.asarray(json.loads(text))
    except (ValueError, OSError) as e:
        raise argparse.ArgumentTypeError(f"not a JSON array or a .json / .npy file: {e}") from None


#: how the command line reads a partitioner parameter's value, by parameter name
_CONVERTERS = {"partition_sizes": _ints, "alpha": _float_or_floats, "seed": _seed, "strictness": _float,
               "distribution_array": _array, "partition_by": str, "mode": str, "class_assignment_mode": str}


_METAVARS = {"partition_sizes": "N,N,...", "alpha": "A[,A,...]", "partition_by": "COLUMN", "seed": "SEED",
             "distribution_array": "JSON|FILE", "mode": "MODE", "class_assignment_mode": "MODE"}


def _metavar(p: inspect.Parameter) -> str:
    return {_float: "X", _int: "N"}.get(_converter(p), "VALUE")


def _converter(p: inspect.Parameter):
    if p.name in _CONVERTERS:
        return _CONVERTERS[p.name]
    if isinstance(p.default, bool):
        return _bool
    if isinstance(p.default, float):
        return _float
    return _int


def _all_params() -> dict:
    """``{parameter name: (a Parameter of it, [partitioner names taking it])}``."""
    out: dict = {}
    for pname, cls in partitioner_classes().items():
        for n, p in _params_of(cls).items():
            out.setdefault(n, (p, []))[1].append(pname)
    return out


def _partitioner_from_args(p, args):
    """The partitioner the arguments name, with its parameters checked; a bad
    one exits with a usage message naming it."""
    classes = partitioner_classes()
    given = {n[3:]: v for n, v in vars(args).items() if n.startswith("pp_")}  # only those given
    if args.partitioner is None:
        if given or args.param:
            first = sorted(given)[0] if given else "--param"
            p.error(f"{_flag(first) if given else first} needs --partitioner")
        return None
    cls = classes[args.partitioner]
    params = _params_of(cls)
    shown = " ".join(_flag(n) for n in params)
    for item in args.param or []:
        name, eq, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or not name:
            p.error(f"--param {item!r}: expected NAME=VALUE")
        if name not in params:
            p.error(f"--param {name}: --partitioner {args.partitioner} has no parameter {name!r} "
                    f"(its parameters: {', '.join(params)})")
        if name in given:
            p.error(f"{name} is given twice ({_flag(name)} and --param {name}=...)")
        try:
            given[name] = _converter(params[name])(text)
        except argparse.ArgumentTypeError as e:
            p.error(f"--param {name}: {e}")
    for name in given:
        if name not in params:
            p.error(f"{_flag(name)} does not apply to --partitioner {args.partitioner} "
                    f"(it takes {shown})")
    missing = [n for n, q in params.items() if q.default is inspect.Parameter.empty and n not in given]
    if missing:
        p.error(f"--partitioner {args.partitioner} needs {' '.join(_flag(n) for n in missing)} "
                f"(it takes {shown})")
    try:
        return cls(**given)
    except (ValueError, TypeError) as e:
        p.error(f"--partitioner {args.partitioner}: {e}")


def _partitioner_help() -> str:
    lines = []
    for name, cls in partitioner_classes().items():
        parts = []
        for n, q in _params_of(cls).items():
            flag = _flag(n)
            parts.append(flag if q.default is inspect.Parameter.empty else f"[{flag}]")
        lines.append(f"  {name:<20} {cls.__name__}: {' '.join(parts)}")
    return "partitioners and their parameters ([...]: optional):\n" + "\n".join(lines)


# ------------------------------------------------------------ HF datasets
def _load_hf(p, path: str, split: str | None):
    """A datasets.Dataset / DatasetDict from a ``save_to_disk`` folder or a
    local dataset script / folder, read offline."""
    import datasets

    if not os.path.exists(path):
        p.error(f"--hf {path}: no such file or directory")
    saved = os.path.isdir(path) and any(os.path.exists(os.path.join(path, f))
                                        for f in ("dataset_dict.json", "state.json"))
    try:
        if saved:
            ds = datasets.load_from_disk(path)
        else:
            ds = datasets.load_dataset(path, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; the message names the cause
        p.error(f"--hf {path}: cannot load it as a dataset: {type(e).__name__}: {e}")
    if isinstance(ds, datasets.DatasetDict) and split is not None:
        if split not in ds:
            p.error(f"--split {split!r}: {path} has splits {list(ds)}")
        ds = ds[split]
    elif split is not None and saved:
        p.error(f"--split {split!r}: {path} is a single dataset (no splits)")
    return ds


# ------------------------------------------------------------ show
def _value_text(v, width: int) -> str:
    import numpy as np

    if isinstance(v, (bytes, bytearray)):
        s = f"<{len(v):,} bytes> {bytes(v[:16]).hex()}" + ("..." if len(v) > 16 else "")
    elif isinstance(v, np.ndarray):
        s = f"array(shape={v.shape}, dtype={v.dtype}) {np.array2string(v.ravel()[:8], threshold=8)}"
    elif isinstance(v, dict) and set(v) >= {"bytes"} and isinstance(v.get("bytes"), (bytes, bytearray)):
        s = f"<image/file {len(v['bytes']):,} bytes{', path ' + repr(v.get('path')) if v.get('path') else ''}>"
    elif isinstance(v, str):
        s = repr(v)
    else:
        s = repr(v)
    if len(s) > width:
        extra = f" ({len(v):,} chars)" if isinstance(v, str) else ""
        s = s[: max(width - 3 - len(extra), 10)] + "..." + extra
    return s


def _group_id_arg(ds, text: str):
    id_type = ds.manifest.get("group_id_type", "str")
    if id_type == "int":
        try:
            return int(text)
        except ValueError:
            raise KeyError(f"group id {text!r}: the group ids of {ds.path} are integers") from None
    if id_type == "bytes":
        if text.startswith("0x"):
            try:
                return bytes.fromhex(text[2:])
            except ValueError:
                raise KeyError(f"group id {text!r} is not hex after 0x") from None
        return text.encode()
    return text


def _show(args) -> None:
    from .dataset import GroupedDataset
    from .stats import id_text, natural_key

    ds = GroupedDataset(args.path)
    gid = _group_id_arg(ds, args.group_id)
    try:
        row = ds.position_of(gid)
    except KeyError:
        ids = sorted(ds.group_ids(), key=natural_key)
        some = ", ".join(id_text(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")
        raise KeyError(f"no group {args.group_id!r} in {args.path} ({len(ids):,} groups: {some})") from None
    g = ds.group_at(row)
    n = len(g)
    print(f"group {id_text(g.id)}: {n:,} examples, {g.num_bytes:,} bytes (showing {min(n, args.n)})")
    for i, ex in enumerate(g):
        if i >= args.n:
            break
        items = list(ex.items()) if isinstance(ex, dict) else [("", ex)]
        w = max((len(str(k)) for k, _ in items), default=0)
        for j, (k, v) in enumerate(items):
            lead = f"[{i}]" if j == 0 else ""
            print(f"{lead:<6}{str(k):<{w}}  {_value_text(v, args.width)}")


# ------------------------------------------------------------ main
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torch-grouper", description="Group-structured datasets for PyTorch.")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser(
        "partition", help="partition a dataset into per-group shards",
        usage="torch-grouper partition [-h] (SOURCE... OUTPUT | --hf PATH [--split NAME] OUTPUT)\n"
              "       (--key COLUMN | --url-domain COLUMN | --partitioner NAME [PARAMETERS])\n"
              "       [--label-column COLUMN] [options]",
        description="Partition files (JSON Lines, Parquet, CSV, text; globs and URLs) or a Hugging Face "
                    "dataset into per-group WebDataset shards at OUTPUT.",
        epilog=_partitioner_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("paths", nargs="+", metavar="SOURCE... OUTPUT", help="input files, then the output directory")
    a.add_argument("--hf", metavar="PATH", help="a Hugging Face dataset saved with save_to_disk, or a local "
                                                "dataset script or folder (read offline); then give only OUTPUT")
    a.add_argument("--split", help="with --hf: the split to partition (default: every split, as OUTPUT/SPLIT)")
    g = a.add_mutually_exclusive_group(required=True)
    g.add_argument("--key", metavar="COLUMN", help="column holding the group id")
    g.add_argument("--url-domain", metavar="COLUMN", help="group by the host of a URL column")
    g.add_argument("--partitioner", choices=list(partitioner_classes()), metavar="NAME",
                   help="a built-in partitioner (see below), with its parameters as options")
    a.add_argument("--label-column", metavar="COLUMN",
                   help="record per-group label counts and skew for this column (label partitioners: "
                        "their --partition-by column by default)")
    pp = a.add_argument_group("partitioner parameters (each applies to the partitioners listed)")
    for name, (q, owners) in sorted(_all_params().items()):
        kw = dict(dest="pp_" + name, default=argparse.SUPPRESS, help=f"{name} of: {', '.join(owners)}")
        if isinstance(q.default, bool) and name not in _CONVERTERS:
            pp.add_argument(_flag(name), action=argparse.BooleanOptionalAction, **kw)
        else:
            pp.add_argument(_flag(name), type=_converter(q), metavar=_METAVARS.get(name) or _metavar(q), **kw)
    pp.add_argument("--param", action="append", metavar="NAME=VALUE",
                    help="any parameter of the partitioner by its Python name (repeatable)")
    a.add_argument("--shuffle-seed", type=_int, default=None, metavar="SEED",
                   help="shuffle a --hf dataset with this seed first, as flwr-datasets' FederatedDataset does")
    a.add_argument("--workers", type=_positive_int, default=None, help="processes (default: CPU count)")
    a.add_argument("--shard-bytes", type=_positive_int, default=None, metavar="BYTES",
                   help=f"target bytes per tar shard (default {DEFAULT_SHARD_BYTES:,})")
    a.add_argument("--shard-size", type=_positive_int, default=None, help=argparse.SUPPRESS)  # deprecated name
    a.add_argument("--overwrite", action="store_true")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    s = sub.add_parser("stats", help="group statistics of a dataset (from its index), with its label skew")
    s.add_argument("path")
    s.add_argument("--plot", help="write a PNG of the group-size distribution")
    s.add_argument("--json", action="store_true")
    w = sub.add_parser("show", help="print the first examples of one group")
    w.add_argument("path")
    w.add_argument("group_id", help="the group's id (bytes ids: as text, or 0x + hex)")
    w.add_argument("--n", type=_positive_int, default=5, help="examples to print (default 5)")
    w.add_argument("--width", type=_positive_int, default=100, help="characters per value (default 100)")
    o = sub.add_parser("plot", help="write PNG plots: group sizes, label distribution, a comparison")
    o.add_argument("paths", nargs="+", metavar="PATH", help="a dataset (--compare: one or more)")
    o.add_argument("--sizes", metavar="PNG", help="histogram and CCDF of the group sizes")
    o.add_argument("--labels", metavar="PNG", help="label counts and shares per group")
    o.add_argument("--compare", metavar="PNG", help="the label distributions of all PATHs side by side")
    o.add_argument("--titles", nargs="+", metavar="TITLE", help="with --compare: one title per PATH")
    o.add_argument("--max-groups", type=_positive_int, default=None, metavar="N",
                   help="groups shown by id (default 50; 30 with --compare)")
    o.add_argument("--top-labels", type=_positive_int, default=18, metavar="K",
                   help="labels with a colour of their own; the rest are 'other' (default 18)")
    o.add_argument("--percent", action="store_true", help="--labels: shares of each group instead of counts")
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
    p.commands = dict(sub.choices)  # each command's parser, for its usage line in errors
    return p


def _partition(p, args) -> None:
    from .partitioners import UrlDomainKey
    from .pipeline import partition

    if args.shard_size is not None:
        if args.shard_bytes is not None:
            p.error("give --shard-bytes only (--shard-size is its deprecated name)")
        print("torch-grouper: --shard-size is deprecated; use --shard-bytes", file=sys.stderr)
        args.shard_bytes = args.shard_size
    if args.hf is not None:
        if len(args.paths) != 1:
            p.error(f"with --hf give only OUTPUT, got {len(args.paths)} paths: {args.paths}")
    elif len(args.paths) < 2:
        p.error("give SOURCE... OUTPUT (or --hf PATH OUTPUT)")
    if args.split is not None and args.hf is None:
        p.error("--split needs --hf")
    if args.shuffle_seed is not None and args.hf is None:
        p.error("--shuffle-seed needs --hf (files are read in order)")
    key = _partitioner_from_args(p, args)
    if key is None:
        key = UrlDomainKey(args.url_domain) if args.url_domain else args.key
    output = args.paths[-1]
    if args.hf is not None:
        src = _load_hf(p, args.hf, args.split)
    else:
        src = args.paths[:-1] if len(args.paths) > 2 else args.paths[0]
    res = partition(src, key, output, num_workers=args.workers,
                    shard_bytes=DEFAULT_SHARD_BYTES if args.shard_bytes is None else args.shard_bytes,
                    overwrite=args.overwrite, label_column=args.label_column, shuffle_seed=args.shuffle_seed,
                    progress=not args.quiet)
    for name, m in (res.items() if "num_examples" not in res else [(None, res)]):
        where = output if name is None else f"{output}/{name}"
        dropped = f", {m['num_dropped']:,} left out by the partitioner" if m.get("num_dropped") else ""
        print(f"{m['num_examples']:,} examples, {m['num_groups']:,} groups, {len(m['shards'])} shards "
              f"-> {where} ({m['elapsed_s']:.2f} s){dropped}")


def _plot(p, args) -> None:
    from .stats import plot_comparison_label_distribution, plot_group_sizes, plot_label_distribution

    if not (args.sizes or args.labels or args.compare):
        p.error("give --sizes PNG, --labels PNG or --compare PNG")
    if (args.sizes or args.labels) and len(args.paths) > 1:
        p.error(f"--sizes and --labels plot one dataset, got {len(args.paths)} paths (use --compare)")
    if args.titles is not None and (not args.compare or len(args.titles) != len(args.paths)):
        p.error(f"--titles needs --compare and one title per PATH ({len(args.paths)})")
    if args.sizes:
        print(f"sizes: {plot_group_sizes(args.paths[0], args.sizes)}")
    if args.labels:
        kw = {"max_groups": args.max_groups} if args.max_groups else {}
        print(f"labels: {plot_label_distribution(args.paths[0], args.labels, top_labels=args.top_labels, size_unit='percent' if args.percent else 'absolute', **kw)}")
    if args.compare:
        kw = {"max_groups": args.max_groups} if args.max_groups else {}
        print(f"compare: {plot_comparison_label_distribution(args.paths, args.compare, titles=args.titles, top_labels=args.top_labels, **kw)}")


def _run(p, args) -> int:
    if args.cmd == "partition":
        _partition(p, args)
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
    elif args.cmd == "show":
        _show(args)
    elif args.cmd == "plot":
        _plot(p, args)
    else:
        from .dataset import GroupedDataset
        from .stats import format_summary, plot_group_sizes, summary

        st = summary(GroupedDataset(args.path))
        print(json.dumps(st, indent=1) if args.json else format_summary(st))
        if args.plot:
            print(f"plot: {plot_group_sizes(args.path, args.plot)}")
    return 0


def main(argv=None) -> int:
    from .snapshots import ConcurrentCommitError

    p = _parser()
    args = p.parse_args(argv)
    try:
        return _run(p.commands[args.cmd], args)
    except (OSError, ValueError, KeyError, ConcurrentCommitError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"torch-grouper {args.cmd}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
