"""Dataset statistics from the group index (no data scan) and their plots.

The read side only: the label maths behind the index's label columns and the
manifest's ``label_stats`` are in ``labels`` (used when writing).
"""
from __future__ import annotations

import re

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


def _index_and_label_column(obj) -> tuple[pa.Table, str | None]:
    """The index and, when the manifest names it, the label column."""
    from .dataset import GroupedDataset

    if isinstance(obj, pa.Table):
        return obj, None
    ds = obj if isinstance(obj, GroupedDataset) else GroupedDataset(obj)
    return ds.index, (ds.manifest.get("label_stats") or {}).get("column")


# ------------------------------------------------------------ group ids
def id_text(gid) -> str:
    """A group id as text: str and int ids as they are, bytes ids as UTF-8
    when they decode to printable text, else as hex (``0x...``)."""
    if isinstance(gid, (bytes, bytearray)):
        try:
            s = bytes(gid).decode("utf-8")
            if s.isprintable():
                return s
        except UnicodeDecodeError:
            pass
        return "0x" + bytes(gid).hex()
    return str(gid)


def natural_key(gid):
    """Sort key putting group ids in natural order: integers by value, text
    with its digit runs compared as numbers ("user2" before "user10")."""
    if isinstance(gid, (int, np.integer)) and not isinstance(gid, bool):
        return (0, int(gid), ())
    if isinstance(gid, (bytes, bytearray)):
        return (2, 0, (bytes(gid),))
    parts = tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", str(gid)))
    return (1, 0, parts)


def natural_order(ids) -> np.ndarray:
    """Row numbers of ``ids`` in natural id order (``natural_key``)."""
    return np.array(sorted(range(len(ids)), key=lambda i: natural_key(ids[i])), dtype=np.int64)


def shorten(text: str, width: int | None) -> str:
    """``text`` cut in the middle with an ellipsis to at most ``width``
    characters, keeping a third of them from its start and the rest from its
    end (where ids tend to differ); None: never cut."""
    if width is None or len(text) <= width:
        return text
    width = max(width, 5)
    head = (width - 1) // 3
    return text[:head] + "\u2026" + text[len(text) - (width - 1 - head):]


def short_names(names: list, width: int | None) -> list:
    """``shorten`` every name to the same width, widened until distinct
    names stay distinct."""
    distinct = len(set(names))
    while True:
        out = [shorten(n, width) for n in names]
        if width is None or len(set(out)) == distinct:
            return out
        width += 4


# ------------------------------------------------------------ summary
def summary(obj) -> dict:
    """Counts and percentiles of group sizes, and (when the index has label
    columns) the label skew: ``labels`` with the label column, the number of
    labels, labels per group, Hellinger and Jensen-Shannon distances of the
    groups' label distributions to the global one, and the most skewed groups.

    ``obj`` is a GroupedDataset, a dataset path, or an index Table.
    """
    index, column = _index_and_label_column(obj)
    out = {"num_groups": index.num_rows}
    for col in ("num_examples", "num_bytes", "num_words"):
        v = index[col].to_numpy() if index.num_rows else np.zeros(0, np.int64)
        out[col] = int(v.sum())
        out[f"{col}_per_group"] = (
            {f"p{p}": float(np.percentile(v, p)) for p in PERCENTILES} | {"mean": float(v.mean())}
            if len(v) else {}
        )
    ls = label_summary(index) if index.num_rows else None
    if ls is not None:
        hell = index["hellinger"].to_numpy()
        js = index["jensen_shannon"].to_numpy()
        n = index["num_examples"].to_numpy()
        ids = index["group_id"].to_pylist()
        labels_in = [len([1 for _, c in row if c > 0]) for row in index["label_counts"].to_pylist()]
        top = sorted(range(len(ids)), key=lambda i: (-hell[i], natural_key(ids[i])))[:MOST_SKEWED]
        out["labels"] = {
            "column": column,
            "num_labels": ls["num_labels"],
            "labels_per_group": ls["labels_per_group"],
            "hellinger": ls["hellinger"],
            "jensen_shannon": ls["jensen_shannon"],
            "most_skewed": [{"group_id": ids[i] if isinstance(ids[i], (int, str)) else id_text(ids[i]),
                             "hellinger": float(hell[i]), "jensen_shannon": float(js[i]),
                             "num_examples": int(n[i]), "num_labels": labels_in[i]} for i in top],
        }
    return out


#: groups listed as the most skewed by ``summary``
MOST_SKEWED = 5


def format_summary(s: dict) -> str:
    """``summary``'s figures as text.  A count that is zero for every group
    (words of data without text) gets no row."""
    cols = [c for c in ("num_examples", "num_bytes", "num_words") if c == "num_examples" or s[c]]
    lines = [f"groups:   {s['num_groups']:,}"] + [f"{c[4:] + ':':<9} {s[c]:,}" for c in cols]
    head = "per group      " + " ".join(f"{k:>9}" for k in [f"p{p}" for p in PERCENTILES] + ["mean"])
    lines.append(head)
    for col in cols:
        d = s[f"{col}_per_group"]
        if d:
            lines.append(f"{col[4:]:<15}" + " ".join(f"{d[k]:>9.1f}" if k == "mean" else f"{d[k]:>9.0f}" for k in d))
    lab = s.get("labels")
    if lab:
        col = f" in column {lab['column']!r}" if lab.get("column") else ""
        lpg = lab["labels_per_group"]
        lines.append(f"labels:   {lab['num_labels']:,}{col}")
        lines.append(f"labels per group    mean {lpg['mean']:.2f}  min {lpg['min']}  max {lpg['max']}")
        lines.append("distance to the global label distribution (0: the same, 1: disjoint)")
        for name, key in (("hellinger", "hellinger"), ("jensen-shannon", "jensen_shannon")):
            d = lab[key]
            lines.append(f"  {name:<17} mean {d['mean']:.3f}  median {d['median']:.3f}  max {d['max']:.3f}")
        if lab["most_skewed"]:
            lines.append("most skewed groups (hellinger, jensen-shannon, examples, labels)")
            for g in lab["most_skewed"]:
                lines.append(f"  {shorten(id_text(g['group_id']), 40):<40} {g['hellinger']:.3f}  "
                             f"{g['jensen_shannon']:.3f}  {g['num_examples']:>9,}  {g['num_labels']:>4}")
    return "\n".join(lines)


# ------------------------------------------------------------ plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> str:
    path = str(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def group_sizes_figure(obj, *, title: str = "group sizes"):
    """A Figure: histogram of examples per group and the complementary CDF
    of group sizes.  Log x axes (and log bins) only where the sizes span two
    decades or more; the bins and the x range follow the sizes; counts of
    groups get integer ticks."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    index = _as_index(obj)
    n = np.sort(index["num_examples"].to_numpy()) if index.num_rows else np.zeros(0, np.int64)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    logx = bool(len(n)) and n.min() >= 1 and n.max() / n.min() >= 100
    if len(n):
        lo, hi = int(n.min()), int(n.max())
        if logx:
            edges = np.unique(np.geomspace(lo, hi + 1, 40).round().astype(int))
        elif hi - lo < min(40, 4 * len(n)):
            edges = np.arange(lo, hi + 2) - 0.5  # one bin per size
        else:
            edges = np.histogram_bin_edges(n, bins=min(40, max(5, int(2 * np.sqrt(len(n))))))
        a.hist(n, bins=edges, color="#4477aa", edgecolor="white")
        a.set_xlim(edges[0], edges[-1])
        med = float(np.median(n))
        a.axvline(med, color="#cc6677", ls="--", label=f"median {med:g}")
        a.legend()
        ccdf = 1.0 - np.arange(len(n)) / len(n)
        b.step(n, ccdf, where="post", color="#228833")
        b.plot(n, ccdf, marker=".", ls="none", ms=3, color="#228833")
        if logx:
            a.set_xscale("log")
            b.set_xscale("log")
            b.set_yscale("log")
        else:
            b.set_xlim(lo - 0.5, hi + 0.5)
            b.xaxis.set_major_locator(MaxNLocator(integer=True))
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
    a.yaxis.set_major_locator(MaxNLocator(integer=True))
    a.set_xlabel("examples per group")
    a.set_ylabel("groups")
    a.set_title(f"{title}: {len(n):,} groups, {int(n.sum()):,} examples")
    b.set_xlabel("examples per group (x)")
    b.set_ylabel("fraction of groups with size >= x")
    b.set_title("CCDF" + (" (log-log)" if logx else ""))
    for ax in (a, b):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def plot_group_sizes(obj, path: str, *, title: str = "group sizes") -> str:
    """Write ``group_sizes_figure`` as a PNG; returns ``path``."""
    return _save(group_sizes_figure(obj, title=title), path)


def _label_counts(obj):
    """(group ids, labels in label order, count matrix, label column) of a dataset."""
    index, column = _index_and_label_column(obj)
    if "label_counts" not in index.column_names:
        raise ValueError("the dataset has no label statistics; partition with a label partitioner "
                         "or partition(..., label_column=...)")
    labels, mat = label_matrix([dict(x) for x in index["label_counts"].to_pylist()])
    return index["group_id"].to_pylist(), labels, mat, column


def _top_labels(labels: list, totals: np.ndarray, k: int) -> tuple[list, list]:
    """The ``k`` most frequent labels (in natural order) and the column
    numbers of the rest ("other"); all labels when there are at most k + 1."""
    if len(labels) <= k + 1:
        return sorted(range(len(labels)), key=lambda j: natural_key(str(labels[j]))), []
    top = sorted(np.argsort(-totals, kind="stable")[:k].tolist(), key=lambda j: natural_key(str(labels[j])))
    return top, sorted(set(range(len(labels))) - set(top))


def _label_colors(n_top: int, other: bool):
    """A colour per shown label and grey for "other": tab10 (without its
    grey when "other" needs it), else tab20's dark colours then its light
    ones (so neighbouring labels differ; greys left out), then tab20b."""
    plt = _pyplot()
    tab10 = list(plt.get_cmap("tab10").colors)
    if n_top <= 10 and not other:
        base = tab10
    elif n_top <= 9:
        base = [c for i, c in enumerate(tab10) if i != 7]
    else:
        tab20 = plt.get_cmap("tab20").colors
        base = [tab20[i] for i in list(range(0, 20, 2)) + list(range(1, 20, 2)) if i not in (14, 15)]
        base += list(plt.get_cmap("tab20b").colors)
    return [base[j % len(base)] for j in range(n_top)] + (["#b0b0b0"] if other else [])


def _grouped_columns(mat: np.ndarray, top: list, rest: list) -> np.ndarray:
    cols = [mat[:, top]]
    if rest:
        cols.append(mat[:, rest].sum(1, keepdims=True))
    return np.concatenate(cols, axis=1).astype(np.float64)


def _stacked_bars(ax, values: np.ndarray, colors: list, names: list) -> list:
    """Horizontal stacked bars, row 0 at the top; returns the bar containers."""
    y = np.arange(values.shape[0])
    left = np.zeros(values.shape[0])
    bars = []
    for j in range(values.shape[1]):
        bars.append(ax.barh(y, values[:, j], left=left, color=colors[j], height=0.85, label=names[j]))
        left += values[:, j]
    return bars


def _id_ticks(ax, names: list, width: int | None) -> None:
    """Group ids as y tick labels, shortened to ``width``; each label's gid
    is the full id (an SVG keeps it as the element's id)."""
    texts = ax.set_yticklabels(short_names(names, width), fontsize=8 if len(names) <= 30 else 6)
    for t, full in zip(texts, names):
        t.set_gid(full)


def label_distribution_figure(obj, *, max_groups: int = 50, top_groups: int = 30, top_labels: int = 18,
                              size_unit: str = "absolute", name_width: int | None = 28,
                              title: str = "label distribution"):
    """A Figure of per-group label counts (flwr-datasets'
    ``plot_label_distributions`` counterpart): stacked horizontal bars per
    group and a heatmap of each group's label shares.

    Up to ``max_groups`` groups: every group, in natural id order (integers
    numerically), its id on the y axis shared by both panels.  More: the
    bars show the ``top_groups`` largest groups with their ids, and the
    heatmap all groups sorted by size (y: rank).  The ``top_labels`` most
    frequent labels get a colour and a legend entry, the rest are summed
    as "other".  Ids and labels longer than ``name_width`` characters are
    shortened in the middle with an ellipsis (None: never).  ``size_unit``:
    "absolute" (examples) or "percent" (of the group)."""
    if size_unit not in ("absolute", "percent"):
        raise ValueError(f"size_unit must be 'absolute' or 'percent', got {size_unit!r}")
    plt = _pyplot()
    ids, labels, mat, column = _label_counts(obj)
    n_groups = len(ids)
    top, rest = _top_labels(labels, mat.sum(0), top_labels)
    cols = _grouped_columns(mat, top, rest)
    names = short_names([str(labels[j]) for j in top], name_width) + (["other"] if rest else [])
    colors = _label_colors(len(top), bool(rest))
    sizes = mat.sum(1)
    share = cols / np.maximum(cols.sum(1, keepdims=True), 1)
    few = n_groups <= max_groups
    if few:
        bar_rows = heat_rows = natural_order(ids)
    else:
        by_size = np.array(sorted(range(n_groups), key=lambda i: (-sizes[i], natural_key(ids[i]))), dtype=np.int64)
        bar_rows, heat_rows = by_size[:top_groups], by_size
    height = max(4.0, 0.2 * len(bar_rows) + 2.0)
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, height), sharey=few,
                               gridspec_kw={"width_ratios": [3, 2]})
    vals = cols[bar_rows] if size_unit == "absolute" else 100 * share[bar_rows]
    _stacked_bars(a, vals, colors, names)
    a.set_yticks(np.arange(len(bar_rows)))
    _id_ticks(a, [id_text(ids[i]) for i in bar_rows], name_width)
    a.set_ylim(len(bar_rows) - 0.5, -0.5)  # the first group at the top
    a.set_ylabel("group" if few else f"the {len(bar_rows)} largest groups")
    a.set_xlabel("examples" if size_unit == "absolute" else "% of the group's examples")
    if size_unit == "percent":
        a.set_xlim(0, 100)
    a.set_title(f"{title}: {n_groups:,} groups, {len(labels):,} labels")
    im = b.imshow(share[heat_rows], aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1,
                  extent=(-0.5, share.shape[1] - 0.5, len(heat_rows) - 0.5, -0.5))
    b.set_xticks(np.arange(share.shape[1]))
    b.set_xticklabels(names, rotation=90 if share.shape[1] > 6 and max(map(len, names)) > 3 else 0, fontsize=8)
    b.set_xlabel(column or "label")
    if few:
        b.tick_params(axis="y", labelleft=False)
    else:
        b.set_ylabel("groups by size (rank)")
        b.set_ylim(len(heat_rows) - 0.5, -0.5)
    b.set_title("label share per group")
    cb = fig.colorbar(im, ax=b, fraction=0.05)
    cb.set_label("share of the group's examples")
    fig.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colors], labels=names,
               title=column or "label", loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def plot_label_distribution(obj, path: str, *, first: int | None = None, title: str = "label distribution",
                            **kwargs) -> str:
    """Write ``label_distribution_figure`` as a PNG; returns ``path``.
    ``first`` is the older name of ``max_groups``."""
    if first is not None:
        kwargs.setdefault("max_groups", first)
    return _save(label_distribution_figure(obj, title=title, **kwargs), path)


def comparison_label_figure(objs, *, titles=None, max_groups: int = 30, top_labels: int = 18,
                            size_unit: str = "percent", name_width: int | None = 20,
                            title: str = "label distribution per group"):
    """A Figure comparing the label distributions of several grouped datasets
    (or partitionings of one dataset) side by side, flwr-datasets'
    ``plot_comparison_label_distribution`` counterpart: one panel per
    dataset, stacked horizontal bars for its first ``max_groups`` groups in
    natural id order, the same colour for a label in every panel and one
    legend (the ``top_labels`` most frequent labels over all datasets, the
    rest as "other")."""
    if size_unit not in ("absolute", "percent"):
        raise ValueError(f"size_unit must be 'absolute' or 'percent', got {size_unit!r}")
    objs = list(objs)
    if not objs:
        raise ValueError("comparison_label_figure needs at least one dataset")
    if titles is None:
        titles = [id_text(o) if isinstance(o, (str, bytes)) else str(getattr(o, "path", o)) for o in objs]
    titles = [str(t) for t in titles]
    if len(titles) != len(objs):
        raise ValueError(f"got {len(titles)} titles for {len(objs)} datasets")
    plt = _pyplot()
    parts = [_label_counts(o) for o in objs]
    totals: dict = {}  # each dataset's label shares, summed: every dataset weighs the same
    for _, labels, mat, _ in parts:
        for lab, c in zip(labels, mat.sum(0) / max(int(mat.sum()), 1)):
            totals[lab] = totals.get(lab, 0.0) + float(c)
    from .labels import label_sort_key

    all_labels = sorted(totals, key=label_sort_key)
    top, rest = _top_labels(all_labels, np.array([totals[x] for x in all_labels]), top_labels)
    names = short_names([str(all_labels[j]) for j in top], name_width) + (["other"] if rest else [])
    colors = _label_colors(len(top), bool(rest))
    rows_max = max(min(max_groups, len(p[0])) for p in parts)
    fig, axes = plt.subplots(1, len(parts), figsize=(4.2 * len(parts) + 1.5, max(4.0, 0.2 * rows_max + 2.0)),
                             squeeze=False)
    column = next((p[3] for p in parts if p[3]), None)
    for ax, (ids, labels, mat, _), name in zip(axes[0], parts, titles):
        col = {lab: j for j, lab in enumerate(labels)}
        full = np.zeros((len(ids), len(all_labels)))
        for j, lab in enumerate(all_labels):
            if lab in col:
                full[:, j] = mat[:, col[lab]]
        cols = _grouped_columns(full, top, rest)
        rows = natural_order(ids)[:max_groups]
        vals = cols[rows] if size_unit == "absolute" else 100 * cols[rows] / np.maximum(cols[rows].sum(1, keepdims=True), 1)
        _stacked_bars(ax, vals, colors, names)
        ax.set_yticks(np.arange(len(rows)))
        _id_ticks(ax, [id_text(ids[i]) for i in rows], name_width)
        ax.set_ylim(rows_max - 0.5, -0.5)
        ax.set_title(shorten(name, 40) + (f"\nfirst {len(rows)} of {len(ids):,} groups" if len(ids) > len(rows)
                                          else f"\n{len(ids):,} groups"), fontsize=9)
        ax.set_xlabel("examples" if size_unit == "absolute" else "% of the group's examples")
        if size_unit == "percent":
            ax.set_xlim(0, 100)
    axes[0][0].set_ylabel("group")
    fig.suptitle(title)
    fig.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colors], labels=names,
               title=column or "label", loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8)
    fig.tight_layout()
    return fig


def plot_comparison_label_distribution(objs, path: str, **kwargs) -> str:
    """Write ``comparison_label_figure`` as a PNG; returns ``path``."""
    return _save(comparison_label_figure(objs, **kwargs), path)
