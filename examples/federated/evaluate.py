"""Personalization on held-out groups: each group's examples are split into a
``personalize`` and a ``test`` part (``split_examples``); the loss on the test
part is measured with the global model (before), and after ``k`` local SGD
steps on the personalize part (after).  Reported as the median and quartiles
over groups, as Dataset Grouper's paper does."""
from __future__ import annotations

import numpy as np
import torch

from .algorithms import _copy_into, sgd_step
from .model import token_loss


@torch.no_grad()
def mean_loss(model, inputs, targets) -> float:
    """Mean cross-entropy per scored token (nats)."""
    loss, n = token_loss(model, inputs, targets)
    return float(loss) / n if n else float("nan")


def personalize(global_model, local_model, inputs, targets, *, steps: int, lr: float, batch_size: int, seed: int = 0):
    """``steps`` minibatch SGD steps (learning rate ``lr``) on a copy of the global model."""
    _copy_into(local_model, global_model)
    opt = torch.optim.SGD(local_model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(inputs), generator=gen)
    pos = 0
    for _ in range(steps):
        if pos >= len(order):
            order, pos = torch.randperm(len(inputs), generator=gen), 0
        b = order[pos:pos + batch_size]
        pos += batch_size
        sgd_step(local_model, opt, inputs[b], targets[b])
    return local_model


def personalization_losses(global_model, local_model, groups: dict, *, steps: int, lr: float,
                           batch_size: int) -> dict:
    """Per-group test loss before and after personalization.

    ``groups``: ``{group id: ((inputs, targets) of the personalize part,
    (inputs, targets) of the test part)}``; groups with an empty part are
    skipped.  Returns ``{"ids", "before", "after"}`` (lists, one entry a group)."""
    ids, before, after = [], [], []
    global_model.eval()
    for i, (gid, ((pi, pt), (ti, tt))) in enumerate(groups.items()):
        if len(pi) == 0 or len(ti) == 0:
            continue
        ids.append(gid)
        before.append(mean_loss(global_model, ti, tt))
        personalize(global_model, local_model, pi, pt, steps=steps, lr=lr, batch_size=batch_size, seed=i)
        after.append(mean_loss(local_model, ti, tt))
    global_model.train()
    return {"ids": ids, "before": before, "after": after}


def quartiles(values) -> dict:
    """Median and 25th / 75th percentiles of ``values``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"p25": float("nan"), "median": float("nan"), "p75": float("nan"), "groups": 0}
    p25, med, p75 = np.percentile(v, [25, 50, 75])
    return {"p25": float(p25), "median": float(med), "p75": float(p75), "groups": int(v.size)}


def group_losses(model, groups: dict) -> list:
    """Mean loss of each group of ``{gid: (inputs, targets)}`` (validation)."""
    model.eval()
    out = [mean_loss(model, i, t) for i, t in groups.values() if len(i)]
    model.train()
    return out
