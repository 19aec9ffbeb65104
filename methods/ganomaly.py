"""GANomaly (Akcay et al. 2018) through anomalib's torch model.

An encoder-decoder-encoder generator reconstructs healthy images; the anomaly score is the
distance between the latent code of the input and that of its reconstruction,
mean (z - z_hat)^2. Trained adversarially against a DCGAN discriminator with anomalib's losses
(adversarial 1, contextual 50, encoder 1).

We drive anomalib's `GanomalyModel` with the suite's training engine (benchmark/api/training.py)
instead of its Lightning module, so that every source of randomness is seeded from the run's
seed: weight initialisation, the order of batches (seeded epochs of shuffled batches rather
than a DataLoader's unseeded shuffle) and nothing else. That is what makes its AUC repeat
exactly under one seed, which anomalib users report it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medad_bench.api import Prediction, TrainSet, register_method
from medad_bench.methods._budget import steps_for
from medad_bench.methods._gan import RECONSTRUCTION, GANMethod, image_extra, optimizer_step


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
class Ganomaly(GANMethod):
    name = "ganomaly"
    quick_cpu_seconds = 53
    min_image_size = 20  # measured: every size from 20 up trains and scores
    min_image_size_reason = "below it anomalib's GANomaly encoder and decoder disagree in size"
    description = "GANomaly: encoder-decoder-encoder GAN, score = latent distance (anomalib)"
    uses = ("normal",)
    output_extra = RECONSTRUCTION
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

    def total_steps(self, train: TrainSet) -> int:
        """`iterations` batches, or `epochs` epochs of whole batches (the ragged last batch of
        an epoch dropped)."""
        cfg = self.config
        return cfg.iterations or cfg.epochs * max(1, len(train.normal) // cfg.batch_size)

    def _setup(self, train: TrainSet) -> None:
        from anomalib.models.image.ganomaly.loss import DiscriminatorLoss, GeneratorLoss
        from anomalib.models.image.ganomaly.torch_model import GanomalyModel

        cfg = self.config
        if len(train.normal) < 2:
            raise ValueError("GANomaly needs at least two healthy training images")
        # anomalib initialises its own weights (no DCGAN initialisation of ours).
        self.model = self.add_network("model", GanomalyModel(
            input_size=(cfg.image_size, cfg.image_size), num_input_channels=train.channels,
            n_features=cfg.n_features, latent_vec_size=cfg.latent_vec_size,
            extra_layers=cfg.extra_layers))
        self.generator_loss = GeneratorLoss(cfg.w_adversarial, cfg.w_contextual, cfg.w_encoder)
        self.discriminator_loss = DiscriminatorLoss()
        betas = (cfg.beta1, cfg.beta2)
        self.opt_d = self.add_optimizer("discriminator", torch.optim.Adam(
            self.model.discriminator.parameters(), lr=cfg.lr, betas=betas))
        self.opt_g = self.add_optimizer("generator", torch.optim.Adam(
            self.model.generator.parameters(), lr=cfg.lr, betas=betas))
        self.images, self.batches = self._shuffled_batches(train)

    def _train_step(self, step: int) -> dict[str, torch.Tensor]:
        """anomalib's training step: generator first, then the discriminator."""
        model = self.model
        padded, fake, latent_i, latent_o = model(self.images[self.batches.next()])
        pred_real, _ = model.discriminator(padded)
        pred_fake, _ = model.discriminator(fake)
        g_loss = self.generator_loss(latent_i, latent_o, padded, fake, pred_real, pred_fake)
        optimizer_step(self.opt_g, g_loss, retain_graph=True)
        pred_fake, _ = model.discriminator(fake.detach())
        d_loss = self.discriminator_loss(pred_real, pred_fake)
        optimizer_step(self.opt_d, d_loss)
        return {"g_loss": g_loss.detach(), "d_loss": d_loss.detach()}

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        """[0, 1] images -> [-1, 1] (the decoder's tanh range) at the working size; the score
        is anomalib's latent distance."""
        x = self._model_input(images)
        scores = self.model(x).pred_score
        shown = {}
        if extras:  # the generator's image, cut from anomalib's centred power-of-two padding
            from anomalib.data.utils.image import pad_nextpow2

            padded = pad_nextpow2(x)
            top = (padded.shape[-2] - x.shape[-2] + 1) // 2
            left = (padded.shape[-1] - x.shape[-1] + 1) // 2
            fake = self.model.generator(padded)[0][..., top:top + x.shape[-2],
                                                   left:left + x.shape[-1]]
            shown = {RECONSTRUCTION: image_extra(fake, images.shape[-2:])}
        return Prediction(scores.float().cpu().numpy(), extras=shown)
