"""Check `bench plan` against real runs: estimate, then fit and score for real, side by side.

    python scripts/plan_check.py --dataset covidx --data-root TREE --profile full \
        --costs results/costs/cuda-....json --methods padim,patchcore \
        --set anomalypro.iterations=1000

For each method: the plan's estimate of fit and scoring time and of peak memory (from the cost
table, at the prepared data's split sizes and the given settings), then a real fit on the
training sets and scoring of the validation and test splits, timed the way the runner times
them. No MLflow needed (a GPU machine without the tracking stack can run it). Run it alone:
anything else on the machine slows the real runs and not the estimates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from functools import partial
from pathlib import Path

import torch

from medad_bench.api import get_method, make_config, parse_method_list, timed
from medad_bench.cli import _parse_settings
from medad_bench.data import load_card, prepare
from medad_bench.engine import cost_plan as planning
from medad_bench.engine.resources import MemoryWatch, megabytes, resolve_device
from medad_bench.engine.run import training_set


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--profile", default="quick", choices=["quick", "full"])
    parser.add_argument("--methods", default="all")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--costs", type=Path, default=None)
    parser.add_argument("--set", dest="settings", action="append", default=[])
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the rows")
    args = parser.parse_args()

    device = resolve_device(args.device)
    names = parse_method_list(args.methods)
    overrides = _parse_settings(tuple(args.settings), (), names)
    card = load_card(args.dataset)
    data = prepare(card, data_root=args.data_root, show_progress=False)
    counts = planning.prepared_counts(data)
    path = args.costs or planning.costs_path(device)
    costs = planning.load_costs(path)
    print(f"{args.dataset} ({args.profile}) on {device}: {counts}; costs from {path}")
    print(f"{'method':<12} {'fit est':>8} {'fit real':>8} {'score est':>9} {'score real':>10} "
          f"{'host MB est':>11} {'real':>6} {'GPU MB est':>10} {'real':>6}")
    rows = []
    for name in names:
        cls = get_method(name)
        config = make_config(cls, args.profile, image_size=card.image_size,
                             channels=card.channels, overrides=overrides.get(name))
        if hasattr(config, "weights") and config.weights == "imagenet" and args.profile == "full":
            # No hub here, and timing does not depend on weight values.
            config = dataclasses.replace(config, weights="random")
        key = planning.cost_key(name, args.profile, card.image_size, card.channels)
        if key not in costs:
            print(f"{name:<12} no cost measured for {key} in {path}", file=sys.stderr)
            continue
        estimate = planning.estimate(cls, config, costs[key], counts)
        method = cls(config)
        train = training_set(cls, data)  # as the runner hands it over
        watch = MemoryWatch(device).start()
        fit_seconds = timed(partial(method.fit, train, seed=0, device=device), device)
        score_seconds = sum(timed(partial(method.score, data.images_of(split)), device)
                            for split in ("val", "test"))
        row = {"method": name, "fit_estimate_s": estimate.fit_seconds, "fit_real_s": fit_seconds,
               "score_estimate_s": estimate.score_seconds, "score_real_s": score_seconds,
               "host_mb_estimate": estimate.peak_host_mb,
               "host_mb_real": megabytes(watch.peak_host_bytes()),
               "gpu_mb_estimate": estimate.peak_gpu_mb,
               "gpu_mb_real": megabytes(watch.peak_gpu_bytes()),
               "overrides": overrides.get(name, {})}
        rows.append(row)
        gpu_est = "-" if row["gpu_mb_estimate"] is None else f"{row['gpu_mb_estimate']:,.0f}"
        gpu_real = "-" if row["gpu_mb_real"] is None else f"{row['gpu_mb_real']:,.0f}"
        print(f"{name:<12} {estimate.fit_seconds:8.1f} {fit_seconds:8.1f} "
              f"{estimate.score_seconds:9.2f} {score_seconds:10.2f} "
              f"{estimate.peak_host_mb:11,.0f} {row['host_mb_real']:6,.0f} {gpu_est:>10} "
              f"{gpu_real:>6}", flush=True)
        del method
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
