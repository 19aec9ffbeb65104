"""Figures and the HTML page, rendered for real with Agg (no pyplot anywhere in the code)."""

import base64
import re

import matplotlib.pyplot as plt  # only to check that no pyplot figure leaks
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from medad_bench.report import figures
from medad_bench.report import html as html_report

LABELS = np.r_[np.zeros(30, int), np.ones(20, int)]


@pytest.fixture
def curves():
    rng = np.random.default_rng(0)
    return {
        "weak": (LABELS, rng.normal(size=LABELS.size) + 0.3 * LABELS),
        "perfect": (LABELS, LABELS * 10.0 + rng.random(LABELS.size)),
        "mid": (LABELS, rng.normal(size=LABELS.size) + 1.2 * LABELS),
    }


@pytest.fixture(autouse=True)
def no_pyplot_leak():
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before


def legend_texts(fig):
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_method_colours_are_stable_and_distinct():
    a = figures.method_colours(["b", "a", "c"])
    b = figures.method_colours(["c", "b", "a", "a"])
    assert a == b
    assert list(a) == ["a", "b", "c"]
    assert len(set(a.values())) == 3
    assert all(len(c) == 3 and all(0 <= v <= 1 for v in c) for c in a.values())
    many = figures.method_colours([f"m{i:02d}" for i in range(14)])
    assert len(set(many.values())) == 14  # past the 10-colour palette: still no repeats


def test_roc_figure_lines_legend_and_perfect_scorer(curves):
    fig = figures.roc_figure(curves, title="ROC", aucs={"mid": "0.83 ± 0.02"})
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    lines = fig.axes[0].get_lines()
    assert len(lines) == len(curves) + 1  # one per method + chance diagonal
    texts = legend_texts(fig)
    assert "mid (AUC 0.83 ± 0.02)" in texts
    assert "perfect (AUC 1.000)" in texts
    assert texts[0].startswith("perfect")  # sorted by AUC, best first
    perfect = next(ln for ln in lines if ln.get_label().startswith("perfect"))
    xy = np.column_stack(perfect.get_data())
    assert np.any(np.all(np.isclose(xy, [0.0, 1.0]), axis=1))
    colours = figures.method_colours(curves)
    assert perfect.get_color() == colours["perfect"]


def test_roc_figure_rejects_single_class():
    with pytest.raises(ValueError, match="both present"):
        figures.roc_figure({"m": (np.zeros(5), np.arange(5.0))}, title="x")


def test_colours_keep_across_figures_with_subsets(curves):
    palette = figures.method_colours(list(curves) + ["other"])
    fig = figures.roc_figure({"mid": curves["mid"]}, title="one", colours=palette)
    assert fig.axes[0].get_lines()[0].get_color() == palette["mid"]
    with pytest.raises(ValueError, match="no colour"):
        figures.roc_figure(curves, title="x", colours={"mid": (0, 0, 0)})


def test_score_distributions_one_panel_per_method(curves):
    five = {**curves, "d": curves["mid"], "e": (LABELS, np.ones(LABELS.size))}  # e: constant
    fig = figures.score_distributions(five, title="scores")
    assert len(fig.axes) == 5  # the 3 unused cells of the 2 x 4 grid are removed
    assert [ax.get_title() for ax in fig.axes] == list(five)
    assert fig.axes[0].get_xlim() == (0.0, 1.0)
    assert fig.get_supxlabel() == "score (min-max per method)"
    assert fig.axes[0].get_lines()  # KDE curves drawn where scores vary
    assert not fig.axes[4].get_lines()  # none for a constant scorer


def test_map_grid_shape_skips_none_and_colormaps():
    rng = np.random.default_rng(1)
    rows = {
        "input": rng.random((6, 1, 16, 16)),
        "anomaly map": rng.random((6, 16, 16)) * 50 - 7,
        "translated": None,
        "rgb": rng.random((6, 3, 16, 16)),
        "mask M": rng.random((6, 16, 16)) > 0.5,
    }
    titles = ["healthy"] * 3 + ["diseased"] * 3
    fig = figures.map_grid(rows, column_titles=titles, title="maps")
    assert len(fig.axes) == 4 * 6
    assert [ax.get_title() for ax in fig.axes[:6]] == titles
    assert [fig.axes[r * 6].get_ylabel() for r in range(4)] == ["input", "anomaly map", "rgb",
                                                                 "mask M"]
    first = [fig.axes[r * 6].get_images()[0] for r in range(4)]
    assert [im.get_cmap().name for im in (first[0], first[1], first[3])] == ["gray", "magma",
                                                                              "gray"]
    assert first[2].get_array().shape == (16, 16, 3)
    assert all(not ax.get_xticks().size and not ax.get_yticks().size for ax in fig.axes)
    # A row is scaled as a whole to [0, 1] (healthy and diseased maps stay comparable).
    row = np.stack([fig.axes[6 + c].get_images()[0].get_array() for c in range(6)])
    assert row.min() == pytest.approx(0.0) and row.max() == pytest.approx(1.0)


def test_map_grid_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="different numbers"):
        figures.map_grid({"a": np.zeros((2, 4, 4)), "b": np.zeros((3, 4, 4))}, title="x")
    with pytest.raises(ValueError, match="column titles"):
        figures.map_grid({"a": np.zeros((2, 4, 4))}, column_titles=["x"], title="x")


def cost_frame():
    return pd.DataFrame({
        "method": ["slow"] * 3 + ["fast"] * 3 + ["mid"] * 2,
        "fit_seconds": [3000, 3300, 2900, 10, 12, 11, 100, 90],
        "score_images_per_second": [40, 41, 39, 900, 950, 1000, 200, 210],
    })


def test_cost_figure_panels_order_and_log_axis():
    fig = figures.cost_figure(cost_frame(), title="cost")
    left, right = fig.axes[:2]
    assert [t.get_text() for t in left.get_yticklabels()] == ["fast", "mid", "slow"]
    assert right.get_shared_y_axes().joined(left, right)  # same rows, labelled once
    assert left.get_xscale() == "log"  # 10 s .. 3300 s spans > 30x
    assert right.get_xscale() == "linear"  # 39 .. 1000 images/s: under 30x
    colours = figures.method_colours(["fast", "mid", "slow"])
    bars = [tuple(p.get_facecolor()[:3]) for p in left.patches]
    assert bars == [pytest.approx(colours[m]) for m in ["fast", "mid", "slow"]]
    assert [tuple(p.get_facecolor()[:3]) for p in right.patches] == bars
    assert [p.get_width() for p in left.patches] == [11, 95, 3000]  # medians
    assert sum(len(c.get_offsets()) for c in left.collections) == 8  # a dot per run


def test_cost_figure_needs_columns():
    with pytest.raises(ValueError, match="fit_seconds"):
        figures.cost_figure(pd.DataFrame({"method": ["a"]}), title="x")


def test_paired_comparison_orders_by_auc_and_marks_significance():
    names = ["b", "a", "c"]
    p = pd.DataFrame([[1.0, 0.0004, 0.2], [0.0004, 1.0, 0.034], [0.2, 0.034, 1.0]],
                     index=pd.Index(names, name="method"), columns=names)
    aucs = {"a": 0.701, "b": 0.9, "c": 0.812}
    fig = figures.paired_comparison_figure(p, aucs, title="paired")
    ax = fig.axes[0]
    expected = ["b (0.900)", "c (0.812)", "a (0.701)"]
    assert [t.get_text() for t in ax.get_yticklabels()] == expected
    assert [t.get_text() for t in ax.get_xticklabels()] == expected
    texts = sorted(t.get_text() for t in ax.texts)
    # 6 off-diagonal cells, none on the masked diagonal.
    assert texts == sorted(["<0.001*", "<0.001*", "0.034*", "0.034*", "0.200", "0.200"])
    assert fig.axes[1].get_ylabel() == "two-sided p (paired test, Holm-adjusted)"  # colour bar
    strict = figures.paired_comparison_figure(p, aucs, alpha=0.01, title="paired")
    assert "0.034" in [t.get_text() for t in strict.axes[0].texts]


def test_paired_comparison_with_stats_output(curves):
    from medad_bench.stats import intervals as stats

    summary, p = stats.seed_mean_comparison(
        LABELS, {name: scores[None] for name, (_, scores) in curves.items()}, n_boot=200)
    aucs = summary.set_index("method").auc.to_dict()
    fig = figures.paired_comparison_figure(p, aucs, title="two-level")
    assert fig.axes[0].get_yticklabels()[0].get_text().startswith("perfect")
    with pytest.raises(ValueError, match="no AUC"):
        figures.paired_comparison_figure(p, {"mid": 0.8}, title="x")


def test_format_p():
    assert [figures.format_p(v) for v in (0.0, 0.00099, 0.034, 1.0, np.nan)] == [
        "<0.001", "<0.001", "0.034", "1.000", "n/a"]


def test_save_figure_writes_png(tmp_path, curves):
    path = figures.save_figure(figures.roc_figure(curves, title="ROC"),
                               tmp_path / "deep" / "er" / "roc.png", dpi=50)
    assert path == tmp_path / "deep" / "er" / "roc.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.mode == "RGBA"
        assert image.size[0] > 100 and image.size[1] > 100


def small_png(tmp_path, name, colour):
    path = tmp_path / name
    Image.new("RGB", (4, 3), colour).save(path)
    return path


def test_render_html_is_self_contained_and_embeds_figures(tmp_path):
    figs = {"ROC <curves>": small_png(tmp_path, "a.png", "red"),
            "maps": small_png(tmp_path, "b.png", "blue")}
    table = pd.DataFrame({"AUC": ["0.812 ± 0.010"]}, index=pd.Index(["PaDiM"], name="Method"))
    page = html_report.render_html(
        title="Table 1 & <friends>", caption='AUC <script>alert("x")</script>',
        table_html=table.to_html(), figures=figs, notes=["a < b", "weights random"])
    assert "http://" not in page and "https://" not in page
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "<title>Table 1 &amp; &lt;friends&gt;</title>" in page
    assert "<h1>Table 1 &amp; &lt;friends&gt;</h1>" in page
    assert '<meta charset="utf-8">' in page
    assert "<td>0.812 ± 0.010</td>" in page and "PaDiM" in page
    assert "<li>a &lt; b</li>" in page
    assert "<figcaption>ROC &lt;curves&gt;</figcaption>" in page
    payloads = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(p) for p in payloads] == [p.read_bytes() for p in figs.values()]
    # Deterministic: the same inputs give the same page.
    assert page == html_report.render_html(
        title="Table 1 & <friends>", caption='AUC <script>alert("x")</script>',
        table_html=table.to_html(), figures=figs, notes=["a < b", "weights random"])


def test_render_html_keeps_styler_bold_and_rejects_unknown_images(tmp_path):
    table = pd.DataFrame({"AUC": [0.9, 0.8]}, index=["a", "b"])
    styled = table.style.apply(lambda c: ["font-weight: bold;", ""], axis=0).to_html()
    page = html_report.render_html(title="t", caption="c", table_html=styled, figures={})
    assert "font-weight: bold" in page and "<figure>" not in page and "<ul" not in page
    with pytest.raises(ValueError, match="cannot embed"):
        html_report.render_html(title="t", caption="c", table_html="",
                                figures={"x": tmp_path / "x.gif"})


def test_cost_figure_draws_throughput_and_memory_where_logged():
    costs = cost_frame().assign(train_images_per_second=[5, 5, 6, 900, 800, 850, 60, 70],
                                peak_host_mb=[3000, 3100, 2900, 1200, 1250, 1180, 2000, 2100])
    fig = figures.cost_figure(costs, title="cost")
    shown = [ax for ax in fig.axes if ax.get_visible()]
    labels = [ax.get_xlabel() for ax in shown]
    assert len(shown) == 4 and labels[1] == "training throughput (images/s)"
    assert labels[3] == "peak host memory of the run (MB)"
    assert [p.get_width() for p in shown[3].patches] == [1200, 2050, 3000]  # medians
    # Runs logged before these figures existed: the two original panels only.
    assert len([ax for ax in figures.cost_figure(cost_frame(), title="x").axes
                if ax.get_visible()]) == 2
