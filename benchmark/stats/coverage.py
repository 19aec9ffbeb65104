"""Does a report's 95% interval cover 95% of the time? A simulation with a known truth.

A method's test AUC varies at two levels: its training seed (a GAN ends somewhere else each
time) and the test set, whose images come in clusters (several X-rays of one patient look
alike). The simulation draws both from a binormal model whose expected AUC is known in closed
form, builds each interval the way a report does, and counts how often it holds the truth.

Model, per seed s, subject j and image i of j:
    score = (separation + tau_s) * diseased_j + u_j + e_ij + eta_ijs
with tau_s ~ N(0, seed_sd^2) (training luck), u_j ~ N(0, subject_sd^2) (the patient), e_ij ~
N(0, image_sd^2) (the image, the same for every seed) and eta_ijs ~ N(0, seed_image_sd^2) (the
seed's view of the image). A diseased-healthy pair is always two subjects, so given tau the
expected AUC is Phi((separation + tau) / sqrt(2 sigma^2)), sigma^2 the sum of the three image-level
variances, and over seeds E[AUC] = Phi(separation / sqrt(2 sigma^2 + seed_sd^2)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from medad_bench.stats import intervals as stats


@dataclass(frozen=True)
class Scenario:
    name: str
    n_seeds: int = 3
    healthy_subjects: int = 60
    diseased_subjects: int = 40
    max_images_per_subject: int = 5  # each subject has 1..max images, uniformly
    separation: float = 1.0
    seed_sd: float = 0.25
    subject_sd: float = 0.7
    image_sd: float = 0.7
    seed_image_sd: float = 0.3

    def true_auc(self) -> float:
        image_var = self.subject_sd ** 2 + self.image_sd ** 2 + self.seed_image_sd ** 2
        return float(norm.cdf(self.separation / np.sqrt(2 * image_var + self.seed_sd ** 2)))

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels (N,), subjects (N,), scores (n_seeds, N)) of one simulated test set."""
        n_subjects = self.healthy_subjects + self.diseased_subjects
        diseased = np.r_[np.zeros(self.healthy_subjects), np.ones(self.diseased_subjects)]
        per_subject = rng.integers(1, self.max_images_per_subject + 1, n_subjects)
        subjects = np.repeat(np.arange(n_subjects), per_subject)
        labels = diseased[subjects].astype(int)
        fixed = (rng.normal(0, self.subject_sd, n_subjects)[subjects]
                 + rng.normal(0, self.image_sd, subjects.size))
        tau = rng.normal(0, self.seed_sd, (self.n_seeds, 1))
        scores = ((self.separation + tau) * labels + fixed
                  + rng.normal(0, self.seed_image_sd, (self.n_seeds, subjects.size)))
        return labels, subjects, scores


#: The cases the coverage check runs: a GAN-like method on clustered images, a deterministic
#: method (no seed noise) on clustered images, and seed noise on one image per patient.
SCENARIOS = (
    Scenario("seed noise + clustered images"),
    Scenario("clustered images, deterministic method", seed_sd=0.0, seed_image_sd=0.0),
    Scenario("seed noise, one image per patient", max_images_per_subject=1,
             healthy_subjects=150, diseased_subjects=100),
)

#: The intervals compared: the report's before issue 13, a plain bootstrap of both levels, and
#: the report's now.
INTERVALS = ("images only (before)", "seeds + subjects resampled", "two-level (now)")


def image_bootstrap_means(labels: np.ndarray, scores: Sequence[np.ndarray], n_boot: int,
                          rng: np.random.Generator) -> np.ndarray:
    """(methods, n_boot) seed-mean AUCs of methods scored (seeds, N) on the same test images,
    over shared stratified resamples of the images with the seeds held fixed: the statistic
    the report bootstrapped before issue 13."""
    weights = stats.cluster_weights(labels, np.arange(labels.size), n_boot, rng)
    return np.stack([stats.weighted_aucs(labels, np.atleast_2d(m), weights).mean(axis=1)
                     for m in scores])


def image_bootstrap_interval(labels: np.ndarray, scores: np.ndarray, n_boot: int,
                             rng: np.random.Generator, level: float = 0.95
                             ) -> tuple[float, float]:
    """The report's interval before issue 13: percentile interval of `image_bootstrap_means`."""
    means = image_bootstrap_means(labels, [scores], n_boot, rng)[0]
    low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high)


def resampled_levels_interval(labels: np.ndarray, subjects: np.ndarray, scores: np.ndarray,
                              n_boot: int, rng: np.random.Generator, level: float = 0.95
                              ) -> tuple[float, float]:
    """Both levels by plain resampling: subjects (stratified) and, within each resample, the
    seeds with replacement; percentile interval. Shown to explain why the report does not."""
    weights = stats.cluster_weights(labels, subjects, n_boot, rng)
    aucs = stats.weighted_aucs(labels, scores, weights)  # (n_boot, seeds)
    drawn = rng.integers(0, aucs.shape[1], aucs.shape)
    means = np.take_along_axis(aucs, drawn, axis=1).mean(axis=1)
    low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high)


def coverage(scenario: Scenario, repetitions: int, n_boot: int = 500,
             seed: int = 0) -> pd.DataFrame:
    """Per interval kind: share of `repetitions` simulated test sets whose 95% interval holds
    the true expected AUC, and the mean width."""
    rng = np.random.default_rng(seed)
    truth = scenario.true_auc()
    hits = {name: [] for name in INTERVALS}
    widths = {name: [] for name in INTERVALS}
    for _ in range(repetitions):
        labels, subjects, scores = scenario.draw(rng)
        summary, _ = stats.seed_mean_comparison(labels, {"m": scores}, subjects,
                                                n_boot=n_boot, seed=int(rng.integers(2**31)))
        intervals = {
            INTERVALS[0]: image_bootstrap_interval(labels, scores, n_boot, rng),
            INTERVALS[1]: resampled_levels_interval(labels, subjects, scores, n_boot, rng),
            INTERVALS[2]: (float(summary.ci_low[0]), float(summary.ci_high[0])),
        }
        for name, (low, high) in intervals.items():
            hits[name].append(low <= truth <= high)
            widths[name].append(high - low)
    return pd.DataFrame({"scenario": scenario.name, "interval": list(INTERVALS),
                         "coverage": [float(np.mean(hits[n])) for n in INTERVALS],
                         "mean_width": [float(np.mean(widths[n])) for n in INTERVALS],
                         "true_auc": truth, "repetitions": repetitions})
