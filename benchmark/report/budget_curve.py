"""AUC against training: the budget curve of every iterative method (`bench report
--budget-curve`).

`bench run --budget-scale 0.25,1,4,16` trains each iterative method at multiples of its
profile's equal budget (benchmark.api.contract.Method.budget_overrides); each scale is its own run
identity. This module gathers those runs of one dataset (one profile, split and data version,
as Table 1 does), and per (method, scale) reports the training images seen, the validation and
test AUC (mean and standard deviation over seeds) and how many seeds passed the competence
checks. The smallest budget at which every seed of a method is competent is named per method:
the validation split decides, never the test AUC.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from medad_bench.disk import write_text_atomic
from medad_bench.errors import BenchError
from medad_bench.report.figures import method_colours, save_figure
from medad_bench.report.table import newest_identity
from medad_bench.tracking import finished_runs


@dataclass
class BudgetCurve:
    dataset: str
    profile: str
    #: One row per (method, scale): images_seen, seeds, val_auc / auc mean and std,
    #: competent (seeds that passed) and failed (the checks that failed, joined).
    table: pd.DataFrame
    notes: list[str]


def budget_curve(uri: str, dataset: str, profile: str | None = None,
                 contaminated: bool = False) -> BudgetCurve:
    """The budget curve of `dataset`'s runs in the store at `uri`."""
    runs = finished_runs(uri, dataset)
    if runs.empty:
        raise BenchError(f"no finished runs of dataset '{dataset}' in {uri}. Run `bench run "
                         f"--dataset {dataset} --budget-scale 0.25,1,4` first (same "
                         f"--tracking-uri).")
    runs = runs[runs.contaminated == str(contaminated).lower()]
    runs = runs[runs.budget_images_seen.str.isdigit()]  # iterative methods only
    if profile:
        runs = runs[runs.profile == profile]
    if runs.empty:
        raise BenchError(f"no finished runs of an iterative method of '{dataset}' "
                         f"{'(' + profile + ' profile) ' if profile else ''}in {uri}.")
    newest = runs.sort_values("start_time", ascending=False).iloc[0]
    runs = runs[(runs.profile == newest.profile) & (runs.split_hash == newest.split_hash)
                & (runs.data_version == newest.data_version)]
    runs = runs.assign(scale=runs.budget_scale.astype(float))
    runs, notes = _newest_identity_per_scale(runs)
    rows = [_summary(method, scale, group)
            for (method, scale), group in runs.groupby(["method", "scale"])]
    table = pd.DataFrame(rows).sort_values(["method", "scale"]).reset_index(drop=True)
    scales = sorted(table.scale.unique())
    if len(scales) < 2:
        notes.append(f"only one budget ({scales[0]:g}x) was run: rerun with --budget-scale "
                     f"0.25,1,4 for a curve.")
    return BudgetCurve(dataset, str(newest.profile), table, notes)


def _newest_identity_per_scale(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per (method, scale), the runs of its newest identity, latest per seed (as Table 1)."""
    kept, notes = newest_identity(runs, by=("method", "scale"))
    kept = kept.sort_values("start_time", ascending=False)
    return kept.drop_duplicates(["method", "scale", "seed"]), notes


def _summary(method: str, scale: float, group: pd.DataFrame) -> dict:
    val = group.get("metric.val_auc", pd.Series(dtype=float)).astype(float)
    test = group["metric.auc"].astype(float)
    checked = group[group.competent != ""]
    failed = sorted({check for text in checked.competence_failed
                     for check in str(text).split(",") if check and check != "none"})
    return {"method": method, "scale": scale,
            "images_seen": int(group.budget_images_seen.iloc[0]),
            "seeds": len(group), "val_auc": val.mean(), "val_auc_std": _std(val),
            "auc": test.mean(), "auc_std": _std(test),
            "competent": int((checked.competent == "true").sum()),
            "checked": len(checked), "failed": ",".join(failed)}


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def smallest_competent_budget(table: pd.DataFrame) -> dict[str, float | None]:
    """Per method, the smallest scale at which every checked seed passed the competence checks
    (None: none did)."""
    found: dict[str, float | None] = {}
    for method, rows in table.groupby("method"):
        passing = rows[(rows.checked > 0) & (rows.competent == rows.checked)]
        found[str(method)] = float(passing.scale.min()) if not passing.empty else None
    return found


def to_markdown(curve: BudgetCurve, figure: Path | None = None) -> str:
    """The curve as a Markdown table (AUC mean ± std over seeds), the smallest competent budget
    per method, the notes and a link to the figure."""
    table = curve.table
    shown = pd.DataFrame({
        "method": table.method,
        "budget": [f"{s:g}x" for s in table.scale],
        "images seen": [f"{n:,}" for n in table.images_seen],
        "seeds": table.seeds,
        "val AUC": [_mean_std(m, s) for m, s in zip(table.val_auc, table.val_auc_std,
                                                     strict=True)],
        "test AUC": [_mean_std(m, s) for m, s in zip(table.auc, table.auc_std, strict=True)],
        "competent": [f"{c}/{n}" if n else "unchecked"
                      for c, n in zip(table.competent, table.checked, strict=True)],
        "failed checks": table.failed.replace("", "—"),
    })
    lines = [f"# Budget curve: {curve.dataset} ({curve.profile} profile)", "",
             "AUC against the training budget (`bench run --budget-scale`): images drawn into "
             "training batches over the run, as a multiple of the profile's equal budget. "
             "Mean ± std over seeds; `competent`: seeds that passed the competence checks "
             "(benchmark/stats/competence.py) on the validation split.", "",
             shown.to_markdown(index=False), "", "Smallest budget at which every seed is "
             "competent (chosen on validation checks only):", ""]
    for method, scale in smallest_competent_budget(table).items():
        lines.append(f"- {method}: {f'{scale:g}x' if scale is not None else 'none of those run'}")
    if curve.notes:
        lines += ["", *[f"Note: {note}" for note in curve.notes]]
    if figure is not None:
        lines += ["", f"![AUC against training images]({figure.name})"]
    return "\n".join(lines) + "\n"


def _mean_std(mean: float, std: float) -> str:
    if np.isnan(mean):
        return "—"
    return f"{mean:.3f}" if np.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def curve_figure(curve: BudgetCurve) -> Figure:
    """Validation and test AUC against training images seen (log scale), a line per method,
    error bars the std over seeds; hollow markers where a seed failed the competence checks."""
    figure = Figure(figsize=(11, 4.2))
    axes = figure.subplots(1, 2, sharey=True)
    colours = method_colours(curve.table.method)
    for ax, (column, title) in zip(axes, (("val_auc", "validation AUC"), ("auc", "test AUC")),
                                   strict=True):
        for method, rows in curve.table.groupby("method"):
            colour = colours[str(method)]
            ax.errorbar(rows.images_seen, rows[column], yerr=rows[f"{column}_std"].fillna(0),
                        color=colour, lw=1.6, capsize=3, label=str(method))
            learned = rows.competent == rows.checked
            ax.scatter(rows.images_seen[learned], rows[column][learned], color=colour, s=28,
                       zorder=3)
            ax.scatter(rows.images_seen[~learned], rows[column][~learned], s=28, zorder=3,
                       facecolors="white", edgecolors=[colour])
        ax.axhline(0.5, ls="--", lw=1, color="0.55")
        ax.set_xscale("log")
        ax.set_xlabel("training images seen")
        ax.set_title(title)
    axes[0].set_ylabel("AUC (mean ± std over seeds)")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5),
                   title="hollow: not competent", title_fontsize=7)
    figure.suptitle(f"{curve.dataset}: AUC against the training budget")
    return figure


def write_budget_curve(curve: BudgetCurve, out: Path) -> tuple[Path, Path]:
    """Write the Markdown table to `out` and the figure beside it (<stem>.png)."""
    figure_path = save_figure(curve_figure(curve), out.with_suffix(".png"))
    write_text_atomic(out, to_markdown(curve, figure_path), "the budget curve",
                      fix="Free space there, or write it elsewhere with --out")
    return out, figure_path
