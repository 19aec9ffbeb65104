"""`bench report --datasets`: one Table 1 across datasets (benchmark.report.cross_dataset),
from real SQLite MLflow stores in tmp_path: runs written through the suite's RunLogger with chosen
test scores (to pin the significance rule) and runs made by `bench run` (end to end)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from medad_bench.cli import cli
from medad_bench.errors import BenchError, UsageError
from medad_bench.report.cross_dataset import (
    MISSING,
    build_cross_report,
    default_cross_path,
    parse_datasets,
    rank_table,
    write_cross_report,
)
from medad_bench.tracking import RunLogger, ensure_experiment, finished_runs


def bench(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_rank_arithmetic():
    aucs = pd.DataFrame({"d1": {"a": 0.9, "b": 0.8, "c": 0.8},
                         "d2": {"a": 0.6, "b": 0.7, "c": np.nan}})
    ranks = rank_table(aucs)
    assert ranks.d1.to_dict() == {"a": 1.0, "b": 2.5, "c": 2.5}  # a tie shares 2 and 3
    assert ranks.d2.loc[["a", "b"]].tolist() == [2.0, 1.0] and np.isnan(ranks.d2["c"])
    assert ranks["mean"].to_dict() == {"a": 1.5, "b": 1.75, "c": 2.5}  # c: ranked on d1 only
    assert ranks.low.to_dict() == {"a": 1.0, "b": 1.0, "c": 2.5}
    assert ranks.high.to_dict() == {"a": 2.0, "b": 2.5, "c": 2.5}
    assert ranks.n.to_dict() == {"a": 2, "b": 2, "c": 1}


def test_dataset_lists():
    assert parse_datasets("synthetic, synthetic-easy") == ["synthetic", "synthetic-easy"]
    with pytest.raises(UsageError, match="at least one dataset"):
        parse_datasets(" , ")
    with pytest.raises(UsageError, match="names tiny more than once"):
        parse_datasets("tiny,tiny-subtle,tiny")
    assert str(default_cross_path(["a", "b"], "latex")) == "results/reports/a+b.tex"


N_TEST = 40
LABELS = np.array([0, 1] * (N_TEST // 2))


def log_run(uri: str, dataset: str, method: str, seed: int, scores: np.ndarray) -> None:
    """One finished run as `bench run` logs it (params, metrics, scores.csv), no training."""
    from sklearn.metrics import roc_auc_score

    logger = RunLogger(uri, ensure_experiment(uri, dataset), f"{method}-s{seed}",
                       {"method": method, "dataset": dataset, "seed": str(seed)})
    logger.params({"method": method, "seed": seed, "profile": "quick",
                   "split_hash": dataset[0] * 64, "data_version": "v1",
                   "contaminated": "false", "run_identity": method, "weights.identity": ""})
    f1 = 0.5 + 0.1 * seed
    logger.metrics({"auc": roc_auc_score(LABELS, scores), "precision": 0.5, "recall": 0.5,
                    "specificity": 0.5, "f1": f1, "accuracy": 0.5})
    logger.table(pd.DataFrame({"image_id": [f"i{i:03d}" for i in range(N_TEST)], "split": "test",
                               "label": LABELS, "score": scores}), "scores.csv")
    logger.finish(True)


@pytest.fixture(scope="module")
def scored_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tiny: 'strong' separates the classes, 'weak' is noise, 'extra' ran there only;
    tiny-subtle: 'strong' and 'weak' score alike (a tie). One store for the module's tests
    (they only read it)."""
    tracking_uri = f"sqlite:///{tmp_path_factory.mktemp('scored') / 'mlflow.db'}"
    rng = np.random.default_rng(0)
    # The same scores for both seeds (a deterministic method): only the test set varies.
    scores = {("tiny", "strong"): LABELS + rng.normal(0, 0.05, N_TEST),
              ("tiny", "weak"): rng.normal(0, 1, N_TEST),
              ("tiny", "extra"): LABELS * 0.5 + rng.normal(0, 1, N_TEST)}
    alike = LABELS * 0.3 + rng.normal(0, 1, N_TEST)
    scores[("tiny-subtle", "strong")] = alike
    scores[("tiny-subtle", "weak")] = alike + rng.normal(0, 0.01, N_TEST)
    for seed in (0, 1):
        for (dataset, method), values in scores.items():
            log_run(tracking_uri, dataset, method, seed, values)
    return tracking_uri


def _rows(markdown: str) -> dict[str, list[str]]:
    """Method -> its cells, from a Markdown table."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in {"strong", "weak", "extra", "padim",
                                                  "patchcore"}:
            rows[cells[0]] = cells[1:]
    return rows


def test_bold_only_where_significant_dash_for_missing_and_ranks(scored_store):
    report = build_cross_report(scored_store, ["tiny", "tiny-subtle"], "md")
    rows = _rows(report.text)
    header = next(line for line in report.text.splitlines() if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Method", "tiny AUC", "tiny 95% CI", "tiny F1", "tiny-subtle AUC",
        "tiny-subtle 95% CI", "tiny-subtle F1", "Mean rank", "Rank range", "Datasets ranked"]
    # tiny: strong leads significantly -> bold, no dagger anywhere in that column.
    assert rows["strong"][0].startswith("**") and "†" not in rows["strong"][0]
    assert not rows["weak"][0].startswith("**") and not rows["extra"][0].startswith("**")
    # tiny-subtle: strong and weak tie -> nothing bold, both carry the dagger.
    for method in ("strong", "weak"):
        assert rows[method][3].endswith("†") and "**" not in rows[method][3]
    # F1 (no paired test) is never bold; 'extra' did not run on tiny-subtle: dashes.
    assert all("**" not in rows[m][i] for m in rows for i in (2, 5))
    assert rows["extra"][3:6] == [MISSING] * 3 and rows["strong"][2] == "0.550"
    # Ranks: tiny strong 1, extra 2, weak 3; tiny-subtle by mean AUC, extra unranked there.
    subtle = finished_runs(scored_store, "tiny-subtle").groupby("method")["metric.auc"].mean()
    second = 1.5 if subtle["strong"] == subtle["weak"] else (
        1.0 if subtle["strong"] > subtle["weak"] else 2.0)
    assert rows["strong"][6:] == [f"{(1 + second) / 2:.2f}", f"1–{second:g}", "2 of 2"]
    assert rows["extra"][6:] == ["2.00", "2–2", "1 of 2"]
    assert "split SHA-256 " + "t" * 64 in report.text
    assert "Mean is their mean, Range the best and worst" in report.text


def test_no_bold_auc_without_scores(tracking_uri):
    """A run without scores.csv: no interval and no claim that any lead is significant."""
    for method, auc in (("strong", 0.9), ("weak", 0.6)):
        logger = RunLogger(tracking_uri, ensure_experiment(tracking_uri, "tiny"), method,
                           {"method": method})
        logger.params({"method": method, "seed": 0, "profile": "quick", "split_hash": "t" * 64,
                       "data_version": "v1", "contaminated": "false", "run_identity": method,
                       "weights.identity": ""})
        logger.metrics({"auc": auc, "precision": 0.5, "recall": 0.5, "specificity": 0.5,
                        "f1": 0.5, "accuracy": 0.5})
        logger.finish(True)
    text = build_cross_report(tracking_uri, ["tiny"], "md").text
    rows = _rows(text)
    assert rows["strong"][:2] == ["0.900", MISSING] and "**" not in text.split("\n\n")[1]
    assert "tiny: no CIs, paired tests or bold AUC" in text


def _run(methods: str, dataset: str, uri: str) -> None:
    weights = [arg for m in methods.split(",") for arg in ("--weights", f"{m}=random")]
    result = bench("run", "--methods", methods, "--dataset", dataset, "--seeds", "0",
                   "--no-progress", *weights, "--tracking-uri", uri)
    assert result.exit_code == 0, result.output


@pytest.fixture
def bench_store(tracking_uri: str) -> str:
    """Real `bench run` runs: padim and patchcore on tiny, padim only on tiny-subtle."""
    _run("padim,patchcore", "tiny", tracking_uri)
    _run("padim", "tiny-subtle", tracking_uri)
    return tracking_uri


def test_bench_report_datasets_in_every_format(bench_store, isolated):
    uri = bench_store
    md = bench("report", "--datasets", "tiny,tiny-subtle", "--tracking-uri", uri)
    assert md.exit_code == 0, md.output
    path = isolated / "results" / "reports" / "tiny+tiny-subtle.md"
    text = path.read_text()
    assert "Written to results/reports/tiny+tiny-subtle.md" in md.output
    for dataset in ("tiny", "tiny-subtle"):
        split_hash = finished_runs(uri, dataset).split_hash.iloc[0]
        assert f"{dataset}: quick profile, seed(s) 0, split SHA-256 {split_hash}" in text
    rows = _rows(text)
    assert rows["patchcore"][3:6] == [MISSING] * 3 and rows["patchcore"][8] == "1 of 2"
    assert rows["padim"][8] == "2 of 2"
    # tiny: a significant lead (one bold AUC) or a tie (daggers); tiny-subtle: padim alone,
    # never bold.
    bold = [cells[0] for cells in rows.values() if cells[0].startswith("**")]
    daggers = [cells[0] for cells in rows.values() if "†" in cells[0]]
    assert (len(bold), len(daggers)) in {(1, 0), (0, 2)}
    assert not any("**" in cells[i] for cells in rows.values() for i in (1, 2, 3, 4, 5))

    latex = bench("report", "--datasets", "tiny,tiny-subtle", "--format", "latex",
                  "--out", "-", "--tracking-uri", uri)
    assert latex.exit_code == 0 and not (isolated / "results" / "reports" /
                                         "tiny+tiny-subtle.tex").exists()
    table = latex.output
    for piece in (r"\toprule", r"\midrule", r"\bottomrule", r"\multicolumn{3}{c}{tiny}",
                  r"\multicolumn{3}{c}{tiny-subtle}", r"\cmidrule(lr){2-4}",
                  r"\cmidrule(lr){5-7}", r"Method & AUC & 95\% CI & F1", "---"):
        assert piece in table, piece
    html = bench("report", "--datasets", "tiny,tiny-subtle", "--format", "html",
                 "--tracking-uri", uri)
    page = (isolated / "results" / "reports" / "tiny+tiny-subtle.html").read_text()
    assert html.exit_code == 0 and page.startswith("<!DOCTYPE html>")
    assert len(re.findall(r'colspan="3"', page)) == 3 and "http" not in page.split("<body>")[1]

    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed: LaTeX compile check skipped")
    document = isolated / "doc.tex"
    document.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                        f"{table}\n\\end{{document}}\n")
    compiled = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                               document.name], cwd=isolated, capture_output=True, text=True,
                              timeout=120)
    assert compiled.returncode == 0, compiled.stdout[-2000:]
    assert (isolated / "doc.pdf").stat().st_size > 1000


def test_errors(scored_store, isolated):
    with pytest.raises(BenchError, match="no finished runs of dataset 'nothing'"):
        build_cross_report(scored_store, ["tiny", "nothing"])
    missing = bench("report", "--datasets", "tiny,nothing", "--tracking-uri", scored_store)
    assert missing.exit_code == 1 and "'nothing'" in missing.output
    both = bench("report", "--dataset", "tiny", "--datasets", "tiny,tiny-subtle",
                 "--tracking-uri", scored_store)
    assert both.exit_code == 2 and "not both" in both.output
    twice = bench("report", "--datasets", "tiny,tiny", "--tracking-uri", scored_store)
    assert twice.exit_code == 2 and "more than once" in twice.output
    metrics = bench("report", "--datasets", "tiny,tiny-subtle", "--metrics", "auc,ap",
                    "--tracking-uri", scored_store)
    assert metrics.exit_code == 2 and "--metrics chooses one dataset's" in metrics.output
    only_print = build_cross_report(scored_store, ["tiny"], "md", Path("-"))
    assert only_print.printed and not only_print.to_file
    with pytest.raises(UsageError, match="printing only"):
        write_cross_report(only_print)
