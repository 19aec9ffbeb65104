"""The library behind `bench report` and `bench check`: pick the runs, render the report in
Markdown, LaTeX or HTML, write it with its figures, log it to MLflow, and check the runs
against a recorded reference. The commands in benchmark/cli.py only parse options, call these
functions and print what they return.

    report = build_report(None, "synthetic", fmt="md")    # None: the default tracking store
    write_report(report)
    log_report_run(report)

    result = check_against_reference(None, "synthetic")
    print(result.outcome.table, result.ok)

    published = check_against_published(None, "bmad-rsna",
                                        Path("results/reference/published/bmad-rsna.json"))
    print(published.render(), published.ok)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medad_bench.disk import write_text_atomic
from medad_bench.errors import UsageError
from medad_bench.published import PublishedComparison
from medad_bench.regression import CheckOutcome
from medad_bench.report import ReportData
from medad_bench.shipped import reference_file

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
    from medad_bench.report import (
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
        from medad_bench.html_report import render_html

        section = selection_html_section(data)
        return render_html(title=f"Table 1: {data.dataset}", caption=caption(data),
                           table_html=to_html_table(data), figures=figures, notes=data.notes,
                           sections=[section] if section else [])
    raise UsageError(f"unknown report format '{fmt}': one of {', '.join(FORMATS)}.")


def build_report(tracking_uri: str | None, dataset: str, fmt: str = "md",
                 out: Path | None = None, *, profile: str | None = None,
                 contaminated: bool = False, exclude_tuned: bool = False,
                 figures: bool = True, metrics: tuple[str, ...] | None = None) -> Report:
    """Select the runs of `dataset` (benchmark.report.select_runs), build the figures and
    render the report; nothing is written but the figures.

    `tracking_uri` None: $MLFLOW_TRACKING_URI, else the default store. `dataset`: a card name
    or a card path. `out` None: default_report_path; PRINT_ONLY: the table only, no figures.
    Figures (not for LaTeX) go to <out's folder>/<dataset>[-contaminated]/. `metrics`:
    Table 1's columns (benchmark.report.parse_metrics names); None: the default columns.
    """
    from medad_bench.report import select_runs
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
        from medad_bench.report_figures import build_figures

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


def default_reference_path(dataset: str) -> Path:
    """results/reference/<dataset>.json of the working folder, else the shipped one."""
    return reference_file(f"{dataset}.json")


def record_reference(tracking_uri: str | None, dataset: str, against: Path | None = None,
                     tolerance: float | None = None,
                     profile: str | None = None) -> tuple[dict[str, Any], Path]:
    """Record the newest runs of `dataset` as its reference; returns the reference and the
    file it was written to (`against`, default default_reference_path). `tolerance` None:
    benchmark.regression.DEFAULT_TOLERANCE."""
    from medad_bench.regression import DEFAULT_TOLERANCE, reference_from, write_reference
    from medad_bench.report import select_runs
    from medad_bench.tracking import resolve_tracking_uri

    dataset = card_name(dataset)
    against = against or default_reference_path(dataset)
    uri = resolve_tracking_uri(tracking_uri)
    data = select_runs(uri, dataset, profile, statistics=False)
    reference = reference_from(data, DEFAULT_TOLERANCE if tolerance is None else tolerance)
    write_reference(reference, against)
    return reference, against


@dataclass
class CheckResult:
    """The outcome of a regression check and what it was checked against."""

    reference: dict[str, Any]
    against: Path
    outcome: CheckOutcome

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    def summary(self) -> str:
        """The line that closes a passed check."""
        methods = self.outcome.table.method.nunique()
        return (f"All {len(self.outcome.table)} seeds of {methods} methods within "
                f"{self.reference.get('tolerance')} of {self.against}; same weights.")


def check_against_reference(tracking_uri: str | None, dataset: str,
                            against: Path | None = None, tolerance: float | None = None,
                            profile: str | None = None) -> CheckResult:
    """Compare the newest runs of `dataset` with its reference seed by seed
    (benchmark.regression.compare). `against` None: default_reference_path; `tolerance` None:
    the reference's; `profile` None: the reference's. Raises BenchError when the reference
    is missing or unreadable, UsageError when it is another dataset's."""
    from medad_bench.regression import compare, read_reference
    from medad_bench.report import select_runs
    from medad_bench.tracking import resolve_tracking_uri

    dataset = card_name(dataset)
    against = against or default_reference_path(dataset)
    uri = resolve_tracking_uri(tracking_uri)
    reference = read_reference(against)
    if reference["dataset"] != dataset:
        raise UsageError(f"{against} is the reference of '{reference['dataset']}', "
                         f"not '{dataset}'.")
    data = select_runs(uri, dataset, profile or reference["profile"], statistics=False)
    return CheckResult(reference=reference, against=against,
                       outcome=compare(reference, data, tolerance))


def check_against_published(tracking_uri: str | None, dataset: str, against: Path,
                            profile: str | None = None) -> PublishedComparison:
    """Compare the newest runs of `dataset` with a published reference (benchmark.published):
    per method the mean over seeds beside the published mean, within K combined standard
    deviations, plus what was not run and the protocol differences that remain. `profile`
    None: the newest run's. Raises BenchError when the file is missing or malformed (naming
    the key), UsageError when it is another dataset's."""
    from medad_bench.published import compare_published, read_published
    from medad_bench.report import select_runs
    from medad_bench.tracking import resolve_tracking_uri

    dataset = card_name(dataset)
    reference = read_published(against)
    if reference["dataset"] != dataset:
        raise UsageError(f"{against} holds published figures of '{reference['dataset']}', "
                         f"not '{dataset}'. Pass --dataset {reference['dataset']}, or the "
                         f"published file of '{dataset}'.")
    uri = resolve_tracking_uri(tracking_uri)
    data = select_runs(uri, dataset, profile, statistics=False)
    return compare_published(reference, data, against)
