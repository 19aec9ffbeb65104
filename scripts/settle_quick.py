"""Settle each trained baseline's quick settings on the labelled validation split, at the
suite's equal quick budget (methods/_budget.py). Test labels are never read here.

    python scripts/settle_quick.py --out results/sweep/baselines.jsonl \
        [--methods fanogan,alad,alocc,ganomaly,brainomaly] [--seeds 0] [--dataset synthetic]
    python scripts/settle_quick.py --out results/sweep/baselines.jsonl --table

For every method, a few candidate settings (today's quick settings first) train with the same
number of training images; each run appends one JSON line (method, setting, seed, validation
AUC, fit seconds, config). Rule: the highest median validation AUC wins; a tie keeps today's.
Rows already in --out are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from anomalypro_sweep import read_rows  # scripts/ is on the path when a script runs

from medad_bench.api import get_method, make_config
from medad_bench.data.cards import load_card
from medad_bench.data.prepared import prepare
from medad_bench.engine.run import training_set
from medad_bench.stats import image_metrics as metrics

#: Per method: setting -> overrides of today's quick profile. The first is today's.
CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "fanogan": {"quick": {}, "width 32": {"base_channels": 32}},
    "alad": {"quick": {}, "ema 0.999 (published)": {"ema_decay": 0.999}},
    "alocc": {"quick": {}, "width 16": {"base_channels": 16}, "lr 1e-4": {"lr": 1e-4}},
    "ganomaly": {"quick": {}, "width 16": {"n_features": 16}, "lr 1e-4": {"lr": 1e-4}},
    "brainomaly": {"quick": {}, "lr 1e-4 (published)": {"lr_g": 1e-4, "lr_d": 1e-4}},
}


def run(method: str, setting: str, data: Any, seed: int) -> dict[str, Any]:
    cls = get_method(method)
    image_size = int(data.images_of("val").shape[-1])
    config = make_config(cls, "quick", image_size=image_size, channels=1,
                         overrides=CANDIDATES[method][setting])
    train = training_set(cls, data)  # as the runner hands it over
    if train.validation is None:
        train = dataclasses.replace(train, validation=data.train_set(
            with_validation=True).validation)
    model = cls(config)
    started = time.perf_counter()
    model.fit(train, seed=seed, device=torch.device("cpu"))
    fit_seconds = time.perf_counter() - started
    val = train.validation
    return {"method": method, "setting": setting, "seed": seed,
            "images_seen": cls.images_seen(config), "fit_seconds": round(fit_seconds, 1),
            "val_auc": round(metrics.roc_auc(val.labels, model.score(val.images)), 4),
            "config": dataclasses.asdict(config)}


def chosen(rows: list[dict[str, Any]], method: str) -> str:
    """The setting with the highest median validation AUC; today's on a tie."""
    medians = {}
    for setting in CANDIDATES[method]:
        values = [r["val_auc"] for r in rows if r["method"] == method and r["setting"] == setting]
        if values:
            medians[setting] = statistics.median(values)
    best = max(medians.values())
    return next(s for s in CANDIDATES[method] if medians.get(s) == best)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | setting | seeds | images seen | fit s | val AUC | chosen |",
             "|---|---|---|---|---|---|---|"]
    for method in CANDIDATES:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        winner = chosen(rows, method)
        for setting in CANDIDATES[method]:
            group = sorted((r for r in mine if r["setting"] == setting), key=lambda r: r["seed"])
            if not group:
                continue
            aucs = ", ".join(f"{r['val_auc']:.3f}" for r in group)
            lines.append(
                f"| {method} | {setting} | {','.join(str(r['seed']) for r in group)} "
                f"| {group[0]['images_seen']:,} "
                f"| {statistics.median(r['fit_seconds'] for r in group):.0f} "
                f"| {statistics.median(r['val_auc'] for r in group):.3f} ({aucs}) "
                f"| {'yes' if setting == winner else ''} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/sweep/baselines.jsonl"))
    parser.add_argument("--methods", default=",".join(CANDIDATES))
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--table", action="store_true", help="print the table of --out")
    args = parser.parse_args()
    if args.table:
        print(table(read_rows(args.out)))
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(CANDIDATES))
    if unknown:
        parser.error(f"no candidates for {unknown}; known: {list(CANDIDATES)}")
    data = prepare(load_card(args.dataset))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["method"], r["setting"], r["seed"]) for r in read_rows(args.out)}
    for seed in (int(s) for s in args.seeds.split(",")):
        for method in methods:
            for setting in CANDIDATES[method]:
                if (method, setting, seed) in done:
                    continue
                row = {"dataset": args.dataset, **run(method, setting, data, seed)}
                print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
                with args.out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
    print(table(read_rows(args.out)))


if __name__ == "__main__":
    main()
