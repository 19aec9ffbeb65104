"""benchmark.reporting, the library behind `bench report` and `bench check`, called directly
on a real SQLite MLflow store written through the suite's RunLogger (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from benchmark.errors import BenchError, UsageError
from benchmark.reporting import (
    PRINT_ONLY,
    build_report,
    card_name,
    check_against_reference,
    default_report_path,
    log_report_run,
    record_reference,
    write_report,
)
from benchmark.tracking import RunLogger, ensure_experiment


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
