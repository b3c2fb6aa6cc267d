#!/usr/bin/env python3
"""Scale benchmark: millions of groups (c4s_3m), one run.

    python benchmarks/scale.py                    # makes /tmp/c4s_3m.jsonl if missing (~2.8 GB,
                                                  # 3M examples over ~1.16M domains: zipf 0.7)
    python benchmarks/scale.py --flwr             # + flwr-datasets' load_partition latency
    python benchmarks/scale.py --synthetic 20000000,10500000   # >= 10M groups, no corpus file

Each step runs in its own process, so each peak RSS is its own:
  1. partition the corpus by URL domain (target <= 120 s, peak RSS <= 1 GB);
  2. stream every example of every group in one process (target <= 60 s, <= 1 GB);
  3. random access ds[group_id] for 1,000 seeded random groups: p50 (target
     <= 2 ms) and p99, after the first call (which loads the id map);
  4. time to the first group after load_state_dict at 10% and at 90% of a
     shuffled epoch (must be flat: the order is recomputed, never replayed);
  5. with --flwr: flwr-datasets 0.6.1 NaturalIdPartitioner on the same file:
     time to build the partitions and load_partition latency (or why not).

--synthetic N,G: ten million groups on one machine.  N short examples (~200
bytes: {"user", "i", "text"}) over exactly G distinct users are generated on
the fly in the partition process (an iterable source, no corpus file): the
first G examples visit every user once in a scrambled order, the other N - G
draw users skewed to low ids (u = G * r**3), so group sizes run from 1 to
hundreds.  Free disk is checked first (refused below --min-free-gb; 20M
examples write ~21 GB of shards plus spill runs); the dataset and spill
folder are deleted afterwards (unless --keep).  Targets: partition <= 15 min,
stream <= 4 min, random access p50 <= 1 ms, peak RSS <= 1 GB per process.
--steps runs some of the steps (e.g. partition with --keep, then the reads).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCH = os.path.join(ROOT, "..", "shared", "bench")

PRELUDE = """
import json, resource, sys, time
import numpy as np
import torch_grouper as tg
def rss():
    return {"rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
"""

STEPS = {
    "partition": """
t0 = time.perf_counter()
m = tg.partition(sys.argv[1], tg.UrlDomainKey("url"), sys.argv[2], num_workers=int(sys.argv[3]),
                 overwrite=True, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t0, "groups": m["num_groups"],
                  "examples": m["num_examples"], "shards": len(m["shards"]), **rss()}))
""",
    "stream": """
tg.GroupedDataset  # the read side (it imports torch) is imported on first use: not inside the timing
t0 = time.perf_counter()
c0 = time.process_time()
ds = tg.GroupedDataset(sys.argv[2])
g = n = total = 0
for grp in ds:
    g += 1
    for ex in grp:  # touch every field of every example
        n += 1
        for v in ex.values():
            total += len(v) if isinstance(v, str) else 1
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "groups": g,
                  "examples": n, "field_chars": total, **rss()}))
""",
    "random": """
ds = tg.GroupedDataset(sys.argv[2])
rng = np.random.default_rng(0)
rows = rng.choice(len(ds), size=1001, replace=False)
ids = ds.group_ids_at(rows)  # ids of the sampled rows only: no list of every id
t0 = time.perf_counter()
ds[ids[0]].examples()
first = time.perf_counter() - t0
lat = []
for gid in ids[1:]:
    t = time.perf_counter()
    ds[gid].examples()
    lat.append((time.perf_counter() - t) * 1000)
print(json.dumps({"first_s": first, "p50_ms": float(np.percentile(lat, 50)),
                  "p99_ms": float(np.percentile(lat, 99)), **rss()}))
""",
    "resume": """
out = {}
for frac in (0.1, 0.9):
    probe = tg.GroupedDataset(sys.argv[2], shuffle=True, seed=0)
    state = {**probe.state_dict(), "delivered": int(frac * len(probe))}
    ds = tg.GroupedDataset(sys.argv[2], shuffle=True, seed=0)
    ds._columns()  # opening (index read, id list) is common to any start; time what resuming adds
    t0 = time.perf_counter()
    ds.load_state_dict(state)
    g = next(iter(ds))
    out[f"first_group_s_at_{int(frac * 100)}pct"] = time.perf_counter() - t0
print(json.dumps({**out, **rss()}))
""",
}

SYNTHETIC = """
import math
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have "
         "an they you were her she there would their we him been has when who will more no if out so said what up "
         "its about into than them can only other new some could time these two may then do first any my now "
         "such like our over man me even most made after also did many before must through back years where").split()

def synthetic(n, groups, seed=0):
    \"\"\"n examples of ~200 bytes over exactly ``groups`` users (see the module doc).\"\"\"
    rng = np.random.default_rng(seed)
    pool = [" ".join(rng.choice(WORDS, size=int(rng.integers(30, 46)))) for _ in range(4096)]
    a = 2654435761
    while math.gcd(a, groups) != 1:
        a += 2
    for start in range(0, n, 65536):
        i = np.arange(start, min(n, start + 65536), dtype=np.int64)
        skew = (groups * rng.random(len(i)) ** 3).astype(np.int64)
        user = np.where(i < groups, (i * a) % groups, skew)
        text = rng.integers(0, len(pool), len(i))
        for k, u, t in zip(i.tolist(), user.tolist(), text.tolist()):
            yield {"user": "u%09d" % u, "i": k, "text": pool[t]}
"""

SYNTHETIC_PARTITION = """
import os
n, groups = (int(x) for x in sys.argv[1].split(","))
os.makedirs(sys.argv[2] + "_spill", exist_ok=True)
t0 = time.perf_counter()
m = tg.partition(synthetic(n, groups), tg.ColumnKey("user"), sys.argv[2], num_workers=int(sys.argv[3]),
                 overwrite=True, progress=False, tmp_dir=sys.argv[2] + "_spill")
print(json.dumps({"seconds": time.perf_counter() - t0, "groups": m["num_groups"],
                  "examples": m["num_examples"], "shards": len(m["shards"]), **rss()}))
"""

FLWR = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    from urllib.parse import urlparse
    import datasets
    from flwr_datasets.partitioner import NaturalIdPartitioner
    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=sys.argv[1], split="train", cache_dir=sys.argv[2])
    ds = ds.map(lambda b: {"domain": [urlparse(u).netloc for u in b["url"]]}, batched=True)
    part = NaturalIdPartitioner(partition_by="domain")
    part.dataset = ds
    n = part.num_partitions
    t1 = time.perf_counter()
    lat = []
    for pid in np.random.default_rng(0).choice(n, size=100, replace=False):
        t = time.perf_counter()
        p = part.load_partition(int(pid))
        _ = p["text"]
        lat.append((time.perf_counter() - t) * 1000)
    print(json.dumps({"build_s": t1 - t0, "partitions": n, "p50_ms": float(np.percentile(lat, 50)),
                      "p99_ms": float(np.percentile(lat, 99)),
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def step(name, corpus, out, workers, env, code=None):
    r = subprocess.run([sys.executable, "-c", PRELUDE + (code or STEPS[name]), corpus, out, str(workers)],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"step {name} failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"{name}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()})}",
          flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/tmp/c4s_3m.jsonl")
    ap.add_argument("--make", default="3000000,2000000,0.7",
                    help="N_EXAMPLES,N_DOMAINS,ZIPF for make_corpus.py if the corpus is missing "
                         "(zipf 0.7: ~1.16M distinct domains; the default 1.1 gives ~340k)")
    ap.add_argument("--out", default="/tmp/tg_scale")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--flwr", action="store_true")
    ap.add_argument("--flwr-python", default="/tmp/flvenv/bin/python")
    ap.add_argument("--flwr-timeout", type=int, default=900)
    ap.add_argument("--synthetic", metavar="N,G", help="N generated examples over G distinct groups (no corpus)")
    ap.add_argument("--steps", default=",".join(STEPS), help="steps to run (comma-separated)")
    ap.add_argument("--keep", action="store_true", help="keep the dataset (--synthetic deletes it by default)")
    ap.add_argument("--min-free-gb", type=float, default=45)
    a = ap.parse_args()
    if a.synthetic:
        return synthetic_main(a)
    if not os.path.exists(a.corpus):
        n, d, z = a.make.split(",")
        subprocess.run([sys.executable, os.path.join(BENCH, "make_corpus.py"), a.corpus, n, d, "--zipf", z],
                       check=True)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = {name: step(name, a.corpus, a.out, a.workers, env) for name in STEPS}
    p, s, r, z = res["partition"], res["stream"], res["random"], res["resume"]
    print(f"\n{p['examples']:,} examples, {p['groups']:,} groups, {p['shards']} shards, {a.workers} workers")
    checks = [
        ("partition s", p["seconds"], 120),
        ("partition peak RSS MB (largest process)", max(p["rss_main_mb"], p["rss_workers_mb"]), 1024),
        ("stream s", s["seconds"], 60),
        ("stream peak RSS MB", s["rss_main_mb"], 1024),
        ("random access p50 ms", r["p50_ms"], 2),
    ]
    for label, value, target in checks:
        print(f"{label:<42} {value:>9.2f}  target <= {target}  {'met' if value <= target else 'MISSED'}")
    print(f"{'random access p99 ms':<42} {r['p99_ms']:>9.2f}  (first call, loading the id map: {r['first_s']:.2f} s)")
    a10, a90 = z["first_group_s_at_10pct"], z["first_group_s_at_90pct"]
    print(f"{'first group after load_state_dict at 10% / 90% s':<42} {a10:>9.3f} / {a90:.3f}  ratio {a90 / a10:.2f}")
    if a.flwr:
        cache = a.out + "_hfcache"
        try:
            r = subprocess.run([a.flwr_python, "-c", FLWR, a.corpus, cache], capture_output=True, text=True,
                               timeout=a.flwr_timeout)
            if r.returncode == 0:
                f = json.loads(r.stdout.strip().splitlines()[-1])
                print(f"flwr-datasets NaturalIdPartitioner: build {f['build_s']:.1f} s, {f['partitions']:,} "
                      f"partitions, load_partition p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms, "
                      f"peak RSS {f['rss_mb']:.0f} MB")
            else:
                print(f"flwr-datasets could not build the partitions: {r.stderr.strip().splitlines()[-1][:300]}")
        except subprocess.TimeoutExpired:
            print(f"flwr-datasets did not finish building the partitions within {a.flwr_timeout} s")
        finally:
            shutil.rmtree(cache, ignore_errors=True)


def du_gb(path) -> float:
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(d, f))
            except OSError:
                pass
    return total / 1e9


def synthetic_main(a):
    n, groups = (int(x) for x in a.synthetic.split(","))
    if not 0 < groups <= n:
        sys.exit(f"--synthetic N,G needs 0 < G <= N, got {a.synthetic}")
    steps = [x for x in a.steps.split(",") if x]
    for x in steps:
        if x not in STEPS:
            sys.exit(f"unknown step {x!r} (steps: {', '.join(STEPS)})")
    out = a.out if a.out != "/tmp/tg_scale" else "/tmp/tg_scale10m"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if "partition" in steps:
        parent = os.path.dirname(os.path.abspath(out))
        free = shutil.disk_usage(parent).free / 1e9
        if os.path.exists(out):
            free += du_gb(out)  # overwritten
        print(f"free disk at {parent}: {free:.1f} GB (need >= {a.min_free_gb:g} GB)", flush=True)
        if free < a.min_free_gb:
            sys.exit(f"refusing to run: {free:.1f} GB free at {parent}, below {a.min_free_gb:g} GB "
                     f"(N={n:,} examples write about {n * 1.1 / 1e9:.0f} GB of shards plus spill runs)")
    res = {}
    try:
        for name in steps:
            code = PRELUDE + SYNTHETIC + SYNTHETIC_PARTITION if name == "partition" else None
            res[name] = step(name, a.synthetic, out, a.workers, env, code=code)
            if name == "partition":
                print(f"dataset size: {du_gb(out):.1f} GB; free disk now "
                      f"{shutil.disk_usage(os.path.dirname(os.path.abspath(out))).free / 1e9:.1f} GB", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out + "_spill", ignore_errors=True)
            print(f"deleted {out}", flush=True)
    print(f"\n--synthetic {n:,} examples over {groups:,} groups, {a.workers} workers")
    checks = []
    if "partition" in res:
        p = res["partition"]
        print(f"{p['examples']:,} examples, {p['groups']:,} groups, {p['shards']} shards")
        checks += [("partition s", p["seconds"], 900),
                   ("partition peak RSS MB, main process", p["rss_main_mb"], 1024),
                   ("partition peak RSS MB, largest worker", p["rss_workers_mb"], 1024)]
    if "stream" in res:
        s = res["stream"]
        checks += [("stream s (one process)", s["seconds"], 240), ("stream peak RSS MB", s["rss_main_mb"], 1024)]
    if "random" in res:
        r = res["random"]
        checks += [("random access p50 ms", r["p50_ms"], 1), ("random access peak RSS MB", r["rss_main_mb"], 1024)]
    if "resume" in res:
        checks += [("resume peak RSS MB", res["resume"]["rss_main_mb"], 1024)]
    for label, value, target in checks:
        print(f"{label:<42} {value:>9.2f}  target <= {target}  {'met' if value <= target else 'MISSED'}")
    if "random" in res:
        r = res["random"]
        print(f"{'random access p99 ms':<42} {r['p99_ms']:>9.2f}  (first call, loading the index and hash "
              f"lookup: {r['first_s']:.2f} s)")
    if "resume" in res:
        z = res["resume"]
        a10, a90 = z["first_group_s_at_10pct"], z["first_group_s_at_90pct"]
        print(f"{'first group after load_state_dict at 10% / 90% s':<42} {a10:>9.3f} / {a90:.3f}")


if __name__ == "__main__":
    main()
