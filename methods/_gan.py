"""What every GAN method shares (AnomalyPro, Brainomaly, f-AnoGAN, ALAD, ALOCC, GANomaly).

- `GANMethod`: the chores of a GAN's training on top of the engine's loop
  (benchmark/api/training.py: steps, logging cadence, checkpoints, selection, resume): networks
  initialised and placed on the device, seeded batches and noise, the optimiser step.
- Networks: DCGAN-style convolutional stacks that halve (or double) the resolution per layer
  between the image size and a 4x4 grid, an image encoder (also a critic), a latent decoder.
- Losses: BCE against a constant label, the WGAN-GP gradient penalty and critic loss.
- Inputs: [0, 1] images -> the [-1, 1] range at the working size, batch by batch from the cache.

No method imports another method's module: what two methods share lives here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medad_bench.api import Images, TrainSet
from medad_bench.api.training import IterativeMethod
from medad_bench.data.images import ImageSet


def stages(image_size: int) -> int:
    """Stride-2 stages between `image_size` and 4 px (3 at 32 px, 6 at 256 px)."""
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
    return int(math.log2(image_size)) - 2


def down_stack(channels: int, base: int, image_size: int, norm: str = "batch",
               slope: float = 0.2) -> tuple[nn.Sequential, int]:
    """Conv 4x4 stride 2 per stage, image -> (width, 4, 4); returns (stack, width).

    norm: "batch", "layer" (per-sample, as WGAN-GP critics need) or "none"; never on the
    first layer (DCGAN convention).
    """
    layers: list[nn.Module] = []
    width_in, width = channels, base
    for stage in range(stages(image_size)):
        layers.append(nn.Conv2d(width_in, width, 4, 2, 1, bias=norm == "none" or stage == 0))
        if stage > 0 and norm == "batch":
            layers.append(nn.BatchNorm2d(width))
        elif stage > 0 and norm == "layer":
            layers.append(nn.GroupNorm(1, width))
        layers.append(nn.LeakyReLU(slope, inplace=True))
        width_in, width = width, width * 2
    return nn.Sequential(*layers), width_in


def up_stack(width: int, channels: int, image_size: int) -> nn.Sequential:
    """(width, 4, 4) -> image: transposed conv 4x4 stride 2 + BatchNorm + ReLU per stage, tanh
    at the end."""
    layers: list[nn.Module] = []
    for _ in range(stages(image_size) - 1):
        layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                   nn.BatchNorm2d(width // 2), nn.ReLU(inplace=True)]
        width //= 2
    layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]
    return nn.Sequential(*layers)


class LatentDecoder(nn.Module):
    """z (N, latent) -> image: a linear projection to (width, 4, 4), then `up_stack`."""

    def __init__(self, latent: int, channels: int, base: int, image_size: int) -> None:
        super().__init__()
        self.width = base * 2 ** (stages(image_size) - 1)
        self.project = nn.Sequential(nn.Linear(latent, self.width * 16),
                                     nn.BatchNorm1d(self.width * 16), nn.ReLU(inplace=True))
        self.up = up_stack(self.width, channels, image_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.project(z).view(-1, self.width, 4, 4))


class ImageEncoder(nn.Module):
    """image -> vector (N, out): `down_stack`, then a linear layer. With out=1 and
    norm="layer" it is a WGAN-GP critic; `features` are its penultimate activations."""

    def __init__(self, channels: int, base: int, image_size: int, out: int,
                 norm: str = "batch") -> None:
        super().__init__()
        self.body, width = down_stack(channels, base, image_size, norm)
        self.head = nn.Linear(width * 16, out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) convolution / linear weights, N(1, 0.02) norm scales (DCGAN)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(layer.weight, 0.0, 0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d | nn.BatchNorm1d | nn.GroupNorm):
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Binary cross-entropy of logits against a constant label."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     weights: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: mean (||grad D(x_hat)||_2 - 1)^2 on per-sample interpolates
    x_hat = w*real + (1-w)*fake, `weights` (N, 1, 1, 1) in [0, 1]."""
    mixed = (weights * real + (1.0 - weights) * fake).requires_grad_(True)
    out = critic(mixed)
    (grad,) = torch.autograd.grad(out, mixed, grad_outputs=torch.ones_like(out),
                                  create_graph=True)
    norms = grad.reshape(grad.shape[0], -1).norm(2, dim=1)
    return torch.mean((norms - 1.0) ** 2)


def wgan_critic_loss(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     gp_weights: torch.Tensor, lambda_gp: float) -> tuple[torch.Tensor, dict]:
    """-mean D(real) + mean D(fake) + lambda_gp * GP; the parts, for logging."""
    real_score = critic(real).mean()
    fake_score = critic(fake).mean()
    penalty = gradient_penalty(critic, real, fake, gp_weights)
    loss = -real_score + fake_score + lambda_gp * penalty
    return loss, {"d_real": real_score, "d_fake": fake_score, "gp": penalty}


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                   retain_graph: bool = False) -> None:
    """The zero_grad / backward / step sequence of one update."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward(retain_graph=retain_graph)
    optimizer.step()


#: The extra holding a reconstructing method's output image (`Method.output_extra`).
RECONSTRUCTION = "reconstruction"


def image_extra(output: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A [-1, 1] output image batch (N, C, h, w) -> (N, H, W) in [0, 1] at `size` (channels
    averaged, bilinear): how an output is shown and compared with its input."""
    grey = ((output.float() + 1) / 2).mean(dim=1, keepdim=True)
    if tuple(grey.shape[-2:]) != tuple(size):
        grey = F.interpolate(grey, size=tuple(size), mode="bilinear", align_corners=False)
    return grey[:, 0].clamp(0, 1).cpu().numpy()


def to_model_input(images: np.ndarray, device: torch.device, size: int) -> torch.Tensor:
    """[0, 1] images -> [-1, 1] tensor at `size` px (area when shrinking)."""
    return _to_range(torch.as_tensor(np.asarray(images, dtype=np.float32), device=device), size)


def _to_range(x: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(x.shape[-2:]) != (size, size):
        shrink = x.shape[-1] > size
        x = F.interpolate(x, size=(size, size), mode="area" if shrink else "bilinear",
                          **({} if shrink else {"align_corners": False}))
    return x * 2.0 - 1.0


class ModelInputs:
    """Training images as the model takes them ([-1, 1], `size` px, on `device`), converted
    batch by batch: `inputs[index]` reads only those rows of the cache. Memory stays at one
    batch whatever the size of the set (10,031 images of set B at the published size).

    Cache rows travel to the device as stored (uint8 / uint16) and become floats there:
    a quarter of the bytes over the bus.
    """

    def __init__(self, images: Images, device: torch.device, size: int,
                 channels_last: bool = False) -> None:
        self.images, self.device, self.size = images, device, size
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: torch.Tensor | np.ndarray) -> torch.Tensor:
        rows = index.cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        if isinstance(self.images, ImageSet) and self.images.storage.dtype.kind == "u":
            raw = self.images.raw(rows)
            top = float(np.iinfo(raw.dtype).max)
            x = torch.from_numpy(raw.astype(np.int32) if raw.dtype == np.uint16 else raw)
            x = x.to(self.device).float() / top
        else:
            x = torch.as_tensor(np.asarray(self.images[rows], dtype=np.float32),
                                device=self.device)
        x = _to_range(x, self.size)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class ShuffledBatches:
    """Seeded epochs of shuffled batches (without replacement within an epoch), dropping the
    ragged last batch; its state (generator and the epoch's remaining batches) resumes."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1:
            raise ValueError("no training images to draw batches from")
        self.n, self.batch_size = n, min(batch_size, n)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self._queue: list[torch.Tensor] = []

    def next(self) -> torch.Tensor:
        if not self._queue:
            order = torch.randperm(self.n, generator=self.generator)
            self._queue = list(order[: self.n - self.n % self.batch_size].split(self.batch_size))
        return self._queue.pop(0)

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def get_state(self) -> dict[str, Any]:
        return {"rng": self.generator.get_state(), "queue": [q.clone() for q in self._queue]}

    def set_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng"])
        self._queue = [q.cpu() for q in state["queue"]]


class GANMethod(IterativeMethod):
    """The chores a GAN method's `_setup` and `_predict` share, on top of the engine's loop.

    Random streams: `seed + 1` orders the training batches, `seed + 2` draws noise (latents,
    interpolation weights), the global generator (seeded by `fit`) initialises the weights.
    """

    def _network(self, name: str, module: nn.Module, *, init: bool = True,
                 channels_last: bool = False) -> nn.Module:
        """DCGAN-initialise a network, place it on the device and register it."""
        if init:
            dcgan_init(module)
        return self.add_network(name, module, channels_last=channels_last)

    def _training_inputs(self, images: Images, channels_last: bool = False) -> ModelInputs:
        return ModelInputs(images, self.device, self.config.image_size,
                           channels_last=channels_last)

    def _shuffled_batches(self, train: TrainSet, images: Images | None = None
                          ) -> tuple[ModelInputs, ShuffledBatches]:
        """The healthy training images as model inputs and their seeded batch order."""
        inputs = self._training_inputs(train.normal if images is None else images)
        batches = ShuffledBatches(len(inputs), self.config.batch_size, self.seed + 1)
        return inputs, self.add_generator("batches", batches)

    def _noise(self) -> torch.Generator:
        """The seeded stream of latents and interpolation weights."""
        return self.add_generator("noise",
                                  torch.Generator(device="cpu").manual_seed(self.seed + 2))

    def _model_input(self, images: np.ndarray) -> torch.Tensor:
        """A batch of [0, 1] images -> the [-1, 1] range at the working size, on the device."""
        return to_model_input(images, self.device, self.config.image_size)
