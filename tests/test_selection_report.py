"""The report's "Model selection" table: from the selection.csv artifacts of real MLflow runs
(a SQLite store written through the suite's own RunLogger, no training) to the numbers and
the section in Markdown, LaTeX and HTML; old-format files read; methods without checkpoints
left out; the oracle always footnoted as chosen with the test labels."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from medad_bench.cli import cli
from medad_bench.report.html import render_html
from medad_bench.report.model_selection import (
    ORACLE_FOOTNOTE,
    checkpoint_aucs,
    normalise_selection,
    run_rule,
)
from medad_bench.report.table import caption, select_runs, selection_html_section, to_html_table
from medad_bench.tracking import RunLogger, ensure_experiment

HOSTILE = '<img src=x onerror="alert(1)">'
N_TEST = 20


def _scores(seed: int) -> pd.DataFrame:
    """A scores.csv of 20 test images (the same ids and labels for every run)."""
    rng = np.random.default_rng(seed)
    labels = np.tile([0, 1], N_TEST // 2)
    return pd.DataFrame({"image_id": [f"img{i:02d}" for i in range(N_TEST)], "split": "test",
                         "subject_id": [f"s{i:02d}" for i in range(N_TEST)], "label": labels,
                         "score": labels + rng.normal(0, 0.8, N_TEST)})


def log_run(uri: str, method: str, seed: int, selection: pd.DataFrame | None = None,
            model_selection: str = "none", **params: str) -> str:
    """One finished run of dataset `tiny` as `bench run` logs it (the params the report
    reads, metrics, scores.csv and, when given, selection.csv)."""
    logger = RunLogger(uri, ensure_experiment(uri, "tiny"), f"{method}-s{seed}",
                       {"method": method, "dataset": "tiny", "seed": str(seed)})
    logger.params({"method": method, "dataset": "tiny", "seed": seed, "profile": "quick",
                   "split_hash": "a" * 64, "data_version": "v1", "contaminated": "false",
                   "run_identity": f"{method}-identity", "model_selection": model_selection,
                   **params})
    logger.metrics({"auc": 0.7 + seed / 100, "precision": 0.6, "recall": 0.6,
                    "specificity": 0.6, "f1": 0.6, "accuracy": 0.6})
    logger.table(_scores(seed), "scores.csv")
    if selection is not None:
        logger.table(selection, "selection.csv")
    logger.finish(True)
    return logger.run_id


def new_format(last: float, aucp: float, oracle: float, extra: int = 0) -> pd.DataFrame:
    """Checkpoints whose last has test AUC `last`, AUCp choice `aucp`, best eligible `oracle`;
    an ineligible checkpoint holds both the highest AUCp and the highest test AUC, so the
    eligibility is what keeps it out of the AUCp choice and of the oracle."""
    rows = [
        (10, 0.55, oracle, 1, 0, 0),
        (20, 0.90, aucp, 1, 1, 0),
        (30, 0.95, 0.99, 0, 0, 0),   # not eligible
        *((35 + i, 0.50, 0.50, 1, 0, 0) for i in range(extra)),
        (40, 0.60, last, 1, 0, 1),
    ]
    return pd.DataFrame(rows, columns=["step", "aucp", "test_auc", "eligible", "aucp_choice",
                                       "last"]).assign(aucp_debiased=0.5)


#: The older runner's file: iteration/true_auc, no flags, written in checkpoint order (here
#: shuffled, to show the reader sorts). AUCp ties at 200 and 300: the first, 200, is chosen.
OLD_FORMAT = pd.DataFrame({"iteration": [300, 100, 200], "aucp": [0.8, 0.6, 0.8],
                           "aucp_debiased": [0.7, 0.3, 0.7], "true_auc": [0.55, 0.88, 0.77]})


@pytest.fixture
def store(tracking_uri: str) -> str:
    # gan_a: current format, two seeds with selection data and a third without.
    log_run(tracking_uri, "gan_a", 0, new_format(0.58, 0.68, 0.78), "aucp")
    log_run(tracking_uri, "gan_a", 1, new_format(0.62, 0.72, 0.82, extra=1), "aucp")
    log_run(tracking_uri, "gan_a", 2, None, "aucp")
    # gan_old: a run logged by the older runner (its rule: the config's select).
    log_run(tracking_uri, "gan_old", 0, OLD_FORMAT, "aucp_on_unlabelled_test",
            **{"config.select": "last"})
    # padim: no checkpoints, no selection.csv.
    log_run(tracking_uri, "padim", 0)
    log_run(tracking_uri, "padim", 1)
    return tracking_uri


def bench(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _section_rows(markdown: str) -> dict[str, list[str]]:
    """Method -> its cells in the Markdown "Model selection" table (header row under "")."""
    section = markdown.split("## Model selection", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, body = cells[0], cells[2:]  # cells[1]: the |---| rule
    return {"": header[1:], **{row[0]: row[1:] for row in body}}


def test_table_numbers_from_the_runs_artifacts(store):
    data = select_runs(store, "tiny")
    assert data.selection is not None
    table = data.selection.table
    assert list(table.index) == ["gan_a", "gan_old"]  # padim has no selection data
    gan_a = table.loc["gan_a"]
    assert gan_a.n_seeds == 2 and gan_a.checkpoints == pytest.approx(4.5)
    assert gan_a.rule == "aucp"
    assert gan_a.last_mean == pytest.approx(0.60)
    assert gan_a.aucp_mean == pytest.approx(0.70)
    assert gan_a.oracle_mean == pytest.approx(0.80)  # not the ineligible 0.99
    for column in ("last", "aucp", "oracle"):
        assert gan_a[f"{column}_std"] == pytest.approx(0.04 / math.sqrt(2))
    # Its seed 2 logged no selection.csv: the row says it averages the others.
    assert any("gan_a: no selection.csv for seed(s) 2" in n for n in data.selection.notes)


def test_old_format_is_read(store):
    old = select_runs(store, "tiny").selection.table.loc["gan_old"]
    assert old.n_seeds == 1 and old.checkpoints == 3
    assert old.last_mean == pytest.approx(0.55)    # iteration 300, the highest
    assert old.aucp_mean == pytest.approx(0.77)    # AUCp tie 200/300: the first, 200
    assert old.oracle_mean == pytest.approx(0.88)  # every checkpoint eligible
    assert math.isnan(old.last_std)                # one seed: no spread
    assert old.rule == "last"                      # the legacy param meant config.select


def test_normalise_selection_derives_the_flags():
    table = normalise_selection(OLD_FORMAT)
    assert list(table.step) == [100, 200, 300]
    assert list(table.test_auc) == [0.88, 0.77, 0.55]
    assert list(table.eligible) == [1, 1, 1]
    assert list(table.aucp_choice) == [0, 1, 0]
    assert list(table["last"]) == [0, 0, 1]
    # New format without the choice: the highest AUCp among the eligible, first on ties.
    partial = pd.DataFrame({"step": [1, 2, 3, 4], "aucp": [0.9, 0.7, 0.8, 0.8],
                            "test_auc": [0.1, 0.2, 0.3, 0.4], "eligible": [0, 1, 1, 1]})
    assert checkpoint_aucs(normalise_selection(partial)) == {
        "checkpoints": 4.0, "last": 0.4, "aucp": 0.3, "oracle": 0.4}
    with pytest.raises(ValueError, match="test_auc"):
        normalise_selection(pd.DataFrame({"step": [1], "aucp": [0.5]}))
    assert run_rule("aucp_on_unlabelled_test") == "aucp"
    assert run_rule("last") == "last" and run_rule(None) == ""


def test_markdown_report_has_the_section_after_table_1(store):
    text = bench("report", "--dataset", "tiny", "--out", "-", "--tracking-uri", store)
    assert text.index("**Table 1.**") < text.index("## Model selection")
    rows = _section_rows(text)
    assert rows[""] == ["Seeds", "Checkpoints", "Kept by", "Last", "AUCp choice",
                        "Oracle (test labels)"]
    assert rows["gan_a"] == ["2", "4.5", "aucp", "0.600 ± 0.028", "0.700 ± 0.028",
                             "0.800 ± 0.028"]
    assert rows["gan_old"] == ["1", "3.0", "last", "0.550", "0.770", "0.880"]
    assert "padim" not in rows
    assert f"{ORACLE_FOOTNOTE}." in text
    assert "gan_a: no selection.csv for seed(s) 2" in text


def test_latex_report_has_the_section_and_footnote(store):
    latex = bench("report", "--dataset", "tiny", "--format", "latex", "--out", "-",
                  "--tracking-uri", store)
    assert latex.count(r"\begin{table}") == 2 and latex.count(r"\toprule") == 2
    selection = latex.split(r"\end{table}")[1]
    assert r"\caption{Model selection." in selection
    assert r"\label{tab:tiny-selection}" in selection
    assert r"gan\_a & 2 & 4.5 & aucp & 0.600 $\pm$ 0.028 & 0.700 $\pm$ 0.028" in selection
    assert "padim" not in selection
    assert f"{ORACLE_FOOTNOTE}." in selection and "Oracle (test labels)" in selection


def test_html_report_has_the_section_and_footnote(store, isolated):
    out = isolated / "report.html"
    bench("report", "--dataset", "tiny", "--format", "html", "--out", str(out),
          "--no-figures", "--no-log", "--tracking-uri", store)
    page = out.read_text()
    assert page.index('id="T_table1"') < page.index("<h2>Model selection</h2>")
    section = page.split("<h2>Model selection</h2>", 1)[1]
    assert "0.700 ± 0.028" in section and "gan_old" in section and "padim" not in section
    assert f'<p class="caption">{ORACLE_FOOTNOTE}.</p>' in section


def test_html_section_escapes_what_comes_from_the_store(store):
    data = select_runs(store, "tiny")
    data.selection.table.index = [HOSTILE, "gan_old"]
    data.selection.table.loc[HOSTILE, "rule"] = HOSTILE
    data.selection.notes.append(f"from a plug-in: {HOSTILE}")
    page = render_html(title="t", caption=caption(data), table_html=to_html_table(data),
                       figures={}, notes=data.notes, sections=[selection_html_section(data)])
    assert HOSTILE not in page and "<img" not in page
    assert page.count("&lt;img src=x onerror=") >= 3  # method, rule, footnote


def test_no_section_without_selection_data(tracking_uri):
    log_run(tracking_uri, "padim", 0)
    log_run(tracking_uri, "patchcore", 0)
    data = select_runs(tracking_uri, "tiny")
    assert data.selection is None and selection_html_section(data) is None
    for fmt in ("md", "latex", "html"):
        text = bench("report", "--dataset", "tiny", "--format", fmt, "--out", "-",
                     "--tracking-uri", tracking_uri)
        assert "Model selection" not in text and "oracle:" not in text
