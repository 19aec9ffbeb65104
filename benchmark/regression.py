"""AUC regression gate: compare the latest runs with a recorded reference.

A reference file (results/reference/<dataset>.json) records, for one dataset, profile, split
hash and seed list, the mean test AUC of each method. `bench check` fails when a method's mean
AUC over the same seeds falls more than the tolerance below its reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.errors import BenchError
from benchmark.report import ReportData

DEFAULT_TOLERANCE = 0.02


@dataclass
class CheckOutcome:
    table: pd.DataFrame  # method, reference, current, delta, status
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def reference_from(data: ReportData, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """A reference recording the runs in `data` (the latest run per method and seed)."""
    methods = {}
    for method, runs in data.runs.groupby("method"):
        runs = runs.sort_values("seed")
        methods[method] = {
            "auc": round(float(runs["metric.auc"].mean()), 6),
            "auc_by_seed": {str(s): round(float(a), 6)
                            for s, a in zip(runs.seed, runs["metric.auc"], strict=True)},
            "backbone_weights": str(runs.backbone_weights.iloc[0]),
        }
    return {
        "dataset": data.dataset,
        "profile": data.profile,
        "split_hash": data.split_hash,
        "data_version": data.data_version,
        "seeds": data.seeds,
        "tolerance": tolerance,
        "methods": methods,
    }


def write_reference(reference: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(reference, indent=2, sort_keys=False) + "\n")


def read_reference(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BenchError(f"reference file {path} does not exist. Record one with "
                         f"`bench check --dataset NAME --update --against {path}`.")
    try:
        reference = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchError(f"reference file {path} is not valid JSON: {exc}.") from exc
    for key in ("dataset", "profile", "split_hash", "seeds", "methods"):
        if key not in reference:
            raise BenchError(f"reference file {path} lacks '{key}'. Re-record it with --update.")
    return reference


def compare(reference: dict[str, Any], data: ReportData,
            tolerance: float | None = None) -> CheckOutcome:
    """Compare the latest runs in `data` with `reference`."""
    tolerance = reference.get("tolerance", DEFAULT_TOLERANCE) if tolerance is None else tolerance
    problems = []
    if data.split_hash != reference["split_hash"]:
        problems.append(
            f"the runs used split {data.split_hash[:12]}, the reference "
            f"{reference['split_hash'][:12]}: the dataset changed, so AUCs are not comparable. "
            f"If the change is intended, re-record with --update.")
    if reference.get("data_version") and data.data_version != reference["data_version"]:
        problems.append(
            f"the runs used data version {data.data_version}, the reference "
            f"{reference['data_version']}: the images changed (card or generator), so AUCs are "
            f"not comparable. If the change is intended, re-record with --update.")
    seeds = [int(s) for s in reference["seeds"]]
    rows = []
    for method, ref in reference["methods"].items():
        runs = data.runs[(data.runs.method == method) & (data.runs.seed.isin(seeds))]
        missing = sorted(set(seeds) - set(runs.seed))
        if missing:
            rows.append({"method": method, "reference": ref["auc"], "current": None,
                         "delta": None, "status": f"MISSING seeds {missing}"})
            problems.append(f"{method}: no finished run for seeds {missing}. Run `bench run "
                            f"--methods {method} --dataset {data.dataset} --seeds "
                            f"{','.join(map(str, seeds))} --profile {data.profile}`.")
            continue
        current = float(runs["metric.auc"].mean())
        delta = current - ref["auc"]
        status = "ok"
        if delta < -tolerance:
            status = "REGRESSED"
            problems.append(f"{method}: AUC {current:.4f} is {-delta:.4f} below the reference "
                            f"{ref['auc']:.4f} (tolerance {tolerance}).")
        weights = str(runs.backbone_weights.iloc[0])
        if ref.get("backbone_weights") and weights != ref["backbone_weights"]:
            status += " (other weights)"
            problems.append(f"{method}: backbone weights differ from the reference's "
                            f"('{weights}' vs '{ref['backbone_weights']}'): not comparable.")
        rows.append({"method": method, "reference": ref["auc"], "current": round(current, 4),
                     "delta": round(delta, 4), "status": status})
    return CheckOutcome(table=pd.DataFrame(rows), problems=problems)
