"""What the one-directional translation GANs share (AnomalyPro after HealthyGAN, and its
follow-up Brainomaly): the encoder / residual / decoder generator body, the PatchGAN critic with
a WGAN gradient penalty, and the training loop with checkpoints, resume and label-free
checkpoint selection by AUCp (known-normal training images vs unlabelled test images).

A method subclasses `TranslationGAN` and supplies its generator, its two losses and its
translation B0 of an input x; the score is mean |x - B0| in [0, 1] image units. The loop,
checkpoints, resume and AUCp selection are the engine's (benchmark/api/training.py), the critic's
loss and gradient penalty the GAN module's (methods/_gan.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medad_bench.api import Prediction, TrainSet
from medad_bench.methods._budget import steps_for
from medad_bench.methods._gan import GANMethod, optimizer_step

# ----------------------------------------------------------------------------- networks

UPSAMPLING = ("transposed", "resize")


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.InstanceNorm2d(channels, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def upsampling(width_in: int, width_out: int, mode: str) -> list[nn.Module]:
    """x2 upsampling: HealthyGAN's 4x4 stride-2 transposed convolution, or a nearest-neighbour
    resize followed by a 3x3 convolution (no checkerboard: every output pixel sees the same
    number of input pixels)."""
    if mode == "transposed":
        return [nn.ConvTranspose2d(width_in, width_out, 4, 2, 1, bias=False)]
    if mode == "resize":
        return [nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(width_in, width_out, 3, 1, 1, bias=False)]
    raise ValueError(f"upsample must be one of {UPSAMPLING}, got {mode!r}")


def generator_body(channels: int, out_channels: int, base: int, residual_blocks: int,
                   upsample: str = "transposed") -> nn.Sequential:
    """HealthyGAN's / Brainomaly's generator: 7x7 stem, two stride-2 downsamplings, residual
    blocks, two x2 upsamplings, a 7x7 head to `out_channels` (no bias, no activation)."""

    def norm_relu(width: int) -> list[nn.Module]:
        return [nn.InstanceNorm2d(width, affine=True), nn.ReLU(inplace=True)]

    layers: list[nn.Module] = [nn.Conv2d(channels, base, 7, 1, 3, bias=False), *norm_relu(base)]
    width = base
    for _ in range(2):
        layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), *norm_relu(width * 2)]
        width *= 2
    layers += [ResidualBlock(width) for _ in range(residual_blocks)]
    for _ in range(2):
        layers += [*upsampling(width, width // 2, upsample), *norm_relu(width // 2)]
        width //= 2
    layers.append(nn.Conv2d(width, out_channels, 7, 1, 3, bias=False))
    return nn.Sequential(*layers)


class PatchDiscriminator(nn.Module):
    """PatchGAN critic: 4x4 stride-2 convolutions from `base` channels doubling, LeakyReLU(0.01),
    no normalisation, a 3x3 convolution to one channel (a score per patch)."""

    def __init__(self, channels: int = 1, base: int = 64, layers: int = 6) -> None:
        super().__init__()
        modules: list[nn.Module] = [nn.Conv2d(channels, base, 4, 2, 1), nn.LeakyReLU(0.01)]
        width = base
        for _ in range(layers - 1):
            modules += [nn.Conv2d(width, width * 2, 4, 2, 1), nn.LeakyReLU(0.01)]
            width *= 2
        modules.append(nn.Conv2d(width, 1, 3, 1, 1, bias=False))
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def critic_layers_for(image_size: int) -> int:
    """Stride-2 layers down to a 4x4 patch grid: 6 at 256 px, 4 at 64 px."""
    return max(1, int(math.log2(image_size)) - 2)


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TranslationConfig:
    """The training loop's settings; defaults follow the public HealthyGAN / Brainomaly code."""

    image_size: int = 256
    base_channels: int = 64
    residual_blocks: int = 6
    #: Generator upsampling: "transposed" (the published code) or "resize" (nearest + 3x3).
    upsample: str = "transposed"
    critic_base_channels: int = 64
    critic_layers: int = 6  # stride-2 layers; 6 at 256 px
    batch_size: int = 16
    iterations: int = 400_000  # critic steps
    #: Linear lr decay to 0 over the last N iterations. The published code lowers the lr by
    #: lr/100k every 1,000 iterations (a StarGAN remnant: 0.1% over its decay); a decay that
    #: reaches 0 is what that schedule was meant to do, so the suite keeps it.
    decay_iterations: int = 100_000
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    critic_steps_per_g: int = 2
    lambda_gp: float = 10.0
    #: Weight of the adversarial term in the generator loss (1 in the published code). With
    #: the gradient penalty holding the critic's gradient norm near 1, the adversarial pull per
    #: pixel relative to the L1 terms scales as sqrt(C*H*W) / critic patches: small networks at
    #: small sizes see a much weaker adversarial term than the published 256 px runs.
    lambda_adv: float = 1.0
    #: The first N iterations train the generator without the adversarial term (the critic
    #: trains as usual): a generator that starts as an identity, as the published weights'
    #: adversarial pull destroys at small budgets (issue 24). 0 in the published code.
    adversarial_warmup_iterations: int = 0
    lambda_id: float = 1.0
    horizontal_flip: bool = True
    log_every: int = 100
    score_batch_size: int = 64
    #: NHWC memory layout. Measured on 2 CPU cores with the quick networks: training 1.2x
    #: faster (`bench perf`); docs/design.md section 7 reports 0.75x for the full-size
    #: networks, so full keeps NCHW.
    channels_last: bool = False
    #: bf16 autocast of the training losses on CUDA (ignored on a CPU). Measured on an H100
    #: with the full networks at 256 px (scripts/gpu_mask_check.py): 18.7 it/s against 12.5 in
    #: fp32 and 11.4 with channels_last. Off in `full` until a GPU run shows equal AUC.
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.image_size % 4 or self.image_size >> self.critic_layers < 1:
            raise ValueError(f"image_size {self.image_size} must be a multiple of 4 and at "
                             f"least 2**critic_layers ({2 ** self.critic_layers})")
        if not 0 <= self.decay_iterations <= self.iterations:
            raise ValueError("decay_iterations must be within [0, iterations]")
        if not 0 <= self.adversarial_warmup_iterations < self.iterations:
            raise ValueError("adversarial_warmup_iterations must be within [0, iterations)")
        if self.upsample not in UPSAMPLING:
            raise ValueError(f"upsample must be one of {UPSAMPLING}, got {self.upsample!r}")


#: The quick profile's working resolution: inputs are area-downsampled to it, maps upsampled
#: back to the input size.
QUICK_WORKING_SIZE = 32


def quick_translation_settings(image_size: int) -> dict:
    """The quick profile's networks and schedule, shared by AnomalyPro and Brainomaly.

    The suite's quick budget (methods/_budget.py: 32,000 training images = 1,000 iterations
    of an A batch and a B batch of 16) at a 32 px working resolution with quarter-width
    networks; the lr decays over the last quarter and six checkpoints compete for AUCp.
    """
    size = min(image_size, QUICK_WORKING_SIZE)
    iterations = steps_for(2 * 16)
    return dict(image_size=size, base_channels=16, residual_blocks=3, critic_base_channels=16,
                critic_layers=critic_layers_for(size), iterations=iterations,
                decay_iterations=iterations // 4, lr_g=5e-4, lr_d=5e-4,
                log_every=25, channels_last=True)


# ----------------------------------------------------------------------------- the method


class TranslationGAN(GANMethod):
    """Training step, scoring, maps and figure of a translation GAN.

    Subclasses implement `_build_generator`, `_translate` (x -> B0 and, where the method has
    one, its mask), `_critic_loss` and `_generator_loss`; hooks `_warming_up`,
    `first_selectable_step`, `_on_checkpoint` and `_on_fitted` are optional.
    """

    uses = ("normal", "unlabeled")
    output_extra = "translated"
    budget_fields = ("iterations", "decay_iterations", "adversarial_warmup_iterations",
                     "mask_warmup_iterations")
    config: TranslationConfig
    #: This iteration's adversarial weight (0 during the adversarial warm-up), set by the
    #: training step; None outside it: the config's lambda_adv.
    adversarial_weight: float | None = None

    # -- what a subclass supplies ------------------------------------------------------------

    def _build_generator(self, channels: int) -> nn.Module:
        raise NotImplementedError

    def _translate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x in [-1, 1] -> (B0 in [-1, 1], mask in [0, 1] or None)."""
        raise NotImplementedError

    def _critic_loss(self, a: torch.Tensor, b: torch.Tensor, gp_weights: torch.Tensor,
                     warmup: bool) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def _generator_loss(self, a: torch.Tensor, b: torch.Tensor,
                        warmup: bool) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def _warming_up(self, iteration: int) -> bool:
        return False

    @classmethod
    def images_seen(cls, config: TranslationConfig) -> int:
        """An A batch and a B batch per critic step (the generator step reuses them)."""
        return config.iterations * config.batch_size * 2

    @classmethod
    def calibration_overrides(cls, config: TranslationConfig, scale: int) -> dict:
        overrides = {"iterations": 10 * scale, "decay_iterations": 0,
                     "adversarial_warmup_iterations": 0}
        if hasattr(config, "mask_warmup_iterations"):
            overrides["mask_warmup_iterations"] = 0
        return overrides

    # -- training -------------------------------------------------------------------------

    def total_steps(self, train: TrainSet) -> int:
        return self.config.iterations

    def _setup(self, train: TrainSet) -> None:
        cfg = self.config
        if len(train.normal) == 0 or len(train.unlabeled) == 0:
            raise ValueError(f"{type(self).__name__} trains on both the healthy set B (normal) "
                             "and the mixed set A (unlabeled); one of them is empty")
        # The published code's initialisation (PyTorch's defaults), not DCGAN's.
        self.generator = self._network("generator", self._build_generator(train.channels),
                                       init=False, channels_last=cfg.channels_last)
        self.critic = self._network(
            "critic", PatchDiscriminator(train.channels, cfg.critic_base_channels,
                                         cfg.critic_layers),
            init=False, channels_last=cfg.channels_last)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = self.add_optimizer("generator",
                                     torch.optim.Adam(self.generator.parameters(), cfg.lr_g, betas))
        self.opt_d = self.add_optimizer("critic",
                                     torch.optim.Adam(self.critic.parameters(), cfg.lr_d, betas))
        # One seeded stream draws the batches (with replacement), flips and GP weights.
        self.sampler = self.add_generator(
            "batches", torch.Generator(device="cpu").manual_seed(self.seed + 1))
        # Read batch by batch from the cache: memory stays at a batch at any set size.
        self.set_a = self._training_inputs(train.unlabeled, cfg.channels_last)
        self.set_b = self._training_inputs(train.normal, cfg.channels_last)

    def _train_step(self, step: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        iteration = step - 1
        self._set_learning_rates(iteration)
        a = self._batch(self.set_a)
        b = self._batch(self.set_b)
        gp_weights = torch.rand(b.shape[0], 1, 1, 1, generator=self.sampler).to(self.device)
        warmup = self._warming_up(iteration)
        self.adversarial_weight = (0.0 if iteration < cfg.adversarial_warmup_iterations
                                   else cfg.lambda_adv)
        with self._autocast():
            loss_d, parts = self._critic_loss(a, b, gp_weights, warmup)
        optimizer_step(self.opt_d, loss_d)
        if step % cfg.critic_steps_per_g == 0:
            with self._autocast():
                loss_g, g_parts = self._generator_loss(a, b, warmup)
            optimizer_step(self.opt_g, loss_g)
            parts.update(g_parts, g_total=loss_g)
        parts["d_total"] = loss_d
        return {key: value.detach() for key, value in parts.items()}

    def _autocast(self) -> torch.autocast:
        enabled = self.config.bf16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _batch(self, images: object) -> torch.Tensor:
        index = torch.randint(len(images), (self.config.batch_size,), generator=self.sampler)
        batch = images[index]
        if self.config.horizontal_flip:
            flip = (torch.rand(len(batch), generator=self.sampler) < 0.5).to(self.device)
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
        return batch

    def _set_learning_rates(self, iteration: int) -> None:
        cfg = self.config
        start = cfg.iterations - cfg.decay_iterations
        factor = 1.0 if iteration < start else (cfg.iterations - iteration) / cfg.decay_iterations
        for opt, base in ((self.opt_g, cfg.lr_g), (self.opt_d, cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = base * factor

    # -- prediction ------------------------------------------------------------------------

    def _model_input(self, images: np.ndarray) -> torch.Tensor:
        x = super()._model_input(images)
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        """Score: mean |input - B0| over all pixels and channels, in [0, 1] image units (=
        |x - B0| / 2 on the [-1, 1] scale). Map: that difference per pixel; extras: B0 and the
        mask M, all at the input's size."""
        x = self._model_input(images)
        b0, mask = self._translate(x)
        difference = torch.abs(x - b0) / 2
        size = images.shape[-2:]
        return Prediction(
            difference.mean(dim=(1, 2, 3)).float().cpu().numpy(),
            resize_maps(difference.mean(dim=1), size) if maps else None,
            self._extras(b0, mask, size) if extras else {})

    def _extras(self, b0: torch.Tensor, mask: torch.Tensor | None,
                size: tuple[int, int]) -> dict[str, np.ndarray]:
        shown = {"translated": resize_maps(((b0 + 1) / 2).mean(dim=1), size)}
        if mask is not None:
            shown["mask M"] = resize_maps(mask[:, 0], size)
        return shown

    def figure(self, images: np.ndarray, prediction: Prediction) -> object:
        """The paper's Figure 2: input, translation, difference (and mask) per image."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        columns = [("input", images.mean(axis=1), "gray"),
                   ("translated", prediction.extras["translated"], "gray"),
                   ("|input - translated|", prediction.maps, "inferno")]
        if "mask M" in prediction.extras:
            columns.append(("mask M", prediction.extras["mask M"], "viridis"))
        fig, axes = plt.subplots(len(images), len(columns), figsize=(2 * len(columns),
                                                                     2 * len(images)),
                                 squeeze=False)
        for row in range(len(images)):
            for col, (title, stack, cmap) in enumerate(columns):
                axis = axes[row, col]
                difference = title.startswith("|")
                top = max(float(stack.max()), 1e-6) if difference else 1.0
                axis.imshow(stack[row], cmap=cmap, vmin=0, vmax=top)
                axis.set_xticks([])
                axis.set_yticks([])
                if row == 0:
                    axis.set_title(title, fontsize=9)
        fig.tight_layout()
        return fig


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) maps -> (N, H, W) NumPy maps at `size`, bilinear."""
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear",
                             align_corners=False)[:, 0]
    return maps.float().cpu().numpy()
