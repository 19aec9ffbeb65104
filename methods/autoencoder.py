"""AE: MedIAnomaly's convolutional autoencoder baseline (Cai et al., Medical Image Analysis
2025, github.com/caiyu6666/MedIAnomaly), own PyTorch.

Trained on known-healthy images to rebuild them through a 16-value bottleneck with the mean
squared error; the anomaly map is the per-pixel squared error, the score its mean. MedIAnomaly
found this plain AE a strong baseline among its ~30 methods.

Published setting (the `full` profile; files under `reconstruction/` of that repository):
64 px input (`options.py` --input-size), base width 16 (encoder 16, 32, 64, 64 channels),
hidden 1024, latent 16 (`options.py` --base-width, --hidden-num, --latent-size; the network
`networks/ae.py`, its blocks `networks/base_units/blocks.py` BasicBlock and BottleNeck),
BatchNorm in every block but the output layer, loss mean (x - x_hat)^2 (`utils/losses.py`
AELoss), Adam lr 1e-3 weight decay 0, batch 64, 250 epochs (`options.py`; 600 on BrainTumor,
`Options.epochs`), score = mean of the map (`utils/ae_worker.py` evaluate). The architecture
and everything shared with the VAE and DAE: methods/_autoencoder.py.

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
    quick_iterations,
    quick_size,
)


@dataclass(frozen=True)
class AutoencoderConfig(ReconstructionConfig):
    """Defaults: MedIAnomaly's AE (reconstruction/options.py)."""

    base_width: int = 16
    hidden: int = 1024
    latent: int = 16


@register_method
class Autoencoder(ReconstructionMethod):
    name = "autoencoder"
    quick_cpu_seconds = 15
    description = ("AE (MedIAnomaly): convolutional autoencoder, latent 16; "
                   "score = mean squared reconstruction error")
    Config = AutoencoderConfig
    config: AutoencoderConfig

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int,
                       channels: int) -> AutoencoderConfig:
        if profile == "quick":
            return AutoencoderConfig(image_size=quick_size(image_size),
                                     iterations=quick_iterations(64), channels_last=True)
        return AutoencoderConfig()

    def _build(self, channels: int) -> nn.Module:
        cfg = self.config
        return ConvAutoencoder(channels, cfg.image_size, cfg.base_width, cfg.hidden, cfg.latent)

    def _loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return F.mse_loss(self.net(x), x), {}
