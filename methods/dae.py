"""DAE: MedIAnomaly's denoising autoencoder baseline (Cai et al., Medical Image Analysis 2025,
github.com/caiyu6666/MedIAnomaly; after Kascenas et al., MIDL 2022), own PyTorch.

A U-Net learns to remove coarse noise from healthy images: each training batch is corrupted by
Gaussian noise drawn on a 16 x 16 grid, bilinearly upsampled to the image, shifted by a random
roll, and the network is trained to output the clean image (mean squared error). Test images
are not corrupted: the anomaly map is the per-pixel squared error of their reconstruction, the
score its mean.

Published setting (the `full` profile; files under `reconstruction/` of that repository):

- Network (`networks/unet.py` UNet(in_channels=C, n_classes=C), its defaults depth 5, wf 6,
  padding, norm "group", up_mode "upconv"): five levels of 64, 128, 256, 512, 1024 channels;
  each level two (reflection pad 1, weight-standardised 3x3 conv with bias, Swish x sigmoid(x),
  GroupNorm) blocks (`networks/base_units/ws_conv.py` WNConv2d: weights minus their mean over
  input channels and kernel, divided by their unbiased std + 1e-5; `swish.py` CustomSwish;
  groups = the middle divisor of the width, `unet.py` get_groups); 2x2 average pooling down;
  2x2 stride-2 transposed convolutions up, concatenated with the skip, then a block; a final
  1x1 convolution (a linear output). PyTorch's default initialisation.
- Training (`train_eval.sh`: `--input-size 128 -bs 16`; `options.py`; `utils/base_worker.py`):
  128 px, batch 16, Adam lr 1e-3 weight decay 0, 250 epochs; loss mean (x - x_hat)^2 against
  the clean image (`utils/dae_worker.py` train_epoch, `utils/losses.py` AELoss).
- Noise (`utils/dae_worker.py` add_noise): N(0, 0.2) on a (N, C, 16, 16) grid, bilinear
  upsampling with align_corners=True to the input size, one torch.roll of the whole batch by
  (random.choice(range(size)), random.choice(range(size))) pixels; on the brain sets only
  (`brain`, `brats`) multiplied by the foreground mask x > min(x) (the batch's minimum); then
  `ns = (ns - 0.5) * 2` (the noise doubled and shifted by -1) before x + ns.
  `noise_center` keeps that last step (True, as published; False: plain x + N(0, 0.2)
  noise), `noise_foreground` the brain sets' mask (False, as on RSNA).
- Score and map: as the AE (`utils/ae_worker.py` evaluate).

The `quick` profile differs in the budget: 500 batches of 64 (the suite's 32,000 training
images, methods/_budget.py; batches of 64 rather than 16 because on a CPU a step of 64 costs
about twice a step of 16, not four times), in the working size (the dataset's size capped at
32 px as for the GAN baselines: methods/_autoencoder.py quick_size), in the width (4 channels
at the first level instead of 64: 4-64 instead of 64-1024) and in the NHWC memory layout
(`channels_last`). Rough process times per step on a shared CPU: 77 ms, so about 40 s of one
core for the run. The U-Net costs the same at every level (width x2, area /4): no cut of depth
or width makes it as cheap as the AE (about 15 s), so it stays the dearest of the three.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from medad_bench.api import register_method
from medad_bench.methods._autoencoder import (
    ReconstructionConfig,
    ReconstructionMethod,
    quick_iterations,
    quick_size,
)

#: Levels of MedIAnomaly's U-Net (depth 5: four poolings, so sizes are multiples of 16).
DEPTH = 5


@dataclass(frozen=True)
class DaeConfig(ReconstructionConfig):
    """Defaults: MedIAnomaly's DAE (reconstruction/train_eval.sh, utils/dae_worker.py)."""

    image_size: int = 128
    batch_size: int = 16
    #: Channels of the U-Net's first level (2^wf, wf = 6); each level doubles them.
    base_width: int = 64
    noise_std: float = 0.2
    noise_resolution: int = 16
    noise_center: bool = True
    noise_foreground: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base_width < 1 or self.noise_resolution < 1 or self.noise_std < 0:
            raise ValueError("base_width and noise_resolution must be >= 1, noise_std >= 0")


def group_count(channels: int) -> int:
    """MedIAnomaly's get_groups: the middle one of the sorted divisors of `channels`."""
    divisors = sorted(d for d in range(1, channels + 1) if channels % d == 0)
    return divisors[len(divisors) // 2]


class WSConv2d(nn.Conv2d):
    """Weight-standardised convolution: each filter centred and divided by its unbiased
    standard deviation (+ 1e-5) at every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        weight = weight / (weight.flatten(1).std(dim=1).view(-1, 1, 1, 1) + 1e-5)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


def conv_block(width_in: int, width: int) -> nn.Sequential:
    """Two (reflection pad, WS conv 3x3, Swish, GroupNorm) layers: MedIAnomaly's
    UNetConvBlock with norm="group"."""
    layers: list[nn.Module] = []
    for a in (width_in, width):
        layers += [nn.ReflectionPad2d(1), WSConv2d(a, width, 3), nn.SiLU(),
                   nn.GroupNorm(group_count(width), width)]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """MedIAnomaly's U-Net (networks/unet.py) with C input and C output channels."""

    def __init__(self, channels: int, base_width: int = 64, depth: int = DEPTH) -> None:
        super().__init__()
        widths = [base_width * 2 ** level for level in range(depth)]
        self.down = nn.ModuleList(conv_block(a, b)
                                  for a, b in zip([channels, *widths[:-1]], widths, strict=True))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2)
                                for i in reversed(range(depth - 1)))
        self.merge = nn.ModuleList(conv_block(2 * widths[i], widths[i])
                                   for i in reversed(range(depth - 1)))
        self.last = nn.Conv2d(widths[0], channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = F.avg_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.last(x)


def coarse_noise(x: torch.Tensor, generator: torch.Generator, config: DaeConfig
                 ) -> torch.Tensor:
    """MedIAnomaly's DAE noise for the batch x (N, C, H, W) in [-1, 1], drawn from
    `generator` (see the module docstring for each step)."""
    n, c, height, width = x.shape
    grid = config.noise_resolution
    noise = torch.randn((n, c, grid, grid), generator=generator) * config.noise_std
    noise = F.interpolate(noise.to(x.device), size=(height, width), mode="bilinear",
                          align_corners=True)
    rows = int(torch.randint(height, (), generator=generator))
    cols = int(torch.randint(width, (), generator=generator))
    noise = torch.roll(noise, shifts=(rows, cols), dims=(-2, -1))  # one shift for the batch
    if config.noise_foreground:
        noise = noise * (x > x.min())
    if config.noise_center:
        noise = (noise - 0.5) * 2.0
    return noise


@register_method
class Dae(ReconstructionMethod):
    name = "dae"
    quick_cpu_seconds = 55
    description = ("DAE (MedIAnomaly): U-Net denoising coarse noise; "
                   "score = mean squared reconstruction error")
    Config = DaeConfig
    config: DaeConfig

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int, channels: int) -> DaeConfig:
        if profile == "quick":
            return DaeConfig(image_size=quick_size(image_size), base_width=4, batch_size=64,
                             iterations=quick_iterations(64), channels_last=True)
        return DaeConfig()

    def _build(self, channels: int) -> nn.Module:
        return UNet(channels, self.config.base_width)

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """The noisy training input (the test input is never corrupted)."""
        return x + coarse_noise(x, self.noise, self.config)

    def _loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return F.mse_loss(self.net(self.corrupt(x)), x), {}
