"""Which quick-profile setting makes AnomalyPro's mask follow the input? Decided on the
labelled validation split only; test labels are never read here.

    python scripts/anomalypro_sweep.py --out results/sweep/anomalypro.jsonl \
        [--dataset synthetic] [--seeds 0,1,2] [--only baseline,warmup] [--budget-seconds 180]

Every candidate trains for the same wall-time budget on this machine: the script first times
each network shape (iterations/s after a warm-up) and converts the budget to an iteration count,
printed and stored with each row, so a row is reproducible from its config alone. Each finished
run appends one JSON line (setting, seed, config, iterations, fit seconds, validation AUC, mean
M on healthy / diseased validation images, share of M > 0.5, pixel AUROC of M); a row already
in --out is skipped, so an interrupted sweep resumes. `--table` prints the medians per setting.

Run nothing else CPU-heavy beside it: the budget is calibrated on an idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark import metrics
from benchmark.data.cards import load_card
from benchmark.data.prepared import prepare
from methods._dcgan import to_model_input
from methods.anomalypro import (
    AnomalyPro,
    AnomalyProConfig,
    Generator,
    PatchDiscriminator,
    critic_loss,
    generator_loss,
)

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
    "longer (2x budget)": {"budget_factor": 2.0},
}

#: Keys of a candidate that are not config fields.
SCHEDULE_KEYS = ("mask_warmup_fraction", "budget_factor")


def quick_config(image_size: int) -> AnomalyProConfig:
    return AnomalyPro.profile_config("quick", image_size=image_size, channels=1)


def shape_of(cfg: AnomalyProConfig) -> tuple:
    """What decides the cost of one iteration."""
    return (cfg.image_size, cfg.base_channels, cfg.residual_blocks, cfg.critic_base_channels,
            cfg.critic_layers, cfg.batch_size, cfg.upsample, cfg.channels_last)


def iterations_per_second(cfg: AnomalyProConfig, a_set: torch.Tensor, b_set: torch.Tensor,
                          steps: int = 60) -> float:
    """Training iterations/s of this network shape on this machine (after 10 warm-up steps)."""
    torch.manual_seed(0)
    generator = Generator(1, cfg.base_channels, cfg.residual_blocks, 0.0, cfg.upsample)
    critic = PatchDiscriminator(1, cfg.critic_base_channels, cfg.critic_layers)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    generator.to(memory_format=layout)
    critic.to(memory_format=layout)
    opt_g = torch.optim.Adam(generator.parameters(), cfg.lr_g, (cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(critic.parameters(), cfg.lr_d, (cfg.beta1, cfg.beta2))

    def step(i: int) -> None:
        index = torch.randint(len(a_set), (cfg.batch_size,))
        a = a_set[index].contiguous(memory_format=layout)
        b = b_set[index].contiguous(memory_format=layout)
        loss_d, _ = critic_loss(generator, critic, a, b, torch.rand(cfg.batch_size, 1, 1, 1),
                                cfg.lambda_gp)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        if i % 2:
            loss_g, _ = generator_loss(generator, critic, a, b, cfg)
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()

    for i in range(10):
        step(i)
    started = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps / (time.perf_counter() - started)


def candidate_config(base: AnomalyProConfig, overrides: dict[str, Any],
                     rates: dict[tuple, float], budget_seconds: float,
                     a_set: torch.Tensor, b_set: torch.Tensor) -> AnomalyProConfig:
    fields = {k: v for k, v in overrides.items() if k not in SCHEDULE_KEYS}
    cfg = dataclasses.replace(base, **fields)
    shape = shape_of(cfg)
    if shape not in rates:
        sized_a = to_model_input(a_set, torch.device("cpu"), cfg.image_size)
        sized_b = to_model_input(b_set, torch.device("cpu"), cfg.image_size)
        rates[shape] = iterations_per_second(cfg, sized_a, sized_b)
        print(f"calibrated {shape}: {rates[shape]:.1f} it/s", file=sys.stderr, flush=True)
    # ~10% of the budget goes to the AUCp and diagnostics passes at the checkpoints.
    seconds = budget_seconds * overrides.get("budget_factor", 1.0) * 0.9
    iterations = max(600, int(rates[shape] * seconds) // 60 * 60)
    warmup = int(iterations * overrides.get("mask_warmup_fraction", 0.0))
    return dataclasses.replace(cfg, iterations=iterations, decay_iterations=iterations // 4,
                               checkpoint_every=iterations // 6, mask_warmup_iterations=warmup,
                               log_every=max(1, iterations // 60))


def run(name: str, cfg: AnomalyProConfig, data: Any, seed: int) -> dict[str, Any]:
    train = data.train_set(with_selection=True, with_validation=True)
    method = AnomalyPro(cfg)
    started = time.perf_counter()
    method.fit(train, seed=seed, device=torch.device("cpu"))
    fit_seconds = time.perf_counter() - started
    val = train.validation
    row = {"setting": name, "seed": seed, "iterations": cfg.iterations,
           "fit_seconds": round(fit_seconds, 1),
           "val_auc": round(metrics.roc_auc(val.labels, method.score(val.images)), 4),
           **{k: round(v, 4) for k, v in method.run_metrics.items()},
           "selected_iteration": method.run_info.get("selected_iteration"),
           "config": dataclasses.asdict(cfg)}
    return row


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: median over seeds per setting (and the seeds it covers)."""
    lines = ["| setting | seeds | iterations | val AUC | mean M healthy | mean M diseased | "
             "M > 0.5 | pixel AUROC of M | M follows input |",
             "|---|---|---|---|---|---|---|---|---|"]
    by_setting: dict[str, list[dict]] = {}
    for row in rows:
        by_setting.setdefault(row["setting"], []).append(row)
    for name, group in by_setting.items():
        def med(key: str, group: list[dict] = group) -> float:
            return statistics.median(r[key] for r in group)

        follows = all(r["mask_mean_diseased"] > r["mask_mean_healthy"]
                      and r["mask_pixel_auroc"] > 0.7 for r in group)
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
    parser.add_argument("--budget-seconds", type=float, default=180.0)
    parser.add_argument("--table", action="store_true", help="print the table of --out")
    args = parser.parse_args()
    if args.table:
        print(table(read_rows(args.out)))
        return
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CANDIDATES)
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; known: {list(CANDIDATES)}")
    torch.set_num_threads(torch.get_num_threads())
    data = prepare(load_card(args.dataset))
    train = data.train_set()
    base = quick_config(train.image_size)
    rates: dict[tuple, float] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["setting"], r["seed"], args.dataset) for r in read_rows(args.out)}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in names:
            if (name, seed, args.dataset) in done:
                continue
            cfg = candidate_config(base, CANDIDATES[name], rates, args.budget_seconds,
                                   train.unlabeled, train.normal)
            row = {"dataset": args.dataset, **run(name, cfg, data, seed)}
            print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
            with args.out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    print(table([r for r in read_rows(args.out) if r["dataset"] == args.dataset]))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
