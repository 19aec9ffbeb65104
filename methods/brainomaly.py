"""Brainomaly (Rahman Siddiquee et al., WACV 2023): the HealthyGAN authors' follow-up, which
drops the mask.

The generator (HealthyGAN's layout) outputs one map m per channel; the healthy-looking
translation is B0 = tanh(A + m). The critic and gradient penalty are HealthyGAN's. The generator
loss is the adversarial term on B0(A) plus lambda_id * mean |B - tanh(B + m(B))|: healthy
images must pass through unchanged; there is no reconstruction or mask term. The score is
mean |A - B0| / 2 (in [0, 1] image units), and the checkpoint is chosen without labels by AUCp,
the selection criterion Brainomaly introduced. Training loop, critic, checkpoints and selection
are shared with AnomalyPro (methods/_translation.py, benchmark/api/training.py).

Published setting (the `full` profile): 192 px, batch 16, 400k iterations, Adam lr 1e-4
betas (0.5, 0.999), two critic steps per generator step, lambda_gp 10, lambda_id 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medad_bench.api import register_method
from medad_bench.methods._gan import wgan_critic_loss
from medad_bench.methods._translation import (
    TranslationConfig,
    TranslationGAN,
    generator_body,
    quick_translation_settings,
)


class MapGenerator(nn.Module):
    """HealthyGAN's generator body with C output channels: the additive map m."""

    def __init__(self, channels: int = 1, base: int = 64, residual_blocks: int = 6,
                 upsample: str = "transposed") -> None:
        super().__init__()
        self.net = generator_body(channels, channels, base, residual_blocks, upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x in [-1, 1] -> B0 = tanh(x + m(x)) in [-1, 1]."""
        return torch.tanh(x + self.net(x))


@dataclass(frozen=True)
class BrainomalyConfig(TranslationConfig):
    """Defaults: the published Brainomaly code (the `full` profile)."""

    image_size: int = 192
    #: 192 >> 6 = 3: a 3 x 3 patch grid, as the published critic (6 stride-2 layers).
    critic_layers: int = 6


@register_method
class Brainomaly(TranslationGAN):
    name = "brainomaly"
    quick_cpu_seconds = 75
    description = ("Brainomaly: GAN adding a learnt map to any scan to make it look healthy "
                   "(no mask); score = mean |input - translation|")
    Config = BrainomalyConfig
    config: BrainomalyConfig

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int,
                       channels: int) -> BrainomalyConfig:
        if profile == "full":
            return BrainomalyConfig()
        # The same networks, working size, budget and schedule as AnomalyPro's quick profile
        # (its docstring lists how that differs from full): the two differ only in what the
        # generator outputs and how it is trained. lr 5e-4 rather than the published 1e-4 was
        # settled on the validation split at the quick budget (scripts/settle_quick.py, seed 0):
        # val AUC 0.734 vs 0.570.
        return BrainomalyConfig(**quick_translation_settings(image_size))

    def _build_generator(self, channels: int) -> nn.Module:
        cfg = self.config
        return MapGenerator(channels, cfg.base_channels, cfg.residual_blocks, cfg.upsample)

    def _translate(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.generator(x), None

    def _critic_loss(self, a: torch.Tensor, b: torch.Tensor, gp_weights: torch.Tensor,
                     warmup: bool) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            fake = self.generator(a)
        return wgan_critic_loss(self.critic, b, fake, gp_weights, self.config.lambda_gp)

    def _generator_loss(self, a: torch.Tensor, b: torch.Tensor,
                        warmup: bool) -> tuple[torch.Tensor, dict]:
        adversarial = -self.critic(self.generator(a)).mean()
        identity = torch.mean(torch.abs(b - self.generator(b)))
        weight = self.config.lambda_adv if self.adversarial_weight is None else \
            self.adversarial_weight
        loss = weight * adversarial + self.config.lambda_id * identity
        return loss, {"g_adv": adversarial, "g_id": identity}


__all__ = ["Brainomaly", "BrainomalyConfig", "MapGenerator"]
