#!/usr/bin/env python3
"""FedAvg on FedShakespeare with Flower's simulation engine, cross-device over all groups.

The shipped FedShakespeare (1,348 play/speaker groups) is partitioned with
torch_grouper (as examples/fedshakespeare.py does); each round the server draws
a cohort of group ids from the index alone (``GroupedDataset.cohort_ids``) and
``GroupFedAvg`` sends every message its own group id; a SuperNode that gets
several groups in a round trains them one after another.  A tiny character
model (CPU, seconds per round); the loss is printed per round.

    python examples/flower_simulation.py --rounds 3 --supernodes 3 --cohort 6

The same ServerApp and ClientApp are the Flower App in examples/flower_app/
(for ``flwr run``).
"""
import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "flower_app"))  # the Flower App's package (also on Ray workers' path)
DATA = os.path.join(HERE, "..", "data", "fedshakespeare", "fedshakespeare.jsonl.gz")


def partition_fedshakespeare(out: str, source: str = DATA) -> str:
    """Partition FedShakespeare by play/speaker into ``out`` (kept if it is already there)."""
    import torch_grouper as tg

    if not os.path.exists(os.path.join(out, "manifest.json")):
        tg.partition(source, key=lambda ex: f"{ex['play']}/{ex['speaker']}", output=out, num_workers=1,
                     overwrite=True, shard_bytes=1 << 20, progress=False)
    return out


def simulate(dataset: str, *, rounds: int, supernodes: int, cohort: int, eval_cohort: int | None = None,
             seed: int = 0, report_path: str = "", verbose: bool = False, **settings) -> None:
    from flwr.simulation import run_simulation

    from fedshakespeare_app.client_app import make_client_app
    from fedshakespeare_app.server_app import make_server_app

    server = make_server_app(**{"dataset-path": dataset, "num-server-rounds": rounds, "cohort-size": cohort,
                                "eval-cohort-size": cohort if eval_cohort is None else eval_cohort, "seed": seed,
                                "report-path": report_path, **settings})
    run_simulation(server_app=server, client_app=make_client_app(), num_supernodes=supernodes,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"logging_level": "error", "log_to_driver": True}},
                   verbose_logging=verbose)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--supernodes", type=int, default=3)
    p.add_argument("--cohort", type=int, default=6, help="groups per round")
    p.add_argument("--eval-cohort", type=int, default=None, help="groups evaluated per round (default: --cohort)")
    p.add_argument("--local-steps", type=int, default=8)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="where to partition FedShakespeare (default: a temporary folder)")
    a = p.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    with tempfile.TemporaryDirectory() as tmp:
        data = partition_fedshakespeare(a.data or os.path.join(tmp, "fedshakespeare"))
        t0 = time.perf_counter()
        simulate(data, rounds=a.rounds, supernodes=a.supernodes, cohort=a.cohort, eval_cohort=a.eval_cohort,
                 seed=a.seed, **{"local-steps": a.local_steps, "lr": a.lr})
        print(f"{a.rounds} rounds on {a.supernodes} SuperNodes in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
