"""A PyTorch federated-learning reference on torch_grouper data.

Not part of the library API: a small, readable FedAvg / FedSGD simulation
used to reproduce the findings of Dataset Grouper's paper
(arXiv 2307.09619) on FedShakespeare (``benchmarks/fl_findings.py``).

- ``model``: a character-level language model (embedding + 1-layer GRU) and
  its tokenizer over the Shakespeare alphabet;
- ``data``: each round's group ids from an ids-only cohort draw, read through
  ``map_groups`` in DataLoader workers;
- ``algorithms``: FedAvg, FedSGD, server optimizers and learning-rate schedules;
- ``evaluate``: personalization on held-out groups (before / after k local steps);
- ``run``: one training run, per-round JSON Lines metrics and plots (also a CLI:
  ``python examples/federated/run.py --help``).
"""
