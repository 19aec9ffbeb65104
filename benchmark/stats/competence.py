"""Did the model learn? Competence checks on the labelled validation split, for every run.

A number in Table 1 counts only if the model behind it learned something. A GAN that emits one
image for every input, or a score that is the same for every image, or one that ranks healthy
above diseased, is a failed training run, not a result. These checks say so for each run,
from the validation split only (never the test split), after the method has scored it:

- `score_spread`: the scores vary across inputs. The relative spread std / (|mean| + std)
  must reach SCORE_SPREAD_MIN: a score constant to 1 part in 1,000 across 500 images carries
  no ranking worth reporting.
- `val_auc`: the validation AUC is above 0.5. An inverted score (diseased ranked below healthy)
  is a failed model; it is never flipped after the fact.
- For methods that produce an image from each input (a reconstruction or a translation,
  `Method.output_extra`):
  - `output_correlation`: the outputs follow the inputs. Across the validation images, per
    pixel, the inputs and outputs are centred on their means; the correlation of the two
    (pooled over pixels) is the share of the inputs' variation between images that the outputs
    reproduce (its square is the share of variance explained). An output that is one image for
    every input has 0; a copy has 1. It must reach OUTPUT_CORRELATION_MIN = 0.5: below it the
    output explains under a quarter of how the inputs differ, so it is mostly not about them.
  - `healthy_psnr_gain_db`: healthy inputs come back close to themselves. The PSNR of the
    healthy validation images' outputs, minus the PSNR the trivial model gets by returning the
    mean healthy validation image for each: above 0 dB, the model reconstructs healthy
    images better than knowing nothing about the input would.
  - `diseased_structure`: diseased inputs keep their anatomy. For each diseased validation
    image, the Pearson correlation over its pixels between input and output; the median must
    reach DISEASED_STRUCTURE_MIN = 0.5. A healthy-looking version (or a reconstruction) of a
    chest keeps its lungs, ribs and outline, so the two correlate strongly (PneumoniaMNIST,
    seed 0: AnomalyPro's quick translation 0.987, the reconstruction baselines 0.81-0.92); a
    generator that returns healthy inputs unchanged but breaks every diseased one into a noise
    texture passes the two checks above and is caught here (Brainomaly: 0.335; 0.474 with
    resize upsampling). Such a model scores well by failing, not by translating (issue 24).

- `common_change_share`: the change is about the input. The energy of the mean change
  (output - input, per pixel, across images) over the mean energy of each image's change must
  stay below COMMON_CHANGE_MAX = 0.5: a model that adds one fixed pattern to every input (the
  transposed-convolution lattice) changes nothing about any particular image, and one whose
  change is mostly (more than half) such a pattern is mostly doing that. The bound was 0.9
  until Brainomaly at 16x the quick budget passed it at 0.631 (synthetic) and 0.698
  (PneumoniaMNIST) while its figure_grid.png showed the same dot lattice over every input's
  lungs: a pattern plus input-dependent blur. Measured, seed 0: the reconstruction baselines
  0.06-0.45 (ALAD on synthetic the highest), f-AnoGAN at 16x 0.12-0.14, AnomalyPro 0.02-0.31;
  Brainomaly 0.50-0.94 at every budget (0.497 once, seed 1 at 4x). It still misses a faint
  fixed pattern beside larger image-dependent changes (Brainomaly with lambda_adv 0.1: 0.355,
  passes): the figure shows that one.
- Method-specific checks (`Method.competence_checks`): AnomalyPro's mask M must be higher on
  diseased than on healthy images (`mask_follows_input`, by MASK_MARGIN) and not saturated
  (`mask_not_saturated`): a translation that is the input plus one fixed pattern passes the
  output checks above, and is caught here.

A run that fails any check is logged `competent=false` with the failed checks named
(`competence_failed`); reports mark it and never bold or rank it (benchmark/report/table.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medad_bench.stats import image_metrics as metrics

SCORE_SPREAD_MIN = 1e-3
OUTPUT_CORRELATION_MIN = 0.5
DISEASED_STRUCTURE_MIN = 0.5
PSNR_GAIN_MIN_DB = 0.0
#: The most of a model's change (output - input) that may be one pattern shared by every image.
COMMON_CHANGE_MAX = 0.5
#: Mean M on diseased minus healthy validation images that counts as "higher": a mask marking
#: only the lesions raises the diseased mean by about the lesions' share of the image (1-2% on
#: the synthetic set); a difference of 1e-4 between two near-constant masks is noise.
MASK_MARGIN = 0.005
CHECKS = ("score_spread", "val_auc", "output_correlation", "healthy_psnr_gain_db",
          "diseased_structure", "common_change_share", "mask_follows_input",
          "mask_not_saturated")
#: What each failed check means, for reports and logs.
CHECK_TEXT = {
    "score_spread": "the scores barely vary across inputs",
    "val_auc": "validation AUC <= 0.5 (the score ranks healthy above diseased or at chance)",
    "output_correlation": (f"the output does not follow the input (correlation across images "
                           f"< {OUTPUT_CORRELATION_MIN})"),
    "healthy_psnr_gain_db": ("healthy inputs come back no closer to themselves than the mean "
                             "healthy image"),
    "diseased_structure": (f"diseased inputs lose their anatomy in the output (median "
                           f"per-image correlation < {DISEASED_STRUCTURE_MIN})"),
    "common_change_share": (f"the output is the input plus one pattern, the same for every "
                            f"image (>= {COMMON_CHANGE_MAX:.0%} of the change is shared)"),
    "mask_follows_input": (f"the mask M is not higher on diseased than on healthy images (by "
                           f"{MASK_MARGIN})"),
    "mask_not_saturated": "the mask M saturated (0 or 1 almost everywhere on healthy images)",
}


@dataclass
class OutputFollowing:
    """Streams a split's inputs and outputs, chunk by chunk, into the sums the output checks
    need: per-pixel sums for the correlation across images, and each image's squared error.
    Inputs and outputs are (N, H, W) in [0, 1] (channels averaged)."""

    count: int = 0
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    squared_errors: list[np.ndarray] = field(default_factory=list)
    #: Each image's Pearson correlation between input and output over its pixels.
    image_correlations: list[np.ndarray] = field(default_factory=list)

    def add(self, inputs: np.ndarray, outputs: np.ndarray) -> None:
        x = np.asarray(inputs, dtype=np.float64)
        y = np.asarray(outputs, dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"outputs {y.shape} and inputs {x.shape} differ in shape")
        d = y - x
        for name, value in (("x", x), ("y", y), ("xx", x * x), ("yy", y * y), ("xy", x * y),
                            ("d", d), ("dd", d * d)):
            self.sums[name] = self.sums.get(name, 0.0) + value.sum(axis=0)
        self.squared_errors.append(((x - y) ** 2).reshape(len(x), -1).mean(axis=1))
        self.image_correlations.append(_per_image_correlation(x, y))
        self.count += len(x)

    def correlation(self) -> float:
        """Pooled over pixels: sum cov(x, y) / sqrt(sum var(x) * sum var(y)), across images;
        0 where either side does not vary."""
        n, s = self.count, self.sums
        if n < 2:
            return float("nan")
        cov = (s["xy"] - s["x"] * s["y"] / n).sum()
        var_x = (s["xx"] - s["x"] ** 2 / n).sum()
        var_y = (s["yy"] - s["y"] ** 2 / n).sum()
        if var_x <= 0 or var_y <= 1e-12 * max(var_x, 1e-12):
            return 0.0
        return float(cov / np.sqrt(var_x * var_y))

    def common_change_share(self) -> float:
        """The share of the change (output - input) that is the same for every image: the
        energy of the mean change over the mean energy of each image's change, pooled over
        pixels. 1 when the model adds one fixed pattern to every input; 0 when its changes
        average out across images; nan when nothing changes."""
        n, s = self.count, self.sums
        if n < 2:
            return float("nan")
        total = float((s["dd"] / n).sum())
        if total <= 0:
            return float("nan")
        return float(((s["d"] / n) ** 2).sum() / total)

    def squared_error(self) -> np.ndarray:
        return np.concatenate(self.squared_errors) if self.squared_errors else np.zeros(0)

    def per_image_correlation(self) -> np.ndarray:
        return (np.concatenate(self.image_correlations) if self.image_correlations
                else np.zeros(0))


def _per_image_correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation over each image's pixels; 0 where either image is flat."""
    x = x.reshape(len(x), -1)
    y = y.reshape(len(y), -1)
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    norms = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    return np.where(norms > 0, (x * y).sum(axis=1) / np.where(norms > 0, norms, 1), 0.0)


def score_spread(scores: np.ndarray) -> float:
    """std / (|mean| + std): 0 for constant scores, scale-free."""
    scores = np.asarray(scores, dtype=np.float64)
    std = float(scores.std())
    return std / (abs(float(scores.mean())) + std) if std > 0 else 0.0


def psnr(mse: np.ndarray) -> float:
    """PSNR in dB of [0, 1] images from their mean squared errors (averaged first)."""
    mean = float(np.mean(mse))
    return float("inf") if mean <= 0 else float(10 * np.log10(1.0 / mean))


def healthy_psnr_gain(inputs: np.ndarray, labels: np.ndarray,
                      squared_error: np.ndarray) -> tuple[float, float]:
    """(PSNR of the outputs of the healthy inputs, its gain over the mean healthy image)."""
    healthy = np.flatnonzero(labels == 0)
    if healthy.size == 0:
        return float("nan"), float("nan")
    grey = np.asarray(inputs[healthy], dtype=np.float64).mean(axis=1)
    mean_image = grey.mean(axis=0)
    trivial = ((grey - mean_image) ** 2).reshape(len(grey), -1).mean(axis=1)
    model = psnr(squared_error[healthy])
    return model, model - psnr(trivial)


def competence(scores: np.ndarray, labels: np.ndarray, *, inputs: np.ndarray | None = None,
               outputs: OutputFollowing | None = None,
               method_checks: dict[str, tuple[float, bool]] | None = None
               ) -> dict[str, float | str | bool]:
    """The checks' values on a labelled split (validation), `competent` and the failed checks
    ("" when none). `outputs` only for methods with an output image; `inputs` (N, C, H, W)
    with it, for the healthy PSNR's trivial baseline; `method_checks`: the method's own
    (name -> (value, passed)), from `Method.competence_checks`."""
    values: dict[str, float | str | bool] = {"score_spread": score_spread(scores)}
    failed = [] if values["score_spread"] >= SCORE_SPREAD_MIN else ["score_spread"]
    if 0 < int(np.sum(labels)) < len(labels):
        values["val_auc"] = metrics.roc_auc(labels, scores)
        if not values["val_auc"] > 0.5:
            failed.append("val_auc")
    if outputs is not None and outputs.count:
        values["output_correlation"] = outputs.correlation()
        if not values["output_correlation"] >= OUTPUT_CORRELATION_MIN:
            failed.append("output_correlation")
        if inputs is not None:
            values["healthy_psnr_db"], values["healthy_psnr_gain_db"] = healthy_psnr_gain(
                inputs, labels, outputs.squared_error())
            if not values["healthy_psnr_gain_db"] > PSNR_GAIN_MIN_DB:
                failed.append("healthy_psnr_gain_db")
        values["common_change_share"] = outputs.common_change_share()
        if values["common_change_share"] >= COMMON_CHANGE_MAX:  # nan (no change) passes
            failed.append("common_change_share")
        diseased = outputs.per_image_correlation()[np.asarray(labels) == 1]
        if diseased.size:
            values["diseased_structure"] = float(np.median(diseased))
            if not values["diseased_structure"] >= DISEASED_STRUCTURE_MIN:
                failed.append("diseased_structure")
    for name, (value, passed) in (method_checks or {}).items():
        values[name] = value
        if not passed:
            failed.append(name)
    values["competent"] = not failed
    values["competence_failed"] = ",".join(failed)
    return values


def failed_text(failed: str) -> str:
    """'output_correlation,val_auc' -> the checks' meanings, joined."""
    return "; ".join(CHECK_TEXT.get(name, name) for name in failed.split(",") if name)
