"""ALAD, Adversarially Learned Anomaly Detection (Zenati et al. 2018), own PyTorch.

A bidirectional GAN: encoder E (x -> z) and generator G (z -> x) against three discriminators,
D_xz on (x, z) pairs, D_xx on (x, x') pairs and D_zz on (z, z') pairs, the last two enforcing
cycle consistency. BCE losses, Adam 2e-4 beta1 0.5, batch 32, latent 100; inference uses an
exponential moving average (0.999) of the weights. Score: the L1 distance between D_xx's
features of (x, x) and of (x, G(E(x))).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medad_bench.api import Prediction, TrainSet, register_method
from medad_bench.methods._budget import steps_for
from medad_bench.methods._gan import (
    RECONSTRUCTION,
    GANMethod,
    ImageEncoder,
    LatentDecoder,
    bce,
    down_stack,
    image_extra,
    optimizer_step,
)


@dataclass(frozen=True)
class AladConfig:
    """Defaults: the published ALAD settings (docs/design.md section 5)."""

    image_size: int = 32
    base_channels: int = 64
    latent: int = 100
    batch_size: int = 32
    iterations: int = 50_000
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    ema_decay: float = 0.999
    log_every: int = 50
    score_batch_size: int = 64


class JointXZ(nn.Module):
    """D_xz: image features and latent features, joined."""

    def __init__(self, channels: int, base: int, image_size: int, latent: int) -> None:
        super().__init__()
        self.x_path, width = down_stack(channels, base, image_size, norm="batch")
        self.z_path = nn.Sequential(nn.Linear(latent, 512), nn.LeakyReLU(0.2, inplace=True))
        self.joint = nn.Sequential(nn.Linear(width * 16 + 512, 1024),
                                   nn.LeakyReLU(0.2, inplace=True), nn.Linear(1024, 1))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.joint(torch.cat([self.x_path(x).flatten(1), self.z_path(z)], 1))


class PairXX(nn.Module):
    """D_xx: two images stacked on channels; `features` feed the anomaly score."""

    def __init__(self, channels: int, base: int, image_size: int) -> None:
        super().__init__()
        self.body, width = down_stack(2 * channels, base, image_size, norm="none")
        self.head = nn.Linear(width * 16, 1)

    def features(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([x, other], 1)).flatten(1)

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x, other))


class PairZZ(nn.Module):
    """D_zz: two latents, concatenated."""

    def __init__(self, latent: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * latent, 64), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Linear(64, 32), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Linear(32, 1))

    def forward(self, z: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, other], 1))


def _pairs(encoder: nn.Module, generator: nn.Module, x: torch.Tensor,
           z: torch.Tensor) -> dict[str, torch.Tensor]:
    z_hat, x_gen = encoder(x), generator(z)
    return {"x": x, "z": z, "z_hat": z_hat, "x_gen": x_gen, "x_rec": generator(z_hat),
            "z_rec": encoder(x_gen)}


def _pair_losses(d_xz: nn.Module, d_xx: nn.Module, d_zz: nn.Module, p: dict[str, torch.Tensor],
                 real_label: float) -> torch.Tensor:
    """BCE of the three discriminators: real pairs (x, E(x)), (x, x), (z, z) get `real_label`,
    generated pairs (G(z), z), (x, G(E(x))), (z, E(G(z))) the other label."""
    fake_label = 1.0 - real_label
    x, z = p["x"], p["z"]
    return (bce(d_xz(x, p["z_hat"]), real_label) + bce(d_xz(p["x_gen"], z), fake_label)
            + bce(d_xx(x, x), real_label) + bce(d_xx(x, p["x_rec"]), fake_label)
            + bce(d_zz(z, z), real_label) + bce(d_zz(z, p["z_rec"]), fake_label))


@register_method
class Alad(GANMethod):
    name = "alad"
    quick_cpu_seconds = 110
    description = "ALAD: BiGAN with D_xz, D_xx, D_zz; score = D_xx feature distance"
    uses = ("normal",)
    output_extra = RECONSTRUCTION
    Config = AladConfig

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int, channels: int) -> AladConfig:
        if profile == "quick":
            # Settled on the validation split at the quick budget (scripts/settle_quick.py,
            # seed 0): EMA 0.99 val AUC 0.533 vs 0.532 with the published 0.999 (kept: a tie).
            return AladConfig(image_size=min(image_size, 32), base_channels=16,
                              iterations=steps_for(32), ema_decay=0.99, log_every=25)
        return AladConfig()

    @classmethod
    def calibration_overrides(cls, config: Any, scale: int) -> dict[str, Any]:
        return {"iterations": 10 * scale}

    @classmethod
    def images_seen(cls, config: AladConfig) -> int:
        return config.iterations * config.batch_size

    # -- training ---------------------------------------------------------------------------

    def total_steps(self, train: TrainSet) -> int:
        return self.config.iterations

    def _setup(self, train: TrainSet) -> None:
        cfg = self.config
        channels = train.channels
        # Built in this order, then initialised: the weights the seed has always drawn.
        nets = {"encoder": ImageEncoder(channels, cfg.base_channels, cfg.image_size, cfg.latent),
                "generator": LatentDecoder(cfg.latent, channels, cfg.base_channels,
                                           cfg.image_size),
                "d_xz": JointXZ(channels, cfg.base_channels, cfg.image_size, cfg.latent),
                "d_xx": PairXX(channels, cfg.base_channels, cfg.image_size),
                "d_zz": PairZZ(cfg.latent)}
        for name, net in nets.items():
            self._network(name, net)
        self.encoder, self.generator = nets["encoder"], nets["generator"]
        self.d_xz, self.d_xx, self.d_zz = nets["d_xz"], nets["d_xx"], nets["d_zz"]
        betas = (cfg.beta1, cfg.beta2)
        self.opt_ge = self.add_optimizer("encoder_generator", torch.optim.Adam(
            [*self.encoder.parameters(), *self.generator.parameters()], cfg.lr, betas))
        self.opt_d = self.add_optimizer("discriminators", torch.optim.Adam(
            [*self.d_xz.parameters(), *self.d_xx.parameters(), *self.d_zz.parameters()],
            cfg.lr, betas))
        # The moving averages inference uses: networks too (checkpointed, selected, resumed).
        self.ema_encoder = self._network("ema_encoder", copy.deepcopy(self.encoder), init=False)
        self.ema_generator = self._network("ema_generator", copy.deepcopy(self.generator),
                                           init=False)
        self.ema_d_xx = self._network("ema_d_xx", copy.deepcopy(self.d_xx), init=False)
        self.images, self.batches = self._shuffled_batches(train)
        self.noise = self._noise()

    def _train_step(self, step: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        x = self.images[self.batches.next()]
        z = torch.randn(len(x), cfg.latent, generator=self.noise).to(self.device)
        discriminators = (self.d_xz, self.d_xx, self.d_zz)
        # Discriminators: real pairs 1, generated pairs 0.
        with torch.no_grad():
            pairs = _pairs(self.encoder, self.generator, x, z)
        d_loss = _pair_losses(*discriminators, pairs, real_label=1.0)
        optimizer_step(self.opt_d, d_loss)
        # Encoder and generator: the same pairs with the labels flipped.
        ge_loss = _pair_losses(*discriminators, _pairs(self.encoder, self.generator, x, z),
                               real_label=0.0)
        optimizer_step(self.opt_ge, ge_loss)
        with torch.no_grad():
            for live, average in ((self.encoder, self.ema_encoder),
                                  (self.generator, self.ema_generator),
                                  (self.d_xx, self.ema_d_xx)):
                _ema_update(average, live, cfg.ema_decay)
        return {"d_loss": d_loss.detach(), "ge_loss": ge_loss.detach()}

    # -- prediction -------------------------------------------------------------------------

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        """The L1 distance of the averaged D_xx's features of (x, x) and (x, G(E(x)))."""
        x = self._model_input(images)
        rec = self.ema_generator(self.ema_encoder(x))
        distance = torch.abs(self.ema_d_xx.features(x, x) - self.ema_d_xx.features(x, rec)).sum(1)
        shown = {RECONSTRUCTION: image_extra(rec, images.shape[-2:])} if extras else {}
        return Prediction(distance.float().cpu().numpy(), extras=shown)


def _ema_update(average: nn.Module, live: nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * live, for weights; buffers copied."""
    for avg_param, param in zip(average.parameters(), live.parameters(), strict=True):
        avg_param.mul_(decay).add_(param.detach(), alpha=1.0 - decay)
    for avg_buffer, buffer in zip(average.buffers(), live.buffers(), strict=True):
        avg_buffer.copy_(buffer)
