"""Figures for the report: ROC curves, score distributions, anomaly-map grids, compute cost and
paired-test p-values.

Every function is pure: callers pass plain arrays and frames (nothing here reads MLflow), and
each returns a `matplotlib.figure.Figure` built directly, never through pyplot, so no global
figure state leaks between calls and the code runs headless (Agg) in workers and tests. The
seaborn "whitegrid" style is applied inside each function (`sns.axes_style` is a context
manager), so importing this module changes no global rcParams either.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colorbar import Colorbar
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from sklearn.metrics import auc as trapezoid_auc
from sklearn.metrics import roc_curve

from medad_bench.disk import writing

Colour = tuple[float, float, float]

STYLE = "whitegrid"
#: Healthy vs diseased in every figure (independent of the method colours).
CLASS_COLOURS: dict[str, Colour] = {"healthy": (0.33, 0.53, 0.75), "diseased": (0.84, 0.37, 0.31)}
#: Colormaps of `map_grid`: anomaly maps need a perceptual (monotone-lightness) map.
MAP_CMAP, IMAGE_CMAP = "magma", "gray"
#: Colour scale of `paired_comparison_figure`: p-values below this share the darkest colour.
P_FLOOR = 1e-4
#: `cost_figure` switches to a log axis when the values span more than this factor.
LOG_RANGE = 30.0
_MAX_PANELS_PER_ROW = 4


# -- colours -----------------------------------------------------------------------------------

def method_colours(methods: Sequence[str]) -> dict[str, Colour]:
    """A colour per method, assigned over the sorted unique names.

    Sorting makes the result independent of the order the caller lists the methods in. Pass the
    full list of methods of a report (and hand the result to the figures' `colours=`), so a
    method keeps its colour in figures that show only some of the methods.
    """
    names = sorted(set(methods))
    # The colour-blind-safe qualitative palette has 10 colours; beyond that hues from HUSL stay
    # distinct (evenly spaced, equal lightness) instead of repeating.
    palette = sns.color_palette("colorblind" if len(names) <= 10 else "husl", len(names))
    return {name: tuple(float(c) for c in colour[:3]) for name, colour in zip(names, palette,
                                                                              strict=True)}


def _colours_for(methods: Sequence[str],
                 colours: Mapping[str, Colour] | None) -> Mapping[str, Colour]:
    if colours is None:
        return method_colours(methods)
    missing = [m for m in methods if m not in colours]
    if missing:
        raise ValueError(f"no colour for {missing}; build colours with method_colours() over "
                         "every method of the report")
    return colours


# -- ROC -----------------------------------------------------------------------------------------

def _binary(labels: np.ndarray, scores: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=float).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{name}: {labels.size} labels but {scores.size} scores")
    if not np.isin(labels, (0, 1)).all() or np.unique(labels).size != 2:
        raise ValueError(f"{name}: labels must be 0 (healthy) / 1 (diseased) with both present")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name}: scores contain NaN or infinity")
    return labels, scores


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *, title: str,
               aucs: Mapping[str, str] | None = None,
               colours: Mapping[str, Colour] | None = None) -> Figure:
    """One ROC curve per method (method -> (labels, scores)) plus the chance diagonal.

    Legend entries read "method (AUC <text>)", the text from `aucs` (e.g. "0.83 ± 0.02" over
    seeds) where given, else the AUC of the curve drawn; entries are sorted by that AUC.
    """
    if not curves:
        raise ValueError("no ROC curves to draw")
    palette = _colours_for(list(curves), colours)
    drawn = []
    for method, (labels, scores) in curves.items():
        fpr, tpr, _ = roc_curve(*_binary(labels, scores, method))
        drawn.append((trapezoid_auc(fpr, tpr), method, fpr, tpr))
    drawn.sort(key=lambda item: -item[0])  # legend from best to worst, stable for ties
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(7.5, 5.0), layout="constrained")
        ax = fig.add_subplot()
        for value, method, fpr, tpr in drawn:
            text = aucs[method] if aucs and method in aucs else f"{value:.3f}"
            ax.plot(fpr, tpr, color=palette[method], lw=1.8, label=f"{method} (AUC {text})")
        # An underscore label keeps the diagonal out of the legend: it needs no explanation.
        ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.55", label="_chance")
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
               xlabel="false positive rate (1 - specificity)",
               ylabel="true positive rate (sensitivity)")
        # Outside the axes, so the legend never hides a curve however many methods there are.
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=9)
        fig.suptitle(title)
    return fig


# -- score distributions -----------------------------------------------------------------------

def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = np.nanmin(values), np.nanmax(values)
    # A constant scorer has no scale: show it at 0 rather than dividing by zero.
    return (values - low) / (high - low) if high > low else np.zeros_like(values, dtype=float)


def _panel_grid(fig: Figure, n: int, sharex: bool = True) -> list[Axes]:
    """n axes on a grid of up to `_MAX_PANELS_PER_ROW` columns; unused cells removed."""
    ncols = min(n, _MAX_PANELS_PER_ROW)
    nrows = math.ceil(n / ncols)
    axes = fig.subplots(nrows, ncols, sharex=sharex, squeeze=False).ravel()
    for extra in axes[n:]:
        fig.delaxes(extra)
    return list(axes[:n])


def _distribution_panel(ax: Axes, method: str, labels: np.ndarray, scores: np.ndarray) -> None:
    frame = pd.DataFrame({"score": _min_max(scores),
                          "group": np.where(labels == 1, "diseased", "healthy")})
    # A density needs spread: a KDE of one repeated value is undefined (seaborn would warn).
    kde = bool(frame.groupby("group").score.nunique().min() > 1)
    sns.histplot(frame, x="score", hue="group", hue_order=list(CLASS_COLOURS),
                 palette=CLASS_COLOURS, stat="density", common_norm=False, bins=25,
                 binrange=(0, 1), element="step", alpha=0.3, kde=kde,
                 kde_kws={"cut": 0, "clip": (0, 1)}, legend=False, ax=ax)
    ax.set(title=method, xlabel="", ylabel="", xlim=(0, 1))


def score_distributions(scores: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                        title: str) -> Figure:
    """A panel per method (method -> (labels, scores)): healthy vs diseased score densities.

    Scores are min-max normalised per method, so methods with different score units share one
    x axis; each class is normalised on its own (common_norm=False), so a small diseased group
    is as visible as a large healthy one.
    """
    if not scores:
        raise ValueError("no scores to draw")
    with sns.axes_style(STYLE):
        ncols = min(len(scores), _MAX_PANELS_PER_ROW)
        nrows = math.ceil(len(scores) / ncols)
        fig = Figure(figsize=(2.9 * ncols + 1.8, 2.3 * nrows + 1.0), layout="constrained")
        for ax, (method, (labels, values)) in zip(_panel_grid(fig, len(scores)), scores.items(),
                                                  strict=True):
            _distribution_panel(ax, method, *_binary(labels, values, method))
        handles = [Patch(facecolor=colour, edgecolor=colour, alpha=0.6, label=name)
                   for name, colour in CLASS_COLOURS.items()]
        fig.legend(handles=handles, loc="outside right upper", frameon=False)
        fig.suptitle(title)
        fig.supxlabel("score (min-max per method)")
        fig.supylabel("density")
    return fig


# -- anomaly-map grid --------------------------------------------------------------------------

def _as_images(values: np.ndarray, label: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, 3) float array from (N, H, W), (N, 1|3, H, W) or (N, H, W, 1|3)."""
    array = np.asarray(values, dtype=float)
    if array.ndim == 4 and array.shape[1] in (1, 3):
        array = np.moveaxis(array, 1, -1)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 or (array.ndim == 4 and array.shape[-1] == 3):
        return array
    raise ValueError(f"row {label!r}: expected (N, H, W), (N, 1, H, W) or (N, 3, H, W), "
                     f"got {np.shape(values)}")


def _is_map(label: str) -> bool:
    return "map" in label.lower()


def map_grid(rows: Mapping[str, np.ndarray | None], *,
             column_titles: Sequence[str] | None = None, title: str,
             cmaps: Mapping[str, str] | None = None) -> Figure:
    """Images in a grid: a row per entry of `rows` (label -> (N, ...) array; None rows skipped),
    a column per image.

    Rows whose label contains "map" use the perceptual "magma" colormap, the others (inputs,
    masks, translations) gray; `cmaps` overrides that per row label. Each row is min-max scaled
    as a whole, not per image, so a healthy and a diseased anomaly map stay comparable.
    """
    shown = {label: _as_images(v, label) for label, v in rows.items() if v is not None}
    if not shown:
        raise ValueError("no rows to draw")
    n = {label: len(images) for label, images in shown.items()}
    if len(set(n.values())) != 1:
        raise ValueError(f"rows hold different numbers of images: {n}")
    ncols = next(iter(n.values()))
    if column_titles is not None and len(column_titles) != ncols:
        raise ValueError(f"{len(column_titles)} column titles for {ncols} columns")
    fig = Figure(figsize=(1.45 * ncols + 1.2, 1.45 * len(shown) + 0.7), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01, wspace=0.0, hspace=0.0)
    with sns.axes_style(STYLE):
        axes = fig.subplots(len(shown), ncols, squeeze=False)
    for r, (label, images) in enumerate(shown.items()):
        scaled = _min_max(images)
        cmap = (cmaps or {}).get(label, MAP_CMAP if _is_map(label) else IMAGE_CMAP)
        for c, ax in enumerate(axes[r]):
            ax.imshow(scaled[c], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            ax.grid(False)
            ax.spines[:].set_visible(False)
            if column_titles is not None and r == 0:
                ax.set_title(column_titles[c], fontsize=9)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title)
    return fig


# -- compute cost ------------------------------------------------------------------------------

def _cost_panel(ax: Axes, costs: pd.DataFrame, column: str, order: list[str],
                palette: Mapping[str, Colour], xlabel: str, unit: str) -> None:
    """Horizontal bars of the median per method with one dot per run, value printed at the end."""
    values = costs[["method", column]].dropna()
    values = values[values[column] > 0]
    medians = values.groupby("method")[column].median().reindex(order)
    y = np.arange(len(order))
    ax.barh(y, medians.fillna(0).to_numpy(), color=[palette[m] for m in order], alpha=0.75,
            height=0.6)
    for i, method in enumerate(order):
        runs = values.loc[values.method == method, column].to_numpy()
        # Evenly spread offsets instead of random jitter: the figure is reproducible.
        offsets = np.linspace(-0.18, 0.18, len(runs)) if len(runs) > 1 else np.zeros(len(runs))
        ax.scatter(runs, i + offsets, s=14, color="0.15", zorder=3, linewidths=0)
    positive = values[column]
    log = len(positive) > 0 and positive.max() / positive.min() > LOG_RANGE
    if log:
        ax.set_xscale("log")
    ends = values.groupby("method")[column].max().reindex(order)
    for i, (median, end) in enumerate(zip(medians, ends, strict=True)):
        if np.isfinite(median):
            x = end * 1.15 if log else end + 0.02 * positive.max()
            ax.text(x, i, f"{_readable(median)} {unit}", va="center", fontsize=8)
    if len(positive):
        # Room on the right for the printed medians.
        high = positive.max() * (4.0 if log else 1.25)
        ax.set_xlim(positive.min() / 2 if log else 0.0, high)
    ax.set(xlabel=xlabel, yticks=y, yticklabels=order)
    ax.grid(axis="y", visible=False)


def _readable(value: float) -> str:
    """'4,530', '75.3', '0.123': three significant digits without scientific notation."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


#: The cost figure's panels: column, axis label, unit. The first two are always drawn; the
#: others where the runs logged them.
COST_PANELS = (
    ("fit_seconds", "training time (s; bar = median, dots = seeds)", "s"),
    ("train_images_per_second", "training throughput (images/s)", "img/s"),
    ("score_images_per_second", "scoring throughput (images/s)", "img/s"),
    ("peak_host_mb", "peak host memory of the run (MB)", "MB"),
    ("peak_gpu_mb", "peak GPU memory of the run (MB)", "MB"),
)


def cost_figure(costs: pd.DataFrame, *, title: str,
                colours: Mapping[str, Colour] | None = None) -> Figure:
    """Training time, training and scoring throughput, and peak memory per method.

    `costs`: one row per run (seed) with columns method, fit_seconds, score_images_per_second
    and, where logged, train_images_per_second, peak_host_mb, peak_gpu_mb. Bars are medians,
    dots the runs; an axis turns logarithmic when its values span more than 30x. Methods run
    from fastest to slowest training in every panel.
    """
    required = {"method", "fit_seconds", "score_images_per_second"}
    if not required <= set(costs.columns):
        raise ValueError(f"costs lack columns {sorted(required - set(costs.columns))}")
    if costs.empty:
        raise ValueError("no cost rows to draw")
    order = (costs.groupby("method").fit_seconds.median().sort_values(kind="stable")
             .index.tolist())
    palette = _colours_for(order, colours)
    panels = [p for p in COST_PANELS
              if p[0] in required or (p[0] in costs.columns and costs[p[0]].notna().any())]
    columns = 2 if len(panels) > 2 else len(panels)
    rows = math.ceil(len(panels) / columns)
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(10.0, rows * (0.42 * len(order) + 1.3) + 0.3),
                     layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, columns, sharey=True)).ravel()
        for ax, (column, label, unit) in zip(axes, panels, strict=False):
            _cost_panel(ax, costs, column, order, palette, label, unit)
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        axes[0].invert_yaxis()  # first method on top (shared y: every panel follows)
        fig.suptitle(title)
    return fig


# -- paired tests ------------------------------------------------------------------------------

def format_p(p: float) -> str:
    """'<0.001', '0.034', '1.000'; 'n/a' for NaN."""
    if not np.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def paired_comparison_figure(p_values: pd.DataFrame, aucs: Mapping[str, float], *,
                             alpha: float = 0.05, title: str) -> Figure:
    """Heat map of pairwise two-sided p-values (the report passes Holm-adjusted ones from
    `stats.seed_mean_comparison`).

    Methods are ordered by AUC, best first, labelled "method (0.812)"; cells show p with a "*"
    where p < alpha; the diagonal is blank. The colour scale is logarithmic (floor 1e-4), so
    0.04 and 0.0001 look different, with alpha marked on the colour bar.
    """
    methods = list(p_values.index)
    if list(p_values.columns) != methods:
        raise ValueError("p_values must be square with the same methods as rows and columns")
    missing = [m for m in methods if m not in aucs]
    if missing:
        raise ValueError(f"no AUC for {missing}")
    order = sorted(methods, key=lambda m: -float(aucs[m]))  # stable: ties keep the input order
    p = p_values.loc[order, order].to_numpy(dtype=float)
    text = np.array([[format_p(v) + ("*" if v < alpha else "") for v in row] for row in p])
    labels = [f"{m} ({float(aucs[m]):.3f})" for m in order]
    mask = np.eye(len(order), dtype=bool) | ~np.isfinite(p)
    size = 0.85 * len(order)
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(size + 3.4, size + 1.9), layout="constrained")
        ax = fig.add_subplot()
        sns.heatmap(np.clip(p, P_FLOOR, 1.0), mask=mask, annot=text, fmt="",
                    annot_kws={"fontsize": 8}, cmap="rocket", norm=LogNorm(P_FLOOR, 1.0),
                    square=True, linewidths=0.5, linecolor="white", xticklabels=labels,
                    yticklabels=labels, ax=ax,
                    cbar_kws={"label": "two-sided p (paired test, Holm-adjusted)", "shrink": 0.8})
        _p_colour_bar(ax.collections[0].colorbar, alpha)
        ax.tick_params(axis="x", labelrotation=35)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
            tick.set_rotation_mode("anchor")
        ax.tick_params(axis="y", labelrotation=0)
        ax.set(xlabel="", ylabel="")
        ax.grid(False)  # the style's grid would show through the blank diagonal
        ax.set_title(f"* p < {alpha:g}; methods by AUC, best first", fontsize=9)
        fig.suptitle(title)
    return fig


def _p_colour_bar(bar: Colorbar, alpha: float) -> None:
    ticks = sorted({P_FLOOR, 1e-3, 1e-2, alpha, 1.0})
    bar.set_ticks(ticks, labels=[f"≤{t:g}" if t == P_FLOOR else f"{t:g}" for t in ticks])
    bar.minorticks_off()
    bar.ax.axhline(alpha, color="white", lw=1.5)


# -- output --------------------------------------------------------------------------------------

def save_figure(figure: Figure, path: Path, *, dpi: int = 120) -> Path:
    """Write the figure (format from the suffix), creating parent folders; returns the path."""
    path = Path(path)
    with writing(path, "a figure", fix="Free space there, or write the report elsewhere "
                 "with --out"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        try:
            figure.savefig(tmp, dpi=dpi, bbox_inches="tight")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path
