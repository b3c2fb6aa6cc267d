#!/usr/bin/env python3
"""Partitioners against flwr-datasets 0.6.1 on the same labelled data, in one run.

    python benchmarks/partitioners.py                       # 1M examples, 1,000 Dirichlet groups
    python benchmarks/partitioners.py --n 200000 --parts 100

For DirichletPartitioner (and, on the first 100,000 rows, Pathological, Shard,
InnerDirichlet and Continuous) it builds the partitions with flwr-datasets (in the
virtual environment of ../shared/bench/README.md) and with torch_grouper, and
prints:
  * whether the two give the same partitions: sizes and per-partition label
    counts, compared exactly;
  * the mean Hellinger distance of each partition's label distribution to
    the global one, for both;
  * time: flwr-datasets computing the assignment and materialising every
    partition (load_partition for each id), against torch_grouper assigning
    and writing every example into shards; peak RSS of both.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

FLWR = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    import datasets
    from flwr_datasets import partitioner as P
    datasets.disable_progress_bars()
    path, spec = sys.argv[1], json.loads(sys.argv[2])
    ds = datasets.load_dataset("parquet", data_files=path, split="train", cache_dir=sys.argv[3])
    if spec["cls"].startswith("Vertical"):
        part = getattr(P, spec["cls"])(**spec["args"])
        part.dataset = ds
        print(json.dumps({"columns": [part.load_partition(p).column_names for p in range(part.num_partitions)]}))
        sys.exit(0)
    args = dict(spec["args"])
    if "distribution_array" in args:
        args["distribution_array"] = np.asarray(args["distribution_array"])
    t0 = time.perf_counter()
    part = getattr(P, spec["cls"])(**args)
    part.dataset = ds
    n = part.num_partitions
    sizes, counts = [], []
    for pid in range(n):
        p = part.load_partition(pid)
        labels = np.asarray(p["label"])
        sizes.append(len(labels))
        counts.append(np.bincount(labels, minlength=spec["num_labels"]).tolist())
    t1 = time.perf_counter()
    print(json.dumps({"seconds": t1 - t0, "sizes": sizes, "counts": counts,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")

OURS = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    import torch_grouper as tg
    from torch_grouper import partitioners as P
    path, spec, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    t0 = time.perf_counter()
    m = tg.partition(path, getattr(P, spec["cls"])(**spec["args"]), out, overwrite=True, progress=False)
    t1 = time.perf_counter()
    sizes, counts = {}, {}
    for g in tg.GroupedDataset(out):
        labels = np.fromiter((ex["label"] for ex in g), dtype=np.int64)
        sizes[g.id] = len(labels)
        counts[g.id] = np.bincount(labels, minlength=spec["num_labels"]).tolist()
    n = max(sizes) + 1 if sizes else 0
    print(json.dumps({"seconds": t1 - t0, "sizes": [sizes.get(i, 0) for i in range(n)],
                      "counts": [counts.get(i, [0] * spec["num_labels"]) for i in range(n)],
                      "dropped": m["num_dropped"],
                      "rss_mb": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                    resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024}))
""")


def hellinger(counts):
    c = np.asarray(counts, dtype=np.float64)
    glob = c.sum(0) / c.sum()
    rows = c[c.sum(1) > 0]
    p = rows / rows.sum(1, keepdims=True)
    return float(np.mean(np.sqrt(0.5 * ((np.sqrt(p) - np.sqrt(glob)) ** 2).sum(1))))


def run(cmd, env=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"failed: {cmd[:3]}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--parts", type=int, default=1000)
    ap.add_argument("--labels", type=int, default=10)
    ap.add_argument("--flwr-python", default="/tmp/flvenv/bin/python")
    a = ap.parse_args()
    if not os.path.exists(a.flwr_python):
        sys.exit(f"{a.flwr_python} missing: install flwr-datasets as in ../shared/bench/README.md")
    import pyarrow as pa
    import pyarrow.parquet as pq

    work = tempfile.mkdtemp(prefix="tg-parts-")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        rng = np.random.default_rng(0)
        w = 1.0 / np.arange(1, a.labels + 1)
        labels = rng.choice(a.labels, size=a.n, p=w / w.sum())
        table = pa.table({"i": np.arange(a.n), "label": labels, "x": rng.random(a.n).astype(np.float32)})
        pq.write_table(table, os.path.join(work, "data.parquet"), row_group_size=100_000)
        small = table.slice(0, 100_000)
        assert a.n >= 100_000, "--n must be at least 100,000"
        pq.write_table(small, os.path.join(work, "small.parquet"), row_group_size=25_000)
        cases = [
            ("DirichletPartitioner", "data.parquet", {"num_partitions": a.parts, "partition_by": "label",
                                                      "alpha": 0.5, "min_partition_size": 0, "seed": 42}),
            ("PathologicalPartitioner", "small.parquet", {"num_partitions": 100, "partition_by": "label",
                                                          "num_classes_per_partition": 2, "seed": 42}),
            ("ShardPartitioner", "small.parquet", {"num_partitions": 100, "partition_by": "label",
                                                   "num_shards_per_partition": 2, "seed": 42}),
            ("InnerDirichletPartitioner", "small.parquet", {"partition_sizes": [1000] * 100,
                                                            "partition_by": "label", "alpha": 0.5, "seed": 42}),
            ("ContinuousPartitioner", "small.parquet", {"num_partitions": 100, "partition_by": "x",
                                                        "strictness": 0.5, "seed": 42}),
            ("DistributionPartitioner", "small.parquet", {
                "distribution_array": np.random.default_rng(1).random((a.labels, 20)).tolist(),
                "num_partitions": 100, "num_unique_labels_per_partition": 2, "partition_by": "label",
                "preassigned_num_samples_per_label": 5, "seed": 42}),
        ]
        print(f"{'partitioner':<25} {'rows':>9} {'parts':>6} {'same':>5} {'hellinger ours/flwr':>20} "
              f"{'ours s':>7} {'flwr s':>7} {'ratio':>6} {'RSS MB ours/flwr':>17}")
        for cls, data, args in cases:
            spec = json.dumps({"cls": cls, "args": args, "num_labels": a.labels})
            path = os.path.join(work, data)
            ours = run([sys.executable, "-c", OURS, path, spec, os.path.join(work, "out")], env)
            flwr = run([a.flwr_python, "-c", FLWR, path, spec, os.path.join(work, "hfcache")])
            same = ours["sizes"] == flwr["sizes"] and ours["counts"] == flwr["counts"]
            rows = pq.ParquetFile(path).metadata.num_rows
            print(f"{cls:<25} {rows:>9,} {len(flwr['sizes']):>6} {str(same):>5} "
                  f"{hellinger(ours['counts']):>9.4f}/{hellinger(flwr['counts']):<10.4f} "
                  f"{ours['seconds']:>7.2f} {flwr['seconds']:>7.2f} {ours['seconds'] / flwr['seconds']:>6.2f} "
                  f"{ours['rss_mb']:>8.0f}/{flwr['rss_mb']:<8.0f}")
        # vertical: the same columns for each party
        wide = pa.table({f"c{j}": np.arange(10) for j in range(13)} | {"y": np.arange(10), "uid": np.arange(10)})
        pq.write_table(wide, os.path.join(work, "wide.parquet"))
        sys.path.insert(0, ROOT)
        from torch_grouper import partitioners as P

        for cls, args in [("VerticalEvenPartitioner", {"num_partitions": 4, "active_party_columns": "y",
                                                       "shared_columns": "uid", "seed": 7}),
                          ("VerticalSizePartitioner", {"partition_sizes": [0.2, 0.3, 0.5], "drop_columns": "c0",
                                                       "active_party_columns": "y",
                                                       "active_party_columns_mode": "create_as_first"})]:
            flwr = run([a.flwr_python, "-c", FLWR, os.path.join(work, "wide.parquet"),
                        json.dumps({"cls": cls, "args": args}), os.path.join(work, "hfcache")])
            ours = getattr(P, cls)(**args).party_columns(wide.column_names)
            print(f"{cls:<25} same column split as flwr-datasets: {ours == flwr['columns']} "
                  f"({len(ours)} parties: {[len(c) for c in ours]} columns)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
