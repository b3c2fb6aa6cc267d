"""Memory stays bounded when the largest group is bigger than the memory budget."""
import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch_grouper as tg
    src, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    m = tg.partition(src, "g", out, num_workers=workers, memory_budget=16 << 20,
                     shard_size=32 << 20, progress=False)
    n = 0
    for g in tg.GroupedDataset(out):          # stream every group back, in this process
        for ex in g:
            n += len(ex["t"])
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"main_kb": me, "workers_kb": kids, "chars": n, "groups": m["num_groups"],
                      "shards": len(m["shards"])}))
""")


def run(src, out, workers):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(src), str(out), str(workers)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_group_bigger_than_budget_keeps_rss_bounded(tmp_path):
    big = tmp_path / "big.jsonl"
    small = tmp_path / "small.jsonl"
    line = "y" * 100_000
    with open(big, "w") as f:  # one group of ~250 MB, plus 50 small groups
        for i in range(2500):
            f.write(json.dumps({"g": "huge", "t": line}) + "\n")
            if i % 50 == 0:
                f.write(json.dumps({"g": f"s{i}", "t": "z"}) + "\n")
    with open(small, "w") as f:  # ~10 MB of small groups: same pool, same code paths
        for i in range(100_000):
            f.write(json.dumps({"g": f"s{i % 51}", "t": "z" * 80}) + "\n")
    base = run(small, tmp_path / "o_small", 2)
    res = run(big, tmp_path / "o_big", 2)
    assert res["chars"] == 2500 * 100_000 + 50 and res["groups"] == 51
    assert base["groups"] == 51 and base["workers_kb"] > 0
    # peak RSS of the main process (partition + streaming read) and of the
    # largest pool worker (map + reduce), each against the same run on tiny data
    for k in ("main_kb", "workers_kb"):
        growth_mb = (res[k] - base[k]) / 1024
        print(f"{k}: peak {res[k] / 1024:.0f} MB vs {base[k] / 1024:.0f} MB baseline, "
              f"growth {growth_mb:.0f} MB for a 250 MB group with a 16 MB budget")
        assert growth_mb < 100, (k, growth_mb)
