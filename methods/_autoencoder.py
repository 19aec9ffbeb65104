"""What MedIAnomaly's reconstruction baselines share (AE, VAE, denoising AE), own PyTorch.

Cai et al., "MedIAnomaly: A comparative study of anomaly detection in medical images", Medical
Image Analysis 2025; code github.com/caiyu6666/MedIAnomaly (`reconstruction/`). Facts used here,
with the file each comes from (paths under `reconstruction/`):

- Inputs: grey images resized (PIL bilinear) to `--input-size` 64 and normalised to [-1, 1]
  (`dataloaders/data_utils.py` get_transform: Normalize(0.5, 0.5); `options.py`).
- The AE (`networks/ae.py`, `networks/base_units/blocks.py`, `conv_layers.py`): four encoder
  blocks, each Conv 4x4 stride 2 padding 1 without bias + BatchNorm + ReLU, widths
  16, 32, 64, 64 (`--base-width` 16, `--expansion` 1, `--en-depth` 1), to a (64, s/16, s/16)
  grid; a fully connected bottleneck Linear(64 (s/16)^2 -> 1024) + BatchNorm1d + ReLU +
  Linear(1024 -> 16) and back Linear(16 -> 1024) + BatchNorm1d + ReLU + Linear(1024 ->
  64 (s/16)^2) (`--hidden-num` 1024, `--latent-size` 16); four decoder blocks, ConvTranspose
  4x4 stride 2 padding 1 without bias + BatchNorm + ReLU, widths 64, 32, 16 and the image's
  channels, the last without BatchNorm and ReLU (a linear output). PyTorch's default weight
  initialisation.
- Training (`utils/base_worker.py`, `utils/ae_worker.py`, `options.py`): Adam lr 1e-3, weight
  decay 0, batch 64, shuffled, 250 epochs (600 for BrainTumor), the last epoch's model kept.
- Score and map (`utils/losses.py` AELoss, `utils/ae_worker.py` evaluate): the map is the
  squared error (x - x_hat)^2 in the [-1, 1] range averaged over channels, at the input size;
  the image score is the mean of the map.

Here: inputs area-downsampled (or bilinearly upsampled) to the working size and mapped to
[-1, 1] (`methods/_gan.py` ModelInputs); batches drawn by `ShuffledBatches` (whole batches
only); the engine (benchmark/api/training.py) keeps the AUCp checkpoint, as for every iterative
method of the suite, where MedIAnomaly keeps the last epoch. Maps are computed at the working
size and bilinearly resized to the input's size; the score is the mean of the working-size map
(MedIAnomaly's score, unchanged by the resizing).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medad_bench.api import Prediction, TrainSet
from medad_bench.methods._budget import steps_for
from medad_bench.methods._gan import (
    RECONSTRUCTION,
    GANMethod,
    ShuffledBatches,
    image_extra,
    optimizer_step,
)

#: Stride-2 stages of the AE's encoder (and the DAE's U-Net has depth - 1 = 4 poolings):
#: the working size must be a multiple of 2^4.
DOWNSAMPLING = 16
#: MedIAnomaly's input size for the AE and VAE.
PUBLISHED_SIZE = 64
#: The quick profiles' largest working size, as the GAN baselines' (f-AnoGAN, ALAD, ALOCC,
#: GANomaly): at 64 px an AE step cost about 3x one at 32 px on a CPU (a rough timing on a
#: shared machine), too much for the 10 minutes of `bench run --methods all` on 2 cores.
QUICK_SIZE = 32


@dataclass(frozen=True)
class ReconstructionConfig:
    """The settings every reconstruction baseline has; defaults are MedIAnomaly's AE ones."""

    image_size: int = PUBLISHED_SIZE
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 250
    #: Batches to train for instead of `epochs` (0: train `epochs` epochs). A fixed number of
    #: batches is a budget that does not grow with the size of the training set (quick).
    iterations: int = 0
    log_every: int = 25
    score_batch_size: int = 64
    #: NHWC memory layout: on a CPU the quick networks train 1.25x faster (process time per
    #: step, AE 30 vs 38-42 ms, DAE 77 vs 96 ms; rough, on a shared machine). Results do not
    #: depend on it beyond float rounding.
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.image_size < DOWNSAMPLING or self.image_size % DOWNSAMPLING:
            raise ValueError(f"image_size must be a multiple of {DOWNSAMPLING} (the networks "
                             f"halve it four times), got {self.image_size}")
        if self.batch_size < 1 or self.epochs < 0 or self.iterations < 0:
            raise ValueError("batch_size must be >= 1, epochs and iterations >= 0")
        if not (self.epochs or self.iterations):
            raise ValueError("give epochs or iterations (both are 0)")


def quick_size(image_size: int) -> int:
    """The quick profiles' working size: the dataset's size capped at `QUICK_SIZE`, rounded
    down to a multiple of 16 (at least 16)."""
    return max(DOWNSAMPLING, min(image_size, QUICK_SIZE) // DOWNSAMPLING * DOWNSAMPLING)


def quick_iterations(batch_size: int) -> int:
    """Batches of the suite's equal quick budget (methods/_budget.py) at `batch_size`."""
    return steps_for(batch_size)


# ----------------------------------------------------------------------------- the AE


def _block(width_in: int, width: int, *, down: bool, last: bool = False) -> nn.Sequential:
    """MedIAnomaly's BasicBlock at depth 1: a 4x4 stride-2 (transposed) convolution without
    bias, then BatchNorm + ReLU except on the output layer."""
    conv = nn.Conv2d if down else nn.ConvTranspose2d
    layers: list[nn.Module] = [conv(width_in, width, 4, 2, 1, bias=False)]
    if not last:
        layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _dense(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    """Linear + BatchNorm1d + ReLU + Linear: each half of MedIAnomaly's BottleNeck."""
    return nn.Sequential(nn.Linear(width_in, hidden), nn.BatchNorm1d(hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, width_out))


class ConvAutoencoder(nn.Module):
    """MedIAnomaly's AE (networks/ae.py): image -> code -> reconstruction.

    `code_factor` 2 makes the encoder emit (mu, log_var) for the VAE (VaeBottleNeck); `decode`
    then takes a latent of `latent` values.
    """

    def __init__(self, channels: int, image_size: int, base_width: int = 16,
                 hidden: int = 1024, latent: int = 16, code_factor: int = 1) -> None:
        super().__init__()
        widths = [base_width, 2 * base_width, 4 * base_width, 4 * base_width]
        self.grid = image_size // DOWNSAMPLING
        self.width, self.latent = widths[-1], latent
        flat = self.width * self.grid * self.grid
        self.encoder = nn.Sequential(*(_block(a, b, down=True)
                                       for a, b in zip([channels, *widths[:-1]], widths,
                                                        strict=True)))
        self.to_code = _dense(flat, hidden, code_factor * latent)
        self.from_code = _dense(latent, hidden, flat)
        ins = widths[::-1]  # 64, 64, 32, 16 -> 64, 32, 16, channels (base 16)
        outs = [*ins[1:], channels]
        self.decoder = nn.Sequential(*(_block(a, b, down=False, last=i == len(outs) - 1)
                                       for i, (a, b) in enumerate(zip(ins, outs, strict=True))))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.encoder(x).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        grid = self.from_code(z).view(-1, self.width, self.grid, self.grid)
        return self.decoder(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction; the VAE's decodes its posterior mean (the code's first half)."""
        return self.decode(self.encode(x)[:, :self.latent])


# ----------------------------------------------------------------------------- the method


def error_map(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """MedIAnomaly's anomaly map: (x - x_hat)^2 averaged over channels, (N, H, W)."""
    return ((x - x_hat) ** 2).mean(1)


class ReconstructionMethod(GANMethod):
    """A network trained to rebuild healthy images; score = mean squared reconstruction error,
    map = the per-pixel error. The GAN helpers it reuses: seeded batches (`seed + 1`), a
    noise stream (`seed + 2`), the [-1, 1] model input and the optimiser step."""

    uses = ("normal",)
    output_extra = RECONSTRUCTION

    @classmethod
    def calibration_overrides(cls, config: Any, scale: int) -> dict[str, Any]:
        return {"iterations": 3 * scale}

    @classmethod
    def images_seen(cls, config: ReconstructionConfig) -> int | None:
        """Batches x batch size; an epoch-based config depends on the training-set size."""
        if config.iterations:
            return config.iterations * config.batch_size
        return None

    def total_steps(self, train: TrainSet) -> int:
        """`iterations` batches, or `epochs` epochs of whole batches (the ragged last batch of
        an epoch dropped, as `ShuffledBatches` draws them)."""
        cfg = self.config
        batch = min(cfg.batch_size, len(train.normal))
        return cfg.iterations or cfg.epochs * max(1, len(train.normal) // max(1, batch))

    @abstractmethod
    def _build(self, channels: int) -> nn.Module:
        """The network, with PyTorch's default initialisation (as MedIAnomaly)."""

    @abstractmethod
    def _loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of a batch of clean [-1, 1] images, and its parts to log."""

    def _reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of clean [-1, 1] images at test time."""
        return self.net(x)

    def _setup(self, train: TrainSet) -> None:
        cfg = self.config
        self.net = self._network("net", self._build(train.channels), init=False,
                                 channels_last=cfg.channels_last)
        self.optimizer = self.add_optimizer("net", torch.optim.Adam(
            self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay))
        self.images = self._training_inputs(train.normal, cfg.channels_last)
        self.batches = self.add_generator(
            "batches", ShuffledBatches(len(self.images), cfg.batch_size, self.seed + 1))
        self.noise = self._noise()

    def _train_step(self, step: int) -> dict[str, torch.Tensor]:
        loss, parts = self._loss(self.images[self.batches.next()])
        optimizer_step(self.optimizer, loss)
        return {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        """One pass: the working-size error map; its mean is the score, and it is resized to
        the input's size only when maps are asked for."""
        x = self._model_input(images)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        rebuilt = self._reconstruct(x)
        errors = error_map(x, rebuilt)
        scores = errors.flatten(1).mean(1).double().cpu().numpy()
        size = tuple(images.shape[-2:])
        shown = {RECONSTRUCTION: image_extra(rebuilt, size)} if extras else {}
        if not maps:
            return Prediction(scores, extras=shown)
        if tuple(errors.shape[-2:]) != size:
            errors = F.interpolate(errors[:, None], size=size, mode="bilinear",
                                   align_corners=False)[:, 0]
        return Prediction(scores, errors.float().cpu().numpy(), shown)


def gaussian_kl(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(log_var)) || N(0, 1)) per image, averaged (not summed) over the latent
    dimensions, as MedIAnomaly's VAELoss: mean_d -0.5 (1 + log_var - mu^2 - exp(log_var))."""
    return torch.mean(-0.5 * (1.0 + log_var - mu ** 2 - log_var.exp()), dim=1)

