"""Table 1's AUC intervals and ties before and after issue 13, side by side, from a store.

    python scripts/interval_comparison.py --dataset synthetic \
        --tracking-uri sqlite:///$PWD/results/reports.db

Before: a stratified bootstrap over test images with the seeds held fixed (percentile interval
of the seed-mean AUC; paired p-values against the best, unadjusted). Now: the report's
two-level interval and Holm-adjusted p-values (`stats.seed_mean_comparison`).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from medad_bench.report.table import N_BOOT, select_runs
from medad_bench.stats import intervals as stats
from medad_bench.stats.coverage import image_bootstrap_means
from medad_bench.stats.image_metrics import roc_auc


def before(labels: np.ndarray, scores: dict[str, np.ndarray]) -> pd.DataFrame:
    """The pre-issue-13 statistics: images resampled (stratified), seeds fixed, no correction."""
    names = list(scores)
    boot_means = image_bootstrap_means(labels, [scores[n] for n in names], N_BOOT,
                                       np.random.default_rng(0))
    means = np.array([np.mean([roc_auc(labels, row) for row in scores[n]]) for n in names])
    best = int(np.argmax(means))
    p = [np.nan if k == best else stats._two_sided_p(
        float(means[k] - means[best]), float(np.var(boot_means[k] - boot_means[best], ddof=1)))
        for k in range(len(names))]
    low, high = np.quantile(boot_means, [0.025, 0.975], axis=1)
    return pd.DataFrame({"method": names, "ci_low": low, "ci_high": high, "p_value": p})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--tracking-uri", required=True)
    args = parser.parse_args()
    data = select_runs(args.tracking_uri, args.dataset)
    now = data.statistics.set_index("method")
    old = before(data.test_labels, data.test_scores).set_index("method").reindex(now.index)

    def p_text(p: float) -> str:
        return "best" if np.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"

    table = pd.DataFrame({
        "AUC (mean ± sd, seeds)": [f"{a:.3f} ± {s:.3f}" for a, s in zip(now.auc, now.seed_sd,
                                                                         strict=True)],
        "95% CI before": [f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(old.ci_low, old.ci_high,
                                                                     strict=True)],
        "95% CI now": [f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(now.ci_low, now.ci_high,
                                                                  strict=True)],
        "p vs best before": [p_text(p) for p in old.p_value],
        "p vs best now (Holm)": [p_text(p) for p in now.p_holm],
        "tied with best now": (now.tied_with_best & now.p_holm.notna()).map(
            {True: "†", False: ""}),
    }, index=now.index)
    print(f"{args.dataset}, seeds {data.seeds}, {len(data.test_labels)} test units\n")
    print(table.to_markdown())
    for note in data.notes:
        print(f"\nNote: {note}")


if __name__ == "__main__":
    main()
