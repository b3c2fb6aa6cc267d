"""FedAvg and FedSGD with a server optimizer and server learning-rate schedules.

Both algorithms send the server a pseudo-gradient per client, averaged with
weights = the client's number of scored tokens, and the server applies it
with its own optimizer (``torch.optim.SGD`` with momentum, or ``Adam``) at
the round's learning rate:

- **FedAvg**: the client runs ``epochs`` passes of minibatch SGD (learning
  rate ``client_lr``, batches of ``batch_size`` blocks) from the global
  model; its pseudo-gradient is ``global - local``.
- **FedSGD**: the client computes one full-batch gradient of its mean loss at
  the global model; that gradient is its pseudo-gradient (no client learning
  rate).
"""
from __future__ import annotations

import math

import torch

from .model import token_loss


# ------------------------------------------------------------------ schedules
def lr_schedule(name: str, base_lr: float, rounds: int, *, warmup_frac: float = 0.1, final_frac: float = 0.1):
    """Server learning rate of each round, a function ``round -> lr``.

    - ``constant``: ``base_lr``;
    - ``warmup_cosine``: linear warmup from ``base_lr / w`` to ``base_lr`` over the first
      ``w = max(1, round(warmup_frac * rounds))`` rounds, then cosine decay to 0 at the last round;
    - ``exponential``: ``base_lr * final_frac ** (round / (rounds - 1))`` (``final_frac`` of it at the end).
    """
    if name == "constant":
        return lambda r: base_lr
    if name == "warmup_cosine":
        w = max(1, round(warmup_frac * rounds))

        def f(r):
            if r < w:
                return base_lr * (r + 1) / w
            t = (r - w) / max(1, rounds - 1 - w)
            return base_lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        return f
    if name == "exponential":
        return lambda r: base_lr * final_frac ** (r / max(1, rounds - 1))
    raise ValueError(f"unknown schedule {name!r}: use 'constant', 'warmup_cosine' or 'exponential'")


SCHEDULES = ("constant", "warmup_cosine", "exponential")


def server_optimizer(name: str, params, lr: float):
    """``sgdm`` (SGD, momentum 0.9) or ``adam`` (Adam, eps 1e-3 as in adaptive FL servers)."""
    if name == "sgdm":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99), eps=1e-3)
    raise ValueError(f"unknown server optimizer {name!r}: use 'sgdm' or 'adam'")


# ------------------------------------------------------------------ clients
def _copy_into(dst, src):
    with torch.no_grad():
        for d, s in zip(dst.parameters(), src.parameters()):
            d.copy_(s)


def sgd_step(model, opt, inputs, targets) -> tuple[float, int]:
    """One optimizer step on a batch's mean token loss; returns (summed loss,
    tokens).  A batch without target tokens is skipped."""
    loss, n = token_loss(model, inputs, targets)
    if n == 0:
        return 0.0, 0
    opt.zero_grad(set_to_none=True)
    (loss / n).backward()
    opt.step()
    return loss.item(), n


def fedavg_client(global_model, local_model, inputs, targets, *, client_lr: float, batch_size: int,
                  epochs: int = 1, seed: int = 0):
    """Local SGD from the global model; returns (pseudo-gradient list, tokens, mean training loss)."""
    _copy_into(local_model, global_model)
    opt = torch.optim.SGD(local_model.parameters(), lr=client_lr)
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=gen)
        for s in range(0, len(order), batch_size):
            loss, n = sgd_step(local_model, opt, inputs[order[s:s + batch_size]],
                               targets[order[s:s + batch_size]])
            total, count = total + loss, count + n
    with torch.no_grad():
        delta = [g - l for g, l in zip(global_model.parameters(), local_model.parameters())]
    tokens = int((targets != -100).sum())
    return delta, tokens, total / max(count, 1)


def fedsgd_client(global_model, inputs, targets):
    """One full-batch gradient of the client's mean loss at the global model."""
    global_model.zero_grad(set_to_none=True)
    loss, n = token_loss(global_model, inputs, targets)
    if n == 0:
        return [torch.zeros_like(p) for p in global_model.parameters()], 0, 0.0
    (loss / n).backward()
    grads = [p.grad.detach().clone() for p in global_model.parameters()]
    global_model.zero_grad(set_to_none=True)
    return grads, n, loss.item() / n


# ------------------------------------------------------------------ one round
def run_round(algorithm: str, global_model, local_model, server_opt, clients, *, lr: float,
              client_lr: float = 0.0, batch_size: int = 8, epochs: int = 1, seed: int = 0) -> dict:
    """One round over ``clients`` (a list of ``(group id, inputs, targets)``):
    client updates, token-weighted average, one server optimizer step at ``lr``.
    Returns the round's training loss (token-weighted) and client/token counts."""
    acc = [torch.zeros_like(p) for p in global_model.parameters()]
    tokens, loss_sum, used = 0, 0.0, 0
    for i, (_, inputs, targets) in enumerate(clients):
        if len(inputs) == 0:
            continue
        if algorithm == "fedavg":
            pg, n, loss = fedavg_client(global_model, local_model, inputs, targets, client_lr=client_lr,
                                        batch_size=batch_size, epochs=epochs, seed=seed * 1_000_003 + i)
        elif algorithm == "fedsgd":
            pg, n, loss = fedsgd_client(global_model, inputs, targets)
        else:
            raise ValueError(f"unknown algorithm {algorithm!r}: use 'fedavg' or 'fedsgd'")
        if n == 0:
            continue
        for a, g in zip(acc, pg):
            a.add_(g, alpha=n)
        tokens, loss_sum, used = tokens + n, loss_sum + loss * n, used + 1
    if tokens:
        for p, a in zip(global_model.parameters(), acc):
            p.grad = a / tokens
        for group in server_opt.param_groups:
            group["lr"] = lr
        server_opt.step()
        server_opt.zero_grad(set_to_none=True)
    return {"train_loss": loss_sum / tokens if tokens else float("nan"), "clients": used, "tokens": tokens}
