"""Which quick-profile setting makes AnomalyPro's mask follow the input (and, with
`--method brainomaly`, Brainomaly pass the competence checks)? Decided on the labelled
validation split only; test labels are never read here.

    python scripts/anomalypro_sweep.py --out results/sweep/anomalypro.jsonl \
        [--dataset synthetic] [--seeds 0,1,2] [--only baseline,warmup]
    python scripts/anomalypro_sweep.py --method brainomaly --out results/sweep/brainomaly.jsonl

Every candidate trains at the suite's quick budget (methods/_budget.py; `--budget-factor`
scales it), so a setting is judged at the cost it will have ("longer" doubles it). The issue-11
sweep ran with the budget then in force, 1,500 iterations (48,000 images; today's is 32,000).
Each finished run appends one JSON line (setting, seed, config, iterations, fit seconds,
validation AUC, mean M on healthy / diseased validation images, share of M > 0.5, pixel AUROC
of M); a row already in --out is skipped, so an interrupted sweep resumes. `--table` prints
the medians per setting.

Run nothing else CPU-heavy beside it if you read its fit_seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medad_bench.api.conformance import competence_of
from medad_bench.data.cards import load_card
from medad_bench.data.prepared import prepare
from medad_bench.engine.run import training_set
from medad_bench.methods.anomalypro import (
    AnomalyPro,
    AnomalyProConfig,
)
from medad_bench.methods.brainomaly import Brainomaly

#: Candidates: overrides of today's quick profile. Each is one idea of the issue, or a
#: combination of the ideas that worked alone.
CANDIDATES: dict[str, dict[str, Any]] = {
    "baseline": {},
    "adv x8": {"lambda_adv": 8.0},
    "critic 1 patch": {"critic_layers": 5},
    "mask bias -2": {"mask_logit_bias": -2.0},
    "resize upsampling": {"upsample": "resize"},
    "lr 1e-4": {"lr_g": 1e-4, "lr_d": 1e-4},
    "64 px": {"image_size": 64, "critic_layers": 4},
    "warm-up 1/3": {"mask_warmup_fraction": 1 / 3},
    "warm-up + bias -2": {"mask_warmup_fraction": 1 / 3, "mask_logit_bias": -2.0},
    "warm-up + resize": {"mask_warmup_fraction": 1 / 3, "upsample": "resize"},
    "warm-up + resize + bias -2": {"mask_warmup_fraction": 1 / 3, "upsample": "resize",
                                   "mask_logit_bias": -2.0},
    "warm-up + resize + bias -2 + adv x4": {"mask_warmup_fraction": 1 / 3,
                                            "upsample": "resize", "mask_logit_bias": -2.0,
                                            "lambda_adv": 4.0},
    "resize + mask weight x10": {"upsample": "resize", "lambda_mask": 1.0},
    "warm-up + resize + adv x4": {"mask_warmup_fraction": 1 / 3, "upsample": "resize",
                                  "lambda_adv": 4.0},
    "longer (2x budget)": {"budget_factor": 2.0},
    "warm-up + bias -2 + 2x budget": {"mask_warmup_fraction": 1 / 3, "mask_logit_bias": -2.0,
                                      "budget_factor": 2.0},
    # Issue 24: the adversarial term destroys the identity the generator can learn.
    "adv 0.3": {"lambda_adv": 0.3},
    "adv 0.1": {"lambda_adv": 0.1},
    "adv 0.03": {"lambda_adv": 0.03},
    "adv warm-up 1/2": {"adversarial_warmup_fraction": 0.5},
    "adv warm-up 1/2 + adv 0.3": {"adversarial_warmup_fraction": 0.5, "lambda_adv": 0.3},
    "resize + adv 0.1": {"upsample": "resize", "lambda_adv": 0.1},
    "resize + adv warm-up 1/2": {"upsample": "resize", "adversarial_warmup_fraction": 0.5},
    "critic 1 step": {"critic_steps_per_g": 1},
    "identity on B0": {"identity_on": "translation"},
    "identity on B0 + adv 1": {"identity_on": "translation", "lambda_adv": 1.0},
    "identity on B0 + adv 0.3": {"identity_on": "translation", "lambda_adv": 0.3},
    "critic 5 steps": {"critic_steps_per_g": 5},
    "identity on B0 + critic 5 steps": {"identity_on": "translation", "critic_steps_per_g": 5},
    "no mask focus": {"lambda_mask_focus": 0.0},
    "no mask focus + identity on B0": {"lambda_mask_focus": 0.0, "identity_on": "translation"},
    "no mask focus + adv 1": {"lambda_mask_focus": 0.0, "lambda_adv": 1.0},
}

#: Keys of a candidate that are not config fields.
#: Issue 24's ideas for Brainomaly, on today's quick profile (adversarial weight 1, two critic
#: steps per generator step, lr 5e-4 for both): lower adversarial weights, a warm-up of the
#: generator as identity before the adversarial term, the critic's strength, and the
#: upsampling that removed AnomalyPro's transposed-convolution lattice.
BRAINOMALY_CANDIDATES: dict[str, dict[str, Any]] = {
    "baseline": {},
    "adv 0.3": {"lambda_adv": 0.3},
    "adv 0.1": {"lambda_adv": 0.1},
    "adv 0.03": {"lambda_adv": 0.03},
    "adv warm-up 1/2": {"adversarial_warmup_fraction": 0.5},
    "critic 1 step": {"critic_steps_per_g": 1},
    "critic 5 steps": {"critic_steps_per_g": 5},
    "critic lr 1e-4": {"lr_d": 1e-4},
    "resize upsampling": {"upsample": "resize"},
}
METHODS = {"anomalypro": (AnomalyPro, CANDIDATES), "brainomaly": (Brainomaly,
                                                                  BRAINOMALY_CANDIDATES)}

SCHEDULE_KEYS = ("mask_warmup_fraction", "adversarial_warmup_fraction", "budget_factor")


def quick_config(image_size: int, method: type = AnomalyPro) -> Any:
    return method.profile_config("quick", image_size=image_size, channels=1)


def candidate_config(base: AnomalyProConfig, overrides: dict[str, Any],
                     factor: float = 1.0) -> AnomalyProConfig:
    """The quick profile with the candidate's overrides, at the suite's quick budget (or a
    multiple of it for "longer")."""
    fields = {k: v for k, v in overrides.items() if k not in SCHEDULE_KEYS}
    iterations = int(base.iterations * factor * overrides.get("budget_factor", 1.0))
    warmup = int(iterations * overrides.get("mask_warmup_fraction", 0.0))
    adversarial_warmup = int(iterations * overrides.get("adversarial_warmup_fraction", 0.0))
    schedule = {"mask_warmup_iterations": warmup} if hasattr(base, "mask_warmup_iterations") \
        else {}
    return dataclasses.replace(base, **fields, iterations=iterations,
                               decay_iterations=iterations // 4, **schedule,
                               adversarial_warmup_iterations=adversarial_warmup)


def run(name: str, cfg: Any, data: Any, seed: int,
        method_cls: type = AnomalyPro) -> dict[str, Any]:
    train = training_set(method_cls, data)  # held-out normals + test images for AUCp
    method = method_cls(cfg)
    started = time.perf_counter()
    method.fit(train, seed=seed, device=torch.device("cpu"))
    fit_seconds = time.perf_counter() - started
    # The validation split (Brainomaly's TrainSet carries none: it does not read it in training).
    checks = competence_of(method, data.images_of("val"), data.labels_of("val"))
    row = {"setting": name, "seed": seed, "iterations": cfg.iterations,
           "fit_seconds": round(fit_seconds, 1),
           "val_auc": round(float(checks["val_auc"]), 4),
           "competent": checks["competent"], "competence_failed": checks["competence_failed"],
           "output_correlation": round(float(checks["output_correlation"]), 4),
           "healthy_psnr_gain_db": round(float(checks["healthy_psnr_gain_db"]), 3),
           "common_change_share": round(float(checks.get("common_change_share", np.nan)), 3),
           **{k: round(v, 4) for k, v in method.run_metrics.items()},
           "selected_iteration": method.run_info.get("selected_iteration"),
           "config": dataclasses.asdict(cfg)}
    return row


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


#: Mean M on diseased minus healthy images that counts as "higher": a mask that marks only the
#: lesions raises the diseased mean by about the lesions' share of the image (~1-2% here); a
#: difference of 1e-4 between two near-constant masks is noise.
FOLLOWS_MARGIN = 0.005


def follows_input(row: dict[str, Any]) -> bool:
    """The issue's test that M follows the input: mean M higher on diseased images than on
    healthy ones (by FOLLOWS_MARGIN) and a pixel AUROC of M above 0.7."""
    return (row["mask_mean_diseased"] - row["mask_mean_healthy"] >= FOLLOWS_MARGIN
            and row["mask_pixel_auroc"] > 0.7)


def competence_table(rows: list[dict[str, Any]]) -> str:
    """Markdown, one row per (dataset, setting, seed): the competence checks' values."""
    lines = ["| dataset | setting | seed | val AUC | competent | failed | output corr | "
             "healthy PSNR gain dB | shared change | fit s |", "|---" * 10 + "|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['setting']} | {r['seed']} | {r['val_auc']:.3f} | "
                     f"{'yes' if r['competent'] else 'no'} | {r['competence_failed'] or '-'} | "
                     f"{r['output_correlation']:.3f} | {r['healthy_psnr_gain_db']:+.2f} | "
                     f"{r.get('common_change_share', float('nan')):.3f} | {r['fit_seconds']} |")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: median over seeds per setting (and the seeds it covers)."""
    lines = ["| setting | seeds | iterations | val AUC | mean M healthy | mean M diseased | "
             "M > 0.5 | pixel AUROC of M | M follows input |",
             "|---|---|---|---|---|---|---|---|---|"]
    by_setting: dict[str, list[dict]] = {}
    seen = set()
    for row in rows:  # a rerun of the same setting and seed (same result: seeded) counts once
        if (row["setting"], row["seed"]) not in seen:
            seen.add((row["setting"], row["seed"]))
            by_setting.setdefault(row["setting"], []).append(row)
    for name, group in by_setting.items():
        def med(key: str, group: list[dict] = group) -> float:
            return statistics.median(r[key] for r in group)

        follows = all(follows_input(r) for r in group)
        aucs = ", ".join(f"{r['val_auc']:.3f}" for r in sorted(group, key=lambda r: r["seed"]))
        lines.append(
            f"| {name} | {','.join(str(r['seed']) for r in sorted(group, key=lambda r: r['seed']))}"
            f" | {group[0]['iterations']} | {med('val_auc'):.3f} ({aucs}) "
            f"| {med('mask_mean_healthy'):.3f} | {med('mask_mean_diseased'):.3f} "
            f"| {med('mask_share_above_half'):.3f} | {med('mask_pixel_auroc'):.3f} "
            f"| {'yes' if follows else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/sweep/anomalypro.jsonl"))
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--only", default="", help="comma-separated settings (default: all)")
    parser.add_argument("--budget-factor", type=float, default=1.0,
                        help="multiply the quick budget (1.5 reproduces the issue-11 sweep)")
    parser.add_argument("--table", action="store_true", help="print the table of --out")
    parser.add_argument("--method", choices=sorted(METHODS), default="anomalypro")
    args = parser.parse_args()
    method_cls, candidates = METHODS[args.method]
    if args.table:
        rows = read_rows(args.out)
        print(table(rows) if args.method == "anomalypro" else competence_table(rows))
        return
    names = list(dict.fromkeys(n.strip() for n in args.only.split(",") if n.strip()))
    names = names or list(candidates)
    unknown = sorted(set(names) - set(candidates))
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; known: {list(candidates)}")
    torch.set_num_threads(torch.get_num_threads())
    data = prepare(load_card(args.dataset))
    train = data.train_set()
    base = quick_config(train.image_size, method_cls)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["setting"], r["seed"], r.get("dataset", "synthetic")) for r in read_rows(args.out)}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in names:
            if (name, seed, args.dataset) in done:
                continue
            cfg = candidate_config(base, candidates[name], args.budget_factor)
            row = {"dataset": args.dataset, **run(name, cfg, data, seed, method_cls)}
            print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
            with args.out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    rows = [r for r in read_rows(args.out) if r["dataset"] == args.dataset]
    print(table(rows) if args.method == "anomalypro" else competence_table(rows))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
