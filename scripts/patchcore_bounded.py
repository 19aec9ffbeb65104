"""PatchCore in bounded memory against the exact algorithm: test AUC, time and memory per seed.

    python scripts/patchcore_bounded.py [--dataset synthetic] [--seeds 0,1,2]

Variants, all the quick profile otherwise: `exact` keeps every training patch (anomalib's
algorithm); `quick` is the profile's budget (100,000 patches: on the synthetic sets it keeps
every patch too, so it must equal `exact`); `1/2`, `1/4`, `1/10` keep that share of the
patches, which is how the budget acts on a set too large to hold (COVIDx quick keeps 1% of
10.3 million patches). Memory is the run's peak resident memory beyond the process's size
before the fit. Test labels are read only to compute the AUC after each fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from medad_bench.api import get_method, make_config
from medad_bench.data import load_card, prepare
from medad_bench.engine.resources import MemoryWatch
from medad_bench.stats.image_metrics import roc_auc

CPU = torch.device("cpu")
SHARES = {"1/2": 2, "1/4": 4, "1/10": 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    card = load_card(args.dataset)
    data = prepare(card, show_progress=False)
    cls = get_method("patchcore")
    quick = make_config(cls, "quick", image_size=card.image_size, channels=card.channels)
    test, labels = data.images_of("test"), data.labels_of("test")
    rows = []
    total = None
    for seed in seeds:
        for name in ("exact", "quick", *SHARES):
            config = quick
            if name == "exact":
                config = dataclasses.replace(quick, max_patches=None, max_memory_bank=None)
            elif name in SHARES:
                config = dataclasses.replace(quick, max_patches=total // SHARES[name])
            method = cls(config)
            watch = MemoryWatch(CPU).start()
            baseline = watch.peak_host_bytes()
            started = time.perf_counter()
            method.fit(data.train_set(), seed=seed, device=CPU)
            seconds = time.perf_counter() - started
            peak = (watch.peak_host_bytes() - baseline) / 2**20
            total = method.run_info["patches_total"]
            auc = roc_auc(labels, method.score(test))
            rows.append({"seed": seed, "variant": name, "auc": auc, "seconds": seconds,
                         "peak_mb": peak, "kept": method.run_info["patches_kept"],
                         "bank": len(method.model.memory_bank)})
            print(f"seed {seed} {name:>5}: kept {rows[-1]['kept']:>6,} of {total:,}, bank "
                  f"{rows[-1]['bank']:>5,}, AUC {auc:.4f}, fit {seconds:5.1f} s, "
                  f"peak +{peak:6.0f} MB", flush=True)
    print(f"\n{'variant':>7} {'kept':>7} " + " ".join(f"{'AUC s' + str(s):>9}" for s in seeds)
          + f" {'mean':>7} {'vs exact':>8} {'fit s':>6} {'peak MB':>7}")
    exact = {r["seed"]: r["auc"] for r in rows if r["variant"] == "exact"}
    for name in ("exact", "quick", *SHARES):
        mine = [r for r in rows if r["variant"] == name]
        aucs = [r["auc"] for r in mine]
        gap = statistics.mean(r["auc"] - exact[r["seed"]] for r in mine)
        print(f"{name:>7} {mine[0]['kept']:>7,} " + " ".join(f"{a:9.4f}" for a in aucs)
              + f" {statistics.mean(aucs):7.4f} {gap:+8.4f} "
              f"{statistics.median(r['seconds'] for r in mine):6.1f} "
              f"{statistics.median(r['peak_mb'] for r in mine):7.0f}")


if __name__ == "__main__":
    main()
