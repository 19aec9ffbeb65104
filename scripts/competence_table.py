"""Print the competence checks of a store's runs as a Markdown table (issue 24).

    python scripts/competence_table.py --tracking-uri sqlite:///results/ci-gate.db \
        --datasets pneumoniamnist,synthetic [--seeds 0]

One row per (dataset, method, seed): the verdict, the failed checks and each check's value
(benchmark/stats/competence.py). Values come from the validation split; test AUC is shown last, for
reading only (nothing here chooses anything).
"""

from __future__ import annotations

import argparse

import pandas as pd

from medad_bench.tracking import finished_runs

COLUMNS = (("competence_score_spread", "spread", "{:.3f}"),
           ("competence_val_auc", "val AUC", "{:.3f}"),
           ("competence_output_correlation", "output corr", "{:.3f}"),
           ("competence_healthy_psnr_gain_db", "healthy PSNR gain dB", "{:+.2f}"),
           ("competence_diseased_structure", "diseased structure", "{:.3f}"),
           ("competence_common_change_share", "shared change", "{:.3f}"),
           ("competence_mask_follows_input", "M diseased - healthy", "{:+.4f}"),
           ("competence_mask_not_saturated", "mean M healthy", "{:.3f}"),
           ("auc", "test AUC", "{:.3f}"))


def table(uri: str, datasets: list[str], seeds: set[int] | None) -> str:
    rows = []
    for dataset in datasets:
        runs = finished_runs(uri, dataset)
        if runs.empty:
            continue
        runs = runs.sort_values("start_time", ascending=False).drop_duplicates(
            ["method", "seed", "contaminated", "budget_scale"])
        runs = runs.assign(scale=runs.budget_scale.astype(float))
        for _, run in runs.sort_values(["method", "scale", "seed"]).iterrows():
            if seeds is not None and run.seed not in seeds:
                continue
            row = {"dataset": dataset, "method": run.method, "budget": f"{run.scale:g}x",
                   "seed": run.seed,
                   "competent": run.competent or "unchecked",
                   "failed": run.competence_failed if run.competence_failed != "none" else ""}
            for metric, title, fmt in COLUMNS:
                value = run.get(f"metric.{metric}")
                row[title] = "—" if value is None or pd.isna(value) else fmt.format(value)
            rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--datasets", default="pneumoniamnist,synthetic")
    parser.add_argument("--seeds", default=None, help="e.g. 0 (default: every seed)")
    args = parser.parse_args()
    seeds = None if args.seeds is None else {int(s) for s in args.seeds.split(",")}
    print(table(args.tracking_uri, args.datasets.split(","), seeds))


if __name__ == "__main__":
    main()
