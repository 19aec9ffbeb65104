"""AUC regression gate: compare the latest runs with a recorded reference, seed by seed.

A reference file (results/reference/<dataset>.json) records, for one dataset, profile, split
hash and data version, each method's test AUC per seed and the identity of the backbone weights
it loaded (kind, file, SHA-256, or `random`; empty for methods without a backbone).

`bench check` fails, naming method and seed, when
- a seed's AUC moved beyond the tolerance in either direction (a fall is a regression; a rise
  is what leakage or a changed protocol looks like, so it must be intended and re-recorded),
- a method or seed of the reference has no finished run,
- a method loaded other weights than the reference's (compared as identity, never as text
  that may carry a machine's error message).
Seeds are compared one by one: a fall of one seed cannot hide behind a rise of another.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medad_bench.disk import write_text_atomic
from medad_bench.errors import BenchError, UsageError
from medad_bench.report.document import card_name
from medad_bench.report.table import ReportData, select_runs
from medad_bench.shipped import reference_file
from medad_bench.tracking import resolve_tracking_uri

DEFAULT_TOLERANCE = 0.02
FORMAT_VERSION = 2


@dataclass
class CheckOutcome:
    table: pd.DataFrame  # method, seed, reference, current, delta, status
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def reference_from(data: ReportData, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """A reference recording the runs in `data` (per method: its newest identity's runs)."""
    methods = {}
    for method, runs in data.runs.groupby("method"):
        runs = runs.sort_values("seed")
        methods[method] = {
            "auc_by_seed": {str(s): round(float(a), 6)
                            for s, a in zip(runs.seed, runs["metric.auc"], strict=True)},
            "weights": str(runs.weights_identity.iloc[0]),
        }
    return {
        "format": FORMAT_VERSION,
        "dataset": data.dataset,
        "identity": run_environment(data.runs),
        "profile": data.profile,
        "split_hash": data.split_hash,
        "data_version": data.data_version,
        "tolerance": tolerance,
        "methods": methods,
    }


#: What a run's AUC depends on besides code, data and weights, as the runs logged it: a GAN
#: trained with 1 torch thread ends elsewhere than with 2 (float reduction order), and so may
#: another torch version or device. A reference is comparable only with runs made alike.
ENVIRONMENT = {"torch_threads": "torch threads", "torch_version": "torch",
               "device": "device", "cpu": "CPU"}


def cpu_reference_path(against: Path, cpu: str) -> Path:
    """Where the reference recorded on CPU `cpu` lives beside `against`:
    pneumoniamnist.json -> pneumoniamnist.cpu-genuineintel-family-6-model-167-avx512.json.
    Torch picks other kernels on another CPU model and a GAN's AUC moves with them, so each
    CPU model a gate runs on can have its own numbers next to the main reference."""
    slug = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")
    return against.with_name(f"{against.stem}.cpu-{slug}.json")


def run_environment(runs: pd.DataFrame) -> dict[str, str]:
    """Each ENVIRONMENT field's value(s) over the runs ("1", or "1/2" where they differ)."""
    return {key: "/".join(sorted({str(v) for v in runs[key] if str(v)})) if key in runs else ""
            for key in ENVIRONMENT}


def write_reference(reference: dict[str, Any], path: Path) -> None:
    write_text_atomic(path, json.dumps(reference, indent=2, sort_keys=False) + "\n",
                      "the gate reference", fix="Free space there, or record it elsewhere "
                      "with --against PATH")


def read_json_file(path: Path, what: str, missing_fix: str) -> Any:
    """The JSON in `path`; one BenchError naming `what` and the file when it is missing (with
    `missing_fix`) or not JSON. Shared by the gate's and the published references."""
    if not path.is_file():
        raise BenchError(f"{what} {path} does not exist. {missing_fix}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchError(f"{what} {path} is not valid JSON: {exc}.") from exc


def read_reference(path: Path) -> dict[str, Any]:
    reference = read_json_file(path, "reference file", "Record one with `bench check "
                               f"--dataset NAME --update --against {path}`.")
    for key in ("dataset", "profile", "split_hash", "methods"):
        if key not in reference:
            raise BenchError(f"reference file {path} lacks '{key}'. Re-record it with --update.")
    for method, entry in reference["methods"].items():
        if not isinstance(entry, dict) or not entry.get("auc_by_seed"):
            raise BenchError(f"reference file {path}: method '{method}' has no 'auc_by_seed' "
                             f"(an older format?). Re-record it with --update.")
    return reference


def compare(reference: dict[str, Any], data: ReportData,
            tolerance: float | None = None) -> CheckOutcome:
    """Compare the latest runs in `data` with `reference`, seed by seed."""
    tolerance = reference.get("tolerance", DEFAULT_TOLERANCE) if tolerance is None else tolerance
    problems = _data_problems(reference, data)
    mismatch = _environment_mismatch(reference, data.runs)
    if mismatch:
        # Not a rise or a fall: numbers made under another environment say nothing about the
        # code. The table still shows them, marked.
        problems.append(mismatch)
    rows = []
    for method, entry in reference["methods"].items():
        runs = data.runs[data.runs.method == method]
        by_seed = dict(zip(runs.seed, runs["metric.auc"], strict=True))
        expected = {int(s): float(a) for s, a in entry["auc_by_seed"].items()}
        missing = sorted(set(expected) - set(by_seed))
        if missing:
            seeds = ",".join(map(str, sorted(expected)))
            problems.append(
                f"{method}: no finished run for seed(s) {missing} (reference seeds {seeds}). "
                f"Run `bench run --methods {method} --dataset {data.dataset} --seeds {seeds} "
                f"--profile {data.profile}`.")
        for seed, ref_auc in sorted(expected.items()):
            if seed not in by_seed:
                rows.append(_row(method, seed, ref_auc, None, "MISSING"))
                continue
            current = float(by_seed[seed])
            delta = current - ref_auc
            status = "ok"
            if mismatch:
                status = "NOT COMPARABLE"
            elif delta < -tolerance:
                status = "FELL"
                problems.append(f"{method} seed {seed}: AUC {current:.4f} fell {-delta:.4f} below "
                                f"the reference {ref_auc:.4f} (tolerance {tolerance}).")
            elif delta > tolerance:
                status = "ROSE"
                problems.append(
                    f"{method} seed {seed}: AUC {current:.4f} rose {delta:.4f} above the "
                    f"reference {ref_auc:.4f} (tolerance {tolerance}). Intended? Update the "
                    f"reference with `bench check --dataset {data.dataset} --update`; a rise "
                    f"nobody can explain is what leakage looks like.")
            rows.append(_row(method, seed, ref_auc, current, status))
        if not runs.empty:
            problems += _weights_problems(method, entry, runs)
    return CheckOutcome(table=pd.DataFrame(rows), problems=problems)


def _row(method: str, seed: int, reference: float, current: float | None,
         status: str) -> dict[str, Any]:
    return {"method": method, "seed": seed, "reference": round(reference, 4),
            "current": None if current is None else round(current, 4),
            "delta": None if current is None else round(current - reference, 4),
            "status": status}


def _data_problems(reference: dict[str, Any], data: ReportData) -> list[str]:
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
    return problems


def _environment_mismatch(reference: dict[str, Any], runs: pd.DataFrame) -> str:
    """"not comparable: recorded with X, run with Y; ..." where the runs' environment differs
    from the reference's (references recorded before it was stored: not checked)."""
    recorded = reference.get("identity") or {}
    now = run_environment(runs)
    differs = {key: (recorded[key], now.get(key, "")) for key in ENVIRONMENT
               if recorded.get(key) and now.get(key) and recorded[key] != now.get(key)}
    if not differs:
        return ""
    was = ", ".join(f"{ENVIRONMENT[k]} {old}" for k, (old, _) in differs.items())
    is_now = ", ".join(f"{ENVIRONMENT[k]} {new}" for k, (_, new) in differs.items())
    if "torch_threads" in differs and "/" not in recorded["torch_threads"]:
        hint = f"rerun with `bench run ... --threads {recorded['torch_threads']}`"
    elif set(differs) == {"cpu"}:
        hint = "record this CPU model's own reference beside it (the command is below)"
    else:
        hint = "rerun in the reference's environment"
    return (f"not comparable: the reference was recorded with {was}, the runs were made with "
            f"{is_now}; no AUC is judged. {hint[0].upper() + hint[1:]}, or re-record the "
            f"reference with --update if this environment is the new baseline.")


def _weights_problems(method: str, entry: dict[str, Any], runs: pd.DataFrame) -> list[str]:
    expected = str(entry.get("weights", ""))
    found = sorted(set(runs.weights_identity.astype(str)))
    if found == [expected]:
        return []
    return [f"{method}: loaded weights {' / '.join(w or 'none' for w in found)}, the reference "
            f"{expected or 'none'}: another backbone initialisation, so AUCs are not comparable. "
            f"Install the reference's weights or, if the change is intended, re-record with "
            f"--update."]


# -- the check against a recorded reference (bench check) -------------------------------------

def default_reference_path(dataset: str) -> Path:
    """results/reference/<dataset>.json of the working folder, else the shipped one."""
    return reference_file(f"{dataset}.json")


def record_reference(tracking_uri: str | None, dataset: str, against: Path | None = None,
                     tolerance: float | None = None,
                     profile: str | None = None) -> tuple[dict[str, Any], Path]:
    """Record the newest runs of `dataset` as its reference; returns the reference and the
    file it was written to (`against`, default default_reference_path). `tolerance` None:
    DEFAULT_TOLERANCE."""
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
    (compare). `against` None: default_reference_path; `tolerance` None:
    the reference's; `profile` None: the reference's. Raises BenchError when the reference
    is missing or unreadable, UsageError when it is another dataset's."""
    dataset = card_name(dataset)
    against = against or default_reference_path(dataset)
    uri = resolve_tracking_uri(tracking_uri)
    reference = read_reference(against)
    if reference["dataset"] != dataset:
        raise UsageError(f"{against} is the reference of '{reference['dataset']}', "
                         f"not '{dataset}'.")
    data = select_runs(uri, dataset, profile or reference["profile"], statistics=False)
    cpu = _one_cpu(data.runs)
    if cpu:
        against, reference = _reference_for_cpu(against, reference, cpu)
    outcome = compare(reference, data, tolerance)
    recorded_cpu = (reference.get("identity") or {}).get("cpu", "")
    if not outcome.ok and cpu and recorded_cpu != cpu:
        made = (f"was made on '{recorded_cpu}'" if recorded_cpu else
                "does not record the CPU it was made on")
        outcome.problems.append(
            f"{against} {made}; these runs were made on '{cpu}'. On another CPU model the "
            f"GANs' AUCs move beyond the tolerance with the same code (measured: ALAD -0.058, "
            f"AnomalyPro -0.065 on PneumoniaMNIST seed 0). If the code is unchanged, record "
            f"this CPU's numbers: bench check --dataset {dataset} --update --against "
            f"{cpu_reference_path(against, cpu)}")
    return CheckResult(reference=reference, against=against, outcome=outcome)


def _one_cpu(runs: pd.DataFrame) -> str:
    """The CPU model every run was made on; "" where they do not say or differ."""
    cpus = run_environment(runs).get("cpu", "")
    return "" if "/" in cpus else cpus


def _reference_for_cpu(against: Path, reference: dict[str, Any],
                       cpu: str) -> tuple[Path, dict[str, Any]]:
    """The reference recorded on CPU model `cpu` where one lies beside `against`
    (cpu_reference_path), else `against` itself."""
    if (reference.get("identity") or {}).get("cpu") == cpu:
        return against, reference
    beside = cpu_reference_path(against, cpu)
    if not beside.is_file():
        return against, reference
    own = read_reference(beside)
    if own["dataset"] != reference["dataset"]:
        raise UsageError(f"{beside} is the reference of '{own['dataset']}', not "
                         f"'{reference['dataset']}'.")
    return beside, own
