"""Dataset statistics from the group index (no data scan) and their plots.

The read side only: the label maths behind the index's label columns and the
manifest's ``label_stats`` are in ``labels`` (used when writing).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from .labels import label_matrix, label_summary  # noqa: F401 - label_summary: an index's label skew

PERCENTILES = (0, 10, 25, 50, 75, 90, 99, 100)


def _as_index(obj) -> pa.Table:
    from .dataset import GroupedDataset, load_index

    if isinstance(obj, pa.Table):
        return obj
    if isinstance(obj, GroupedDataset):
        return obj.index
    return load_index(obj)


def summary(obj) -> dict:
    """Counts and percentiles of group sizes.

    ``obj`` is a GroupedDataset, a dataset path, or an index Table.
    """
    index = _as_index(obj)
    out = {"num_groups": index.num_rows}
    for col in ("num_examples", "num_bytes", "num_words"):
        v = index[col].to_numpy() if index.num_rows else np.zeros(0, np.int64)
        out[col] = int(v.sum())
        out[f"{col}_per_group"] = (
            {f"p{p}": float(np.percentile(v, p)) for p in PERCENTILES} | {"mean": float(v.mean())}
            if len(v) else {}
        )
    return out


def format_summary(s: dict) -> str:
    lines = [
        f"groups:   {s['num_groups']:,}",
        f"examples: {s['num_examples']:,}",
        f"bytes:    {s['num_bytes']:,}",
        f"words:    {s['num_words']:,}",
    ]
    head = "per group      " + " ".join(f"{k:>9}" for k in [f"p{p}" for p in PERCENTILES] + ["mean"])
    lines.append(head)
    for col in ("num_examples", "num_bytes", "num_words"):
        d = s[f"{col}_per_group"]
        if d:
            lines.append(f"{col[4:]:<15}" + " ".join(f"{d[k]:>9.1f}" if k == "mean" else f"{d[k]:>9.0f}" for k in d))
    return "\n".join(lines)


def plot_group_sizes(obj, path: str, *, title: str = "group sizes") -> str:
    """Write a PNG: histogram of examples per group (log bins) and the
    log-log complementary CDF of group sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = _as_index(obj)
    n = np.sort(index["num_examples"].to_numpy()) if index.num_rows else np.zeros(0)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if len(n):
        bins = np.unique(np.logspace(0, np.log10(max(n.max(), 1)) + 1e-9, 40).astype(int))
        a.hist(n, bins=np.append(bins, bins[-1] + 1), color="#4477aa", edgecolor="white")
        a.set_xscale("log")
        a.axvline(np.median(n), color="#cc6677", ls="--", label=f"median {np.median(n):.0f}")
        a.legend()
        ccdf = 1.0 - np.arange(len(n)) / len(n)
        b.loglog(n, ccdf, marker=".", ls="none", ms=3, color="#228833")
    a.set_xlabel("examples per group")
    a.set_ylabel("groups")
    a.set_title(f"{title}: {len(n):,} groups, {int(n.sum()):,} examples")
    b.set_xlabel("examples per group (x)")
    b.set_ylabel("fraction of groups with size >= x")
    b.set_title("CCDF (log-log)")
    for ax in (a, b):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------ label skew
def plot_label_distribution(obj, path: str, *, first: int = 30, title: str = "label distribution") -> str:
    """Write a PNG of per-group label counts: stacked bars for the first
    ``first`` groups (like flwr-datasets' plot_label_distributions) and a
    heatmap of label shares over all groups (up to 2,000, by index order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = _as_index(obj)
    if "label_counts" not in index.column_names:
        raise ValueError("the dataset has no label statistics; partition with a label partitioner "
                         "or partition(..., label_column=...)")
    counts = [dict(x) for x in index["label_counts"].to_pylist()]
    ids = index["group_id"].to_pylist()
    labels, mat = label_matrix(counts)
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    k = min(first, len(counts))
    bottom = np.zeros(k)
    cmap = plt.get_cmap("tab20" if len(labels) > 10 else "tab10")
    for j, lab in enumerate(labels):
        a.bar(range(k), mat[:k, j], bottom=bottom, color=cmap(j % cmap.N), label=str(lab), width=0.85)
        bottom += mat[:k, j]
    a.set_xticks(range(k))
    a.set_xticklabels([str(g)[:12] for g in ids[:k]], rotation=90, fontsize=7)
    a.set_xlabel("group")
    a.set_ylabel("examples")
    a.set_title(f"{title}: first {k} of {len(counts):,} groups")
    if len(labels) <= 20:
        a.legend(title="label", fontsize=7, ncol=2, loc="upper right")
    share = mat[:2000] / np.maximum(mat[:2000].sum(1, keepdims=True), 1)
    im = b.imshow(share.T, aspect="auto", interpolation="nearest", cmap="viridis")
    b.set_yticks(range(len(labels)) if len(labels) <= 30 else [])
    if len(labels) <= 30:
        b.set_yticklabels([str(x) for x in labels], fontsize=7)
    b.set_xlabel("group (index order)")
    b.set_title("label share per group")
    fig.colorbar(im, ax=b, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
