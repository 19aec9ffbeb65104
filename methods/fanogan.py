"""f-AnoGAN (Schlegl et al. 2019), own PyTorch.

Phase 1: a WGAN-GP (generator G, critic D; gradient penalty 10, five critic steps per
generator step, Adam 2e-4 betas (0.5, 0.999), latent 100) learns healthy images.
Phase 2: with G and D frozen, an encoder E learns to map images to latents with the izi_f
loss MSE(x, G(E(x))) + kappa * MSE(f(x), f(G(E(x)))), f the critic's penultimate features,
kappa = 1. The anomaly score is that same expression per image.

One engine step (benchmark/api/training.py) is a generator step with its critic steps in phase 1,
an encoder step in phase 2. Checkpoints (and the AUCp selection) are spread over phase 2 only:
without a trained encoder the model cannot score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medad_bench.api import Prediction, TrainSet, register_method
from medad_bench.methods._budget import steps_for
from medad_bench.methods._gan import (
    RECONSTRUCTION,
    GANMethod,
    ImageEncoder,
    LatentDecoder,
    gradient_penalty,
    image_extra,
    optimizer_step,
)


@dataclass(frozen=True)
class FanoganConfig:
    """Defaults: the published f-AnoGAN settings (docs/design.md section 5)."""

    image_size: int = 64
    base_channels: int = 64
    latent: int = 100
    batch_size: int = 64
    gan_iterations: int = 100_000  # generator steps
    critic_steps: int = 5
    lambda_gp: float = 10.0
    encoder_iterations: int = 50_000
    kappa: float = 1.0
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    log_every: int = 50
    score_batch_size: int = 64


def izi_f(x: torch.Tensor, rebuilt: torch.Tensor, critic: ImageEncoder,
          kappa: float) -> torch.Tensor:
    """Per-image izi_f residual: MSE(x, x') + kappa * MSE(f(x), f(x')), x' = G(E(x)) given
    as `rebuilt` (scoring shows it too)."""
    image_term = ((x - rebuilt) ** 2).flatten(1).mean(1)
    feature_term = ((critic.features(x) - critic.features(rebuilt)) ** 2).mean(1)
    return image_term + kappa * feature_term


@register_method
class Fanogan(GANMethod):
    name = "fanogan"
    quick_cpu_seconds = 57
    description = "f-AnoGAN: WGAN-GP + izi_f encoder; score = image + critic-feature residual"
    uses = ("normal",)
    output_extra = RECONSTRUCTION
    budget_fields = ("gan_iterations", "encoder_iterations")
    Config = FanoganConfig

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int, channels: int) -> FanoganConfig:
        if profile == "quick":
            # The quick budget (methods/_budget.py): 5/6 to the WGAN (5 critic batches per
            # generator step), 1/6 to the encoder. Width 32 settled on the validation split at
            # that budget (scripts/settle_quick.py, seed 0): val AUC 0.783 vs 0.512 at 16.
            steps = steps_for(6 * 32)
            return FanoganConfig(image_size=min(image_size, 32), base_channels=32,
                                 batch_size=32, gan_iterations=steps, encoder_iterations=steps,
                                 log_every=25)
        return FanoganConfig()

    @classmethod
    def calibration_overrides(cls, config: Any, scale: int) -> dict[str, Any]:
        return {"gan_iterations": 4 * scale, "encoder_iterations": 4 * scale}

    @classmethod
    def images_seen(cls, config: FanoganConfig) -> int:
        """Real batches of the critic steps, then the encoder's batches."""
        return (config.gan_iterations * config.critic_steps
                + config.encoder_iterations) * config.batch_size

    # -- training ---------------------------------------------------------------------------

    def total_steps(self, train: TrainSet) -> int:
        return self.config.gan_iterations + self.config.encoder_iterations

    def first_selectable_step(self) -> int:
        """The encoder trains after the GAN: no score before phase 2."""
        return self.config.gan_iterations

    def _stage_name(self, step: int) -> str:
        return "wgan-gp" if step <= self.config.gan_iterations else "izi_f encoder"

    def _setup(self, train: TrainSet) -> None:
        cfg = self.config
        channels = train.channels
        # Built in this order, then initialised: the weights the seed has always drawn.
        generator = LatentDecoder(cfg.latent, channels, cfg.base_channels, cfg.image_size)
        critic = ImageEncoder(channels, cfg.base_channels, cfg.image_size, 1, norm="layer")
        encoder = ImageEncoder(channels, cfg.base_channels, cfg.image_size, cfg.latent)
        self.generator = self._network("generator", generator)
        self.critic = self._network("critic", critic)
        self.encoder = self._network("encoder", encoder)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = self.add_optimizer("generator",
                                     torch.optim.Adam(self.generator.parameters(), cfg.lr, betas))
        self.opt_d = self.add_optimizer("critic",
                                     torch.optim.Adam(self.critic.parameters(), cfg.lr, betas))
        self.opt_e = self.add_optimizer("encoder",
                                     torch.optim.Adam(self.encoder.parameters(), cfg.lr, betas))
        self.images, self.batches = self._shuffled_batches(train)
        self.noise = self._noise()

    def _train_step(self, step: int) -> dict[str, torch.Tensor]:
        if step <= self.config.gan_iterations:
            return self._gan_step()
        return self._encoder_step()

    def _gan_step(self) -> dict[str, torch.Tensor]:
        """One generator step after `critic_steps` critic batches (WGAN-GP)."""
        cfg = self.config
        for _ in range(cfg.critic_steps):
            real = self.images[self.batches.next()]
            z = torch.randn(len(real), cfg.latent, generator=self.noise).to(self.device)
            with torch.no_grad():
                fake = self.generator(z)
            weights = torch.rand(len(real), 1, 1, 1, generator=self.noise).to(self.device)
            d_loss = (self.critic(fake).mean() - self.critic(real).mean()
                      + cfg.lambda_gp * gradient_penalty(self.critic, real, fake, weights))
            optimizer_step(self.opt_d, d_loss)
        z = torch.randn(cfg.batch_size, cfg.latent, generator=self.noise).to(self.device)
        g_loss = -self.critic(self.generator(z)).mean()
        optimizer_step(self.opt_g, g_loss)
        return {"critic_loss": d_loss.detach(), "generator_loss": g_loss.detach()}

    def _encoder_step(self) -> dict[str, torch.Tensor]:
        """One izi_f step of the encoder, G and the critic frozen. They are put back in eval
        mode at every step: the engine sets every network to train mode after each
        checkpoint's scoring (and on resume), and G's BatchNorm statistics must not move."""
        for net in (self.generator, self.critic):
            net.eval()
            net.requires_grad_(False)
        x = self.images[self.batches.next()]
        loss = izi_f(x, self.generator(self.encoder(x)), self.critic, self.config.kappa).mean()
        optimizer_step(self.opt_e, loss)
        return {"izi_f": loss.detach()}

    # -- prediction -------------------------------------------------------------------------

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        x = self._model_input(images)
        rebuilt = self.generator(self.encoder(x))
        residual = izi_f(x, rebuilt, self.critic, self.config.kappa)
        shown = {RECONSTRUCTION: image_extra(rebuilt, images.shape[-2:])} if extras else {}
        return Prediction(residual.float().cpu().numpy(), extras=shown)
