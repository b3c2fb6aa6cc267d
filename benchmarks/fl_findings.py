#!/usr/bin/env python3
"""Reproduce the two findings of Dataset Grouper's paper (arXiv 2307.09619) on
FedShakespeare with the PyTorch reference in ``examples/federated``:

  (1) FedAvg is a meta-learner: before personalization its loss on held-out
      groups is no better than FedSGD's, after a few local steps far lower;
  (2) FedAvg is robust to the server learning-rate schedule, FedSGD less so.

    python benchmarks/fl_findings.py                       # the published grid (~30 min on 2 cores)
    python benchmarks/fl_findings.py --rounds 40 --cohort 5  # smaller

Protocol (fixed before looking at any result):
- splits (seed 0): groups -> train / held-out (90 / 10, ``split_groups``);
  train -> fit / validation (90 / 10); held-out and validation groups'
  examples -> personalize / test (50 / 50, groups of at least 2 examples);
- both algorithms: the same model init, cohort draws, rounds and server
  optimizer (Adam); each round's clients are drawn by id and read through
  ``map_groups`` in DataLoader workers;
- tuning, with the constant schedule: FedAvg over client LR x server LR
  (``--fedavg-client-lrs`` x ``--fedavg-server-lrs``), FedSGD over the same
  number of server LRs (``--fedsgd-server-lrs``; FedSGD has no client LR).
  Each algorithm keeps the configuration with the lowest mean per-group loss
  on the validation groups at the last round.  Then the personalization LR
  (``--personalize-lrs``) is chosen for each algorithm by the lowest median
  validation-group test loss after personalization, with its tuned model.
  Held-out groups are never used to choose anything;
- with the tuned LRs, each algorithm runs the three schedules (constant,
  warmup + cosine decay, exponential decay); the constant run is the tuning
  run itself (same seed, same rounds);
- verdicts (thresholds fixed here): finding (1) reproduces when, for every
  schedule, FedAvg's median held-out loss before personalization is not
  lower than FedSGD's by more than 0.05 nats and after personalization is
  lower than FedSGD's by more than 0.05 nats, with a personalization gain
  (median before - median after) at least twice FedSGD's; finding (2)
  reproduces when the spread (max - min over schedules) of FedAvg's median
  held-out loss after personalization is smaller than FedSGD's, and likewise
  before personalization.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

from federated.algorithms import SCHEDULES  # noqa: E402
from federated.evaluate import personalization_losses, quartiles  # noqa: E402
from federated.model import make_model  # noqa: E402
from federated.run import (Config, load_eval_data, load_personalization_data, make_splits,  # noqa: E402
                           partition_fedshakespeare, plot_curves, plot_personalization, train)

TOL = 0.05  # nats: differences smaller than this count as "no different"


def floats(s):
    return [float(x) for x in s.split(",")]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--cohort", type=int, default=10)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--max-blocks", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--personalize-steps", type=int, default=5)
    p.add_argument("--fedavg-client-lrs", type=floats, default=[0.3, 1.0])
    p.add_argument("--fedavg-server-lrs", type=floats, default=[0.01, 0.03])
    p.add_argument("--fedsgd-server-lrs", type=floats, default=[0.003, 0.01, 0.03, 0.1])
    p.add_argument("--personalize-lrs", type=floats, default=[0.1, 0.3, 1.0])
    p.add_argument("--max-validation", type=int, default=None, help="validation groups used (default: all)")
    p.add_argument("--max-heldout", type=int, default=None, help="held-out groups used (default: all)")
    p.add_argument("--data", help="a partitioned FedShakespeare (default: partition it into a temp dir)")
    p.add_argument("--limit", type=int, default=None, help="partition only the first N speech turns (tests)")
    p.add_argument("--plots", default=os.path.join(HERE, "plots"))
    p.add_argument("--metrics", default="out/fl_findings", help="per-round JSON Lines and the summary JSON")
    return p.parse_args(argv)


def fmt_q(q):
    return f"{q['median']:.3f} [{q['p25']:.3f}, {q['p75']:.3f}]"


def main(argv=None):
    a = parse(argv)
    t_start = time.perf_counter()
    os.makedirs(a.plots, exist_ok=True)
    os.makedirs(a.metrics, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="fl_findings_")
    data = a.data or partition_fedshakespeare(os.path.join(tmp.name, "fedshakespeare"), limit=a.limit)
    base = Config(rounds=a.rounds, cohort=a.cohort, block_size=a.block_size, max_blocks=a.max_blocks,
                  batch_size=a.batch_size, hidden=a.hidden, workers=a.workers, seed=a.seed,
                  eval_every=a.eval_every, personalize_steps=a.personalize_steps)
    splits = make_splits(data, seed=0)
    val, held = load_eval_data(splits, base, max_validation=a.max_validation, max_heldout=a.max_heldout)
    val_pers = load_personalization_data(splits.val_personalize, splits.val_test, base, max_groups=a.max_validation)
    print(f"groups: fit {len(splits.fit)}, validation {len(splits.validation)} ({len(val)} used), held-out "
          f"{len(held)} with a personalize and a test part; {a.rounds} rounds of {a.cohort} clients", flush=True)
    log = open(os.path.join(a.metrics, "rounds.jsonl"), "w")

    def run(cfg, held_data=None, personalize_lrs=None):
        t = time.perf_counter()
        res = train(cfg, splits, val, held_data, log=log, personalize_lrs=personalize_lrs)
        print(f"  {cfg.name}: validation loss {res['val_loss']:.4f}, data wait {100 * res['data_wait_frac']:.2f}%, "
              f"{time.perf_counter() - t:.0f} s", flush=True)
        return res

    grids = {"fedavg": [dict(client_lr=c, server_lr=s) for c in a.fedavg_client_lrs for s in a.fedavg_server_lrs],
             "fedsgd": [dict(client_lr=0.0, server_lr=s) for s in a.fedsgd_server_lrs]}
    tuning, chosen, final = {}, {}, {}
    local = make_model(0, hidden=a.hidden)
    for alg, grid in grids.items():
        print(f"tuning {alg} (constant schedule) on the validation groups:", flush=True)
        runs = [run(Config(**{**vars(base), "algorithm": alg, "schedule": "constant", **g})) for g in grid]
        tuning[alg] = [{"client_lr": r["config"]["client_lr"], "server_lr": r["config"]["server_lr"],
                        "val_loss": r["val_loss"]} for r in runs]
        best = min(runs, key=lambda r: (np.nan_to_num(r["val_loss"], nan=np.inf)))
        # personalization LR: lowest median validation-group test loss after personalization
        plr_scores = {plr: quartiles(personalization_losses(best["model"], local, val_pers, steps=a.personalize_steps,
                                                            lr=plr, batch_size=base.personalize_batch)["after"])["median"]
                      for plr in a.personalize_lrs}
        plr = min(plr_scores, key=lambda k: np.nan_to_num(plr_scores[k], nan=np.inf))
        chosen[alg] = {**{k: best["config"][k] for k in ("client_lr", "server_lr")}, "personalize_lr": plr,
                       "personalize_val_medians": plr_scores}
        print(f"  chose {chosen[alg]}", flush=True)
        for sched in SCHEDULES:
            cfg = Config(**{**vars(base), "algorithm": alg, "schedule": sched, "client_lr": best["config"]["client_lr"],
                            "server_lr": best["config"]["server_lr"], "personalize_lr": plr})
            if sched == "constant":  # the tuning run: evaluate it on the held-out groups
                t = time.perf_counter()
                pl = personalization_losses(best["model"], local, held, steps=a.personalize_steps, lr=plr,
                                            batch_size=base.personalize_batch)
                res = {**best, "personalization": {plr: {"before": quartiles(pl["before"]),
                                                         "after": quartiles(pl["after"]), "per_group": pl}},
                       "eval_s": time.perf_counter() - t}
            else:
                res = run(cfg, held)
            final[(alg, sched)] = res
    log.close()

    # ------------------------------------------------------------ report
    rows, summary = [], {"args": vars(a), "tuning": tuning, "chosen": chosen, "runs": []}
    pl_of = {k: r["personalization"][chosen[k[0]]["personalize_lr"]] for k, r in final.items()}
    for (alg, sched), r in final.items():
        pl = pl_of[(alg, sched)]
        rows.append(f"| {alg} | {sched} | {r['config']['client_lr']:g} | {r['config']['server_lr']:g} | "
                    f"{r['val_loss']:.3f} | {fmt_q(pl['before'])} | {fmt_q(pl['after'])} | "
                    f"{100 * r['data_wait_frac']:.2f}% |")
        summary["runs"].append({"algorithm": alg, "schedule": sched, "val_loss": r["val_loss"],
                                "before": pl["before"], "after": pl["after"], "data_wait_frac": r["data_wait_frac"],
                                "train_s": r["train_s"], "eval_s": r.get("eval_s"), "per_group": pl["per_group"]})
    med = {k: (pl_of[k]["before"]["median"], pl_of[k]["after"]["median"]) for k in final}
    f1 = all(med["fedavg", s][0] >= med["fedsgd", s][0] - TOL and med["fedavg", s][1] < med["fedsgd", s][1] - TOL
             and (med["fedavg", s][0] - med["fedavg", s][1]) >= 2 * (med["fedsgd", s][0] - med["fedsgd", s][1])
             for s in SCHEDULES)
    f1_after = all(med["fedavg", s][1] < med["fedsgd", s][1] - TOL for s in SCHEDULES)
    f1_before = all(med["fedavg", s][0] >= med["fedsgd", s][0] - TOL for s in SCHEDULES)
    spread = {alg: {w: float(np.ptp([med[alg, s][i] for s in SCHEDULES])) for i, w in enumerate(("before", "after"))}
              for alg in grids}
    f2 = spread["fedavg"]["after"] < spread["fedsgd"]["after"] and spread["fedavg"]["before"] < spread["fedsgd"]["before"]
    summary["verdicts"] = {"finding1": f1, "finding1_before_no_better": f1_before, "finding1_after_lower": f1_after,
                           "finding2": f2, "spread": spread}
    total_s = time.perf_counter() - t_start
    summary["total_s"] = total_s

    plot_curves({f"{alg} {sched}": final[alg, sched]["curve"] for alg, sched in final},
                os.path.join(a.plots, "fl_loss_curves.png"),
                title="FedShakespeare: validation loss (markers) / training loss (thin) per round")
    plot_personalization({f"{alg}\n{sched}": pl_of[alg, sched]["per_group"] for alg, sched in final},
                         os.path.join(a.plots, "fl_personalization.png"),
                         title="held-out groups: test loss before / after personalization (box: quartiles)")
    with open(os.path.join(a.metrics, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)

    print("\ntuning grid (constant schedule; mean per-group validation loss at the last round):")
    for alg, t in tuning.items():
        print(f"  {alg}: " + ", ".join(f"clr {x['client_lr']:g} slr {x['server_lr']:g} -> {x['val_loss']:.4f}" for x in t))
        print(f"    chosen: {chosen[alg]}")
    print("\n| algorithm | schedule | client LR | server LR | validation loss | held-out before: median [p25, p75] "
          "| after: median [p25, p75] | data wait |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nfinding (1), FedAvg is a meta-learner: {'REPRODUCES' if f1 else 'does NOT reproduce'} "
          f"(before personalization FedAvg no better than FedSGD: {f1_before}; after, FedAvg lower by > {TOL}: "
          f"{f1_after})")
    for s in SCHEDULES:
        (ab, aa), (sb, sa) = med["fedavg", s], med["fedsgd", s]
        print(f"  {s}: FedAvg {ab:.3f} -> {aa:.3f} (gain {ab - aa:.3f}); FedSGD {sb:.3f} -> {sa:.3f} (gain {sb - sa:.3f})")
    print(f"finding (2), FedAvg robust to the server LR schedule: {'REPRODUCES' if f2 else 'does NOT reproduce'} "
          f"(spread of median held-out loss over schedules, before / after: FedAvg "
          f"{spread['fedavg']['before']:.3f} / {spread['fedavg']['after']:.3f}, FedSGD "
          f"{spread['fedsgd']['before']:.3f} / {spread['fedsgd']['after']:.3f})")
    waits = [r["data_wait_frac"] for r in final.values()]
    print(f"data wait: {100 * min(waits):.2f}% to {100 * max(waits):.2f}% of round time; total {total_s:.0f} s")
    return summary


if __name__ == "__main__":
    main()
