"""Table 1 across datasets: a row per method, a column group per dataset, mean ranks.

`bench report --datasets a,b,c` puts the per-dataset reports (benchmark.report.table.select_runs,
with their statistics) side by side: per dataset the seed-mean test AUC, its 95% CI (the same
two-level interval as Table 1) and F1 at the validation threshold. Per dataset, the best AUC is
bold only where its lead holds in the paired test (Holm-adjusted, as Table 1 decides it);
otherwise the methods tied with the best carry a dagger. F1 has no paired test, so it is never
bold. Each method's mean rank is the mean of its per-dataset AUC ranks (1 = best, ties share
the average rank) over the datasets where it ran, with the range (lowest - highest rank) as
its spread. A method without runs on a dataset shows "—" there, never a zero.

    report = build_cross_report(None, ["synthetic", "synthetic-easy"], fmt="latex")
    write_cross_report(report)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medad_bench.errors import UsageError
from medad_bench.report.table import ReportData

MISSING = "—"
#: The column group of the ranks, after the datasets' groups.
RANK_GROUP = "Rank"
SUB_COLUMNS = ("AUC", "95% CI", "F1")
RANK_COLUMNS = ("Mean", "Range", "Datasets")


def parse_datasets(text: str) -> list[str]:
    """'a,b' -> ['a', 'b']; UsageError for an empty list or a name given twice."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UsageError("--datasets needs at least one dataset name, e.g. "
                         "--datasets synthetic,synthetic-easy.")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"--datasets names {', '.join(repeated)} more than once; "
                         f"give each dataset once.")
    return names


def default_cross_path(datasets: list[str], fmt: str, contaminated: bool = False) -> Path:
    """results/reports/<a>+<b>[-contaminated].md|.tex|.html"""
    from medad_bench.report.document import FORMATS, REPORTS_DIR

    suffix = "-contaminated" if contaminated else ""
    return REPORTS_DIR / f"{'+'.join(datasets)}{suffix}.{FORMATS[fmt]}"


@dataclass
class CrossReport:
    """A rendered cross-dataset report, not yet written."""

    datasets: list[ReportData]
    fmt: str  # md | latex | html
    text: str
    #: Where it is to be written; `-` when it is only printed.
    out: Path

    @property
    def to_file(self) -> bool:
        return str(self.out) != "-"

    @property
    def printed(self) -> bool:
        """Every format but an HTML page written to a file is echoed to the terminal."""
        return self.fmt != "html" or not self.to_file


def build_cross_report(tracking_uri: str | None, datasets: list[str], fmt: str = "md",
                       out: Path | None = None, *, profile: str | None = None,
                       contaminated: bool = False, exclude_tuned: bool = False) -> CrossReport:
    """Select each dataset's runs (as `bench report --dataset` does, statistics included)
    and render the one table. A dataset without finished runs is a BenchError naming it."""
    from medad_bench.report.document import FORMATS, card_name
    from medad_bench.report.table import select_runs
    from medad_bench.tracking import resolve_tracking_uri

    if fmt not in FORMATS:
        raise UsageError(f"unknown report format '{fmt}': one of {', '.join(FORMATS)}.")
    names = [card_name(name) for name in datasets]
    uri = resolve_tracking_uri(tracking_uri)
    data = [select_runs(uri, name, profile, contaminated=contaminated,
                        exclude_tuned=exclude_tuned) for name in names]
    out = out or default_cross_path(names, fmt, contaminated)
    renderers = {"md": to_markdown, "latex": to_latex, "html": to_html}
    return CrossReport(datasets=data, fmt=fmt, text=renderers[fmt](data), out=out)


def write_cross_report(report: CrossReport) -> Path:
    """Write the report's text to its file (folders created); returns the path."""
    from medad_bench.report.document import write_report

    return write_report(report)


def rank_table(aucs: pd.DataFrame) -> pd.DataFrame:
    """Per-dataset ranks and their summary from a methods x datasets frame of mean AUCs (NaN
    where a method did not run). Rank 1 is the highest AUC of a dataset; tied AUCs share the
    average of their ranks; a method is ranked only where it ran. Columns: one per dataset
    (its rank), then mean, low (best rank), high (worst rank), n (datasets ranked)."""
    ranks = aucs.rank(axis=0, ascending=False, method="average")
    summary = pd.DataFrame({"mean": ranks.mean(axis=1), "low": ranks.min(axis=1),
                            "high": ranks.max(axis=1), "n": ranks.notna().sum(axis=1)})
    return pd.concat([ranks, summary], axis=1)


def mean_aucs(datasets: list[ReportData], *, learned_only: bool = False) -> pd.DataFrame:
    """Methods x datasets: the seed-mean test AUC (as Table 1 prints it), NaN where a method
    has no runs (and, with `learned_only`, where a run of it failed the competence checks:
    such a method is not ranked there)."""
    from medad_bench.report.table import unranked_methods

    columns = {}
    for data in datasets:
        means = data.runs.groupby("method")["metric.auc"].mean()
        if learned_only:
            means = means.drop(index=list(unranked_methods(data.runs)), errors="ignore")
        columns[data.dataset] = means
    return pd.DataFrame(columns)


def cross_cells(datasets: list[ReportData]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Display strings and a same-shaped boolean frame marking what is bold; columns a
    (group, column) MultiIndex, a row per method."""
    aucs = mean_aucs(datasets)
    methods = sorted(aucs.index)
    text = pd.DataFrame(index=pd.Index(methods, name="Method"))
    bold = pd.DataFrame(False, index=text.index, columns=[])
    for data in datasets:
        cells, marks = _dataset_cells(data)
        for column in SUB_COLUMNS:
            text[(data.dataset, column)] = cells[column].reindex(methods, fill_value=MISSING)
            bold[(data.dataset, column)] = marks[column].reindex(methods, fill_value=False)
    ranks = rank_table(mean_aucs(datasets, learned_only=True).reindex(methods))
    text[(RANK_GROUP, "Mean")] = [MISSING if np.isnan(m) else f"{m:.2f}" for m in ranks["mean"]]
    text[(RANK_GROUP, "Range")] = [MISSING if np.isnan(lo) else f"{lo:g}–{hi:g}"
                                   for lo, hi in zip(ranks.low, ranks.high, strict=True)]
    text[(RANK_GROUP, "Datasets")] = [f"{n} of {len(datasets)}" for n in ranks["n"]]
    for column in RANK_COLUMNS:
        bold[(RANK_GROUP, column)] = False
    text.columns = pd.MultiIndex.from_tuples(text.columns)
    bold.columns = pd.MultiIndex.from_tuples(bold.columns)
    return text, bold.astype(bool)


def _dataset_cells(data: ReportData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One dataset's AUC, CI and F1 cells and what is bold, decided as Table 1 decides it
    (benchmark.report.table._auc_statistics: bold only where the best leads significantly, else a
    dagger on every method tied with it)."""
    from medad_bench.report.table import (
        NOT_LEARNED_MARK,
        TUNED_MARK,
        _auc_statistics,
        is_tuned,
        unranked_methods,
    )

    grouped = data.runs.groupby("method")
    text = pd.DataFrame({"AUC": grouped["metric.auc"].mean().map("{:.3f}".format),
                         "F1": grouped["metric.f1"].mean().map("{:.3f}".format)})
    bold = pd.DataFrame(False, index=text.index, columns=["AUC", "95% CI", "F1"])
    if data.statistics is not None:
        _auc_statistics(data.statistics, text, bold)
        text = text.rename(columns={"AUC 95% CI": "95% CI"})
        bold["95% CI"] = False
        if len(text) == 1:
            bold["AUC"] = False  # a lone method leads nobody: nothing to be significant over
    else:
        text["95% CI"] = MISSING  # no scores, so no interval and no claim of a lead
    tuned = set(data.runs.loc[is_tuned(data.runs), "method"])
    text["AUC"] = [f"{cell} {TUNED_MARK}" if method in tuned else cell
                   for method, cell in text["AUC"].items()]
    unranked = unranked_methods(data.runs)
    text["AUC"] = [f"{cell} {NOT_LEARNED_MARK}" if method in unranked else cell
                   for method, cell in text["AUC"].items()]
    bold.loc[bold.index.isin(list(unranked))] = False
    return text, bold


def caption(datasets: list[ReportData]) -> str:
    """What the table shows, how bold and ranks are decided, and each dataset's runs."""
    from medad_bench.report.table import ALPHA, STATS_TEXT, TIE_MARK

    setting = (" in the contaminated setting" if any(d.contaminated for d in datasets) else "")
    per_dataset = "; ".join(
        f"{d.dataset}: {d.profile} profile, seed(s) {', '.join(str(s) for s in d.seeds)}, "
        f"split SHA-256 {d.split_hash}, data version {d.data_version}" for d in datasets)
    return (f"Anomaly detection across datasets{setting}: per dataset the test-set ROC AUC "
            f"(mean over seeds) with its 95% CI, and F1 (mean over seeds) at the threshold "
            f"maximising Youden's J on the validation split. {STATS_TEXT}. A dataset's best "
            f"AUC is bold only where its lead holds at the {ALPHA:.0%} level; otherwise "
            f"{TIE_MARK} marks the methods not significantly different from the best there. "
            f"F1 is never bold (no paired test), nor is a method alone on a dataset. Rank: a "
            f"method's AUC rank per dataset "
            f"(1 = best, ties share the average rank) over the datasets where it ran; Mean is "
            f"their mean, Range the best and worst of them, Datasets how many were ranked "
            f"(methods that ran on fewer datasets are ranked on fewer, among the methods "
            f"there). {MISSING}: no finished run. Runs: {per_dataset}.")


def notes(datasets: list[ReportData]) -> list[str]:
    """Each dataset's notes (left-out runs, tuned methods, warnings), named by dataset."""
    found = [f"{d.dataset}: {note}" for d in datasets for note in d.notes]
    profiles = sorted({d.profile for d in datasets})
    if len(profiles) > 1:
        found.append(f"the datasets' newest runs use different profiles ({', '.join(profiles)}"
                     f"); pass --profile to tabulate one.")
    return found


def to_markdown(datasets: list[ReportData]) -> str:
    text, bold = cross_cells(datasets)
    shown = text.where(~bold, "**" + text + "**")
    shown.columns = [_flat_title(group, column) for group, column in shown.columns]
    lines = [f"**Table 1 across datasets.** {caption(datasets)}", "",
             shown.to_markdown(disable_numparse=True), ""]
    lines += [f"Note: {note}" for note in notes(datasets)]
    return "\n".join(lines).rstrip() + "\n"


def _flat_title(group: str, column: str) -> str:
    """A Markdown header for a (group, column) pair: Markdown has no column groups."""
    if group != RANK_GROUP:
        return f"{group} {column}"
    return {"Mean": "Mean rank", "Range": "Rank range", "Datasets": "Datasets ranked"}[column]


def _styled(text: pd.DataFrame, bold: pd.DataFrame) -> pd.io.formats.style.Styler:
    """The table with "Method" as its first column (under an empty group), bold as CSS."""
    text = text.reset_index()
    text.columns = pd.MultiIndex.from_tuples([("", "Method"), *list(text.columns)[1:]])
    bold = bold.reset_index(drop=True)
    bold.insert(0, ("", "Method"), False)
    bold.columns = text.columns
    return text.style.hide(axis="index").apply(
        lambda col: np.where(bold[col.name], "font-weight: bold;", ""), axis=0)


def to_html(datasets: list[ReportData]) -> str:
    """One self-contained page (benchmark.report.html) with the grouped table."""
    from medad_bench.report.html import render_html

    text, bold = cross_cells(datasets)
    # Method names come from plug-ins and stores: escape every cell and header.
    table = (_styled(text, bold).format(escape="html").format_index(escape="html", axis=1)
             .set_uuid("table1x").to_html())
    names = ", ".join(d.dataset for d in datasets)
    return render_html(title=f"Table 1 across datasets: {names}", caption=caption(datasets),
                       table_html=table, figures={}, notes=notes(datasets))


def to_latex(datasets: list[ReportData]) -> str:
    """A booktabs table, a \\multicolumn group per dataset with a \\cmidrule under it."""
    from medad_bench.report.table import NOT_LEARNED_MARK, TIE_MARK, TUNED_MARK, _escape_latex

    def latex_cell(cell: str) -> str:
        return (_escape_latex(cell).replace(TIE_MARK, r"$^{\dagger}$")
                .replace(TUNED_MARK, r"$^{\ddagger}$")
                .replace(NOT_LEARNED_MARK, r"$^{\times}$").replace("–", "--")
                .replace(MISSING, "---"))

    text, bold = cross_cells(datasets)
    text = text.map(latex_cell)
    text.index = [latex_cell(str(name)) for name in text.index]
    text.index.name = "Method"
    text.columns = pd.MultiIndex.from_tuples(
        [(_escape_latex(group), _escape_latex(column)) for group, column in text.columns])
    bold.columns, bold.index = text.columns, text.index
    notes_text = "".join(f" Note: {note}" for note in notes(datasets))
    latex = _styled(text, bold).to_latex(
        hrules=True, convert_css=True, multicol_align="c",
        caption=latex_cell(caption(datasets) + notes_text),
        label="tab:" + _escape_latex("+".join(d.dataset for d in datasets)),
        position_float="centering", column_format="l" + "c" * (len(text.columns)))
    latex = _add_cmidrules(latex, [len(SUB_COLUMNS)] * len(datasets) + [len(RANK_COLUMNS)])
    return "% Generated by `bench report --datasets`; requires \\usepackage{booktabs}.\n" + latex


def _add_cmidrules(latex: str, widths: list[int]) -> str:
    """A \\cmidrule under each column group (booktabs), after the \\multicolumn row."""
    rules, start = [], 2  # column 1 is Method
    for width in widths:
        rules.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
        start += width
    lines = latex.splitlines()
    for i, line in enumerate(lines):
        if "\\multicolumn" in line:
            lines.insert(i + 1, " ".join(rules))
            break
    return "\n".join(lines) + "\n"
