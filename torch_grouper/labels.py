"""Label maths: per-group label counts and their distance to the global label
distribution (label skew), computed when a dataset is written.

The writer sums each group's label counts (``add_counts``), the index gets
the per-group columns (``label_columns``) and the manifest the dataset-level
figures (``label_summary``).  Labels are the keys of the count dicts: text
(str labels as they are, other values as their JSON).  Distances are in
[0, 1]: Hellinger, and Jensen-Shannon with log base 2 (the square root of
the divergence, a metric).  Nothing here reads a dataset; ``stats`` (the
read side: summaries and plots) imports this module, not the reverse.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def add_counts(into: dict, counts: dict) -> dict:
    """Add ``counts`` ({label: count}) into ``into``, in place; returns ``into``.
    New labels are appended in the order ``counts`` gives them."""
    for k, v in counts.items():
        into[k] = into.get(k, 0) + v
    return into


def label_sort_key(label: str):
    """Order of labels in the index and the manifest: labels that read as
    numbers first, by value (so "2" before "10"), then the others as text."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def label_matrix(counts: list) -> tuple[list, np.ndarray]:
    """``(labels, matrix)`` from per-group {label: count}: the labels of all
    groups sorted by ``label_sort_key``, and an int64 matrix with one row per
    group and one column per label."""
    labels = sorted({k for c in counts for k in c}, key=label_sort_key)
    col = {k: i for i, k in enumerate(labels)}
    mat = np.zeros((len(counts), len(labels)), dtype=np.int64)
    for r, c in enumerate(counts):
        for k, v in c.items():
            mat[r, col[k]] = v
    return labels, mat


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Kullback-Leibler divergence KL(p || q) in bits, over the last axis.
    Terms with p = 0 count 0; a term with p > 0 and q = 0 is p * log2(p)
    (q taken as 1): callers compare against a mixture that is never 0 where p
    is not."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.log2(p / np.where(q > 0, q, 1)), 0.0)
    return t.sum(-1)


def hellinger(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hellinger distance between distributions, over the last axis (in [0, 1])."""
    return np.sqrt(0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(-1))


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance (log base 2, so in [0, 1]) between
    distributions, over the last axis: the square root of
    0.5 KL(p || m) + 0.5 KL(q || m) with m = (p + q) / 2."""
    p, q = np.broadcast_arrays(p, q)
    m = 0.5 * (p + q)
    return np.sqrt(np.maximum(0.5 * kl_divergence(p, m) + 0.5 * kl_divergence(q, m), 0.0))


def distances_to_global(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row Hellinger and Jensen-Shannon distances of a count matrix (rows:
    groups, columns: labels) to the global label distribution, and that
    distribution.  A row of zeros is the zero vector, not a distribution."""
    total = mat.sum(0)
    q = total / max(total.sum(), 1)
    p = mat / np.maximum(mat.sum(1, keepdims=True), 1)
    return hellinger(p, q), jensen_shannon(p, q), q


def label_columns(counts: list) -> dict:
    """Index columns for per-group label statistics, from per-group {label: count}.

    ``label_counts`` (map label -> count, labels sorted by ``label_sort_key``),
    ``hellinger`` and ``jensen_shannon``: each group's distance to the
    global label distribution."""
    labels, mat = label_matrix(counts)
    hell, js, _ = distances_to_global(mat.astype(np.float64))
    lc = pa.array([sorted(c.items(), key=lambda kv: label_sort_key(kv[0])) for c in counts],
                  type=pa.map_(pa.string(), pa.int64()))
    return {"label_counts": lc, "hellinger": pa.array(hell, type=pa.float64()),
            "jensen_shannon": pa.array(js, type=pa.float64())}


def label_summary(index: pa.Table) -> dict | None:
    """Dataset-level label skew from an index with label columns (or None):
    the manifest's ``label_stats``."""
    if "label_counts" not in index.column_names:
        return None
    counts = [dict(x) for x in index["label_counts"].to_pylist()]
    labels, mat = label_matrix(counts)
    hell, js, q = distances_to_global(mat.astype(np.float64))
    per_group_labels = (mat > 0).sum(1)
    return {
        "num_labels": len(labels),
        "global_distribution": {k: round(float(v), 6) for k, v in zip(labels, q)},
        "hellinger": {"mean": float(hell.mean()), "median": float(np.median(hell)), "max": float(hell.max())},
        "jensen_shannon": {"mean": float(js.mean()), "median": float(np.median(js)), "max": float(js.max())},
        "labels_per_group": {"mean": float(per_group_labels.mean()), "min": int(per_group_labels.min()),
                             "max": int(per_group_labels.max())},
    }
