#!/usr/bin/env python3
"""Local engine against the Ray engine, same run, same machine.

    python benchmarks/engines.py                                   # c4s_100k and c4s_3m, 3 rounds
    python benchmarks/engines.py --corpus /tmp/c4s_100k.jsonl --repeat 5

For each corpus (grouped by URL domain) and each round, one fresh process per
configuration, in this order (interleaved, so a slow minute of the machine
hits every configuration alike):

  * ``local-2``: ``LocalEngine(2)``, the default engine with 2 workers;
  * ``ray-1`` / ``ray-2``: ``RayEngine`` on a local ``ray.init(num_cpus=1|2)``;
  * ``cluster-3``: ``RayEngine`` on a 3-node ``ray.cluster_utils.Cluster`` on
    this machine: a head node with no CPU for tasks plus two worker nodes of
    one CPU each, each node with its own TMPDIR and a 512 MiB object store.

The partition time excludes starting Ray (a cluster already runs when a user
partitions on one); the start is reported on its own.  It includes starting
Ray's worker processes, which import the package for the job (several seconds
on two busy cores); ``--warm`` also times a second partition in the same
process, on workers already started.  Each process samples,
every 0.2 s, the USS and PSS (``/proc/PID/smaps``) of itself and every
process below it (pool workers; Ray's raylet, workers and object store),
without the object store's shared-memory file: its pages count as private
to the worker that created an object, so they are reported on their own
(the largest per process), not as the worker's memory.  For Ray, the bytes the object store spilled to disk come from
Ray's memory summary.  The output of every configuration is hashed: all must
be byte-identical (the run fails otherwise).

Prints a table of medians and ranges and the Ray / local time ratios.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCH = os.path.join(ROOT, "..", "shared", "bench")
CORPORA = {"/tmp/c4s_100k.jsonl": ("100000", "20000", []),
           "/tmp/c4s_3m.jsonl": ("3000000", "2000000", ["--zipf", "0.7"])}

RUN = textwrap.dedent(r"""
    import glob, hashlib, json, os, re, sys, threading, time
    conf, corpus, out, budget, warm = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"

    def tree():
        # this process and every process below it
        kids = {}
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(stat) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                kids.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
            except (OSError, IndexError, ValueError):
                pass
        out, todo = [], [os.getpid()]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(kids.get(p, ()))
        return out

    def mem(pid):
        # USS (private pages) without the object store's shared-memory file, which counts as private
        # to the worker that created an object; the store's pages are reported on their own
        try:
            with open(f"/proc/{pid}/smaps") as f:
                text = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                name = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            return None
        uss = store = pss = 0
        in_store = False
        for line in text.splitlines():
            if line[:1] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                in_store = "plasma" in line
            elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                kb = int(line.split()[1])
                if in_store:
                    store += kb
                else:
                    uss += kb
            elif line.startswith("Pss:") and not in_store:
                pss += int(line.split()[1])
        return name, uss / 1024, pss / 1024, store / 1024

    peak = {}  # (pid, name) -> (uss, pss) peaks
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for pid in tree():
                m = mem(pid)
                if m:
                    name, uss, pss, store = m
                    u, p, st = peak.get((pid, name), (0, 0, 0))
                    peak[(pid, name)] = (max(u, uss), max(p, pss), max(st, store))
            stop.wait(0.2)

    import torch_grouper as tg
    from torch_grouper.engines import LocalEngine
    t_start = time.perf_counter()
    kind, _, n = conf.partition("-")
    n = int(n)
    cluster = None
    if kind == "local":
        engine = LocalEngine(n)
    else:
        import ray
        from torch_grouper.engines.ray import RayEngine
        env = {"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "RAY_USAGE_STATS_ENABLED": "0"}}
        if kind == "ray":
            ray.init(address="local", num_cpus=n, runtime_env=env, include_dashboard=False, log_to_driver=False)
        else:
            from ray.cluster_utils import Cluster
            base = os.path.dirname(out)
            def node_env(name):
                os.makedirs(os.path.join(base, name), exist_ok=True)
                return {"TMPDIR": os.path.join(base, name)}
            store = 512 << 20
            cluster = Cluster(initialize_head=True, head_node_args=dict(
                num_cpus=0, object_store_memory=store, include_dashboard=False, env_vars=node_env("head")))
            for i in range(n - 1):
                cluster.add_node(num_cpus=1, object_store_memory=store, env_vars=node_env(f"w{i}"))
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, runtime_env=env, log_to_driver=False)
        engine = RayEngine(shared_disk=cluster is not None)  # the nodes share this machine's disk
    started = time.perf_counter() - t_start
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    c0 = os.times()
    t0 = time.perf_counter()
    m = tg.partition(corpus, tg.UrlDomainKey("url"), out, engine=engine, memory_budget=budget,
                     overwrite=True, progress=False)
    secs = time.perf_counter() - t0
    warm_secs = None
    if warm:  # a second job on the same engine: Ray's workers are started and have imported the package
        t0 = time.perf_counter()
        tg.partition(corpus, tg.UrlDomainKey("url"), out + "-warm", engine=engine, memory_budget=budget,
                     overwrite=True, progress=False)
        warm_secs = time.perf_counter() - t0
    stop.set()
    th.join()
    spilled = None
    if kind != "local":
        from ray._private.internal_api import memory_summary
        s = memory_summary(stats_only=True)
        hit = re.search(r"Spilled (\d+) MiB", s)
        spilled = int(hit.group(1)) if hit else 0
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    folder = tg.GroupedDataset(out).root
    digest = hashlib.sha256()
    for f in sorted(os.listdir(folder)):
        digest.update(f.encode())
        with open(os.path.join(folder, f), "rb") as fh:
            for b in iter(lambda: fh.read(1 << 20), b""):
                digest.update(b)
    print(json.dumps({
        "seconds": secs, "warm_seconds": warm_secs, "start_s": started, "groups": m["num_groups"], "examples": m["num_examples"],
        "shards": len(m["shards"]), "digest": digest.hexdigest(), "spilled_mib": spilled,
        "uss_max_mb": max(u for u, _, _ in peak.values()),
        "uss_driver_mb": max((u for (pid, _), (u, _, _) in peak.items() if pid == os.getpid()), default=0),
        "uss_workers_max_mb": max((u for (pid, _), (u, _, _) in peak.items() if pid != os.getpid()), default=0),
        "store_private_max_mb": max(st for _, _, st in peak.values()),
        "top": sorted(((round(u), round(p), name[-40:]) for (pid, name), (u, p, _) in peak.items()), reverse=True)[:4],
    }))
""")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", action="append", help="JSON Lines corpora (default: c4s_100k and c4s_3m)")
    p.add_argument("--configs", default="local-2,ray-1,ray-2,cluster-3")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--memory-budget", type=int, default=1 << 30, help="partition(memory_budget=) in bytes")
    p.add_argument("--warm", action="store_true",
                   help="also time a second partition in the same process (Ray's workers already started)")
    p.add_argument("--json", help="write every run's figures here")
    a = p.parse_args()
    corpora = a.corpus or list(CORPORA)
    for c in corpora:
        if not os.path.exists(c):
            n, d, extra = CORPORA.get(c, ("100000", "20000", []))
            subprocess.run([sys.executable, os.path.join(BENCH, "make_corpus.py"), c, n, d, *extra], check=True)
    configs = a.configs.split(",")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               RAY_USAGE_STATS_ENABLED="0")
    results = {}
    for corpus in corpora:
        for rnd in range(a.repeat):
            for conf in configs:
                work = tempfile.mkdtemp(prefix="tg-engines-")
                try:
                    out = subprocess.run([sys.executable, "-c", RUN, conf, corpus, os.path.join(work, "out"),
                                          str(a.memory_budget), "1" if a.warm else "0"], env=env, cwd=work, capture_output=True, text=True)
                    if out.returncode:
                        sys.exit(f"{conf} on {corpus} failed:\n{out.stderr[-3000:]}")
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                results.setdefault(corpus, {}).setdefault(conf, []).append(r)
                warm = f", warm {r['warm_seconds']:.1f} s" if a.warm else ""
                print(f"{os.path.basename(corpus)} round {rnd + 1} {conf}: {r['seconds']:.1f} s{warm} "
                      f"(start {r['start_s']:.1f} s), USS max {r['uss_max_mb']:.0f} MB, "
                      f"spilled {r['spilled_mib']} MiB, top {r['top'][:2]}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)

    for corpus, per in results.items():
        digests = {r["digest"] for runs in per.values() for r in runs}
        any_run = next(iter(per.values()))[0]
        print(f"\n{corpus}: {any_run['examples']:,} examples, {any_run['groups']:,} groups, "
              f"{any_run['shards']} shards; outputs byte-identical across all runs: {len(digests) == 1}")
        print(f"{'engine':<11} {'median s':>9} {'range s':>13} {'warm s':>7} {'start s':>8} {'USS driver':>11} "
              f"{'USS worker':>11} {'store/proc':>11} {'spilled MiB':>12}")
        med = {}
        for conf, runs in per.items():
            secs = [r["seconds"] for r in runs]
            med[conf] = statistics.median(secs)
            spilled = max((r["spilled_mib"] or 0) for r in runs) if runs[0]["spilled_mib"] is not None else "-"
            warm = (f"{statistics.median(r['warm_seconds'] for r in runs):>7.2f}" if a.warm else f"{'-':>7}")
            print(f"{conf:<11} {med[conf]:>9.2f} {min(secs):>6.2f}-{max(secs):<6.2f} {warm} "
                  f"{statistics.median(r['start_s'] for r in runs):>8.1f} "
                  f"{max(r['uss_driver_mb'] for r in runs):>8.0f} MB {max(r['uss_workers_max_mb'] for r in runs):>8.0f} MB "
                  f"{max(r['store_private_max_mb'] for r in runs):>8.0f} MB "
                  f"{spilled:>12}")
        if "local-2" in med:
            for conf in med:
                if conf != "local-2":
                    line = f"{conf} / local-2 time: {med[conf] / med['local-2']:.2f}"
                    if a.warm:
                        mw = {c: statistics.median(r["warm_seconds"] for r in per[c]) for c in ("local-2", conf)}
                        line += f", warm {mw[conf] / mw['local-2']:.2f}"
                    print(line + f" (medians of {a.repeat})")
        if len(digests) != 1:
            sys.exit(f"{corpus}: outputs differ between engines: {len(digests)} digests")


if __name__ == "__main__":
    main()
