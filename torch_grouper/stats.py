"""Dataset statistics from the group index (no data scan) and their plots."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

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
def _distances(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row Hellinger and Jensen-Shannon (base 2) distances to the global
    label distribution, and that distribution."""
    total = counts.sum(0)
    q = total / max(total.sum(), 1)
    p = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    hell = np.sqrt(0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(1))
    m = 0.5 * (p + q)

    def kl(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(a > 0, a * np.log2(a / np.where(b > 0, b, 1)), 0.0)
        return t.sum(1)

    js = np.sqrt(np.maximum(0.5 * kl(p, m) + 0.5 * kl(np.broadcast_to(q, p.shape), m), 0.0))
    return hell, js, q


def _label_matrix(counts: list) -> tuple[list, np.ndarray]:
    labels = sorted({k for c in counts for k in c}, key=_label_sort_key)
    col = {k: i for i, k in enumerate(labels)}
    mat = np.zeros((len(counts), len(labels)), dtype=np.int64)
    for r, c in enumerate(counts):
        for k, v in c.items():
            mat[r, col[k]] = v
    return labels, mat


def _label_sort_key(k: str):
    try:
        return (0, float(k), k)
    except ValueError:
        return (1, 0.0, k)


def label_columns(counts: list) -> dict:
    """Index columns for per-group label statistics, from per-group {label: count}.

    ``label_counts`` (map label -> count; labels as JSON text unless strings),
    ``hellinger`` and ``jensen_shannon``: each group's distance to the
    global label distribution (JS with log base 2, so both lie in [0, 1])."""
    labels, mat = _label_matrix(counts)
    hell, js, _ = _distances(mat.astype(np.float64))
    lc = pa.array([sorted(c.items(), key=lambda kv: _label_sort_key(kv[0])) for c in counts],
                  type=pa.map_(pa.string(), pa.int64()))
    return {"label_counts": lc, "hellinger": pa.array(hell, type=pa.float64()),
            "jensen_shannon": pa.array(js, type=pa.float64())}


def label_summary(index: pa.Table) -> dict | None:
    """Dataset-level label skew from an index with label columns (or None)."""
    if "label_counts" not in index.column_names:
        return None
    counts = [dict(x) for x in index["label_counts"].to_pylist()]
    labels, mat = _label_matrix(counts)
    hell, js, q = _distances(mat.astype(np.float64))
    per_group_labels = (mat > 0).sum(1)
    return {
        "num_labels": len(labels),
        "global_distribution": {k: round(float(v), 6) for k, v in zip(labels, q)},
        "hellinger": {"mean": float(hell.mean()), "median": float(np.median(hell)), "max": float(hell.max())},
        "jensen_shannon": {"mean": float(js.mean()), "median": float(np.median(js)), "max": float(js.max())},
        "labels_per_group": {"mean": float(per_group_labels.mean()), "min": int(per_group_labels.min()),
                             "max": int(per_group_labels.max())},
    }


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
    labels, mat = _label_matrix(counts)
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
