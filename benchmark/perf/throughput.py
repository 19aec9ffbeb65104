"""Throughput of AnomalyPro inside the suite against a bare PyTorch loop, side by side.

Both loops use the same networks, losses, batch size and data, in the same process; they are
run alternately, several times, and the medians are compared, so machine noise hits both.
The suite's loop adds what the suite needs (learning-rate schedule, seeded sampling with flips,
progress, loss logging); the bare loop is what a researcher would write in a notebook.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medad_bench.api.contract import TrainSet
from medad_bench.api.training import multi_tensor
from medad_bench.engine.run import BarProgress
from medad_bench.methods._gan import to_model_input
from medad_bench.methods.anomalypro import (
    AnomalyPro,
    AnomalyProConfig,
    Generator,
    PatchDiscriminator,
    critic_loss,
    generator_loss,
    translate,
)

logger = logging.getLogger(__name__)


@dataclass
class Throughput:
    suite_train: list[float]
    bare_train: list[float]
    suite_score: list[float]
    bare_score: list[float]

    def summary(self) -> dict[str, float]:
        med = statistics.median
        return {
            "suite_train_images_per_s": med(self.suite_train),
            "bare_train_images_per_s": med(self.bare_train),
            "train_ratio": med(self.suite_train) / med(self.bare_train),
            "suite_score_images_per_s": med(self.suite_score),
            "bare_score_images_per_s": med(self.bare_score),
            "score_ratio": med(self.suite_score) / med(self.bare_score),
        }


def suite_training(config: AnomalyProConfig, train: TrainSet, device: torch.device,
                   seed: int) -> AnomalyPro:
    method = AnomalyPro(config)
    # A real (disabled) progress bar and metric buffer: the suite's per-step overhead.
    method.fit(train, seed=seed, device=device, progress=BarProgress("perf", enabled=False))
    return method


def bare_training(config: AnomalyProConfig, train: TrainSet, device: torch.device,
                  seed: int) -> Generator:
    torch.manual_seed(seed)
    channels = train.normal.shape[1]
    generator = Generator(channels, config.base_channels, config.residual_blocks,
                          config.mask_logit_bias, config.upsample).to(device)
    critic = PatchDiscriminator(channels, config.critic_base_channels,
                                config.critic_layers).to(device)
    if config.channels_last:  # as the suite's quick profile does
        generator = generator.to(memory_format=torch.channels_last)
        critic = critic.to(memory_format=torch.channels_last)
    betas = (config.beta1, config.beta2)
    opt_g = multi_tensor(torch.optim.Adam(generator.parameters(), config.lr_g, betas))
    opt_d = multi_tensor(torch.optim.Adam(critic.parameters(), config.lr_d, betas))
    # A notebook loop holds both sets in memory, as tensors in the model's range.
    set_a = to_model_input(np.asarray(train.unlabeled), device, config.image_size)
    set_b = to_model_input(np.asarray(train.normal), device, config.image_size)
    if config.channels_last:
        set_a = set_a.contiguous(memory_format=torch.channels_last)
        set_b = set_b.contiguous(memory_format=torch.channels_last)
    size = config.batch_size
    for step in range(config.iterations):
        a = set_a[torch.randint(len(set_a), (size,), device=device)]
        b = set_b[torch.randint(len(set_b), (size,), device=device)]
        loss_d, _ = critic_loss(generator, critic, a, b, torch.rand(size, 1, 1, 1, device=device),
                                config.lambda_gp)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        if (step + 1) % config.critic_steps_per_g == 0:
            loss_g, _ = generator_loss(generator, critic, a, b, config)
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
    return generator


def bare_scores(generator: Generator, images: np.ndarray, config: AnomalyProConfig,
                device: torch.device) -> np.ndarray:
    generator.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), config.score_batch_size):
            x = to_model_input(images[start:start + config.score_batch_size], device,
                               config.image_size)
            out.append((torch.abs(x - translate(x, *generator(x))) / 2).mean(dim=(1, 2, 3)))
    return torch.cat(out).cpu().numpy()


def _timed(function: Callable[[], object], device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def measure(config: AnomalyProConfig, train: TrainSet, test_images: np.ndarray,
            device: torch.device, repeats: int = 5, seed: int = 0,
            report: Callable[[str], None] = logger.info) -> Throughput:
    """Alternate suite and bare runs `repeats` times; images/s of training and scoring.
    Each repeat's line goes to `report` (`bench perf` passes click.echo; default: the log)."""
    # No checkpoint scoring inside the timed loop (no selection images, no validation split
    # for the mask diagnostics): both sides train the same steps.
    config = dataclasses.replace(config, log_every=max(1, config.log_every))
    train = dataclasses.replace(train, selection=None, selection_normal_share=None,
                                selection_normals=None, validation=None)
    trained_images = config.iterations * config.batch_size
    result = Throughput([], [], [], [])
    # One untimed warm-up of each (allocator, thread pools, lazy imports).
    warm = dataclasses.replace(config, iterations=2, decay_iterations=0)
    suite_training(warm, train, device, seed)
    bare_training(warm, train, device, seed)
    for repeat in range(repeats):
        seconds, method = _timed(lambda: suite_training(config, train, device, seed), device)
        result.suite_train.append(trained_images / seconds)
        seconds, generator = _timed(lambda: bare_training(config, train, device, seed), device)
        result.bare_train.append(trained_images / seconds)
        seconds, _ = _timed(lambda m=method: m.score(test_images), device)
        result.suite_score.append(len(test_images) / seconds)
        seconds, _ = _timed(lambda g=generator: bare_scores(g, test_images, config, device),
                            device)
        result.bare_score.append(len(test_images) / seconds)
        report(f"repeat {repeat + 1}/{repeats}: train suite {result.suite_train[-1]:.1f} vs bare "
               f"{result.bare_train[-1]:.1f} img/s; score suite {result.suite_score[-1]:.0f} vs "
               f"bare {result.bare_score[-1]:.0f} img/s")
    return result


def bench_perf(method: str, dataset: str, profile: str, *, iterations: int, repeats: int,
               device: str, threads: int | None, overrides: dict[str, Any] | None,
               report: Callable[[str], None]) -> dict[str, float]:
    """`bench perf`: the method's config for `dataset` at `iterations` (no decay), measured
    `repeats` times in the suite and bare; `report` gets the set-up line and each repeat's
    lines. Returns the medians (Throughput.summary)."""
    from medad_bench.api.contract import get_method, make_config
    from medad_bench.data import load_card, prepare
    from medad_bench.engine.resources import resolve_device

    if threads:
        torch.set_num_threads(threads)
    card = load_card(dataset)
    data = prepare(card)
    cls = get_method(method)
    config = make_config(cls, profile, image_size=card.image_size, channels=card.channels,
                         overrides=overrides)
    config = dataclasses.replace(config, iterations=iterations, decay_iterations=0)
    torch_device = resolve_device(device)
    name = torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else "cpu"
    report(f"{method} ({profile}: {config.image_size}px, batch {config.batch_size}) on "
           f"{name}, {torch.get_num_threads()} threads; {iterations} iterations x "
           f"{repeats} repeats")
    result = measure(config, data.train_set(), data.images_of("test"), torch_device,
                     repeats=repeats, report=report)
    return result.summary()
