"""ALOCC, Adversarially Learned One-Class Classifier (Sabokrou et al. 2018), own PyTorch.

A reconstructor R (convolutional encoder-decoder with BatchNorm) learns to rebuild healthy
images from noisy copies (Gaussian noise, sigma 0.155); a DCGAN discriminator D tells real
images from reconstructions. R's loss = adversarial + 0.2 * reconstruction; RMSprop, lr 2e-4.
The score comes from D(R(x)): D is confident a reconstructed healthy image is real, less so for
a diseased one, so the anomaly score is 1 - D(R(x)) (higher = more anomalous).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medad_bench.api import Prediction, TrainSet, register_method
from medad_bench.methods._budget import steps_for
from medad_bench.methods._gan import (
    RECONSTRUCTION,
    GANMethod,
    ImageEncoder,
    bce,
    down_stack,
    image_extra,
    optimizer_step,
    up_stack,
)


@dataclass(frozen=True)
class AloccConfig:
    """Defaults: the published ALOCC settings (docs/design.md section 5)."""

    image_size: int = 64
    base_channels: int = 64
    batch_size: int = 64
    iterations: int = 20_000
    noise_sigma: float = 0.155
    lambda_reconstruction: float = 0.2
    lr: float = 2e-4
    log_every: int = 50
    score_batch_size: int = 64


class Reconstructor(nn.Module):
    def __init__(self, channels: int, base: int, image_size: int) -> None:
        super().__init__()
        self.encode, width = down_stack(channels, base, image_size, norm="batch")
        self.decode = up_stack(width, channels, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


@register_method
class Alocc(GANMethod):
    name = "alocc"
    quick_cpu_seconds = 60
    description = "ALOCC: denoising reconstructor R + discriminator D; score = 1 - D(R(x))"
    uses = ("normal",)
    output_extra = RECONSTRUCTION
    Config = AloccConfig

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int, channels: int) -> AloccConfig:
        if profile == "quick":
            # lr 1e-4 settled on the validation split at the quick budget
            # (scripts/settle_quick.py, seed 0): val AUC 0.579 vs 0.532 at the published 2e-4.
            return AloccConfig(image_size=min(image_size, 32), base_channels=32, batch_size=32,
                               iterations=steps_for(32), lr=1e-4, log_every=25)
        return AloccConfig()

    @classmethod
    def calibration_overrides(cls, config: Any, scale: int) -> dict[str, Any]:
        return {"iterations": 10 * scale}

    @classmethod
    def images_seen(cls, config: AloccConfig) -> int:
        return config.iterations * config.batch_size

    def total_steps(self, train: TrainSet) -> int:
        return self.config.iterations

    def _setup(self, train: TrainSet) -> None:
        cfg = self.config
        self.reconstructor = self._network(
            "reconstructor", Reconstructor(train.channels, cfg.base_channels, cfg.image_size))
        self.discriminator = self._network(
            "discriminator", ImageEncoder(train.channels, cfg.base_channels, cfg.image_size, 1))
        self.opt_r = self.add_optimizer("reconstructor",
                                     torch.optim.RMSprop(self.reconstructor.parameters(), cfg.lr))
        self.opt_d = self.add_optimizer("discriminator",
                                     torch.optim.RMSprop(self.discriminator.parameters(), cfg.lr))
        self.images, self.batches = self._shuffled_batches(train)
        self.noise = self._noise()

    def _train_step(self, step: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        x = self.images[self.batches.next()]
        noisy = x + cfg.noise_sigma * torch.randn(x.shape, generator=self.noise).to(self.device)
        rebuilt = self.reconstructor(noisy)
        d_loss = bce(self.discriminator(x), 1) + bce(self.discriminator(rebuilt.detach()), 0)
        optimizer_step(self.opt_d, d_loss)
        r_loss = (bce(self.discriminator(rebuilt), 1)
                  + cfg.lambda_reconstruction * F.mse_loss(rebuilt, x))
        optimizer_step(self.opt_r, r_loss)
        return {"d_loss": d_loss.detach(), "r_loss": r_loss.detach()}

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        rebuilt = self.reconstructor(self._model_input(images))
        shown = {RECONSTRUCTION: image_extra(rebuilt, images.shape[-2:])} if extras else {}
        return Prediction((1.0 - torch.sigmoid(self.discriminator(rebuilt))).flatten().cpu()
                          .numpy(), extras=shown)
