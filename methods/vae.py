"""VAE: MedIAnomaly's variational autoencoder baseline (Cai et al., Medical Image Analysis
2025, github.com/caiyu6666/MedIAnomaly), own PyTorch.

The AE's network (methods/_autoencoder.py) whose encoder emits a mean and a log-variance of a
16-value Gaussian latent; training decodes a sample z = mu + eps * exp(log_var / 2) and
minimises mean (x - x_hat)^2 + 0.005 * KL, the KL term averaged over the latent dimensions
and the batch. The anomaly map is the per-pixel squared error, the score its mean.

Published setting (the `full` profile; files under `reconstruction/` of that repository):
the AE's architecture and training (64 px, widths 16-64, hidden 1024, latent 16, Adam lr 1e-3,
batch 64, 250 epochs: `options.py`, `networks/vae.py`), the encoder's last layer
Linear(1024 -> 2 x 16) split into (mu, log_var) (`networks/base_units/blocks.py`
VaeBottleNeck), the loss recon.mean() + kl_weight * kl.mean() with kl_weight 0.005 and
kl = mean over the latent of -0.5 (1 + log_var - mu^2 - exp(log_var)) (`utils/losses.py`
VAELoss), score = mean squared error of the reconstruction (`utils/ae_worker.py` evaluate,
VAELoss with grad=None).

One deviation: MedIAnomaly's bottleneck samples z at test time too (VaeBottleNeck.forward
always reparameterises), so its scores vary from one evaluation to the next. Here the test
reconstruction decodes the mean mu: a score repeats exactly, and does not depend on which
images share its batch. Training samples eps from the run's seeded noise stream.

The `quick` profile differs in the budget, 500 batches of 64 (the suite's 32,000 training
images, methods/_budget.py), and in the working size: the dataset's size capped at 32 px, as
for the GAN baselines (MedIAnomaly: 64 px; methods/_autoencoder.py quick_size); it also
uses the NHWC memory layout (`channels_last`, faster on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from medad_bench.api import register_method
from medad_bench.methods._autoencoder import (
    ConvAutoencoder,
    ReconstructionConfig,
    ReconstructionMethod,
    gaussian_kl,
    quick_iterations,
    quick_size,
)


@dataclass(frozen=True)
class VaeConfig(ReconstructionConfig):
    """Defaults: MedIAnomaly's VAE (reconstruction/options.py, utils/losses.py VAELoss)."""

    base_width: int = 16
    hidden: int = 1024
    latent: int = 16
    kl_weight: float = 0.005


@register_method
class Vae(ReconstructionMethod):
    name = "vae"
    quick_cpu_seconds = 16
    description = ("VAE (MedIAnomaly): variational autoencoder, latent 16, KL weight 0.005; "
                   "score = mean squared reconstruction error")
    Config = VaeConfig
    config: VaeConfig

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int, channels: int) -> VaeConfig:
        if profile == "quick":
            return VaeConfig(image_size=quick_size(image_size), iterations=quick_iterations(64),
                             channels_last=True)
        return VaeConfig()

    def _build(self, channels: int) -> nn.Module:
        cfg = self.config
        return ConvAutoencoder(channels, cfg.image_size, cfg.base_width, cfg.hidden, cfg.latent,
                               code_factor=2)

    def _loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mu, log_var = self.net.encode(x).chunk(2, dim=1)
        eps = torch.randn(mu.shape, generator=self.noise).to(self.device)
        x_hat = self.net.decode(mu + eps * torch.exp(0.5 * log_var))
        reconstruction = F.mse_loss(x_hat, x)
        kl = gaussian_kl(mu, log_var).mean()
        return reconstruction + self.config.kl_weight * kl, {"reconstruction": reconstruction,
                                                              "kl": kl}
