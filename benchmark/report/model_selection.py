"""How well the checkpoint selection did: the report's "Model selection" table.

Iterative methods (the GANs) checkpoint on a schedule and keep one checkpoint, picked by the
label-free AUCp or simply the last. After final scoring the runner logs every checkpoint's
true test AUC beside its AUCp in the run's `selection.csv` artifact. From those files this
module builds a row per method: the test AUC of the last checkpoint, of the AUCp choice and of
the oracle (the best eligible checkpoint in hindsight, chosen with the test labels), each as
mean ± std over seeds, and the mean number of checkpoints. The oracle only judges the
selection rule; it is never a result.

`selection.csv`, current format: `step, aucp[, aucp_debiased], test_auc, eligible,
aucp_choice, last` (0/1 flags), run param `model_selection` = `aucp` | `last` | `none`.
Older runs: `iteration, aucp, aucp_debiased, true_auc` and `model_selection` =
`aucp_on_unlabelled_test`; they are read with every checkpoint eligible, the AUCp choice the
highest AUCp (first on ties) and the last the highest step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SELECTION_ARTIFACT = "selection.csv"
SECTION_TITLE = "Model selection"
ORACLE_FOOTNOTE = ("oracle: the best checkpoint chosen with the test labels, shown only to "
                   "judge the selection rule; not a result")
#: Display titles of the table's columns, in order.
COLUMNS = {"n_seeds": "Seeds", "checkpoints": "Checkpoints", "rule": "Kept by",
           "last": "Last", "aucp": "AUCp choice", "oracle": "Oracle (test labels)"}
#: The AUC columns, each (mean, std) over seeds.
AUC_COLUMNS = ("last", "aucp", "oracle")
#: The older runner's column names.
LEGACY_NAMES = {"iteration": "step", "true_auc": "test_auc"}
#: The older runner's `model_selection` param: the rule then was the config's `select`.
LEGACY_RULE = "aucp_on_unlabelled_test"
REQUIRED = ("step", "aucp", "test_auc")


@dataclass
class SelectionSummary:
    """The per-method table (numbers, not text) and what the reader should know about it."""

    #: A row per method with selection data, indexed and sorted by method: n_seeds,
    #: checkpoints (mean number per run), rule, and <last|aucp|oracle>_<mean|std> test AUCs.
    table: pd.DataFrame
    #: A row per run with selection data: method, seed, run_id, rule, checkpoints, last, aucp,
    #: oracle.
    per_run: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def normalise_selection(table: pd.DataFrame) -> pd.DataFrame:
    """A `selection.csv` of either format as the current one, sorted by step: columns step,
    aucp, [aucp_debiased,] test_auc, eligible, aucp_choice, last (flags as 0/1 ints).

    Flags the file lacks are derived: every checkpoint eligible; the AUCp choice the highest
    AUCp among the eligible ones, first (lowest step) on ties; the last the highest step.
    Raises ValueError when step, aucp or test_auc is missing.
    """
    table = table.rename(columns={old: new for old, new in LEGACY_NAMES.items()
                                  if old in table and new not in table})
    missing = [c for c in REQUIRED if c not in table]
    if missing:
        raise ValueError(f"no column {', '.join(missing)}")
    table = table.sort_values("step", kind="stable").reset_index(drop=True)
    table["step"] = table["step"].astype(int)
    if "eligible" not in table:
        table["eligible"] = 1
    table["eligible"] = table["eligible"].fillna(0).astype(int)
    if "aucp_choice" not in table:
        table["aucp_choice"] = 0
        eligible = table[table.eligible == 1]
        if not eligible.empty and eligible.aucp.notna().any():
            table.loc[eligible.aucp.idxmax(), "aucp_choice"] = 1  # idxmax: first on ties
    table["aucp_choice"] = table["aucp_choice"].fillna(0).astype(int)
    if "last" not in table:
        table["last"] = (table.step == table.step.max()).astype(int)
    table["last"] = table["last"].fillna(0).astype(int)
    return table


def checkpoint_aucs(table: pd.DataFrame) -> dict[str, float]:
    """Of one run's normalised selection table: the number of checkpoints and the test AUC
    of the last checkpoint, of the AUCp choice and of the oracle (the highest test AUC among
    the eligible checkpoints); NaN where the run has no such checkpoint."""
    def at(flag: str) -> float:
        rows = table[table[flag] == 1]
        if rows.empty:
            return float("nan")
        # One flagged row in a well-formed file; else the AUCp choice is the first and the
        # last checkpoint the latest of them.
        return float(rows.test_auc.iloc[-1 if flag == "last" else 0])

    eligible = table.loc[table.eligible == 1, "test_auc"]
    return {"checkpoints": float(len(table)), "last": at("last"), "aucp": at("aucp_choice"),
            "oracle": float(eligible.max()) if eligible.notna().any() else float("nan")}


def run_rule(model_selection: str | None, config_select: str | None = None) -> str:
    """The rule that decided a run's kept model, from its params: `aucp` | `last` | `none`;
    the older runner's `aucp_on_unlabelled_test` meant the config's `select` (default aucp)."""
    if model_selection == LEGACY_RULE:
        return config_select or "aucp"
    return model_selection or ""


def load_selections(uri: str, runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """A row per run of `runs` that logged `selection.csv` (method, seed, run_id, rule,
    checkpoints, last, aucp, oracle), and notes on files that could not be read.

    `runs` is the report's table of runs (benchmark.report.table.ReportData.runs: run_id, method,
    seed); the rule comes from each such run's params."""
    from medad_bench.tracking import downloaded_artifact, run_params

    rows, notes = [], []
    for run in runs.itertuples(index=False):
        with downloaded_artifact(uri, run.run_id, (SELECTION_ARTIFACT,)) as path:
            if path is None:
                continue
            raw = pd.read_csv(path)
        try:
            table = normalise_selection(raw)
        except ValueError as exc:
            notes.append(f"{run.method} (seed {run.seed}): its {SELECTION_ARTIFACT} cannot be "
                         f"read ({exc}); left out of the model-selection table.")
            continue
        if table.empty:
            continue
        params = run_params(uri, run.run_id)
        rule = run_rule(params.get("model_selection"), params.get("config.select"))
        rows.append({"method": run.method, "seed": int(run.seed), "run_id": run.run_id,
                     "rule": rule, **checkpoint_aucs(table)})
    columns = ["method", "seed", "run_id", "rule", "checkpoints", *AUC_COLUMNS]
    return pd.DataFrame(rows, columns=columns), notes


def model_selection_table(per_run: pd.DataFrame,
                          runs: pd.DataFrame | None = None) -> SelectionSummary | None:
    """The per-method table from `load_selections`' rows; None when no run has selection data.

    With the report's `runs`, a method some of whose runs lack `selection.csv` gets a note
    naming those seeds (its row averages the others). Methods without any are left out."""
    if per_run.empty:
        return None
    grouped = per_run.groupby("method")
    table = pd.DataFrame({
        "n_seeds": grouped.size(),
        "checkpoints": grouped.checkpoints.mean(),
        "rule": grouped.rule.agg(lambda r: ", ".join(sorted({x for x in r if x}))),
    })
    for column in AUC_COLUMNS:
        table[f"{column}_mean"] = grouped[column].mean()
        table[f"{column}_std"] = grouped[column].std(ddof=1)
    notes = []
    if runs is not None:
        for method, group in runs[runs.method.isin(table.index)].groupby("method"):
            logged = set(per_run.loc[per_run.method == method, "seed"])
            lacking = sorted(int(s) for s in group.seed if int(s) not in logged)
            if lacking:
                notes.append(f"{method}: no {SELECTION_ARTIFACT} for seed(s) "
                             f"{', '.join(map(str, lacking))}; its model-selection row "
                             f"averages the other seeds.")
    table.index.name = "method"
    return SelectionSummary(table=table.sort_index(), per_run=per_run, notes=notes)


def selection_cells(summary: SelectionSummary, plus_minus: str = " ± ") -> pd.DataFrame:
    """The table as display strings: AUCs `mean ± std` (3 decimals; the mean alone for one
    seed, a dash where no checkpoint qualified), a row per method, index named Method."""
    table = summary.table
    text = pd.DataFrame(index=table.index)
    text[COLUMNS["n_seeds"]] = [str(int(n)) for n in table.n_seeds]
    text[COLUMNS["checkpoints"]] = [f"{c:.1f}" for c in table.checkpoints]
    text[COLUMNS["rule"]] = [rule or "—" for rule in table.rule]
    for column in AUC_COLUMNS:
        mean, std = table[f"{column}_mean"], table[f"{column}_std"]
        text[COLUMNS[column]] = ["—" if np.isnan(m) else f"{m:.3f}" if np.isnan(s)
                                 else f"{m:.3f}{plus_minus}{s:.3f}"
                                 for m, s in zip(mean, std, strict=True)]
    text.index.name = "Method"
    return text


def selection_caption(plus_minus: str = " ± ") -> str:
    """What the table shows, for every format."""
    return ("Test-set ROC AUC of the checkpoint each rule would keep, "
            f"mean{plus_minus}std over seeds: the last checkpoint; the AUCp choice (the "
            "eligible checkpoint with the highest label-free AUCp, first on ties); and the "
            "oracle. Checkpoints: the mean number per run. Kept by: the rule that decided the "
            "model whose AUC Table 1 reports. Methods without checkpoints are not listed.")
