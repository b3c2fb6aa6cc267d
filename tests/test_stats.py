"""Plots and summaries (``torch_grouper.stats``): rendered with Agg and checked
through matplotlib's objects (tick labels, legends, bar widths, image data,
axis ranges), then written as PNGs."""
import random

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import torch_grouper as tg  # noqa: E402
from torch_grouper import stats  # noqa: E402


def ticks(ax, axis="y"):
    return [t.get_text() for t in (ax.get_yticklabels() if axis == "y" else ax.get_xticklabels())]


def legend_texts(fig):
    return [t.get_text() for t in fig.legends[0].get_texts()]


def counts_of(ds_path):
    """{group id: {label: count}} from the index."""
    ix = tg.load_index(ds_path)
    return {g: dict(c) for g, c in zip(ix["group_id"].to_pylist(), ix["label_counts"].to_pylist())}


@pytest.fixture(scope="module")
def ten(tmp_path_factory):
    """10 int groups: group g holds g + 3 examples, labels (g + k) % 4."""
    path = tmp_path_factory.mktemp("ten") / "d"
    exs = [{"g": g, "label": (g + k) % 4} for g in range(10) for k in range(g + 3)]
    tg.partition(exs, "g", path, label_column="label", progress=False)
    return path


@pytest.fixture(scope="module")
def thirty_seven(tmp_path_factory):
    path = tmp_path_factory.mktemp("t37") / "d"
    exs = [{"g": f"user{g}", "label": f"class {(g * k) % 10}"} for g in range(37) for k in range(5 + g % 4)]
    tg.partition(exs, "g", path, label_column="label", progress=False)
    return path


@pytest.fixture(scope="module")
def thousand(tmp_path_factory):
    """1,000 groups with sizes spanning decades, 25 labels."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("t1000") / "d"
    exs = []
    for g in range(1000):
        n = 1 + int(2000 / (g + 1))
        exs += [{"g": g, "label": f"c{rng.randrange(25)}"} for _ in range(n)]
    tg.partition(exs, "g", path, label_column="label", progress=False)
    return path


# ---------------------------------------------------------------- ids and names
def test_natural_order():
    assert sorted(["u10", "u2", "u1", "a", "u1b"], key=stats.natural_key) == ["a", "u1", "u1b", "u2", "u10"]
    assert sorted([10, 2, 33, 0], key=stats.natural_key) == [0, 2, 10, 33]
    assert list(stats.natural_order([5, 1, 30, 4])) == [1, 3, 0, 2]
    assert stats.id_text(b"abc") == "abc" and stats.id_text(b"\x00\xff") == "0x00ff"


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=80), st.integers(5, 40))
def test_shorten_keeps_start_and_end(text, width):
    s = stats.shorten(text, width)
    if len(text) <= width:
        assert s == text
    else:
        head, tail = s.split("\u2026") if s.count("\u2026") == 1 and "\u2026" not in text else (None, None)
        assert len(s) == width
        if head is not None:
            assert text.startswith(head) and text.endswith(tail) and len(tail) >= len(head)


def test_short_names_widen_until_distinct():
    names = ["client/alpha/shard-000001", "client/gamma/shard-000001", "c"]
    assert [stats.shorten(n, 10) for n in names[:2]] == ["cli\u2026000001"] * 2
    out = stats.short_names(names, 10)
    assert out == names  # widened by 4s until they differ: here, whole
    names = ["xx_alpha_yyyyyyyyyy", "xx_gamma_yyyyyyyyyy"]
    assert stats.short_names(names, 10) == ["xx_a\u2026yyyyyyyyy", "xx_g\u2026yyyyyyyyy"]  # width 14


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=60), min_size=1, max_size=20, unique=True), st.integers(5, 30))
def test_short_names_stay_distinct(names, width):
    out = stats.short_names(names, width)
    assert len(set(out)) == len(names)
    assert len({len(s) for s in out if len(s) > width}) <= 1  # widened together


# ---------------------------------------------------------------- label distribution
def test_ten_groups_in_id_order_with_ids_on_both_panels(ten, tmp_path):
    ix_order = tg.load_index(ten)["group_id"].to_pylist()
    assert ix_order != sorted(ix_order)  # the index is in hash order: the plot must sort
    fig = stats.label_distribution_figure(ten)
    bars, heat = fig.axes[0], fig.axes[1]
    assert ticks(bars) == [str(g) for g in range(10)]
    assert bars.get_ylim() == (9.5, -0.5)  # group 0 at the top
    assert heat.get_shared_y_axes().joined(bars, heat)  # the heatmap's rows are the same groups
    counts = counts_of(ten)
    for j, lab in enumerate(["0", "1", "2", "3"]):
        widths = [p.get_width() for p in bars.containers[j]]
        assert widths == [counts[g].get(lab, 0) for g in range(10)]
    img = heat.images[0].get_array()
    for g in range(10):
        assert np.allclose(img[g], [counts[g].get(lab, 0) / (g + 3) for lab in "0123"])
    assert ticks(heat, "x") == ["0", "1", "2", "3"]
    assert legend_texts(fig) == ["0", "1", "2", "3"]
    assert bars.get_xlabel() == "examples" and "10 groups, 4 labels" in bars.get_title()
    png = stats._save(fig, tmp_path / "ten.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_percent_bars_fill_each_group(ten):
    fig = stats.label_distribution_figure(ten, size_unit="percent")
    bars = fig.axes[0]
    totals = np.sum([[p.get_width() for p in c] for c in bars.containers], axis=0)
    assert np.allclose(totals, 100) and bars.get_xlim() == (0, 100)
    with pytest.raises(ValueError, match="size_unit must be 'absolute' or 'percent', got 'share'"):
        stats.label_distribution_figure(ten, size_unit="share")


def test_37_groups_keep_a_legend_and_every_id(thirty_seven, tmp_path):
    fig = stats.label_distribution_figure(thirty_seven)
    bars = fig.axes[0]
    assert ticks(bars) == [f"user{g}" for g in range(37)]  # natural order: user2 before user10
    assert legend_texts(fig) == [f"class {k}" for k in range(10)]
    assert ticks(fig.axes[1], "x") == [f"class {k}" for k in range(10)]
    stats.plot_label_distribution(thirty_seven, str(tmp_path / "t37.png"))


def test_1000_groups_label_the_largest_and_sort_the_heatmap_by_size(thousand, tmp_path):
    fig = stats.label_distribution_figure(thousand)
    bars, heat = fig.axes[0], fig.axes[1]
    sizes = dict(zip(*[tg.load_index(thousand)[c].to_pylist() for c in ("group_id", "num_examples")]))
    largest = sorted(sizes, key=lambda g: (-sizes[g], g))[:30]
    assert ticks(bars) == [str(g) for g in largest]
    assert bars.get_ylabel() == "the 30 largest groups"
    img = heat.images[0].get_array()
    assert img.shape == (1000, 19)  # 18 labels and "other"
    assert heat.get_ylabel() == "groups by size (rank)"
    names = legend_texts(fig)
    assert len(names) == 19 and names[-1] == "other"
    counts = counts_of(thousand)
    totals = {}
    for c in counts.values():
        for k, v in c.items():
            totals[k] = totals.get(k, 0) + v
    top = sorted(sorted(totals, key=lambda k: -totals[k])[:18], key=stats.natural_key)
    assert names[:-1] == top
    other = [p.get_width() for p in bars.containers[-1]]
    assert other == [sum(v for k, v in counts[g].items() if k not in top) for g in largest]
    stats.plot_label_distribution(thousand, str(tmp_path / "t1000.png"))


def test_long_ids_are_shortened_with_the_full_id_kept(tmp_path):
    ids = [f"Shakespeare/THE_TRAGEDY_OF_KING_LEAR/speaker_{k}" for k in range(12)]
    tg.partition([{"g": g, "label": i % 3} for i, g in enumerate(ids * 2)], "g", tmp_path / "d",
                 label_column="label", progress=False)
    fig = stats.label_distribution_figure(tmp_path / "d", name_width=24)
    labels = fig.axes[0].get_yticklabels()
    shown = [t.get_text() for t in labels]
    assert len(set(shown)) == 12 and all("\u2026" in s and len(s) == 24 for s in shown)
    assert shown[0] == "Shakesp\u2026G_LEAR/speaker_0" and shown[-1] == "Shakesp\u2026_LEAR/speaker_11"
    assert [t.get_gid() for t in labels] == sorted(ids, key=stats.natural_key)


def test_no_labels_is_an_error_naming_the_fix(tmp_path):
    tg.partition([{"g": 1}], "g", tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match=r"no label statistics; .*label_column="):
        stats.label_distribution_figure(tmp_path / "d")


# ---------------------------------------------------------------- comparison
def test_comparison_plot_side_by_side(ten, thirty_seven, tmp_path):
    fig = stats.comparison_label_figure([ten, thirty_seven], titles=["ten", "thirty-seven"], max_groups=30)
    panels = [ax for ax in fig.axes]
    assert len(panels) == 2
    assert panels[0].get_title().splitlines() == ["ten", "10 groups"]
    assert panels[1].get_title().splitlines() == ["thirty-seven", "first 30 of 37 groups"]
    assert ticks(panels[0]) == [str(g) for g in range(10)]
    assert ticks(panels[1]) == [f"user{g}" for g in range(30)]
    # one legend, one colour per label over both datasets (labels 0-3 and "class 0".."class 9")
    names = legend_texts(fig)
    assert names == ["0", "1", "2", "3"] + [f"class {k}" for k in range(10)]
    for ax in panels:  # percent of each group
        totals = np.sum([[p.get_width() for p in c] for c in ax.containers], axis=0)
        assert np.allclose(totals, 100)
    colours = {ax.containers[j].patches[0].get_facecolor() for ax in panels for j in range(len(names))}
    assert len(colours) == len(names)
    with pytest.raises(ValueError, match="got 1 titles for 2 datasets"):
        stats.comparison_label_figure([ten, thirty_seven], titles=["one"])
    path = stats.plot_comparison_label_distribution([ten, thirty_seven, ten], str(tmp_path / "cmp.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"


# ---------------------------------------------------------------- group sizes
def test_size_histogram_of_ten_groups(ten, tmp_path):
    fig = stats.group_sizes_figure(ten)
    hist = fig.axes[0]
    assert hist.get_xscale() == "linear"
    lo, hi = hist.get_xlim()
    assert 2 <= lo <= 3 and 12 <= hi <= 13  # sizes 3..12, not from 10^0
    yt = [t for t in hist.get_yticks() if hist.get_ylim()[0] <= t <= hist.get_ylim()[1]]
    assert yt and all(float(t).is_integer() for t in yt)
    assert sum(p.get_height() for p in hist.patches) == 10
    stats._save(fig, tmp_path / "sizes10.png")


def test_size_histogram_spanning_decades_is_log(thousand, tmp_path):
    fig = stats.group_sizes_figure(thousand)
    hist, ccdf = fig.axes
    assert hist.get_xscale() == "log" and ccdf.get_xscale() == "log"
    assert sum(p.get_height() for p in hist.patches) == 1000
    yt = [t for t in hist.get_yticks() if hist.get_ylim()[0] <= t <= hist.get_ylim()[1]]
    assert all(float(t).is_integer() for t in yt)
    assert open(stats.plot_group_sizes(thousand, str(tmp_path / "s1000.png")), "rb").read(4) == b"\x89PNG"
