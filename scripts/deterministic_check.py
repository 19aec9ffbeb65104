"""What `bench run --deterministic` gives on a CUDA GPU: each method fitted twice with one seed
under torch.use_deterministic_algorithms (the suite's own `deterministic_algorithms`), and
once more without it, on the synthetic card; prints whether the scores repeat bit for bit and
any operation that has no deterministic CUDA version (the run would fail with that error).

Run on a GPU machine from the repository root (no MLflow needed):

    python scripts/deterministic_check.py --out deterministic.json [--iterations 40]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from medad_bench.api.seeding import deterministic_algorithms, prepare_determinism

# As `bench run --deterministic` does: before this process's first CUDA call.
ENV_BEFORE = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
prepare_determinism()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from full_size import synthetic_at  # noqa: E402  (scripts/ is on the path when a script runs)
from gpu_check import shortened  # noqa: E402

from medad_bench.api import get_method, make_config, parse_method_list  # noqa: E402
from medad_bench.engine.run import make_method, training_set  # noqa: E402


def fit_scores(name: str, config: object, data: object, device: torch.device,
               deterministic: bool, tag: str) -> tuple[np.ndarray, float]:
    cls = get_method(name)
    workdir = Path("/tmp/deterministic-check") / f"{name}-{tag}"
    shutil.rmtree(workdir, ignore_errors=True)  # never resume an earlier try
    method = make_method(cls, config, workdir)
    started = time.perf_counter()
    with deterministic_algorithms(deterministic):
        method.fit(training_set(cls, data), seed=0, device=device)
        scores = np.asarray(method.score(data.images_of("test")), dtype=float)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return scores, time.perf_counter() - started


def check(name: str, profile: str, data: object, size: int, iterations: int,
          device: torch.device) -> dict:
    config, _ = shortened(make_config(get_method(name), profile, image_size=size, channels=1),
                          iterations)
    result: dict = {"method": name, "profile": profile, "size": size}
    try:
        first, seconds = fit_scores(name, config, data, device, True, "a")
        second, _ = fit_scores(name, config, data, device, True, "b")
        result.update(deterministic_repeats=bool(np.array_equal(first, second)),
                      deterministic_max_diff=float(np.max(np.abs(first - second))),
                      deterministic_seconds=round(seconds, 2))
    except RuntimeError as exc:
        result["deterministic_error"] = str(exc).splitlines()[0][:300]
    plain_a, seconds = fit_scores(name, config, data, device, False, "c")
    plain_b, _ = fit_scores(name, config, data, device, False, "d")
    result.update(plain_repeats=bool(np.array_equal(plain_a, plain_b)),
                  plain_max_diff=float(np.max(np.abs(plain_a - plain_b))),
                  plain_seconds=round(seconds, 2))
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("deterministic.json"))
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--profiles", default="quick,full")
    parser.add_argument("--full-size", type=int, default=128)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test")
    parser.add_argument("--methods", default="all", help="comma-separated, or all")
    args = parser.parse_args()
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {device_name}; CUBLAS_WORKSPACE_CONFIG before: "
          f"{ENV_BEFORE!r}, now {os.environ['CUBLAS_WORKSPACE_CONFIG']!r}", flush=True)
    names = parse_method_list(args.methods)
    results = []
    for profile in args.profiles.split(","):
        size = 64 if profile == "quick" else args.full_size
        data = synthetic_at(size, Path("/tmp/deterministic-check-cache"))
        for name in names:
            try:
                results.append(check(name, profile, data, size, args.iterations, device))
            except Exception as exc:  # report and go on: one broken method must not hide others
                results.append({"method": name, "profile": profile,
                                "error": f"{type(exc).__name__}: {exc}"[:300]})
                print(json.dumps(results[-1]), flush=True)
    args.out.write_text(json.dumps({"device": device_name, "torch": torch.__version__,
                                    "results": results}, indent=2, default=str))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
