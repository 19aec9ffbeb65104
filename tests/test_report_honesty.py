"""What a report may claim: no bold AUC without a significance test, tuned runs marked (and
left out on request), and nothing from a store, card or plug-in reaching the HTML unescaped."""

from __future__ import annotations

import re

from click.testing import CliRunner

from medad_bench.cli import cli
from medad_bench.report.html import render_html
from medad_bench.report.table import caption, select_runs, to_html_table

HOSTILE = '<img src=x onerror="alert(1)">'


def bench(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _run(uri: str, methods: str, *extra: str) -> None:
    weights = [arg for m in methods.split(",") for arg in ("--weights", f"{m}=random")]
    bench("run", "--dataset", "tiny", "--methods", methods, "--no-progress", *weights,
          "--tracking-uri", uri, *extra)


def _auc_cells(report: str, title: str = "AUC") -> dict[str, str]:
    """Method -> its cell in column `title`, from the Markdown table."""
    rows = [line for line in report.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    column = header.index(title)
    cells = {}
    for line in rows[2:]:
        values = [cell.strip() for cell in line.strip("|").split("|")]
        cells[values[0]] = values[column]
    return cells


def test_without_scores_no_auc_is_bold(tracking_uri, isolated):
    _run(tracking_uri, "padim,patchcore", "--seeds", "0")
    with_scores = bench("report", "--dataset", "tiny", "--out", "-", "--tracking-uri",
                        tracking_uri).output
    assert "AUC 95% CI" in with_scores
    # The p column is the one the ties are decided on: Holm-adjusted.
    statistics = select_runs(tracking_uri, "tiny").statistics.set_index("method")
    worse = statistics.index[1]
    p_holm = statistics.loc[worse, "p_holm"]
    assert p_holm >= statistics.loc[worse, "p_value"]
    expected = "<0.001" if p_holm < 0.001 else f"{p_holm:.3f}"
    assert _auc_cells(with_scores, "p vs best (Holm)")[worse] == expected
    # One run loses its scores: no test can be made, so no AUC may be bold (it used to fall
    # back to the highest mean).
    next(isolated.rglob("scores.csv")).unlink()
    report = bench("report", "--dataset", "tiny", "--out", "-", "--tracking-uri",
                   tracking_uri).output
    cells = _auc_cells(report)
    assert set(cells) == {"padim", "patchcore"}
    assert cells["padim"] != cells["patchcore"]
    assert not any("**" in cell for cell in cells.values())
    assert "AUC 95% CI" not in report
    assert "AUC: nothing bold" in report and "lack their scores.csv" in report


def test_tuned_runs_are_marked_and_can_be_left_out(tracking_uri):
    _run(tracking_uri, "padim,patchcore", "--seeds", "0")
    _run(tracking_uri, "padim", "--seeds", "0", "--set", "padim.n_features=40")
    marked = bench("report", "--dataset", "tiny", "--out", "-", "--tracking-uri",
                   tracking_uri).output
    cells = _auc_cells(marked)
    assert set(cells) == {"padim ‡", "patchcore"}  # the newest padim runs are the tuned ones
    assert re.search(r"‡ padim: run with --set overrides \(tuned=true\)", marked)
    honest = bench("report", "--dataset", "tiny", "--out", "-", "--exclude-tuned",
                   "--tracking-uri", tracking_uri).output
    assert set(_auc_cells(honest)) == {"padim", "patchcore"}  # the untuned padim is back
    assert "left out 1 tuned run(s) (--set overrides) of padim" in honest
    data = select_runs(tracking_uri, "tiny", exclude_tuned=True, statistics=False)
    assert (data.runs.tuned == "false").all()
    latex = bench("report", "--dataset", "tiny", "--format", "latex", "--out", "-",
                  "--tracking-uri", tracking_uri).output
    assert r"padim $^{\ddagger}$" in latex and "‡" not in latex


def test_html_report_escapes_what_comes_from_the_store(tracking_uri):
    _run(tracking_uri, "padim", "--seeds", "0,1")
    data = select_runs(tracking_uri, "tiny")
    # A plug-in or a store can name a method anything; a card or a param can hold any text.
    data.runs["method"] = HOSTILE
    data.runs["backbone"] = HOSTILE
    data.statistics["method"] = HOSTILE
    data.notes.append(f"warning from a plug-in: {HOSTILE}")
    data.dataset = HOSTILE
    page = render_html(title=f"Table 1: {data.dataset}", caption=caption(data),
                       table_html=to_html_table(data), figures={}, notes=data.notes)
    assert HOSTILE not in page and "<img" not in page
    assert page.count("&lt;img src=x onerror=") >= 4  # table cell, caption, note, title
