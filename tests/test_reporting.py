"""benchmark.report.document, the library behind `bench report` and `bench check`, called directly
on a real SQLite MLflow store written through the suite's RunLogger (no training)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medad_bench.check.gate import check_against_reference, record_reference
from medad_bench.errors import BenchError, UsageError
from medad_bench.report.document import (
    PRINT_ONLY,
    build_report,
    card_name,
    default_report_path,
    log_report_run,
    write_report,
)
from medad_bench.tracking import RunLogger, ensure_experiment


def log_run(uri: str, method: str, seed: int, auc: float) -> None:
    logger = RunLogger(uri, ensure_experiment(uri, "tiny"), f"{method}-s{seed}",
                       {"method": method, "dataset": "tiny", "seed": str(seed)})
    logger.params({"method": method, "seed": seed, "profile": "quick",
                   "split_hash": "b" * 64, "data_version": "v1", "contaminated": "false",
                   "run_identity": method, "weights.identity": "random"})
    logger.metrics({"auc": auc, "precision": 0.5, "recall": 0.5, "specificity": 0.5,
                    "f1": 0.5, "accuracy": 0.5})
    logger.table(pd.DataFrame({"image_id": [f"i{i}" for i in range(8)], "split": "test",
                               "label": [0, 1] * 4,
                               "score": [0.1, 0.9, 0.2, 0.3 + seed / 10, 0.4, 0.8, 0.5, 0.6]}),
                 "scores.csv")
    logger.finish(True)


@pytest.fixture
def store(tracking_uri: str) -> str:
    for seed, auc in ((0, 0.71), (1, 0.73)):
        log_run(tracking_uri, "padim", seed, auc)
        log_run(tracking_uri, "patchcore", seed, auc - 0.1)
    return tracking_uri


def test_build_write_and_log_a_report(store, isolated):
    report = build_report(store, "tiny", "md", figures=False)
    assert report.out == default_report_path("tiny", "md") == Path("results/reports/tiny.md")
    assert report.to_file and report.printed and not report.figures
    assert report.text.startswith("**Table 1.** Anomaly detection on tiny")
    assert write_report(report) == report.out
    assert (isolated / report.out).read_text() == report.text
    run_id = log_report_run(report)
    run = MlflowClient(tracking_uri=store).get_run(run_id)
    assert run.data.tags["bench.kind"] == "report" and run.data.params["format"] == "md"
    assert [a.path for a in MlflowClient(tracking_uri=store).list_artifacts(run_id)] == [
        "tiny.md"]
    html = build_report(store, "tiny", "html", isolated / "page.html", figures=False)
    assert not html.printed and html.text.startswith("<!DOCTYPE html>")
    printed = build_report(store, "tiny", "latex", PRINT_ONLY)
    assert printed.printed and not printed.to_file and r"\toprule" in printed.text
    with pytest.raises(UsageError, match="printing only"):
        write_report(printed)
    contaminated = default_report_path("tiny", "html", contaminated=True)
    assert contaminated == Path("results/reports/tiny-contaminated.html")


def test_record_then_check_against_the_reference(store, isolated):
    path = isolated / "ref.json"
    reference, written = record_reference(store, "tiny", path)
    assert written == path and json.loads(path.read_text()) == reference
    assert reference["methods"]["padim"]["auc_by_seed"] == {"0": 0.71, "1": 0.73}
    result = check_against_reference(store, "tiny", path)
    assert result.ok and result.summary() == (
        f"All 4 seeds of 2 methods within 0.02 of {path}; same weights.")
    reference["methods"]["padim"]["auc_by_seed"]["1"] = 0.60
    path.write_text(json.dumps(reference))
    failed = check_against_reference(store, "tiny", path)
    assert not failed.ok and any("padim seed 1" in p for p in failed.outcome.problems)
    reference["dataset"] = "other"
    path.write_text(json.dumps(reference))
    with pytest.raises(UsageError, match="is the reference of 'other', not 'tiny'"):
        check_against_reference(store, "tiny", path)
    with pytest.raises(BenchError, match="does not exist"):
        check_against_reference(store, "tiny", isolated / "missing.json")


def test_card_name_resolves_card_paths(isolated):
    assert card_name("tiny") == "tiny"
    assert card_name(str(isolated / "cards" / "tiny-subtle.toml")) == "tiny-subtle"
    assert card_name("a-card-since-removed") == "a-card-since-removed"


# -- Table 1's columns: bench report --metrics (issue 15) --------------------------------------

def log_run_with_new_metrics(uri: str, method: str, seed: int, auc: float,
                             pixel: bool = True) -> None:
    """A run as the runner logs it since issue 15: AP, operating points, the threshold and its
    rule, and the pixel metrics of a dataset with masks."""
    logger = RunLogger(uri, ensure_experiment(uri, "tiny"), f"{method}-s{seed}",
                       {"method": method, "dataset": "tiny", "seed": str(seed)})
    logger.params({"method": method, "seed": seed, "profile": "quick",
                   "split_hash": "b" * 64, "data_version": "v1", "contaminated": "false",
                   "run_identity": f"{method}-new", "weights.identity": "random"})
    values = {"auc": auc, "precision": 0.5, "recall": 0.5, "specificity": 0.5, "f1": 0.5,
              "accuracy": 0.5, "ap": 0.61 + seed / 100, "sens_at_spec95": 0.25,
              "sens_at_spec90": 0.5, "spec_at_sens95": 0.25, "threshold": 0.45,
              "threshold_rule": 0.0}
    if pixel:
        values.update({"pixel_auroc": 0.8, "pixel_dice": 0.3, "pixel_ap": 0.4, "aupro": 0.7,
                       "pixel_dice_best_oracle": 0.9})
    logger.metrics(values)
    logger.table(pd.DataFrame({"image_id": [f"i{i}" for i in range(8)], "split": "test",
                               "label": [0, 1] * 4,
                               "score": [0.1, 0.9, 0.2, 0.3 + seed / 10, 0.4, 0.8, 0.5, 0.6]}),
                 "scores.csv")
    logger.finish(True)


def _header(text: str) -> list[str]:
    row = next(line for line in text.splitlines() if line.startswith("| Method"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def _cells_of(text: str, title: str) -> dict[str, str]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    header = _header(text)
    return {cells[0]: cells[header.index(title)] for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in rows[2:])}


def test_runs_before_the_new_metrics_show_a_dash_and_never_crash(store):
    text = build_report(store, "tiny", "md", PRINT_ONLY).text
    assert _header(text) == ["Method", "AUC", "AUC 95% CI", "p vs best (Holm)", "AP", "F1",
                             "Sens@95%Spec", "Spec@95%Sens"]  # no pixel metric was logged
    assert set(_cells_of(text, "AP").values()) == {"—"}
    assert set(_cells_of(text, "Sens@95%Spec").values()) == {"—"}
    # Logged, but these runs logged no threshold, so F1 gets no interval at it.
    assert _cells_of(text, "F1")["padim"] == "**0.500 ± 0.000**"
    assert "—: not logged by the runs" in text


def test_default_columns_with_intervals_pixel_metrics_and_the_oracle(tracking_uri):
    for seed in (0, 1):
        log_run_with_new_metrics(tracking_uri, "padim", seed, 0.9)
        log_run_with_new_metrics(tracking_uri, "patchcore", seed, 0.8)
    text = build_report(tracking_uri, "tiny", "md", PRINT_ONLY).text
    assert _header(text) == ["Method", "AUC", "AUC 95% CI", "p vs best (Holm)", "AP", "F1",
                             "Sens@95%Spec", "Spec@95%Sens", "Pixel AUROC", "Dice",
                             "Pixel AP", "AUPRO", "Best Dice §"]
    assert re.fullmatch(r"\*\*0\.615 ± 0\.007 \[0\.\d{3}, [01]\.\d{3}\]\*\*",
                        _cells_of(text, "AP")["padim"])
    assert set(_cells_of(text, "Best Dice §").values()) == {"0.900 ± 0.000"}  # never bold
    assert "§ Oracle: the best Dice over all thresholds, chosen with the test masks" in text
    assert "no test-set interval" in text and "—" not in text.split("\n\n")[1]
    latex = build_report(tracking_uri, "tiny", "latex", PRINT_ONLY).text
    assert r"Best Dice $^{\S}$" in latex and "§" not in latex
    assert r"Sens@95\%Spec" in latex


def test_bench_report_metrics_chooses_the_columns(tracking_uri):
    from click.testing import CliRunner

    from medad_bench.cli import cli

    for seed in (0, 1):
        log_run_with_new_metrics(tracking_uri, "padim", seed, 0.9, pixel=False)
        log_run_with_new_metrics(tracking_uri, "patchcore", seed, 0.8, pixel=False)

    def report(*args: str):
        return CliRunner().invoke(cli, ["report", "--dataset", "tiny", "--out", "-",
                                        "--tracking-uri", tracking_uri, *args])

    chosen = report("--metrics", "ap, auc,spec_at_sens95,ap")
    assert chosen.exit_code == 0, chosen.output
    assert _header(chosen.output) == ["Method", "AP", "AUC", "AUC 95% CI", "p vs best (Holm)",
                                      "Spec@95%Sens"]
    assert "average precision (AP)" in chosen.output and "Youden" not in chosen.output
    every = report("--metrics", "all")
    assert _header(every.output)[4:11] == ["AP", "Precision", "Recall", "Specificity", "F1",
                                            "Accuracy", "Sens@95%Spec"]
    assert "Not shown: pixel_auroc, pixel_dice, pixel_ap, aupro, pixel_dice_best_oracle" in \
        every.output  # asked for, but this dataset has no masks
    html = CliRunner().invoke(cli, ["report", "--dataset", "tiny", "--format", "html",
                                    "--no-figures", "--no-log", "--metrics", "auc,sens_at_spec90",
                                    "--tracking-uri", tracking_uri])
    assert html.exit_code == 0, html.output
    page = Path("results/reports/tiny.html").read_text()
    assert "Sens@90%Spec" in page and ">AP<" not in page
    bad = report("--metrics", "auc,aupr")
    assert bad.exit_code == 2
    assert "unknown metric 'aupr' for --metrics. Known metrics: auc, ap," in bad.output
    assert "pixel_dice_best_oracle (or `all`)" in bad.output
    assert report("--metrics", " , ").exit_code == 2
