"""AnomalyPro on a CUDA GPU at the published size: does the mask M localise, and how fast?

Run on a GPU machine from the repository root (no MLflow needed):

    python scripts/gpu_mask_check.py --out gpu_mask_check.json [--minutes 5]

1. Throughput of one training iteration (a critic step, and a generator step every second
   iteration) with the full profile's networks at 256 px, batch 16: fp32, channels_last, and
   bf16 autocast, each the median of timed blocks after a warm-up.
2. The full profile (published weighting, lr 1e-4, no decay) trained for `--minutes`, with
   the mask diagnostics on the validation split at every checkpoint (mean M on healthy and on
   diseased images, share of pixels with M > 0.5, pixel AUROC of M against the lesion masks)
   and the validation AUC. Test labels are not read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from full_size import synthetic_at  # scripts/ is on the path when a script runs

from medad_bench.api import Progress
from medad_bench.engine.run import training_set  # noqa: E402
from medad_bench.methods._gan import to_model_input
from medad_bench.methods.anomalypro import (
    AnomalyPro,
    AnomalyProConfig,
    Generator,
    PatchDiscriminator,
    critic_loss,
    generator_loss,
)
from medad_bench.stats import image_metrics as metrics


class Curves(Progress):
    """Keeps every metric a method reports, by name."""

    def __init__(self) -> None:
        self.values: dict[str, list[tuple[int, float]]] = {}

    def metric(self, name: str, value: float, step: int) -> None:
        self.values.setdefault(name, []).append((step, round(float(value), 4)))


def iterations_per_second(cfg: AnomalyProConfig, a_set: torch.Tensor, b_set: torch.Tensor,
                          mode: str, blocks: int = 5, block: int = 20) -> float:
    """Median training iterations/s over `blocks` timed blocks, after a warm-up."""
    device = a_set.device
    torch.manual_seed(0)
    generator = Generator(1, cfg.base_channels, cfg.residual_blocks).to(device)
    critic = PatchDiscriminator(1, cfg.critic_base_channels, cfg.critic_layers).to(device)
    layout = torch.channels_last if mode == "channels_last" else torch.contiguous_format
    generator.to(memory_format=layout)
    critic.to(memory_format=layout)
    opt_g = torch.optim.Adam(generator.parameters(), cfg.lr_g, (cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(critic.parameters(), cfg.lr_d, (cfg.beta1, cfg.beta2))

    def step(i: int) -> None:
        index = torch.randint(len(a_set), (cfg.batch_size,), device=device)
        a = a_set[index].contiguous(memory_format=layout)
        b = b_set[index].contiguous(memory_format=layout)
        weights = torch.rand(cfg.batch_size, 1, 1, 1, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            loss_d, _ = critic_loss(generator, critic, a, b, weights, cfg.lambda_gp)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        if i % 2 == 1:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
                loss_g, _ = generator_loss(generator, critic, a, b, cfg)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(min(10, block)):  # warm-up
        step(i)
    sync()
    rates = []
    for _ in range(blocks):
        started = time.perf_counter()
        for i in range(block):
            step(i)
        sync()
        rates.append(block / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("gpu_mask_check.json"))
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=5, help="timed blocks per mode")
    parser.add_argument("--block", type=int, default=20, help="iterations per timed block")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}", flush=True)
    data = synthetic_at(args.size, Path("/tmp/gpu-mask-cache"))
    full = AnomalyPro.profile_config("full", image_size=args.size, channels=1)
    full = dataclasses.replace(full, image_size=args.size)
    train = training_set(AnomalyPro, data)  # held-out normals + test images for AUCp
    a_set = to_model_input(train.unlabeled, device, args.size)
    b_set = to_model_input(train.normal, device, args.size)
    speeds = {mode: round(iterations_per_second(full, a_set, b_set, mode, args.blocks,
                                                           args.block), 2)
              for mode in ("fp32", "channels_last", "bf16")}
    print(json.dumps({"iterations_per_second": speeds}), flush=True)

    # As many iterations as the time allows, measured on the fp32 rate (with ~8% for scoring).
    n = max(6, int(speeds["fp32"] * args.minutes * 60 * 0.92))
    config = dataclasses.replace(full, iterations=n, decay_iterations=0, log_every=100)
    method = AnomalyPro(config)
    curves = Curves()
    started = time.perf_counter()
    method.fit(train, seed=0, device=device, progress=curves)
    fit_seconds = time.perf_counter() - started
    val = train.validation
    val_auc = metrics.roc_auc(val.labels, method.score(val.images))
    result = {"device": name, "torch": torch.__version__,
              "size": args.size, "iterations_per_second": speeds, "iterations": n,
              "fit_seconds": round(fit_seconds, 1), "val_auc_kept": round(val_auc, 4),
              "kept": method.run_info, "kept_mask": method.run_metrics,
              "warnings": method.warnings,
              "curves": {k: v for k, v in curves.values.items()
                         if k.startswith(("checkpoint_mask", "aucp"))}}
    print(json.dumps(result, default=str), flush=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
