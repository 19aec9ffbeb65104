"""Statistics the reports print: confidence intervals for an AUC, tests between two AUCs measured
on the same test images, and pixel-level (segmentation) metrics.

AUC variances and covariances follow DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas
under two or more correlated receiver operating characteristic curves: a nonparametric approach",
Biometrics 44:837-845, computed with the fast midrank algorithm of Sun & Xu (2014), "Fast
implementation of DeLong's algorithm for comparing the areas under correlated receiver operating
characteristic curves", IEEE Signal Processing Letters 21:1389-1393. Ties count 1/2 throughout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from benchmark.metrics import _check_scores, youden_threshold

#: The tests `compare_to_best` and `pairwise_p_values` accept.
TESTS = ("delong", "bootstrap")

# Bootstrap rows are ranked in blocks of about this many scores, to bound memory on large test sets.
_BOOT_BLOCK = 2_000_000
# Pixels streamed per step in `pixel_auroc`.
_PIXEL_CHUNK = 1 << 20


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str  # e.g. "DeLong" or "bootstrap (2000 resamples)"


@dataclass(frozen=True)
class _AucSample:
    """AUCs of k methods plus what their (co)variances are estimated from.

    `parts` holds (replicates (k, r), weight) pairs: var(AUC_i - AUC_j) is the weighted sum of
    the sample variances of the replicate differences. For DeLong the replicates are the
    structural components V10 (weight 1/m) and V01 (weight 1/n); for the bootstrap they are the
    resampled AUCs (weight 1). Working on differences directly (rather than on var_i + var_j -
    2 cov_ij) makes the variance exactly 0 when two methods rank the images identically.
    """

    aucs: np.ndarray
    parts: tuple[tuple[np.ndarray, float], ...]

    def variance(self, i: int, j: int | None = None) -> float:
        """var(AUC_i), or var(AUC_i - AUC_j) when j is given."""
        return float(sum(
            weight * np.var(reps[i] if j is None else reps[i] - reps[j], ddof=1)
            for reps, weight in self.parts))

    def p_value(self, i: int, j: int) -> float:
        return _two_sided_p(float(self.aucs[i] - self.aucs[j]), self.variance(i, j))


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
    # DeLong's sample variances divide by m - 1 and n - 1; the bootstrap needs both classes.
    if min(n_pos, labels.size - n_pos) < 2:
        raise ValueError("AUC statistics need at least two healthy and two diseased images")
    return labels, np.stack([s for _, s in checked])


def _delong_sample(labels: np.ndarray, scores: np.ndarray) -> _AucSample:
    """DeLong's (1988) structural components of k methods at once, by Sun & Xu's (2014) midranks."""
    pos = labels == 1
    x, y = scores[:, pos], scores[:, ~pos]  # diseased and healthy scores
    m, n = x.shape[1], y.shape[1]
    tx = rankdata(x, axis=1)
    ty = rankdata(y, axis=1)
    tz = rankdata(np.concatenate([x, y], axis=1), axis=1)
    # V10: per diseased image, the share of healthy images scored lower (ties 1/2);
    # V01: per healthy image, the share of diseased images scored higher.
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return _AucSample(aucs=v10.mean(axis=1), parts=((v10, 1.0 / m), (v01, 1.0 / n)))


def _bootstrap_aucs(labels: np.ndarray, scores: np.ndarray, n_boot: int,
                    seed: int) -> np.ndarray:
    """(n_boot, k) AUCs on stratified resamples; every method sees the same resampled images,
    which is what makes the bootstrap paired."""
    if n_boot < 2:
        raise ValueError(f"the bootstrap needs at least 2 resamples, got {n_boot}")
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    m, n = pos.size, neg.size
    # Diseased and healthy images are resampled separately, so every resample has both classes.
    idx = np.concatenate([rng.choice(pos, (n_boot, m)), rng.choice(neg, (n_boot, n))], axis=1)
    out = np.empty((n_boot, scores.shape[0]))
    block = max(1, _BOOT_BLOCK // (m + n))
    for start in range(0, n_boot, block):
        rows = idx[start:start + block]
        for k, method_scores in enumerate(scores):
            ranks = rankdata(method_scores[rows], axis=1)
            # Mann-Whitney: AUC = (rank sum of the diseased - m(m+1)/2) / (m n).
            out[start:start + block, k] = (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    return out


def _auc_sample(labels: np.ndarray, scores: np.ndarray, test: str, n_boot: int,
                seed: int) -> _AucSample:
    if test == "delong":
        return _delong_sample(labels, scores)
    if test == "bootstrap":
        boots = _bootstrap_aucs(labels, scores, n_boot, seed)
        return _AucSample(aucs=_delong_sample(labels, scores).aucs, parts=((boots.T, 1.0),))
    raise ValueError(f"unknown test {test!r}; use one of {TESTS}")


def delong_auc_variance(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(AUC, variance of the AUC) by DeLong et al. (1988), via Sun & Xu's (2014) midranks.

    Ties count 1/2. A perfectly separating (or constant) scorer has variance 0: DeLong's
    estimate has no spread to measure there.
    """
    sample = _delong_sample(*_stack(labels, scores))
    return float(sample.aucs[0]), sample.variance(0)


def auc_ci(labels: np.ndarray, scores: np.ndarray, *, level: float = 0.95,
           method: str = "delong", n_boot: int = 2000, seed: int = 0) -> Interval:
    """Two-sided confidence interval for the AUC.

    "delong": AUC +- z sqrt(var) with DeLong's (1988) variance, clipped to [0, 1].
    "bootstrap": percentile interval over `n_boot` stratified resamples of the test images.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    labels, matrix = _stack(labels, scores)
    if method == "delong":
        sample = _delong_sample(labels, matrix)
        half = norm.ppf(0.5 + level / 2) * np.sqrt(sample.variance(0))
        auc = float(sample.aucs[0])
        return Interval(float(max(0.0, auc - half)), float(min(1.0, auc + half)), "DeLong")
    if method == "bootstrap":
        boots = _bootstrap_aucs(labels, matrix, n_boot, seed)[:, 0]
        low, high = np.quantile(boots, [0.5 - level / 2, 0.5 + level / 2])
        return Interval(float(low), float(high), f"bootstrap ({n_boot} resamples)")
    raise ValueError(f"unknown interval method {method!r}; use 'delong' or 'bootstrap'")


def delong_paired_test(labels: np.ndarray, scores_a: np.ndarray,
                       scores_b: np.ndarray) -> tuple[float, float]:
    """(AUC_a - AUC_b, two-sided p) for two correlated AUCs on the same test images, from
    DeLong's (1988) covariance (Sun & Xu 2014). p = 1.0 when both rank the images identically."""
    sample = _delong_sample(*_stack(labels, scores_a, scores_b))
    return float(sample.aucs[0] - sample.aucs[1]), sample.p_value(0, 1)


def paired_bootstrap_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, *,
                          n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(AUC_a - AUC_b, two-sided p) from a stratified paired bootstrap.

    As in pROC's bootstrap test, z = observed difference / standard deviation of the resampled
    differences, referred to the normal distribution (stabler than counting sign flips, and on
    the same scale as the DeLong test).
    """
    labels, matrix = _stack(labels, scores_a, scores_b)
    sample = _auc_sample(labels, matrix, "bootstrap", n_boot, seed)
    return float(sample.aucs[0] - sample.aucs[1]), sample.p_value(0, 1)


def _table_sample(table: Mapping[str, tuple[np.ndarray, np.ndarray]], test: str, n_boot: int,
                  seed: int) -> tuple[list[str], _AucSample]:
    if not table:
        raise ValueError("no methods to compare")
    names = list(table)
    labels = [np.asarray(lab).astype(int).ravel() for lab, _ in table.values()]
    for name, lab in zip(names[1:], labels[1:], strict=True):
        if not np.array_equal(lab, labels[0]):
            raise ValueError(f"{name!r} was scored on other labels than {names[0]!r}: "
                             "paired tests need the same test images")
    stacked = _stack(labels[0], *(scores for _, scores in table.values()))
    return names, _auc_sample(*stacked, test, n_boot, seed)


def compare_to_best(table: Mapping[str, tuple[np.ndarray, np.ndarray]], *, alpha: float = 0.05,
                    test: str = "delong", n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each method against the best (highest AUC; the first listed wins exact ties).

    Columns: method, auc, delta (auc - best auc), p_value (paired test vs. the best; NaN for the
    best), tied_with_best (the best and every method with p >= alpha); rows by auc, descending.
    `test` is "delong" (DeLong 1988 / Sun & Xu 2014) or "bootstrap" (`n_boot`, `seed`).
    """
    names, sample = _table_sample(table, test, n_boot, seed)
    best = int(np.argmax(sample.aucs))
    p = np.array([np.nan if i == best else sample.p_value(i, best) for i in range(len(names))])
    frame = pd.DataFrame({
        "method": names,
        "auc": sample.aucs,
        "delta": sample.aucs - sample.aucs[best],
        "p_value": p,
        "tied_with_best": (np.arange(len(names)) == best) | (p >= alpha),
    })
    # A stable sort keeps the best (first of equal AUCs) on top.
    return frame.sort_values("auc", ascending=False, kind="stable").reset_index(drop=True)


def pairwise_p_values(table: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                      test: str = "delong", n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Square method x method frame of two-sided paired-test p-values (diagonal 1.0)."""
    names, sample = _table_sample(table, test, n_boot, seed)
    k = len(names)
    p = np.ones((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            p[i, j] = p[j, i] = sample.p_value(i, j)
    return pd.DataFrame(p, index=pd.Index(names, name="method"), columns=names)


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


def seed_mean_comparison(labels: np.ndarray, scores: Mapping[str, np.ndarray], *,
                         alpha: float = 0.05, level: float = 0.95, n_boot: int = 2000,
                         seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Statistics of the seed-mean AUC, the figure a report prints, for methods scored on the
    same test images.

    `scores`: method -> (S, N) test scores, one row per seed. One stratified bootstrap over the
    test images resamples every method and seed with the same indices (paired), and each
    resample's per-method figure is the mean AUC over that method's seeds. Returns

    - a summary, one row per method by AUC descending: method, auc (mean over seeds), ci_low,
      ci_high (percentile interval at `level`), p_value (paired, against the best; NaN for the
      best), tied_with_best (the best and every method with p >= alpha);
    - a method x method table of two-sided p-values (diagonal 1).
    """
    names = list(scores)
    if not names:
        raise ValueError("no methods to compare")
    matrices = [np.atleast_2d(np.asarray(scores[name], dtype=float)) for name in names]
    groups = np.repeat(np.arange(len(names)), [m.shape[0] for m in matrices])
    labels, stacked = _stack(labels, *np.concatenate(matrices))
    observed = _delong_sample(labels, stacked).aucs
    boots = _bootstrap_aucs(labels, stacked, n_boot, seed)
    means = np.stack([observed[groups == k].mean() for k in range(len(names))])
    boot_means = np.stack([boots[:, groups == k].mean(axis=1) for k in range(len(names))])
    sample = _AucSample(aucs=means, parts=((boot_means, 1.0),))
    best = int(np.argmax(means))
    tail = (1.0 - level) / 2.0
    p = np.array([np.nan if i == best else sample.p_value(i, best) for i in range(len(names))])
    summary = pd.DataFrame({
        "method": names, "auc": means,
        "ci_low": np.quantile(boot_means, tail, axis=1),
        "ci_high": np.quantile(boot_means, 1.0 - tail, axis=1),
        "p_value": p,
        "tied_with_best": (np.arange(len(names)) == best) | (p >= alpha),
    }).sort_values("auc", ascending=False, kind="stable").reset_index(drop=True)
    pairwise = pd.DataFrame(
        [[1.0 if i == j else sample.p_value(i, j) for j in range(len(names))]
         for i in range(len(names))], index=names, columns=names)
    return summary, pairwise
