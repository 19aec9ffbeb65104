"""Statistics the reports print: the two-level interval of a seed-mean AUC and paired tests
between methods scored on the same test images (`seed_mean_comparison`, Holm-adjusted), and
pixel-level (segmentation) metrics.

Observed AUCs come from the midrank algorithm of Sun & Xu (2014), "Fast implementation of
DeLong's algorithm for comparing the areas under correlated receiver operating characteristic
curves", IEEE Signal Processing Letters 21:1389-1393. Ties count 1/2 throughout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.stats import norm, rankdata
from scipy.stats import t as student_t

from benchmark.metrics import _check_scores, youden_threshold

# Image weights of this many (resamples x images) per block in `weighted_aucs`, to bound memory.
_BOOT_BLOCK = 2_000_000
# Pixels streamed per step in `pixel_auroc`.
_PIXEL_CHUNK = 1 << 20


def _two_sided_p(delta: float, variance: float) -> float:
    """Two-sided normal-approximation p-value of an AUC difference."""
    if variance <= 0.0:
        # No sampling variability: identical rankings (delta 0) are indistinguishable; otherwise
        # every component agrees on the sign (e.g. a perfect vs. a constant scorer), z = inf.
        return 1.0 if abs(delta) <= 1e-12 else 0.0
    return float(2.0 * norm.sf(abs(delta) / np.sqrt(variance)))


def _stack(labels: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated labels (N,) and a (k, N) score matrix of methods scored on the same images."""
    checked = [_check_scores(labels, s) for s in scores]
    labels = checked[0][0]
    n_pos = int(labels.sum())
    # The bootstrap needs both classes; the test level's t has n - 1 >= 1 degrees of freedom.
    if min(n_pos, labels.size - n_pos) < 2:
        raise ValueError("AUC statistics need at least two healthy and two diseased images")
    return labels, np.stack([s for _, s in checked])


def _midrank_aucs(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUCs of k methods (k, N) at once, by Sun & Xu's (2014) midranks: per diseased image, the
    share of healthy images scored lower (ties 1/2), averaged over the diseased images."""
    pos = labels == 1
    x, y = scores[:, pos], scores[:, ~pos]  # diseased and healthy scores
    m, n = x.shape[1], y.shape[1]
    tx = rankdata(x, axis=1)
    tz = rankdata(np.concatenate([x, y], axis=1), axis=1)
    return ((tz[:, :m] - tx) / n).mean(axis=1)


def _check_pixels(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks and float maps of the same shape (maps keep their dtype: no big copies)."""
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    if masks.dtype != bool:
        if np.any((masks != 0) & (masks != 1)):
            raise ValueError("masks must be binary (0/1)")
        masks = masks != 0
    if not np.issubdtype(maps.dtype, np.floating):
        maps = maps.astype(np.float32)
    if not np.isfinite(maps).all():
        raise ValueError("anomaly maps contain NaN or infinity")
    return masks, maps


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """Pixel-level AUROC pooled over all pixels of all images (Mann-Whitney, ties 1/2).

    NaN when the masks hold one class only. Only the smaller class is sorted; the larger one is
    streamed through a binary search in chunks, so memory stays near the smaller class's size.
    """
    masks, maps = _check_pixels(masks, maps)
    n_pos = int(np.count_nonzero(masks))
    n_neg = masks.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    small_is_pos = n_pos <= n_neg
    flat_masks, flat_maps = masks.reshape(-1), maps.reshape(-1)
    small = np.sort(flat_maps[flat_masks == small_is_pos].astype(np.float64))
    # Twice the count of (large, small) pairs with large > small, ties counting once: integers,
    # so the sum is exact.
    wins2 = 0
    for start in range(0, flat_maps.size, _PIXEL_CHUNK):
        chunk_masks = flat_masks[start:start + _PIXEL_CHUNK]
        values = flat_maps[start:start + _PIXEL_CHUNK][chunk_masks != small_is_pos]
        values = np.sort(values.astype(np.float64))  # sorted keys make the searches cache-friendly
        wins2 += int(np.searchsorted(small, values, "left").sum())
        wins2 += int(np.searchsorted(small, values, "right").sum())
    large_beats_small = wins2 / (2 * n_pos * n_neg)
    return 1.0 - large_beats_small if small_is_pos else large_beats_small


def dice_at_threshold(masks: np.ndarray, maps: np.ndarray, threshold: float) -> float:
    """Dice 2|P & G| / (|P| + |G|) pooled over all pixels, P = maps >= threshold; 1.0 when both
    P and G are empty."""
    masks, maps = _check_pixels(masks, maps)
    # A float64 scalar keeps the comparison in float64 (NEP 50), so a float16 map is not
    # compared against a rounded threshold.
    predicted = maps >= np.float64(threshold)
    denominator = int(np.count_nonzero(predicted)) + int(np.count_nonzero(masks))
    if denominator == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(predicted & masks)) / denominator


def youden_pixel_threshold(masks: np.ndarray, maps: np.ndarray, *, max_pixels: int = 2_000_000,
                           seed: int = 0) -> float:
    """The pixel threshold maximising TPR - FPR (Youden's J) on validation masks and maps.

    Above `max_pixels` pixels a uniform seeded subsample is used: J's maximiser is a population
    quantity, and the ROC curve of 10^7 pixels would cost time and memory for no gain.
    """
    masks, maps = _check_pixels(masks, maps)
    flat_masks, flat_maps = masks.reshape(-1), maps.reshape(-1)
    if flat_maps.size > max_pixels:
        keep = np.sort(np.random.default_rng(seed).choice(flat_maps.size, max_pixels,
                                                          replace=False))
        flat_masks, flat_maps = flat_masks[keep], flat_maps[keep]
    return youden_threshold(flat_masks, flat_maps)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values: reject where adjusted p < alpha keeps the
    family-wise error rate at alpha over all the p-values given. NaNs stay NaN and do not count."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)  # adjusted p-values never decrease down the order
    return out


def _subject_strata(labels: np.ndarray, subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each image's subject, per subject: has a diseased image)."""
    codes, subject_of = np.unique(np.asarray(subjects).astype(str), return_inverse=True)
    diseased = np.zeros(codes.size, bool)
    np.logical_or.at(diseased, subject_of, np.asarray(labels) == 1)
    return subject_of, diseased


def cluster_weights(labels: np.ndarray, subjects: np.ndarray, n_boot: int,
                    rng: np.random.Generator) -> np.ndarray:
    """(n_boot, N) resampling weights of N test images from a bootstrap over subjects.

    Subjects are drawn with replacement within two strata (subjects with a diseased image and
    subjects without one, so every resample has both classes); an image's weight is how often
    its subject was drawn. With one image per subject this is the stratified image bootstrap.
    """
    subject_of, diseased = _subject_strata(labels, subjects)
    counts = np.zeros((n_boot, diseased.size), np.int32)
    rows = np.arange(n_boot)[:, None]
    for stratum in (np.flatnonzero(diseased), np.flatnonzero(~diseased)):
        drawn = stratum[rng.integers(0, stratum.size, (n_boot, stratum.size))]
        np.add.at(counts, (np.broadcast_to(rows, drawn.shape), drawn), 1)
    return counts[:, subject_of]


def weighted_aucs(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B, R) AUCs of R score rows (R, N) under B integer image weights (B, N): the
    Mann-Whitney AUC of the resample in which image i appears weights[b, i] times (ties 1/2)."""
    labels = np.asarray(labels) == 1
    scores = np.atleast_2d(scores)
    out = np.empty((weights.shape[0], scores.shape[0]))
    block = max(1, _BOOT_BLOCK // weights.shape[1])
    for r, row in enumerate(scores):
        order = np.argsort(row, kind="stable")
        sorted_row = row[order]
        # Tied scores form one group: a diseased image beats the healthy weight strictly below
        # its group and half of the healthy weight inside it.
        starts = np.flatnonzero(np.r_[True, sorted_row[1:] != sorted_row[:-1]])
        pos = labels[order]
        for b0 in range(0, weights.shape[0], block):
            w = weights[b0:b0 + block][:, order].astype(np.float64)
            pos_w = np.add.reduceat(w * pos, starts, axis=1)
            neg_w = np.add.reduceat(w * ~pos, starts, axis=1)
            below = np.cumsum(neg_w, axis=1) - neg_w
            wins = (pos_w * (below + 0.5 * neg_w)).sum(axis=1)
            out[b0:b0 + block, r] = wins / (pos_w.sum(axis=1) * neg_w.sum(axis=1))
    return out


@dataclass(frozen=True)
class _Levels:
    """Variance of a seed mean (or a difference of two) at each level, with the degrees of
    freedom each was estimated with."""

    test_var: float
    test_df: int
    seed_var: float
    seed_df: int

    def half_width(self, level: float) -> float:
        """The test level's and the training level's t half-widths added in quadrature
        (conservative: at least the nominal level whatever their ratio)."""
        tail = 0.5 + level / 2
        training = student_t.ppf(tail, self.seed_df) ** 2 * self.seed_var \
            if self.seed_var > 0 else 0.0
        return float(np.sqrt(student_t.ppf(tail, self.test_df) ** 2 * self.test_var + training))


def _two_level_p(delta: float, levels: _Levels) -> float:
    """Two-sided p of a difference: one minus the level of the widest two-level interval around
    it that still excludes 0 (found by bisection; the half-width grows with the level)."""
    if levels.test_var + levels.seed_var <= 0.0 or delta == 0.0:
        return _two_sided_p(delta, levels.test_var + levels.seed_var)
    excess = lambda level: levels.half_width(level) - abs(delta)  # noqa: E731
    low, high = 1e-12, 1.0 - 1e-15
    if excess(high) < 0.0:
        return 1.0 - high
    if excess(low) > 0.0:
        return 1.0
    return float(1.0 - brentq(excess, low, high, xtol=1e-12))


def seed_mean_comparison(labels: np.ndarray, scores: Mapping[str, np.ndarray],
                         subjects: np.ndarray | None = None, *, alpha: float = 0.05,
                         level: float = 0.95, n_boot: int = 2000,
                         seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two-level statistics of the seed-mean AUC, the figure a report prints, for methods
    scored on the same test images.

    `scores`: method -> (S, N) test scores, one row per training seed; `subjects`: the patient of
    each test image (None: every image its own patient). The seed-mean AUC varies at two
    levels, and the variance adds both:

    - the test set: a bootstrap over test *subjects* (stratified by label, `cluster_weights`),
      the same resamples for every method and seed (paired), gives the variance of each seed
      mean and of each difference of seed means; images of one patient move together;
    - training: the between-seed variance of the method's AUCs over its S seeds, divided by S.
      Resampling only S = 3 seeds gives 10 distinct means and understates this variance by a
      third, and a Welch-Satterthwaite t with 2 degrees of freedom under-covers (simulated: 92%
      at a nominal 95% when training noise dominates), so the two levels' half-widths add in
      quadrature instead, Student's t with S - 1 degrees of freedom for the training level and
      with n - 1 for the test level (n patients in the smaller class; their bootstrap variance
      scaled by n / (n - 1)): at or above the nominal level in the simulations
      (`benchmark.coverage`), and the test level alone where the seeds agree exactly (a
      deterministic method). One seed: the training level is unknown and left out (`n_seeds`
      says so). Paired tests invert the same interval for the difference of two seed means
      (t with min(S_i, S_j) - 1 degrees of freedom for the training level).

    Returns a summary, one row per method by AUC descending: method, auc (mean over seeds),
    ci_low, ci_high (at `level`, clipped to [0, 1]), seed_sd (between-seed sd of the AUC), n_seeds,
    p_value (two-sided, against the best; NaN for the best), p_holm (Holm-adjusted over the
    comparisons with the best), tied_with_best (the best and every method with p_holm >= alpha);
    and a method x method table of Holm-adjusted two-sided p-values over all pairs (diagonal 1).
    """
    names = list(scores)
    if not names:
        raise ValueError("no methods to compare")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 2:
        raise ValueError(f"the bootstrap needs at least 2 resamples, got {n_boot}")
    matrices = [np.atleast_2d(np.asarray(scores[name], dtype=float)) for name in names]
    groups = np.repeat(np.arange(len(names)), [m.shape[0] for m in matrices])
    labels, stacked = _stack(labels, *np.concatenate(matrices))
    if subjects is None:
        subjects = np.arange(labels.size)
    elif len(subjects) != labels.size:
        raise ValueError(f"{len(subjects)} subject ids for {labels.size} test images")
    weights = cluster_weights(labels, np.asarray(subjects), n_boot, np.random.default_rng(seed))
    # The bootstrap variance of a mean of n patients is (n - 1)/n of the unbiased one and rests
    # on about n - 1 degrees of freedom; n is the smaller stratum, the one that limits the AUC.
    _, diseased = _subject_strata(labels, np.asarray(subjects))
    n_small = int(min(diseased.sum(), (~diseased).sum()))
    test_df, inflation = max(n_small - 1, 1), n_small / max(n_small - 1, 1)
    observed = _midrank_aucs(labels, stacked)
    boots = weighted_aucs(labels, stacked, weights)
    k = len(names)
    means = np.array([observed[groups == i].mean() for i in range(k)])
    boot_means = np.stack([boots[:, groups == i].mean(axis=1) for i in range(k)])
    n_seeds = np.bincount(groups, minlength=k)
    seed_sd = np.array([np.std(observed[groups == i], ddof=1) if n_seeds[i] > 1 else np.nan
                        for i in range(k)])
    # The training level's share of each variance (0 with one seed: unknown, left out).
    seed_var = np.where(n_seeds > 1, np.nan_to_num(seed_sd) ** 2 / n_seeds, 0.0)

    def p_value(i: int, j: int) -> float:
        test_var = inflation * float(np.var(boot_means[i] - boot_means[j], ddof=1))
        df = max(min(n_seeds[i], n_seeds[j]) - 1, 1)
        return _two_level_p(float(means[i] - means[j]),
                            _Levels(test_var, test_df, float(seed_var[i] + seed_var[j]), df))

    ci_low, ci_high = np.empty(k), np.empty(k)
    for i in range(k):
        half = _Levels(inflation * float(np.var(boot_means[i], ddof=1)), test_df,
                       float(seed_var[i]), max(n_seeds[i] - 1, 1)).half_width(level)
        ci_low[i], ci_high[i] = max(0.0, means[i] - half), min(1.0, means[i] + half)
    best = int(np.argmax(means))
    p = np.array([np.nan if i == best else p_value(i, best) for i in range(k)])
    p_holm = holm(p)
    summary = pd.DataFrame({
        "method": names, "auc": means, "ci_low": ci_low, "ci_high": ci_high,
        "seed_sd": seed_sd, "n_seeds": n_seeds, "p_value": p, "p_holm": p_holm,
        "tied_with_best": (np.arange(k) == best) | (p_holm >= alpha),
    }).sort_values("auc", ascending=False, kind="stable").reset_index(drop=True)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    adjusted = holm(np.array([p_value(i, j) for i, j in pairs]))
    pairwise = np.ones((k, k))
    for (i, j), value in zip(pairs, adjusted, strict=True):
        pairwise[i, j] = pairwise[j, i] = value
    return summary, pd.DataFrame(pairwise, index=names, columns=names)
