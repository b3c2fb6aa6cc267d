#!/usr/bin/env python3
"""Partition + full-stream benchmark on the C4-shaped corpus, against peers, in one run.

    python benchmarks/partition_stream.py                  # c4s_100k, flwr-datasets + webdataset
    python benchmarks/partition_stream.py --dsgp           # + Dataset Grouper (~5 min)
    python benchmarks/partition_stream.py --baseline ../v0.2   # + another checkout, interleaved

Measures, for the corpus grouped by URL domain:
  * torch_grouper: partition time, time to stream every example of every group
    in one process, peak RSS (main process and largest worker);
  * flwr-datasets 0.6.1 (NaturalIdPartitioner; cold cache, as a first run);
  torch_grouper and flwr-datasets run --repeat times each, interleaved
  runs of neither; the median of each figure is reported;
  * plain webdataset (no groups: write and read every example), the ceiling;
  * with --baseline DIR, torch_grouper from another checkout (an earlier
    commit), run interleaved with this one, for before/after ratios;
  * Dataset Grouper 0.3.0 with --dsgp.
Peers run from the virtual environments named in ../shared/bench/README.md.
Prints a table and the ratios; numbers from different machines don't compare.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCH = os.path.join(ROOT, "..", "shared", "bench")

OURS = textwrap.dedent("""
    import json, os, resource, sys, time
    import torch_grouper as tg
    tg.GroupedDataset  # the read side (it imports torch) is imported on first use: before any timing
    src, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    c0 = os.times()
    t0 = time.perf_counter()
    m = tg.partition(src, tg.UrlDomainKey("url"), out, num_workers=workers, overwrite=True, progress=False)
    t1 = time.perf_counter()
    c1 = os.times()  # the pool's workers have exited: their CPU is in children_*
    cpu = sum(getattr(c1, f) - getattr(c0, f) for f in ("user", "system", "children_user", "children_system"))
    ds = tg.GroupedDataset(out)
    g = n = nbytes = 0
    for grp in ds:
        g += 1
        for ex in grp:
            n += 1
            nbytes += len(ex["text"])
    t2 = time.perf_counter()
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"groups": g, "examples": n, "text_bytes": nbytes, "partition_s": t1 - t0, "partition_cpu_s": cpu,
                      "iterate_s": t2 - t1, "shards": len(m["shards"]),
                      "rss_main_mb": me / 1024, "rss_worker_mb": kids / 1024, "package": tg.__file__}))
""")


# flwr-datasets' partition step alone (as ../shared/bench/peer_flwr.py does it), with its CPU seconds
# (all threads: pyarrow's JSON reader is multi-threaded)
FLWR_PARTITION = textwrap.dedent("""
    import os, sys, time
    from urllib.parse import urlparse
    import datasets
    from flwr_datasets.partitioner import NaturalIdPartitioner
    datasets.disable_progress_bars()
    c0 = os.times()
    t0 = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=sys.argv[1], split="train", cache_dir=sys.argv[2])
    ds = ds.map(lambda b: {"domain": [urlparse(u).netloc for u in b["url"]]}, batched=True)
    part = NaturalIdPartitioner(partition_by="domain")
    part.dataset = ds
    n = part.num_partitions
    t1 = time.perf_counter()
    c1 = os.times()
    cpu = sum(getattr(c1, f) - getattr(c0, f) for f in ("user", "system", "children_user", "children_system"))
    print(f"flwr-partition groups={n} partition_s={t1 - t0:.3f} partition_cpu_s={cpu:.3f}")
""")


def sh(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return r.stdout


def parse_peer(out):
    line = [ln for ln in out.splitlines() if "partition_s=" in ln or "write_s=" in ln][-1]
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}


def median_run(runs):
    """Per-figure medians over repeated runs (machines are noisy)."""
    out = dict(runs[0])
    for k in ("partition_s", "partition_cpu_s", "iterate_s", "rss_main_mb", "rss_worker_mb"):
        if k in out:
            out[k] = statistics.median(r[k] for r in runs)
    out["all_partition_s"] = [round(r["partition_s"], 2) for r in runs]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="/tmp/c4s_100k.jsonl")
    p.add_argument("--make", default="100000,20000", help="N_EXAMPLES,N_DOMAINS if the corpus is missing")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--flwr-python", default="/tmp/flvenv/bin/python")
    p.add_argument("--dsgp", action="store_true", help="also run Dataset Grouper (slow)")
    p.add_argument("--dsgp-python", default="/tmp/dgvenv/bin/python")
    p.add_argument("--baseline", help="another torch_grouper checkout to run interleaved (before/after)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of torch_grouper and flwr-datasets; the median of each is reported")
    a = p.parse_args()

    if not os.path.exists(a.corpus):
        n, d = a.make.split(",")
        sh([sys.executable, os.path.join(BENCH, "make_corpus.py"), a.corpus, n, d])
    work = tempfile.mkdtemp(prefix="tg-bench-")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows = {}
    try:
        def ours_once(tree_env):
            out = sh([sys.executable, "-c", OURS, a.corpus, os.path.join(work, "tg"), str(a.workers)], env=tree_env,
                     cwd=work)  # not the caller's directory: "-c" puts it first on sys.path
            return json.loads(out.strip().splitlines()[-1])

        ours, base, flwr_part = [], [], []
        base_env = a.baseline and dict(
            os.environ, PYTHONPATH=os.path.abspath(a.baseline) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        have_flwr = os.path.exists(a.flwr_python)
        for _ in range(a.repeat):
            ours.append(ours_once(env))
            if base_env:
                base.append(ours_once(base_env))
            if have_flwr:  # partition step only, cold cache, interleaved with ours: time and CPU
                cache = os.path.join(work, "hfcache")
                shutil.rmtree(cache, ignore_errors=True)
                flwr_part.append(parse_peer(sh([a.flwr_python, "-c", FLWR_PARTITION, a.corpus, cache], cwd=work)))
        best = rows["torch_grouper"] = median_run(ours)
        if base:
            rows[f"baseline {a.baseline}"] = median_run(base)
            print(f"this checkout: {best['package']}\nbaseline: {base[0]['package']}")
        if os.path.exists(a.flwr_python):
            runs = []
            for _ in range(a.repeat):
                shutil.rmtree("/tmp/hfcache_flwr", ignore_errors=True)  # cold, like a first run
                runs.append(parse_peer(sh([a.flwr_python, os.path.join(BENCH, "peer_flwr.py"), a.corpus])))
            rows["flwr-datasets 0.6.1"] = median_run(runs)
        else:
            print(f"(flwr-datasets skipped: {a.flwr_python} missing; see ../shared/bench/README.md)")
        w = parse_peer(sh([sys.executable, os.path.join(BENCH, "ceiling_wds.py"), a.corpus, os.path.join(work, "wds")]))
        rows["plain webdataset (no groups)"] = {"examples": w["examples"], "partition_s": w["write_s"],
                                                "iterate_s": w["read_s"]}
        if a.dsgp:
            rows["dataset-grouper 0.3.0"] = parse_peer(
                sh([a.dsgp_python, os.path.join(BENCH, "peer_dsgp.py"), a.corpus, os.path.join(work, "dg")]))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\ncorpus {a.corpus}: {best['examples']:,} examples, {best['groups']:,} domain groups; "
          f"torch_grouper with {a.workers} workers, {best['shards']} shards")
    print(f"{'system':<30} {'partition s':>12} {'stream s':>9} {'examples/s':>11}")
    for name, r in rows.items():
        print(f"{name:<30} {r['partition_s']:>12.2f} {r['iterate_s']:>9.2f} {r['examples'] / r['iterate_s']:>11,.0f}")
    for name, r in rows.items():
        if "all_partition_s" in r:
            print(f"{name}: partition times of the {len(r['all_partition_s'])} runs: {r['all_partition_s']}")
    print(f"torch_grouper peak RSS: main {best['rss_main_mb']:.0f} MB, largest worker {best['rss_worker_mb']:.0f} MB")
    if flwr_part:
        fp = median_run(flwr_part)
        ratios_t = sorted(o["partition_s"] / f["partition_s"] for o, f in zip(ours, flwr_part))
        ratios_c = sorted(o["partition_cpu_s"] / f["partition_cpu_s"] for o, f in zip(ours, flwr_part))
        print(f"partition step, interleaved with flwr-datasets' partition step ({a.repeat} rounds):")
        print(f"  torch_grouper {best['partition_s']:.2f} s wall, {best['partition_cpu_s']:.2f} s CPU; "
              f"flwr-datasets {fp['partition_s']:.2f} s wall, {fp['partition_cpu_s']:.2f} s CPU (medians)")
        print(f"  time ratio {best['partition_s'] / fp['partition_s']:.2f} (per-round range "
              f"{ratios_t[0]:.2f}-{ratios_t[-1]:.2f}; target <= 0.5), CPU ratio "
              f"{best['partition_cpu_s'] / fp['partition_cpu_s']:.2f} (per-round range {ratios_c[0]:.2f}-"
              f"{ratios_c[-1]:.2f}; target <= 1.0)")
    ours_rate = best["examples"] / best["iterate_s"]
    for name, r in rows.items():
        if name == "torch_grouper":
            continue
        if name.startswith("baseline "):
            print(f"vs {name}: partition time ratio {best['partition_s'] / r['partition_s']:.2f}, stream time "
                  f"ratio {best['iterate_s'] / r['iterate_s']:.2f} (<= 1 is faster; medians of {a.repeat})")
            continue
        print(f"vs {name}: partition time ratio {best['partition_s'] / r['partition_s']:.2f} "
              f"(<= 1 is faster), stream rate {ours_rate / (r['examples'] / r['iterate_s']):.1f}x")


if __name__ == "__main__":
    main()
