"""What the one-directional translation GANs share (AnomalyPro after HealthyGAN, and its
follow-up Brainomaly): the encoder / residual / decoder generator body, the PatchGAN critic with
a WGAN gradient penalty, and the training loop with checkpoints, resume and label-free
checkpoint selection by AUCp (known-normal training images vs unlabelled test images).

A method subclasses `TranslationGAN` and supplies its generator, its two losses and its
translation B0 of an input x; the score is mean |x - B0| in [0, 1] image units.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import Images, Method, Progress, TrainSet
from benchmark.errors import BenchError
from benchmark.metrics import aucp, debiased_aucp
from benchmark.seeding import seed_everything
from methods._budget import steps_for
from methods._dcgan import ModelInputs
from methods._dcgan import to_model_input as to_model_range

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
    """-mean D(real) + mean D(fake) + lambda_gp * GP."""
    real_score = critic(real).mean()
    fake_score = critic(fake).mean()
    penalty = gradient_penalty(critic, real, fake, gp_weights)
    loss = -real_score + fake_score + lambda_gp * penalty
    return loss, {"d_real": real_score, "d_fake": fake_score, "gp": penalty}


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
    lambda_id: float = 1.0
    horizontal_flip: bool = True
    checkpoint_every: int = 10_000
    #: "aucp": keep the checkpoint with the highest AUCp (first on ties); "last": the last one.
    select: str = "aucp"
    #: Known-normal training images scored for AUCp at each checkpoint (0 = all).
    aucp_normals: int = 256
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
        if self.select not in ("aucp", "last"):
            raise ValueError(f"select must be 'aucp' or 'last', got {self.select!r}")
        if self.image_size % 4 or self.image_size >> self.critic_layers < 1:
            raise ValueError(f"image_size {self.image_size} must be a multiple of 4 and at "
                             f"least 2**critic_layers ({2 ** self.critic_layers})")
        if not 0 <= self.decay_iterations <= self.iterations:
            raise ValueError("decay_iterations must be within [0, iterations]")
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
                checkpoint_every=iterations // 6, log_every=25, channels_last=True)


@dataclass
class TrainingState:
    iteration: int = 0
    best_aucp: float | None = None
    best_iteration: int | None = None
    best_generator: dict | None = None


# ----------------------------------------------------------------------------- the loop


class TranslationGAN(Method):
    """The training loop, checkpoints, resume, AUCp selection and scoring of a translation GAN.

    Subclasses implement `_build_generator`, `_translate` (x -> B0 and, where the method has
    one, its mask), `_critic_loss` and `_generator_loss`; hooks `_warming_up`,
    `_on_checkpoint` and `_on_fitted` are optional.
    """

    uses = ("normal", "unlabeled")
    uses_selection = True
    config: TranslationConfig

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

    @classmethod
    def images_seen(cls, config: TranslationConfig) -> int:
        """An A batch and a B batch per critic step (the generator step reuses them)."""
        return config.iterations * config.batch_size * 2

    @classmethod
    def calibration_overrides(cls, config: TranslationConfig, scale: int) -> dict:
        steps = 10 * scale
        overrides = {"iterations": steps, "decay_iterations": 0, "checkpoint_every": steps}
        if hasattr(config, "mask_warmup_iterations"):
            overrides["mask_warmup_iterations"] = 0
        return overrides

    def _warming_up(self, iteration: int) -> bool:
        return False

    def _eligible(self, iteration: int) -> bool:
        """May this checkpoint be kept by the selection?"""
        return True

    def _on_checkpoint(self, train: TrainSet, progress: Progress, step: int) -> None:
        """Called at every checkpoint, before the selection scores it."""

    def _on_fitted(self, train: TrainSet) -> None:
        """Called once the kept checkpoint is loaded."""

    # -- training -------------------------------------------------------------------------

    def fit(self, train: TrainSet, *, seed: int, device: torch.device,
            progress: Progress | None = None) -> None:
        progress = progress or Progress()
        cfg = self.config
        if len(train.normal) == 0 or len(train.unlabeled) == 0:
            raise ValueError(f"{type(self).__name__} trains on both the healthy set B (normal) "
                             "and the mixed set A (unlabeled); one of them is empty")
        seed_everything(seed)
        self.device = device
        self.generator = self._build_generator(train.channels).to(device)
        self.critic = PatchDiscriminator(train.channels, cfg.critic_base_channels,
                                         cfg.critic_layers).to(device)
        if cfg.channels_last:
            self.generator.to(memory_format=torch.channels_last)
            self.critic.to(memory_format=torch.channels_last)
        opt_g = torch.optim.Adam(self.generator.parameters(), cfg.lr_g, (cfg.beta1, cfg.beta2))
        opt_d = torch.optim.Adam(self.critic.parameters(), cfg.lr_d, (cfg.beta1, cfg.beta2))
        sampler = torch.Generator(device="cpu").manual_seed(seed + 1)

        # Read batch by batch from the cache: memory stays at a batch at any set size.
        set_a = self._training_inputs(train.unlabeled)
        set_b = self._training_inputs(train.normal)
        selection = self._selection_inputs(train, sampler)

        state = TrainingState()
        resumed = self._resume(state, opt_g, opt_d, sampler)
        self.run_info["resumed_from_iteration"] = resumed
        if resumed:
            print(f"{self.name}: resumed from the checkpoint at iteration {resumed} "
                  f"({self.workdir})", file=sys.stderr)
        progress.stage("train", cfg.iterations)
        progress.advance(state.iteration)
        self.generator.train()
        self.critic.train()
        while state.iteration < cfg.iterations:
            self._set_learning_rates(opt_g, opt_d, state.iteration)
            a = self._batch(set_a, sampler)
            b = self._batch(set_b, sampler)
            gp_weights = torch.rand(b.shape[0], 1, 1, 1, generator=sampler).to(device)
            warmup = self._warming_up(state.iteration)
            with self._autocast():
                loss_d, parts = self._critic_loss(a, b, gp_weights, warmup)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            if (state.iteration + 1) % cfg.critic_steps_per_g == 0:
                with self._autocast():
                    loss_g, g_parts = self._generator_loss(a, b, warmup)
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                parts.update(g_parts, g_total=loss_g)
            state.iteration += 1
            progress.advance()
            if state.iteration % cfg.log_every == 0:
                for key, value in parts.items():
                    progress.metric(f"train_{key}", float(value.detach()), state.iteration)
                progress.metric("train_d_total", float(loss_d.detach()), state.iteration)
            if state.iteration % cfg.checkpoint_every == 0 or state.iteration == cfg.iterations:
                self._on_checkpoint(train, progress, state.iteration)
                self._checkpoint(state, selection, train, opt_g, opt_d, sampler, progress)
        self._select(state)
        self._on_fitted(train)

    def _autocast(self) -> torch.autocast:
        enabled = self.config.bf16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _inputs(self, images: np.ndarray) -> torch.Tensor:
        x = to_model_range(images, self.device, self.config.image_size)
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    def _training_inputs(self, images: Images) -> ModelInputs:
        return ModelInputs(images, self.device, self.config.image_size,
                           channels_last=self.config.channels_last)

    def _batch(self, images: ModelInputs, sampler: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(images), (self.config.batch_size,), generator=sampler)
        batch = images[index]
        if self.config.horizontal_flip:
            flip = (torch.rand(len(batch), generator=sampler) < 0.5).to(self.device)
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
        return batch

    def _set_learning_rates(self, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                            iteration: int) -> None:
        cfg = self.config
        start = cfg.iterations - cfg.decay_iterations
        factor = 1.0 if iteration < start else (cfg.iterations - iteration) / cfg.decay_iterations
        for opt, base in ((opt_g, cfg.lr_g), (opt_d, cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = base * factor

    def _selection_inputs(self, train: TrainSet,
                          sampler: torch.Generator) -> tuple[np.ndarray, np.ndarray] | None:
        """Known normals and unlabelled test images for AUCp, or None without selection."""
        if train.selection is None or len(train.selection) == 0:
            return None
        normals = train.normal
        if self.config.aucp_normals and len(normals) > self.config.aucp_normals:
            pick = torch.randperm(len(normals), generator=sampler)[: self.config.aucp_normals]
            normals = normals[np.sort(pick.numpy())]
        return normals, train.selection

    # -- checkpoints, selection, resume -----------------------------------------------------

    def _checkpoint(self, state: TrainingState, selection: tuple | None, train: TrainSet,
                    opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                    sampler: torch.Generator, progress: Progress) -> None:
        step = state.iteration
        if selection is not None:
            normals, unlabeled = selection
            normal_scores = self._scores(normals)
            test_scores = self._scores(unlabeled)
            value = aucp(normal_scores, test_scores)
            values = {"aucp": value}
            if train.selection_normal_share is not None:
                values["aucp_debiased"] = debiased_aucp(value, train.selection_normal_share)
            for key, number in values.items():
                progress.metric(key, number, step)
            self.selection_history.append((step, values, test_scores))
            better = state.best_aucp is None or value > state.best_aucp  # first on ties
            if self._eligible(step) and better:
                state.best_aucp, state.best_iteration = value, step
                state.best_generator = _cpu_copy(self.generator.state_dict())
            self.generator.train()
        if self.workdir is not None:
            self._save(state, opt_g, opt_d, sampler)

    def _select(self, state: TrainingState) -> None:
        if self.config.select == "aucp" and state.best_generator is not None:
            self.generator.load_state_dict(state.best_generator)
            self.run_info["selected_iteration"] = state.best_iteration
            self.run_info["selected_aucp"] = round(state.best_aucp, 6)
        else:
            self.run_info["selected_iteration"] = state.iteration
            if self.config.select == "aucp":
                self.run_info["selection_note"] = "no unlabelled test images given: last kept"
        self.generator.eval()

    def _save(self, state: TrainingState, opt_g: torch.optim.Optimizer,
              opt_d: torch.optim.Optimizer, sampler: torch.Generator) -> None:
        path = Path(self.workdir) / "last.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": dataclasses.asdict(self.config),
            "state": dataclasses.asdict(state),
            "generator": self.generator.state_dict(),
            "critic": self.critic.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "sampler": sampler.get_state(),
            "torch_rng": torch.get_rng_state(),
            # Tensors, not NumPy arrays: the checkpoint then loads with weights_only=True.
            "history": [(step, values, torch.from_numpy(np.asarray(scores)))
                        for step, values, scores in self.selection_history],
        }
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)  # atomic: a kill mid-save leaves the previous checkpoint intact

    def _resume(self, state: TrainingState, opt_g: torch.optim.Optimizer,
                opt_d: torch.optim.Optimizer, sampler: torch.Generator) -> int:
        """Load the workdir's checkpoint if it belongs to this config; returns its iteration."""
        if self.workdir is None or not (Path(self.workdir) / "last.pt").is_file():
            return 0
        # weights_only: a checkpoint on a shared disk must not be able to run code.
        path = Path(self.workdir) / "last.pt"
        try:
            payload = torch.load(path, map_location=self.device, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise BenchError(
                f"refused to resume from {path}: it holds objects other than tensors and plain "
                f"values, and loading them could run code (someone else may have written it). "
                f"Delete {path.parent} to train from the start.") from exc
        if payload["config"] != dataclasses.asdict(self.config):
            return 0  # another config: start afresh (the runner keys workdirs by config anyway)
        self.generator.load_state_dict(payload["generator"])
        self.critic.load_state_dict(payload["critic"])
        opt_g.load_state_dict(payload["opt_g"])
        opt_d.load_state_dict(payload["opt_d"])
        sampler.set_state(payload["sampler"])
        torch.set_rng_state(payload["torch_rng"])
        for key, value in payload["state"].items():
            setattr(state, key, value)
        self.selection_history = [(step, values, scores.cpu().numpy())
                                  for step, values, scores in payload["history"]]
        return state.iteration

    # -- scoring ---------------------------------------------------------------------------

    def _outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Input, translation, difference map (and mask, where the method has one) for
        `images` at the working resolution (config.image_size), in [0, 1] image units."""
        outs: dict[str, list[np.ndarray]] = {"input": [], "translated": [], "difference": [],
                                             "mask": []}
        was_training = self.generator.training
        self.generator.eval()
        with torch.inference_mode():
            for start in range(0, len(images), self.config.score_batch_size):
                x = self._inputs(images[start:start + self.config.score_batch_size])
                b0, mask = self._translate(x)
                # |x - B0| / 2 on the [-1, 1] scale = |x - B0| on the [0, 1] scale.
                outs["input"].append(((x + 1) / 2).cpu().numpy())
                outs["translated"].append(((b0 + 1) / 2).cpu().numpy())
                outs["difference"].append((torch.abs(x - b0) / 2).cpu().numpy())
                if mask is not None:
                    outs["mask"].append(mask[:, 0].cpu().numpy())
        self.generator.train(was_training)
        return {key: np.concatenate(value) for key, value in outs.items() if value}

    def _scores(self, images: np.ndarray) -> np.ndarray:
        """The score path alone: no maps leave the device, one host copy at the end."""
        was_training = self.generator.training
        self.generator.eval()
        scores = []
        with torch.inference_mode():
            for start in range(0, len(images), self.config.score_batch_size):
                x = self._inputs(images[start:start + self.config.score_batch_size])
                b0, _ = self._translate(x)
                scores.append(torch.abs(x - b0).mean(dim=(1, 2, 3)) / 2)
        self.generator.train(was_training)
        return torch.cat(scores).cpu().numpy().astype(np.float64)

    def score(self, images: np.ndarray) -> np.ndarray:
        """Mean |input - B0| over all pixels (and channels), in [0, 1] image units."""
        return self._scores(images)

    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        """|input - B0| (N, H, W) at the input's size."""
        return resize_maps(self._outputs(images)["difference"].mean(axis=1), images.shape[-2:])

    def explain(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The translation B0 (and the mask M, where the method has one) at the input's size."""
        outs = self._outputs(images)
        size = images.shape[-2:]
        shown = {"translated": resize_maps(outs["translated"].mean(axis=1), size)}
        if "mask" in outs:
            shown["mask M"] = resize_maps(outs["mask"], size)
        return shown

    def figure(self, images: np.ndarray) -> object:
        """The paper's Figure 2: input, translation, difference (and mask) per image."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        outs = self._outputs(images)
        columns = [("input", outs["input"][:, 0], "gray"),
                   ("translated", outs["translated"][:, 0], "gray"),
                   ("|input - translated|", outs["difference"][:, 0], "inferno")]
        if "mask" in outs:
            columns.append(("mask M", outs["mask"], "viridis"))
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


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) maps -> (N, H, W), bilinear."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    tensor = torch.as_tensor(maps)[:, None]
    return F.interpolate(tensor, size=tuple(size), mode="bilinear",
                         align_corners=False)[:, 0].numpy()


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}
