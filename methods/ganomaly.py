"""GANomaly (Akcay et al. 2018) through anomalib's torch model.

An encoder-decoder-encoder generator reconstructs healthy images; the anomaly score is the
distance between the latent code of the input and that of its reconstruction,
mean (z - z_hat)^2. Trained adversarially against a DCGAN discriminator with anomalib's losses
(adversarial 1, contextual 50, encoder 1).

We drive anomalib's `GanomalyModel` with our own loop instead of its Lightning module, so that
every source of randomness is seeded from the run's seed: weight initialisation, the order of
batches (a seeded generator rather than a DataLoader's unseeded shuffle) and nothing else. That
is what makes its AUC repeat exactly under one seed, which anomalib users report it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmark.api import Method, Progress, TrainSet, register_method
from benchmark.seeding import seed_everything
from methods._budget import steps_for
from methods._dcgan import ModelInputs, to_model_input


@dataclass(frozen=True)
class GanomalyConfig:
    """Defaults are anomalib's / the paper's (docs/design.md section 5)."""

    image_size: int = 256
    batch_size: int = 32
    n_features: int = 64
    latent_vec_size: int = 100
    extra_layers: int = 0
    w_adversarial: float = 1.0
    w_contextual: float = 50.0
    w_encoder: float = 1.0
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    epochs: int = 15
    #: Batches to train for instead of `epochs` (0: train `epochs` epochs). A fixed number of
    #: batches is a budget that does not grow with the size of the training set.
    iterations: int = 0
    score_batch_size: int = 64
    log_every: int = 20


@register_method
class Ganomaly(Method):
    name = "ganomaly"
    min_image_size = 20  # measured: every size from 20 up trains and scores
    min_image_size_reason = "below it anomalib's GANomaly encoder and decoder disagree in size"
    description = "GANomaly: encoder-decoder-encoder GAN, score = latent distance (anomalib)"
    uses = ("normal",)
    Config = GanomalyConfig

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int, channels: int) -> GanomalyConfig:
        if profile == "quick":
            # 16 features settled on the validation split at the quick budget
            # (scripts/settle_quick.py, seed 0): val AUC 0.694 vs 0.576 at 32, 0.605 at lr 1e-4.
            return GanomalyConfig(image_size=min(image_size, 32), n_features=16,
                                  latent_vec_size=100, iterations=steps_for(32))
        return GanomalyConfig()

    @classmethod
    def calibration_overrides(cls, config: Any, scale: int) -> dict[str, Any]:
        return {"iterations": 10 * scale}

    @classmethod
    def images_seen(cls, config: GanomalyConfig) -> int | None:
        """Batches x batch size; an epoch-based config depends on the training-set size."""
        if config.iterations:
            return config.iterations * config.batch_size
        return None

    def fit(self, train: TrainSet, *, seed: int, device: torch.device,
            progress: Progress | None = None) -> None:
        from anomalib.models.image.ganomaly.loss import DiscriminatorLoss, GeneratorLoss
        from anomalib.models.image.ganomaly.torch_model import GanomalyModel

        progress = progress or Progress()
        cfg = self.config
        if len(train.normal) < 2:
            raise ValueError("GANomaly needs at least two healthy training images")
        seed_everything(seed)
        self.device = device
        model = GanomalyModel(input_size=(cfg.image_size, cfg.image_size),
                              num_input_channels=train.channels, n_features=cfg.n_features,
                              latent_vec_size=cfg.latent_vec_size,
                              extra_layers=cfg.extra_layers).to(device)
        generator_loss = GeneratorLoss(cfg.w_adversarial, cfg.w_contextual, cfg.w_encoder)
        discriminator_loss = DiscriminatorLoss()
        betas = (cfg.beta1, cfg.beta2)
        opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=cfg.lr, betas=betas)
        opt_g = torch.optim.Adam(model.generator.parameters(), lr=cfg.lr, betas=betas)
        images = ModelInputs(train.normal, device, cfg.image_size)
        order = torch.Generator(device="cpu").manual_seed(seed + 1)
        steps_per_epoch = max(1, len(images) // cfg.batch_size)  # drop the ragged last batch
        total = cfg.iterations or cfg.epochs * steps_per_epoch
        progress.stage("train", total)
        model.train()
        step = 0
        while step < total:  # epochs: a fresh permutation each, cut short at `total` batches
            permutation = torch.randperm(len(images), generator=order)
            for batch_index in range(min(steps_per_epoch, total - step)):
                batch = images[permutation[batch_index * cfg.batch_size:
                                           (batch_index + 1) * cfg.batch_size]]
                # anomalib's training step: generator first, then the discriminator.
                padded, fake, latent_i, latent_o = model(batch)
                pred_real, _ = model.discriminator(padded)
                pred_fake, _ = model.discriminator(fake)
                g_loss = generator_loss(latent_i, latent_o, padded, fake, pred_real, pred_fake)
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward(retain_graph=True)
                opt_g.step()
                pred_fake, _ = model.discriminator(fake.detach())
                d_loss = discriminator_loss(pred_real, pred_fake)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                step += 1
                progress.advance()
                if step % cfg.log_every == 0:
                    progress.metric("train_g_loss", float(g_loss.detach()), step)
                    progress.metric("train_d_loss", float(d_loss.detach()), step)
        self.model = model.eval()

    def _inputs(self, images: np.ndarray) -> torch.Tensor:
        """[0, 1] images -> [-1, 1] (the decoder's tanh range) at the working size."""
        return to_model_input(images, self.device, self.config.image_size)

    def score(self, images: np.ndarray) -> np.ndarray:
        scores = []
        with torch.inference_mode():
            for start in range(0, len(images), self.config.score_batch_size):
                batch = self._inputs(images[start:start + self.config.score_batch_size])
                scores.append(self.model(batch).pred_score.float())
        return torch.cat(scores).cpu().numpy().astype(np.float64)
