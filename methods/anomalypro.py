"""MedAI AnomalyPro: a one-directional unpaired GAN that turns any scan into a healthy-looking
one; the anomaly score is how much it had to change (after HealthyGAN, Rahman Siddiquee et al.).

The generator outputs an intermediate healthy image B_int and a mask M. The translation keeps
the input outside the mask, B0 = B_int*M + A*(1-M); the reconstruction swaps the roles,
A0 = A*M + B_int*(1-M), so that together they can rebuild the input. A PatchGAN critic with a
WGAN gradient penalty judges B0 against real healthy images. It trains on the mixed unannotated
set A (TrainSet.unlabeled) and the healthy set B (TrainSet.normal), and picks its checkpoint
without labels by AUCp (known-normal images held out of training vs unlabelled test images).
The training step, critic and scoring live in methods/_translation.py (shared with Brainomaly);
the loop, checkpoints and selection are the engine's (benchmark/api/training.py).

The `full` profile is the published code's setting, with one deviation: the published code
lowers the lr by lr/100k every 1,000 iterations (a StarGAN remnant: 0.1% over its decay); the
suite decays linearly to 0. Where `quick` differs from `full`, `AnomalyPro.profile_config`
lists each difference with the figure that justified it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medad_bench.api import Prediction, Progress, TrainSet, register_method
from medad_bench.methods._gan import wgan_critic_loss
from medad_bench.methods._translation import (
    PatchDiscriminator,
    TranslationConfig,
    TranslationGAN,
    critic_layers_for,
    generator_body,
    quick_translation_settings,
)

__all__ = ["AnomalyPro", "AnomalyProConfig", "Generator", "PatchDiscriminator", "critic_loss",
           "critic_layers_for", "diagnostic_rows", "generator_loss", "mask_diagnostics",
           "mask_loss", "mask_saturation_warning", "reconstruct", "translate"]

# ----------------------------------------------------------------------------- networks


class Generator(nn.Module):
    """HealthyGAN's generator body with C+1 output channels: C channels of B_int (tanh) and
    one of mask logits."""

    def __init__(self, channels: int = 1, base: int = 64, residual_blocks: int = 6,
                 mask_logit_bias: float = 0.0, upsample: str = "transposed") -> None:
        super().__init__()
        #: Added to the mask logit: 0 in HealthyGAN (its head has no bias); negative values
        #: start M near 0 instead of 0.5.
        self.mask_logit_bias = mask_logit_bias
        self.net = generator_body(channels, channels + 1, base, residual_blocks, upsample)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [-1, 1] -> (B_int in [-1, 1], M in [0, 1])."""
        out = self.net(x)
        b_int = torch.tanh(out[:, : self.channels])
        mask = (torch.tanh(out[:, self.channels:] + self.mask_logit_bias) + 1.0) / 2.0
        return b_int, mask


def translate(x: torch.Tensor, b_int: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """B0: the healthy-looking translation, the generated image inside the mask."""
    return b_int * mask + x * (1.0 - mask)


def reconstruct(x: torch.Tensor, b_int: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A0: the input rebuilt from the complementary parts."""
    return x * mask + b_int * (1.0 - mask)


# ----------------------------------------------------------------------------- losses


def mask_loss(mask: torch.Tensor, focus_weight: float = 1.0) -> torch.Tensor:
    """Keeps the mask small and decided: (mean M)^2 plus `focus_weight` times a focus term that
    is 0 where M is 0 or 1 and largest (1/0.01 - 1/0.51) at M = 0.5."""
    focus = torch.mean(1.0 / (torch.abs(mask - 0.5) + 0.01)) - 1.0 / 0.51
    return torch.mean(mask) ** 2 + focus_weight * focus


def critic_loss(generator: Generator, critic: nn.Module, a: torch.Tensor, b: torch.Tensor,
                gp_weights: torch.Tensor, lambda_gp: float,
                warmup: bool = False) -> tuple[torch.Tensor, dict]:
    """-mean D(real B) + mean D(B0 of A) + lambda_gp * GP (during the mask warm-up the fake
    is B_int itself, as if M were 1)."""
    with torch.no_grad():
        b_int, mask = generator(a)
        fake = b_int if warmup else translate(a, b_int, mask)
    return wgan_critic_loss(critic, b, fake, gp_weights, lambda_gp)


def generator_loss(generator: Generator, critic: nn.Module, a: torch.Tensor, b: torch.Tensor,
                   cfg: AnomalyProConfig, warmup: bool = False,
                   lambda_adv: float | None = None) -> tuple[torch.Tensor, dict]:
    """lambda_adv * adversarial on B0(A) and B0(B) + identity + reconstruction + mask terms.

    During the mask warm-up (`warmup`) B_int alone is trained to look healthy: adversarial on
    B_int(A) and B_int(B) + identity; the reconstruction and mask terms are off. `lambda_adv`:
    this iteration's adversarial weight (0 during an adversarial warm-up), else the config's."""
    lambda_adv = cfg.lambda_adv if lambda_adv is None else lambda_adv
    b_int_a, mask_a = generator(a)
    b_int_b, mask_b = generator(b)
    if warmup or cfg.identity_on == "intermediate":
        identity = torch.mean(torch.abs(b - b_int_b))
    else:
        identity = torch.mean(torch.abs(b - translate(b, b_int_b, mask_b)))
    if warmup:
        adversarial = -critic(b_int_a).mean() - critic(b_int_b).mean()
        loss = lambda_adv * adversarial + cfg.lambda_id * identity
        return loss, {"g_adv": adversarial, "g_id": identity}
    adversarial = -critic(translate(a, b_int_a, mask_a)).mean() \
        - critic(translate(b, b_int_b, mask_b)).mean()
    reconstruction = torch.mean(torch.abs(a - reconstruct(a, b_int_a, mask_a)))
    masks = 0.5 * (mask_loss(mask_a, cfg.lambda_mask_focus)
                   + mask_loss(mask_b, cfg.lambda_mask_focus))
    loss = (lambda_adv * adversarial + cfg.lambda_id * identity
            + cfg.lambda_rec * reconstruction + cfg.lambda_mask * masks)
    return loss, {"g_adv": adversarial, "g_id": identity, "g_rec": reconstruction,
                  "g_mask": masks}


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class AnomalyProConfig(TranslationConfig):
    """Defaults: the published schedule of the public HealthyGAN code (the `full` profile)."""

    lambda_rec: float = 1.0
    lambda_mask: float = 0.1
    #: A constant added to the mask logit (0 = HealthyGAN). -2 starts M near 0.02.
    mask_logit_bias: float = 0.0
    #: First N iterations train B_int alone (adversarial + identity, as if M were 1); the
    #: reconstruction and mask terms switch on after, and only later checkpoints may be kept.
    #: 0 in HealthyGAN.
    mask_warmup_iterations: int = 0
    #: What the identity term holds to a healthy input b: "intermediate" (B_int(b), as in
    #: HealthyGAN) or "translation" (B0(b)). Holding B_int to the input makes B_int a copy of
    #: the input, and M then gets no gradient (dB0/dM = B_int - input); on B0, B_int is free
    #: to become a healthy version wherever M is 0, and M can learn where to use it.
    identity_on: str = "intermediate"
    #: Weight of the mask's focus (zero-one) term against its size term (1 in HealthyGAN). The
    #: focus term drives M to 0 or 1 within the first iterations, where its tanh saturates
    #: and stops learning: 0 lets M stay soft until the adversarial term shapes it.
    lambda_mask_focus: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.identity_on not in ("intermediate", "translation"):
            raise ValueError("identity_on must be 'intermediate' or 'translation'")
        if not 0 <= self.mask_warmup_iterations < self.iterations:
            raise ValueError("mask_warmup_iterations must be within [0, iterations)")


#: What the quick profile changes from the published loss and upsampling so that the quick
#: generator learns an input-following translation (issue 24; the figures: profile_config).
QUICK_LEARNING_SETTINGS = {"upsample": "resize", "lambda_adv": 0.1}


# ----------------------------------------------------------------------------- the method


@register_method
class AnomalyPro(TranslationGAN):
    name = "anomalypro"
    quick_cpu_seconds = 90
    description = ("MedAI AnomalyPro: GAN translating any scan to a healthy-looking one; "
                   "score = mean |input - translation|")
    uses_validation = True  # mask diagnostics on the labelled validation split
    diagnostic_extras = ("mask M",)
    Config = AnomalyProConfig
    config: AnomalyProConfig

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int,
                       channels: int) -> AnomalyProConfig:
        """`full`: the published HealthyGAN setting. `quick` differs from it in these ways only
        (each figure from the runs named; all on the synthetic set's validation split):

        - working size 32 px (inputs area-downsampled, maps upsampled back) and quarter-width
          networks (16 base channels, 3 residual blocks, a 16-channel critic with 3 stride-2
          layers: the same 4 x 4 patch grid as the published critic at 256 px): at 64 px one
          iteration costs 3.3x more (1,500 iterations 307 s vs 92 s) and validation AUC was no
          better (0.544 vs 0.572, seed 0, scripts/anomalypro_sweep.py);
        - 1,000 iterations (the suite's equal quick budget of 32,000 training images,
          methods/_budget.py) instead of 400k; the lr decays over the last quarter (as 100k of
          400k) and 6 checkpoints compete for AUCp (every 166 instead of every 10k). The sweep
          below ran at 1,500 iterations, the budget before it was cut to keep `bench run
          --methods all` under 10 minutes;
        - lr 5e-4 instead of 1e-4: validation AUC 0.572 vs 0.562 (seed 0);
        - channels_last (1.2x faster on 2 CPU cores, `bench perf`).

        - issue 24: nearest-neighbour resize + 3x3 conv upsampling instead of transposed
          convolutions (`upsample = "resize"`), and the adversarial weight 0.1 instead of 1
          (`lambda_adv`). With the published pair the quick generator emits one texture for
          every input on the synthetic set (validation AUC 0.480; output correlation across
          images 0.37; healthy PSNR 7.7 dB below the mean healthy image) and the input plus a
          fixed lattice of transposed-convolution dots on PneumoniaMNIST (0.608). Of 11
          candidates (scripts/anomalypro_sweep.py, seed 0, both datasets' validation splits
          only), this pair had the highest mean validation AUC among those passing the general
          competence checks on both (0.609 synthetic, 0.734 PneumoniaMNIST; output correlation
          0.97 / 0.98; healthy PSNR gain +11.7 / +15.3 dB). Its mask still does not mark the
          diseased images (mean M 0.136 on healthy and on diseased synthetic validation images):
          no candidate did, so AnomalyPro's runs fail the mask check and are reported as such.

        The mask terms and initialisation are the published ones; the issue-11 sweep (critic
        depth, mask-logit bias, lr, 64 px, a longer schedule, a B_int warm-up) moved nothing.
        Nor did eight later candidates on the synthetic validation split (seed 0, today's quick
        as the base; scripts/anomalypro_sweep.py): the identity term on B0 instead of B_int
        (`identity_on`), alone and with lambda_adv 1 or 0.3; 5 critic steps per generator step,
        alone and with it; no mask focus term (`lambda_mask_focus` 0), alone, with the identity
        on B0, and with lambda_adv 1. Mean M on diseased minus healthy images stayed within
        +-0.002 in every one (the check needs +0.005); validation AUC 0.44-0.62 against the
        base's 0.52.
        """
        if profile == "full":
            return AnomalyProConfig()
        return AnomalyProConfig(**{**quick_translation_settings(image_size),
                                   **QUICK_LEARNING_SETTINGS})

    # -- the pieces of the shared loop ------------------------------------------------------

    def _build_generator(self, channels: int) -> nn.Module:
        cfg = self.config
        return Generator(channels, cfg.base_channels, cfg.residual_blocks,
                         cfg.mask_logit_bias, cfg.upsample)

    def _translate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b_int, mask = self.generator(x)
        return translate(x, b_int, mask), mask

    def _critic_loss(self, a: torch.Tensor, b: torch.Tensor, gp_weights: torch.Tensor,
                     warmup: bool) -> tuple[torch.Tensor, dict]:
        return critic_loss(self.generator, self.critic, a, b, gp_weights,
                           self.config.lambda_gp, warmup)

    def _generator_loss(self, a: torch.Tensor, b: torch.Tensor,
                        warmup: bool) -> tuple[torch.Tensor, dict]:
        return generator_loss(self.generator, self.critic, a, b, self.config, warmup,
                              self.adversarial_weight)

    def _warming_up(self, iteration: int) -> bool:
        return iteration < self.config.mask_warmup_iterations

    def first_selectable_step(self) -> int:
        # A warm-up checkpoint's mask is untrained: checkpoints come after the warm-up.
        return self.config.mask_warmup_iterations

    # -- mask diagnostics (validation split only) ----------------------------------------

    def _mask_diagnostics(self, train: TrainSet) -> dict[str, float]:
        if train.validation is None:
            return {}
        split = train.validation
        rows = diagnostic_rows(split.labels)
        masks = self._predict_batches(split.images[rows], maps=False,
                                      extras=True).extras["mask M"]
        lesions = split.masks[rows] if split.masks is not None else None
        return mask_diagnostics(masks, split.labels[rows], lesions)

    def _setup(self, train: TrainSet) -> None:
        super()._setup(train)
        #: Mask diagnostics by checkpoint step, so the kept checkpoint's need no second pass
        #: (a resumed run lacks the steps before its resume and computes them again).
        self._diagnostics_at: dict[int, dict[str, float]] = {}

    def _on_checkpoint(self, train: TrainSet, progress: Progress, step: int) -> None:
        """Curves over checkpoints (checkpoint_mask_*): does M follow the input, or has it
        saturated? The kept checkpoint's values are the run metrics mask_*."""
        values = self._diagnostics_at[step] = self._mask_diagnostics(train)
        for key, value in values.items():
            progress.metric(f"checkpoint_{key}", value, step)

    def _on_fitted(self, train: TrainSet) -> None:
        """Diagnostics of the kept checkpoint as run metrics, and a warning if M saturated."""
        kept = self._diagnostics_at.get(self.selected_step)
        values = kept if kept is not None else self._mask_diagnostics(train)
        self.run_metrics.update(values)
        warning = mask_saturation_warning(values)
        if warning:
            self.warnings.append(warning)

    def diagnostics(self, prediction: Prediction, labels: np.ndarray,
                    lesions: np.ndarray | None) -> dict[str, float]:
        """The mask diagnostics on any labelled images' prediction (the runner: the test split,
        after selection; logged as test_mask_*)."""
        return mask_diagnostics(prediction.extras["mask M"], labels, lesions)

    def competence_checks(self, extras: dict[str, np.ndarray],
                          labels: np.ndarray) -> dict[str, tuple[float, bool]]:
        """The mask must mark the diseased images more than the healthy ones and must not
        have saturated (benchmark/stats/competence.py: MASK_MARGIN, and the saturation bounds)."""
        from medad_bench.stats.competence import MASK_MARGIN

        if "mask M" not in extras or not 0 < int(labels.sum()) < len(labels):
            return {}
        values = mask_diagnostics(extras["mask M"], labels, None)
        margin = values["mask_mean_diseased"] - values["mask_mean_healthy"]
        healthy = values["mask_mean_healthy"]
        return {"mask_follows_input": (margin, margin >= MASK_MARGIN),
                "mask_not_saturated": (healthy, not mask_saturation_warning(values))}

    def masks(self, images: np.ndarray) -> np.ndarray:
        """The generator's mask M (N, H, W) in [0, 1], at the input's size."""
        return self.predict(images, maps=False, extras=True).extras["mask M"]


#: Validation images of each class the mask diagnostics look at, at most. They run at every
#: checkpoint: on PneumoniaMNIST's 524 validation images they took 3.3 s of a 81 s quick fit
#: (bench perf), more than the AUCp selection itself, and they would grow with the split.
#: 64 healthy and 64 diseased images are 131,072 pixels of M: enough for a mean and for the
#: saturation bounds; the test split's test_mask_* use every test image.
DIAGNOSTIC_IMAGES_PER_CLASS = 64


def diagnostic_rows(labels: np.ndarray,
                    per_class: int = DIAGNOSTIC_IMAGES_PER_CLASS) -> np.ndarray:
    """Sorted rows of the validation images the mask diagnostics use: up to `per_class` of
    each label, drawn by a generator that depends only on the split's size and labels, so
    every checkpoint, seed and run of a split looks at the same images."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([len(labels), int(labels.sum()), 29])
    rows = []
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        rows.append(rng.choice(members, min(per_class, len(members)), replace=False))
    return np.sort(np.concatenate(rows))


#: Mean M on healthy validation images beyond these bounds: the mask saturated (everything
#: translated, or nothing), so the score no longer says where the method looked.
MASK_SATURATED_HIGH = 0.9
MASK_SATURATED_LOW = 0.01


def mask_diagnostics(masks: np.ndarray, labels: np.ndarray,
                     lesions: np.ndarray | None) -> dict[str, float]:
    """Mean M on healthy and on diseased images, the share of pixels with M > 0.5, and (where
    lesion masks exist) the pixel AUROC of M itself against them."""
    from medad_bench.stats.pixel_metrics import pixel_auroc

    healthy, diseased = masks[labels == 0], masks[labels == 1]
    values = {"mask_mean_healthy": float(healthy.mean()) if len(healthy) else float("nan"),
              "mask_mean_diseased": float(diseased.mean()) if len(diseased) else float("nan"),
              "mask_share_above_half": float((masks > 0.5).mean())}
    if lesions is not None:
        values["mask_pixel_auroc"] = pixel_auroc(lesions, masks)
    return values


def mask_saturation_warning(values: dict[str, float]) -> str:
    """A message when the mask saturated on healthy validation images, else ''."""
    mean = values.get("mask_mean_healthy", float("nan"))
    if not np.isfinite(mean) or MASK_SATURATED_LOW <= mean <= MASK_SATURATED_HIGH:
        return ""
    state = "1 almost everywhere" if mean > MASK_SATURATED_HIGH else "0 almost everywhere"
    return (f"mask M saturated: mean M on healthy validation images is {mean:.3f} ({state}); "
            f"the score is then a whole-image difference, not the lesion the paper's mask "
            f"finds. See the run's checkpoint_mask_* curves.")
