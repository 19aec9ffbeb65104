"""Full-profile check on a CUDA GPU: every method's full config, shortened schedules, timed.

Run on a GPU machine from the repository root (no MLflow needed: methods are called through
their fit/score interface on the prepared synthetic data at the full image size):

    python scripts/gpu_check.py --out gpu_check.json [--iterations 200]

For each method it prints the fit time of a shortened schedule, the marginal seconds per
iteration (two schedule lengths, for the GANs), the projected time of the full schedule,
scoring images/s, peak GPU memory and the AUC reached (meaningless for a shortened schedule;
it shows that the pipeline produces scores that rank).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from full_size import synthetic_at  # scripts/ is on the path when a script runs

from medad_bench.api import available_methods, get_method, make_config
from medad_bench.engine.run import make_method, training_set
from medad_bench.stats import image_metrics as metrics


def shortened(cls: type, config: object, n: int) -> object:
    """The config shortened to about n steps by the method's own hook (the one `bench plan
    --calibrate` uses): no method-specific knowledge here, so a new method needs no edit."""
    overrides = cls.calibration_overrides(config, max(1, n // 10))
    return dataclasses.replace(config, **overrides) if overrides else config


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def check_method(name: str, data: object, size: int, n: int, device: torch.device) -> dict:
    cls = get_method(name)
    base = make_config(cls, "full", image_size=size, channels=1)
    train = training_set(cls, data)
    test = data.images_of("test")
    labels = data.labels_of("test")
    result: dict = {"method": name, "config": dataclasses.asdict(base)}
    timings = []
    iterative = cls.images_seen(base) is not None
    full = cls.images_seen(base) or 0
    lengths = [n // 4, n] if iterative else [n]
    for length in lengths:
        config = shortened(cls, base, length)
        workdir = Path("/tmp/gpu-check-work") / f"{name}-{length}"
        shutil.rmtree(workdir, ignore_errors=True)  # never resume an earlier try
        method = make_method(cls, config, workdir)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        started = time.perf_counter()
        method.fit(train, seed=0, device=device)
        sync(device)
        timings.append((cls.images_seen(config) or length, time.perf_counter() - started))
    started = time.perf_counter()
    scores = method.score(test)
    sync(device)
    score_seconds = time.perf_counter() - started
    result.update({
        "fit_seconds": {str(k): round(v, 2) for k, v in timings},
        "score_images_per_second": round(len(test) / score_seconds, 1),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device.type == "cuda" else None,
        "auc_shortened": round(metrics.roc_auc(labels, scores), 4),
        "run_info": {k: str(v) for k, v in method.run_info.items()},
    })
    if len(timings) == 2 and full:
        # Marginal seconds per training image drawn (the budget unit), projected to the full
        # schedule's images_seen.
        (n1, t1), (n2, t2) = timings
        per_image = (t2 - t1) / max(n2 - n1, 1)
        result["seconds_per_training_image"] = round(per_image, 7)
        result["full_images_seen"] = full
        result["projected_full_hours"] = round(per_image * full / 3600, 2)
    print(json.dumps({k: v for k, v in result.items() if k != "config"}), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test")
    parser.add_argument("--methods", default="all", help="comma-separated, or all")
    args = parser.parse_args()
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {device_name}", flush=True)
    started = time.perf_counter()
    data = synthetic_at(args.size, Path("/tmp/gpu-check-cache"))
    print(f"prepared {len(data.manifest)} images at {args.size}px in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    results = []
    names = (list(available_methods()) if args.methods == "all"
             else [n.strip() for n in args.methods.split(",")])
    for name in names:
        try:
            results.append(check_method(name, data, args.size, args.iterations, device))
        except Exception as exc:  # report and go on: one broken method must not hide others
            results.append({"method": name, "error": f"{type(exc).__name__}: {exc}"})
            print(json.dumps(results[-1]), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    args.out.write_text(json.dumps({"device": device_name,
                                    "torch": torch.__version__, "size": args.size,
                                    "results": results}, indent=2, default=str))
    print(f"written {args.out}; max finite AUC over methods: "
          f"{np.nanmax([r.get('auc_shortened', np.nan) for r in results]):.3f}")


if __name__ == "__main__":
    main()
