"""Table 1 from the tracking store: a row per method, mean +- std over seeds, best in bold.

Markdown and LaTeX both come from one pandas table; the LaTeX goes through pandas' Styler
(booktabs rules), never through string concatenation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmark.errors import BenchError
from benchmark.metrics import METRIC_NAMES
from benchmark.tracking import finished_runs

COLUMN_TITLES = {
    "auc": "AUC", "precision": "Precision", "recall": "Recall",
    "specificity": "Specificity", "f1": "F1", "accuracy": "Accuracy",
}


@dataclass
class ReportData:
    dataset: str
    profile: str
    split_hash: str
    data_version: str
    seeds: list[int]
    runs: pd.DataFrame  # one row per (method, seed): the latest finished run
    notes: list[str]
    contaminated: bool = False


def select_runs(uri: str, dataset: str, profile: str | None = None,
                split_hash: str | None = None, contaminated: bool = False) -> ReportData:
    """The latest finished run per (method, seed) with one profile and one split hash.

    Defaults: the profile and split hash of the newest finished run, so a report never mixes
    quick with full runs or two different splits.
    """
    runs = finished_runs(uri, dataset)
    if runs.empty:
        raise BenchError(f"no finished runs of dataset '{dataset}' in {uri}. "
                         f"Run `bench run --dataset {dataset}` first (same --tracking-uri).")
    runs = runs[runs.contaminated == str(contaminated).lower()]
    if profile:
        runs = runs[runs.profile == profile]
    if runs.empty:
        raise BenchError(f"no finished {profile or ''} runs of '{dataset}' "
                         f"{'in the contaminated setting ' if contaminated else ''}in {uri}.")
    profile = profile or runs.iloc[0].profile
    runs = runs[runs.profile == profile]
    split_hash = split_hash or runs.iloc[0].split_hash
    runs = runs[runs.split_hash == split_hash]
    if runs.empty:
        raise BenchError(f"no finished runs of '{dataset}' with split hash {split_hash}.")
    data_version = runs.iloc[0].data_version
    runs = runs[runs.data_version == data_version]
    latest = runs.sort_values("start_time", ascending=False).drop_duplicates(["method", "seed"])
    latest = latest.sort_values(["method", "seed"]).reset_index(drop=True)
    notes = []
    fallback = sorted(latest.loc[latest.backbone_weights.str.startswith("random (FALLBACK"),
                                 "method"].unique())
    if fallback:
        notes.append(f"{', '.join(fallback)}: backbone randomly initialised because ImageNet "
                     f"weights could not be loaded; not comparable with published figures.")
    seeds_per_method = latest.groupby("method").seed.apply(lambda s: tuple(sorted(s)))
    if seeds_per_method.nunique() > 1:
        detail = "; ".join(f"{m}: {list(s)}" for m, s in seeds_per_method.items())
        notes.append(f"methods ran on different seeds ({detail}).")
    return ReportData(dataset=dataset, profile=profile, split_hash=split_hash,
                      data_version=data_version,
                      seeds=sorted(latest.seed.unique().tolist()), runs=latest, notes=notes,
                      contaminated=contaminated)


def summary_table(data: ReportData) -> pd.DataFrame:
    """Mean and std (ddof 1) over seeds: columns (metric, 'mean'|'std'), a row per method."""
    columns = [f"metric.{m}" for m in METRIC_NAMES]
    missing = [c for c in columns if c not in data.runs.columns]
    if missing:
        raise BenchError(f"runs lack metrics {missing}: they were logged by an older version. "
                         f"Rerun them.")
    grouped = data.runs.groupby("method")[columns]
    table = pd.concat({"mean": grouped.mean(), "std": grouped.std(ddof=1),
                       "n": grouped.count()}, axis=1)
    table.columns = pd.MultiIndex.from_tuples(
        [(c.removeprefix("metric."), stat) for stat, c in table.columns])
    return table


def _cells(table: pd.DataFrame, plus_minus: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Display strings and a same-shaped boolean frame marking the best mean per column."""
    text = pd.DataFrame(index=table.index)
    best = pd.DataFrame(index=table.index)
    for metric in METRIC_NAMES:
        mean, std = table[(metric, "mean")], table[(metric, "std")]
        text[COLUMN_TITLES[metric]] = [
            f"{m:.3f}" if np.isnan(s) else f"{m:.3f}{plus_minus}{s:.3f}"
            for m, s in zip(mean, std, strict=True)
        ]
        best[COLUMN_TITLES[metric]] = np.isclose(mean, mean.max(), rtol=0, atol=5e-4)
    text.index.name = "Method"
    return text, best


def caption(data: ReportData, plus_minus: str = " ± ") -> str:
    seeds = ", ".join(str(s) for s in data.seeds)
    if len(data.seeds) > 1:
        spread = f"mean{plus_minus}std over {len(data.seeds)} seeds ({seeds})"
    else:
        spread = f"1 seed ({seeds}), no spread"
    setting = (" in the contaminated setting (every method trained on healthy + unlabelled "
               "images)" if data.contaminated else "")
    return (f"Anomaly detection on {data.dataset}{setting} ({data.profile} profile): "
            f"test-set ROC AUC, "
            f"and precision, recall, specificity, F1 and accuracy at the threshold maximising "
            f"Youden's J on the validation split; {spread}; best per column in bold. "
            f"Split SHA-256 {data.split_hash}; data version {data.data_version}.")


def to_markdown(data: ReportData) -> str:
    text, best = _cells(summary_table(data), " ± ")
    shown = text.where(~best, "**" + text + "**")
    lines = [f"**Table 1.** {caption(data)}", "", shown.to_markdown(), ""]
    lines += [f"Note: {note}" for note in data.notes]
    return "\n".join(lines).rstrip() + "\n"


def to_latex(data: ReportData) -> str:
    text, best = _cells(summary_table(data), r" $\pm$ ")
    # "Method" as an ordinary first column: a named index would add a second header row.
    text = text.reset_index()
    text["Method"] = [_escape_latex(str(name)) for name in text["Method"]]
    best = best.reset_index(drop=True)
    best.insert(0, "Method", False)
    styler = text.style.hide(axis="index").apply(
        lambda col: np.where(best[col.name], "font-weight: bold;", ""), axis=0)
    notes = "".join(f" Note: {note}" for note in data.notes)
    latex = styler.to_latex(
        hrules=True,  # booktabs \toprule \midrule \bottomrule
        convert_css=True,
        caption=_escape_latex(caption(data, " +- ") + notes).replace("+-", r"$\pm$"),
        label=f"tab:{_escape_latex(data.dataset)}",
        position_float="centering",
        column_format="l" + "c" * (len(text.columns) - 1),
    )
    return "% Generated by `bench report`; requires \\usepackage{booktabs}.\n" + latex


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
}


def _escape_latex(text: str) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIALS[m.group()], text)
