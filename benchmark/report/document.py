"""The library behind `bench report`: pick the runs, render the report in Markdown, LaTeX or
HTML, write it with its figures and log it to MLflow. The command in benchmark/cli.py only
parses options, calls these functions and prints what they return (`bench check`'s library is
the check room: check/gate.py, check/published.py).

    report = build_report(None, "synthetic", fmt="md")    # None: the default tracking store
    write_report(report)
    log_report_run(report)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from medad_bench.disk import write_text_atomic
from medad_bench.errors import UsageError
from medad_bench.report import figures
from medad_bench.report.table import ALPHA, ReportData
from medad_bench.tracking import downloaded_artifact

#: Where reports go by default: inside the git-ignored results/, so a report never dirties the
#: checkout. The committed reports/ come from `make reports`.
REPORTS_DIR = Path("results") / "reports"
#: Report formats and their file extensions.
FORMATS = {"md": "md", "latex": "tex", "html": "html"}
#: As the report's output path: print the report only (no figures, no file, nothing logged).
PRINT_ONLY = Path("-")


def card_name(dataset: str) -> str:
    """The name runs are stored under: `bench run` keeps them under the card's `name`, which a
    card path (or a card file named otherwise) does not spell. A name that is no card is kept
    as given, so runs of a card since removed can still be read."""
    from medad_bench.data import available_cards, load_card

    if dataset.endswith(".toml") or dataset in available_cards():
        return load_card(dataset).name
    return dataset


def default_report_path(dataset: str, fmt: str, contaminated: bool = False) -> Path:
    """results/reports/<dataset>[-contaminated].md|.tex|.html"""
    suffix = "-contaminated" if contaminated else ""
    return REPORTS_DIR / f"{dataset}{suffix}.{FORMATS[fmt]}"


@dataclass
class Report:
    """A rendered report, not yet written: its runs, text, destination and figures."""

    data: ReportData
    fmt: str  # md | latex | html
    text: str
    #: Where it is to be written; PRINT_ONLY (`-`) when it is only printed.
    out: Path
    #: Where its figures were written (beside `out`), and which.
    figure_dir: Path
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def to_file(self) -> bool:
        """Whether the report goes to a file (else it is only printed)."""
        return str(self.out) != str(PRINT_ONLY)

    @property
    def printed(self) -> bool:
        """Whether the text is for the terminal too: every format but an HTML page written
        to a file."""
        return self.fmt != "html" or not self.to_file


def render_report(data: ReportData, fmt: str, figures: dict[str, Path] | None = None,
                  out: Path | None = None) -> str:
    """The report's text: Markdown linking `figures` relative to `out`'s folder, a LaTeX
    booktabs table, or one self-contained HTML page with the table and every figure. The
    "Model selection" section follows Table 1 in each format where the runs have one."""
    from medad_bench.report.table import (
        caption,
        selection_html_section,
        to_html_table,
        to_latex,
        to_markdown,
    )

    figures = figures or {}
    to_file = out is not None and str(out) != str(PRINT_ONLY)
    if fmt == "md":
        return to_markdown(data, figures, relative_to=out.parent if to_file else None)
    if fmt == "latex":
        return to_latex(data)
    if fmt == "html":
        from medad_bench.report.html import render_html

        section = selection_html_section(data)
        return render_html(title=f"Table 1: {data.dataset}", caption=caption(data),
                           table_html=to_html_table(data), figures=figures, notes=data.notes,
                           sections=[section] if section else [])
    raise UsageError(f"unknown report format '{fmt}': one of {', '.join(FORMATS)}.")


def build_report(tracking_uri: str | None, dataset: str, fmt: str = "md",
                 out: Path | None = None, *, profile: str | None = None,
                 contaminated: bool = False, exclude_tuned: bool = False,
                 figures: bool = True, metrics: tuple[str, ...] | None = None) -> Report:
    """Select the runs of `dataset` (benchmark.report.table.select_runs), build the figures and
    render the report; nothing is written but the figures.

    `tracking_uri` None: $MLFLOW_TRACKING_URI, else the default store. `dataset`: a card name
    or a card path. `out` None: default_report_path; PRINT_ONLY: the table only, no figures.
    Figures (not for LaTeX) go to <out's folder>/<dataset>[-contaminated]/. `metrics`:
    Table 1's columns (benchmark.report.table.parse_metrics names); None: the default columns.
    """
    from medad_bench.report.table import select_runs
    from medad_bench.tracking import resolve_tracking_uri

    dataset = card_name(dataset)
    uri = resolve_tracking_uri(tracking_uri)
    data = select_runs(uri, dataset, profile, contaminated=contaminated,
                       exclude_tuned=exclude_tuned)
    if metrics is not None:
        data.metrics = tuple(metrics)
    suffix = "-contaminated" if contaminated else ""
    out = out or default_report_path(dataset, fmt, contaminated)
    figure_dir = out.parent / f"{dataset}{suffix}"
    built: dict[str, Path] = {}
    if figures and fmt != "latex" and str(out) != str(PRINT_ONLY):
        built = build_figures(data, figure_dir)
    return Report(data=data, fmt=fmt, text=render_report(data, fmt, built, out), out=out,
                  figure_dir=figure_dir, figures=built)


def write_report(report: Report | Any) -> Path:
    """Write the report's text to its file (folders created); returns the path. Any report
    with `text`, `out` and `to_file` (a cross-dataset one too)."""
    if not report.to_file:
        raise UsageError("this report is for printing only (out '-'): there is no file to "
                         "write.")
    return write_text_atomic(report.out, report.text, "the report",
                             fix="Free space there, or write it elsewhere with --out")


def log_report_run(report: Report) -> str:
    """Log the written report and its figures as one MLflow run (tag bench.kind=report) in
    the dataset's experiment, beside the runs it summarises; returns the run id."""
    from medad_bench.tracking import log_report

    data = report.data
    return log_report(data.uri, data.dataset, [report.out, *report.figures.values()],
                      {"format": report.fmt, "profile": data.profile,
                       "split_hash": data.split_hash, "seeds": data.seeds})


# -- the report's figures, drawn from what the runs logged (report/figures.py draws them) -----
#
# For the ROC curves and score distributions each method shows the seed whose AUC is its median
# over seeds (a real run, not an average of scores); the legend gives the mean ± std over seeds.
# Map grids show the same 4 healthy and 4 diseased test images for every method.

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
