"""The report's figures, drawn from what the runs logged: scores, costs and map samples.

For the ROC curves and score distributions each method shows the seed whose AUC is its median
over seeds (a real run, not an average of scores); the legend gives the mean ± std over seeds.
Map grids show the same 4 healthy and 4 diseased test images for every method.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from medad_bench import figures
from medad_bench.report import ALPHA, ReportData
from medad_bench.tracking import downloaded_artifact

MAP_ROWS = ("input", "anomaly map", "ground truth", "translated", "mask M")


def build_figures(data: ReportData, folder: Path) -> dict[str, Path]:
    """Draw every figure the runs allow into `folder`; returns caption -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    methods = sorted(data.runs.method.unique())
    colours = figures.method_colours(methods)
    where = f"{data.dataset} ({data.profile})"
    out: dict[str, Path] = {}
    if data.test_labels is not None:
        curves = {m: (data.test_labels, _median_seed(data.test_labels, s))
                  for m, s in data.test_scores.items()}
        out["ROC curves (median-AUC seed per method)"] = figures.save_figure(
            figures.roc_figure(curves, title=f"ROC curves, {where}", aucs=_auc_texts(data),
                               colours=colours), folder / "roc.png")
        out["Score distributions, healthy vs diseased"] = figures.save_figure(
            figures.score_distributions(curves, title=f"Test scores, {where}"),
            folder / "score_distributions.png")
    if data.pairwise is not None and len(data.pairwise) > 1:
        aucs = dict(zip(data.statistics.method, data.statistics.auc, strict=True))
        name = ("Paired comparison (two-level p-values of seed-mean AUC differences, "
                "Holm-adjusted over all pairs)")
        out[name] = figures.save_figure(figures.paired_comparison_figure(
            data.pairwise, aucs, alpha=ALPHA, title=f"Which AUC differences hold, {where}"),
            folder / "paired_comparison.png")
    costs = _costs(data.runs)
    if not costs.empty:
        out["Cost: training time, throughput and peak memory"] = figures.save_figure(
            figures.cost_figure(costs, title=f"Cost per run, {where}", colours=colours),
            folder / "cost.png")
    for method in methods:
        grid = _map_grid(data, method)
        if grid is not None:
            path = folder / f"maps_{method}.png"
            out[f"Anomaly maps: {method}"] = figures.save_figure(grid, path)
    return out


def _median_seed(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    aucs = [roc_auc_score(labels, row) for row in scores]
    return scores[int(np.argsort(aucs)[(len(aucs) - 1) // 2])]


def _auc_texts(data: ReportData) -> dict[str, str]:
    grouped = data.runs.groupby("method")["metric.auc"]
    return {m: f"{mean:.3f}" if np.isnan(std) else f"{mean:.3f} ± {std:.3f}"
            for m, mean, std in zip(grouped.mean().index, grouped.mean(), grouped.std(),
                                    strict=True)}


def _costs(runs: pd.DataFrame) -> pd.DataFrame:
    needed = ["metric.fit_seconds", "metric.score_images_per_second"]
    if not set(needed) <= set(runs.columns):
        return pd.DataFrame()
    # Throughput and memory where the runs logged them (runs before the figures existed lack
    # them: those panels then stay out).
    optional = [c for c in ("metric.train_images_per_second", "metric.peak_host_mb",
                            "metric.peak_gpu_mb") if c in runs.columns]
    table = runs[["method", *needed, *optional]].dropna(subset=needed)
    return table.rename(columns=lambda c: c.removeprefix("metric."))


def _map_grid(data: ReportData, method: str) -> object | None:
    run = data.runs[data.runs.method == method].sort_values("seed").iloc[0]
    with downloaded_artifact(data.uri, run.run_id, ("map_samples.npz",)) as path:
        if path is None:
            return None
        with np.load(path) as npz:
            arrays = {name: npz[name] for name in npz.files}
    if "anomaly map" not in arrays and "translated" not in arrays:
        return None  # a score-only method: nothing to show beyond the inputs
    rows = {name: arrays[name] for name in MAP_ROWS if name in arrays}
    titles = ["diseased" if label else "healthy" for label in arrays["label"]]
    return figures.map_grid(rows, column_titles=titles,
                            title=f"{method}, seed {run.seed}: test images")
