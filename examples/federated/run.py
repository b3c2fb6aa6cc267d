#!/usr/bin/env python3
"""One federated training run on a grouped dataset, with per-round JSON Lines
metrics, personalization on held-out groups, and plots.

    python examples/federated/run.py --data out/fedshakespeare --algorithm fedavg \
        --client-lr 0.5 --server-lr 0.01 --schedule warmup_cosine --rounds 100 --out out/fl

Without ``--data`` the shipped FedShakespeare is partitioned into ``--out``
first.  Splits (seeded by ``--split-seed``): groups -> train / held-out
(``split_groups``, 90 / 10), train -> fit / validation (90 / 10), and each
held-out group's examples -> personalize / test (50 / 50).
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:  # run as a script: import the package by name
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from federated.run import main
    sys.exit(main())

import argparse
import dataclasses
import gzip
import json
import time

import numpy as np
import torch

import torch_grouper as tg

from .algorithms import lr_schedule, run_round, server_optimizer
from .data import ClientBlocks, cohort_ids, iterate_rounds, load_groups
from .evaluate import group_losses, personalization_losses, quartiles
from .model import make_model

HERE = os.path.dirname(os.path.abspath(__file__))
FEDSHAKESPEARE = os.path.join(HERE, "..", "..", "data", "fedshakespeare", "fedshakespeare.jsonl.gz")


def speaker_key(ex):
    return f"{ex['play']}/{ex['speaker']}"


def partition_fedshakespeare(out: str, *, limit: int | None = None, source: str = FEDSHAKESPEARE) -> str:
    """Partition the shipped FedShakespeare (one group per play and speaker) into ``out``;
    ``limit``: only its first ``limit`` speech turns (for quick tests)."""
    if limit is None:
        src = source
    else:
        with gzip.open(source, "rt", encoding="utf-8") as f:
            src = [json.loads(line) for _, line in zip(range(limit), f)]
    tg.partition(src, key=speaker_key, output=out, num_workers=1, overwrite=True, shard_bytes=1 << 20,
                 progress=False)
    return out


@dataclasses.dataclass
class Config:
    algorithm: str = "fedavg"          # fedavg | fedsgd
    client_lr: float = 0.5             # FedAvg's local SGD (FedSGD has none)
    server_lr: float = 0.01
    server_opt: str = "adam"           # adam | sgdm
    schedule: str = "constant"         # constant | warmup_cosine | exponential
    rounds: int = 50
    cohort: int = 10
    block_size: int = 64               # characters per language-model block
    max_blocks: int = 16               # cap on a client's blocks per round
    batch_size: int = 4                # FedAvg's local minibatch (blocks)
    epochs: int = 1                    # FedAvg's local passes
    seed: int = 0                      # model init and cohort draws
    workers: int = 2                   # DataLoader workers reading client data
    eval_every: int = 10               # rounds between validation losses (0: only at the end)
    personalize_steps: int = 5
    personalize_lr: float = 0.5
    personalize_batch: int = 4
    hidden: int = 128
    threads: int = 1                   # torch threads for training (more only contend on a small machine)

    @property
    def name(self) -> str:
        lr = f"clr{self.client_lr:g}-" if self.algorithm == "fedavg" else ""
        return f"{self.algorithm}-{lr}slr{self.server_lr:g}-{self.schedule}"


@dataclasses.dataclass
class Splits:
    fit: tg.GroupedDataset
    validation: tg.GroupedDataset
    personalize: tg.GroupedDataset
    test: tg.GroupedDataset
    val_personalize: tg.GroupedDataset
    val_test: tg.GroupedDataset


def make_splits(path, *, seed: int = 0, min_examples: int = 2) -> Splits:
    """Client splits: held-out groups never train, validation groups are drawn
    from the training groups (and only choose hyperparameters)."""
    ds = tg.GroupedDataset(path)
    outer = ds.split_groups({"train": 0.9, "heldout": 0.1}, seed=seed)
    inner = outer["train"].split_groups({"fit": 0.9, "validation": 0.1}, seed=seed + 1)
    parts = {"personalize": 0.5, "test": 0.5}
    ex = outer["heldout"].split_examples(parts, seed=seed, min_examples=min_examples)
    vex = inner["validation"].split_examples(parts, seed=seed, min_examples=min_examples)
    return Splits(inner["fit"], inner["validation"], ex["personalize"], ex["test"], vex["personalize"], vex["test"])


def load_personalization_data(personalize: tg.GroupedDataset, test: tg.GroupedDataset, cfg: Config, *,
                              max_groups: int | None = None) -> dict:
    """``{gid: ((inputs, targets) of its personalize part, (inputs, targets) of its test part)}``."""
    fn = ClientBlocks(cfg.block_size, cfg.max_blocks)
    ids = personalize.group_ids()[:max_groups]
    p = load_groups(personalize, ids, fn, num_workers=cfg.workers)
    t = load_groups(test, ids, fn, num_workers=cfg.workers)
    return {g: ((p[g][1], p[g][2]), (t[g][1], t[g][2])) for g in ids}


def load_eval_data(splits: Splits, cfg: Config, *, max_validation: int | None = None,
                   max_heldout: int | None = None) -> tuple[dict, dict]:
    """(validation ``{gid: (inputs, targets)}``, held-out ``{gid: (personalize, test)}``)."""
    fn = ClientBlocks(cfg.block_size, cfg.max_blocks)
    vids = splits.validation.group_ids()[:max_validation]
    val = {g: (i, t) for g, (_, i, t) in load_groups(splits.validation, vids, fn, num_workers=cfg.workers).items()}
    return val, load_personalization_data(splits.personalize, splits.test, cfg, max_groups=max_heldout)


def train(cfg: Config, splits: Splits, val: dict, held: dict | None, *, log=None, personalize_lrs=None) -> dict:
    """Train one configuration; write one JSON line a round to ``log`` (a file).

    Returns the run's summary: validation loss, held-out losses before and
    after personalization (median and quartiles; one entry per learning rate
    of ``personalize_lrs`` when given), the data-wait fraction, and times."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = make_model(cfg.seed, hidden=cfg.hidden)
    local = make_model(cfg.seed, hidden=cfg.hidden)
    opt = server_optimizer(cfg.server_opt, model.parameters(), cfg.server_lr)
    sched = lr_schedule(cfg.schedule, cfg.server_lr, cfg.rounds)
    ids = cohort_ids(splits.fit, cfg.cohort, cfg.rounds, seed=cfg.seed)
    fn = ClientBlocks(cfg.block_size, cfg.max_blocks)
    curve, wait_total, round_total = [], 0.0, 0.0
    t_run = time.perf_counter()
    t0 = time.perf_counter()
    for r, clients, wait in iterate_rounds(splits.fit, ids, fn, num_workers=cfg.workers):
        lr = sched(r)
        m = run_round(cfg.algorithm, model, local, opt, clients, lr=lr, client_lr=cfg.client_lr,
                      batch_size=cfg.batch_size, epochs=cfg.epochs, seed=cfg.seed * 100_003 + r)
        t1 = time.perf_counter()
        rec = {"run": cfg.name, "round": r, "server_lr": lr, **m, "round_s": t1 - t0, "data_wait_s": wait,
               "data_wait_frac": wait / (t1 - t0)}
        wait_total, round_total = wait_total + wait, round_total + (t1 - t0)
        last = r == cfg.rounds - 1
        if last or (cfg.eval_every and (r + 1) % cfg.eval_every == 0):
            rec["val_loss"] = float(np.mean(group_losses(model, val))) if val else float("nan")
        curve.append(rec)
        if log is not None:
            log.write(json.dumps(rec) + "\n")
            log.flush()
        t0 = time.perf_counter()
    train_s = time.perf_counter() - t_run
    out = {"name": cfg.name, "config": dataclasses.asdict(cfg), "val_loss": curve[-1]["val_loss"],
           "data_wait_frac": wait_total / round_total if round_total else float("nan"),
           "train_s": train_s, "curve": curve, "model": model}
    if held:
        t2 = time.perf_counter()
        lrs = personalize_lrs or [cfg.personalize_lr]
        out["personalization"] = {}
        for plr in lrs:
            pl = personalization_losses(model, local, held, steps=cfg.personalize_steps, lr=plr,
                                        batch_size=cfg.personalize_batch)
            out["personalization"][plr] = {"before": quartiles(pl["before"]), "after": quartiles(pl["after"]),
                                           "per_group": pl}
        out["eval_s"] = time.perf_counter() - t2
    return out


# ------------------------------------------------------------------ plots
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(runs: dict, path: str, *, title: str = "") -> str:
    """Loss curves: ``runs`` = ``{label: per-round records}``; training loss
    (moving average, thin) and validation loss (markers) against the round."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=80)
    for k, (label, recs) in enumerate(runs.items()):
        color = f"C{k % 10}"
        tl = np.array([x["train_loss"] for x in recs], dtype=float)
        w = max(1, len(tl) // 20)
        sm = np.convolve(np.nan_to_num(tl, nan=np.nanmean(tl)), np.ones(w) / w, mode="valid")
        ax.plot(np.arange(len(sm)) + w - 1, sm, color=color, lw=0.8, alpha=0.5)
        ev = [(x["round"], x["val_loss"]) for x in recs if "val_loss" in x]
        if ev:
            ax.plot(*zip(*ev), color=color, marker="o", ms=3, label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("loss (nats / char)")
    ax.set_title(title or "validation loss (markers), training loss (thin)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_personalization(results: dict, path: str, *, title: str = "") -> str:
    """Box plots of per-group held-out loss before / after personalization:
    ``results`` = ``{label: {"before": [...], "after": [...]}}``."""
    plt = _plt()
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=80)
    colors = ("#bbbbbb", "#6fa8dc")
    for k, pl in enumerate(results.values()):
        for j, part in enumerate(("before", "after")):
            box = ax.boxplot([pl[part]], positions=[3 * k + j + 1], widths=0.8, showfliers=False,
                             patch_artist=True)
            box["boxes"][0].set_facecolor(colors[j])
    ax.set_xticks([3 * k + 1.5 for k in range(len(results))], list(results), fontsize=7)
    ax.legend(handles=[Patch(color=c, label=f"{w} personalization") for c, w in zip(colors, ("before", "after"))],
              fontsize=7)
    ax.set_ylabel("held-out group test loss (nats / char)")
    ax.set_title(title or "per-group loss before / after personalization", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a partitioned dataset (default: partition the shipped FedShakespeare)")
    p.add_argument("--out", default="out/fl")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--max-heldout", type=int, default=None, help="evaluate on at most this many held-out groups")
    for f in dataclasses.fields(Config):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    a = p.parse_args(argv)
    cfg = Config(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Config)})
    os.makedirs(a.out, exist_ok=True)
    data = a.data or partition_fedshakespeare(os.path.join(a.out, "fedshakespeare"))
    splits = make_splits(data, seed=a.split_seed)
    val, held = load_eval_data(splits, cfg, max_heldout=a.max_heldout)
    with open(os.path.join(a.out, f"{cfg.name}.jsonl"), "w") as log:
        res = train(cfg, splits, val, held, log=log)
    pl = res["personalization"][cfg.personalize_lr]
    b, f = pl["before"], pl["after"]
    print(f"{cfg.name}: {cfg.rounds} rounds in {res['train_s']:.1f} s, data wait {100 * res['data_wait_frac']:.1f}%"
          f" of round time; validation loss {res['val_loss']:.3f}; held-out ({b['groups']} groups) median "
          f"{b['median']:.3f} [{b['p25']:.3f}, {b['p75']:.3f}] before -> {f['median']:.3f} "
          f"[{f['p25']:.3f}, {f['p75']:.3f}] after {cfg.personalize_steps} steps")
    plot_curves({cfg.name: res["curve"]}, os.path.join(a.out, f"{cfg.name}_loss.png"))
    plot_personalization({cfg.name: pl["per_group"]}, os.path.join(a.out, f"{cfg.name}_personalization.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
