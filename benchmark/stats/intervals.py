"""Statistics the reports print: the two-level interval of a seed-mean AUC and paired tests
between methods scored on the same test images (`seed_mean_comparison`, Holm-adjusted), the
same interval for the other image metrics (`seed_mean_intervals`). The pixel-level metrics
are in pixel_metrics.py.

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

from medad_bench.stats import image_metrics as metrics
from medad_bench.stats.image_metrics import _check_scores

# Image weights of this many (resamples x images) per block in `weighted_aucs`, to bound memory.
_BOOT_BLOCK = 2_000_000


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


#: Image metrics `seed_mean_intervals` gives an interval, beside the AUC's: the threshold-free
#: ones, and those at each run's logged threshold.
CLINICAL_INTERVALS = ("ap", "sens_at_spec95", "sens_at_spec90", "spec_at_sens95")
THRESHOLD_INTERVALS = ("precision", "recall", "specificity", "f1", "accuracy")


def weighted_image_metrics(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray,
                           thresholds: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """(B, R) values of each of CLINICAL_INTERVALS (and, given a threshold per row, each of
    THRESHOLD_INTERVALS at it) for R score rows (R, N) under B integer image weights (B, N):
    the metric of the resample in which image i appears weights[b, i] times, exactly as
    `benchmark.stats.image_metrics` defines it on that resample (tied scores one operating point).

    Memory is bounded as in `weighted_aucs`: blocks of resamples, per row.
    """
    labels = np.asarray(labels) == 1
    scores = np.atleast_2d(scores)
    names = CLINICAL_INTERVALS + (THRESHOLD_INTERVALS if thresholds is not None else ())
    out = {name: np.empty((weights.shape[0], scores.shape[0])) for name in names}
    block = max(1, _BOOT_BLOCK // weights.shape[1])
    for r, row in enumerate(scores):
        order = np.argsort(-row, kind="stable")
        ordered = row[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        pos = labels[order]
        # How many distinct scores are >= the row's threshold: `score >= t` flags them.
        flagged = None if thresholds is None else int(np.sum(ordered[starts] >= thresholds[r]))
        for b0 in range(0, weights.shape[0], block):
            w = weights[b0:b0 + block][:, order].astype(np.float64)
            gained = w * pos
            if starts.size < row.size:  # ties: one operating point per distinct score
                gained, w = (np.add.reduceat(gained, starts, axis=1),
                             np.add.reduceat(w, starts, axis=1))
            tp = np.cumsum(gained, axis=1)
            fp = np.cumsum(w, axis=1) - tp
            rows = slice(b0, b0 + block)
            out["ap"][rows, r] = metrics.ap_from_counts(tp, fp, gained)
            for name, target in metrics.SENS_AT_SPEC.items():
                out[name][rows, r] = metrics.sens_at_spec_from_counts(tp, fp, target)
            for name, target in metrics.SPEC_AT_SENS.items():
                out[name][rows, r] = metrics.spec_at_sens_from_counts(tp, fp, target)
            if flagged is not None:
                for name, value in _at_threshold(tp, fp, flagged).items():
                    out[name][rows, r] = value
    return out


def _at_threshold(tp: np.ndarray, fp: np.ndarray, flagged: int) -> dict[str, np.ndarray]:
    """Threshold metrics (as `metrics.threshold_metrics`, zero division 0) of the operating
    point that flags the first `flagged` distinct scores, from (B, G) cumulative counts."""
    positives, negatives = tp[:, -1], fp[:, -1]
    hit = tp[:, flagged - 1] if flagged else np.zeros_like(positives)
    false = fp[:, flagged - 1] if flagged else np.zeros_like(negatives)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    return {"precision": ratio(hit, hit + false), "recall": ratio(hit, positives),
            "specificity": ratio(negatives - false, negatives),
            "f1": ratio(2 * hit, hit + false + positives),
            "accuracy": ratio(hit + negatives - false, positives + negatives)}


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
      (`benchmark.stats.coverage`), and the test level alone where the seeds agree exactly (a
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
    test_df, inflation = _test_level(labels, np.asarray(subjects))
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


def _test_level(labels: np.ndarray, subjects: np.ndarray) -> tuple[int, float]:
    """(degrees of freedom, variance inflation) of the test level: the bootstrap variance of a
    mean of n patients is (n - 1)/n of the unbiased one and rests on about n - 1 degrees of
    freedom; n is the smaller stratum, the one that limits the metric."""
    _, diseased = _subject_strata(labels, subjects)
    n_small = int(min(diseased.sum(), (~diseased).sum()))
    return max(n_small - 1, 1), n_small / max(n_small - 1, 1)


def seed_mean_intervals(labels: np.ndarray, scores: Mapping[str, np.ndarray],
                        subjects: np.ndarray | None = None,
                        thresholds: Mapping[str, np.ndarray] | None = None, *,
                        level: float = 0.95, n_boot: int = 2000,
                        seed: int = 0) -> pd.DataFrame:
    """The two-level interval of `seed_mean_comparison`, for the other image metrics:
    CLINICAL_INTERVALS, and THRESHOLD_INTERVALS where `thresholds` gives each run's logged
    threshold (method -> (S,), in the order of its score rows; a NaN leaves that method's
    threshold metrics out).

    The same resamples as the AUC's (`cluster_weights` with the same `seed` and `n_boot`:
    patients drawn together, stratified by label, shared by every method and seed), the same
    test-level t and inflation, the same training level (between-seed variance, t with S - 1
    degrees of freedom), added in quadrature; clipped to [0, 1]. No p-values: the report tests
    the AUC only.

    Returns a row per (method, metric): method, metric, value (mean over seeds of the
    observed metric), ci_low, ci_high, n_seeds.
    """
    names = list(scores)
    if not names:
        raise ValueError("no methods to compare")
    matrices = [np.atleast_2d(np.asarray(scores[name], dtype=float)) for name in names]
    groups = np.repeat(np.arange(len(names)), [m.shape[0] for m in matrices])
    labels, stacked = _stack(labels, *np.concatenate(matrices))
    subjects = np.arange(labels.size) if subjects is None else np.asarray(subjects)
    if subjects.size != labels.size:
        raise ValueError(f"{subjects.size} subject ids for {labels.size} test images")
    row_thresholds = None
    if thresholds is not None:
        row_thresholds = np.concatenate([np.broadcast_to(np.asarray(thresholds[name], float),
                                                         (m.shape[0],))
                                         for name, m in zip(names, matrices, strict=True)])
    weights = cluster_weights(labels, subjects, n_boot, np.random.default_rng(seed))
    test_df, inflation = _test_level(labels, subjects)
    observed = weighted_image_metrics(labels, stacked, np.ones((1, labels.size), np.int32),
                                      _finite_or_inf(row_thresholds))
    boots = weighted_image_metrics(labels, stacked, weights, _finite_or_inf(row_thresholds))
    rows = []
    for metric, values in observed.items():
        if row_thresholds is not None and metric in THRESHOLD_INTERVALS:
            values = np.where(np.isfinite(row_thresholds), values, np.nan)
        for i, name in enumerate(names):
            mine = groups == i
            seeds = int(mine.sum())
            mean = float(values[0, mine].mean())
            seed_var = float(np.var(values[0, mine], ddof=1)) / seeds if seeds > 1 else 0.0
            boot_mean = boots[metric][:, mine].mean(axis=1)
            low = high = np.nan
            if np.isfinite(mean):
                half = _Levels(inflation * float(np.var(boot_mean, ddof=1)), test_df, seed_var,
                               max(seeds - 1, 1)).half_width(level)
                low, high = max(0.0, mean - half), min(1.0, mean + half)
            rows.append({"method": name, "metric": metric, "value": mean, "ci_low": low,
                         "ci_high": high, "n_seeds": seeds})
    return pd.DataFrame(rows)


def _finite_or_inf(thresholds: np.ndarray | None) -> np.ndarray | None:
    """Missing thresholds (NaN) as +inf, so the arithmetic runs; their values are dropped."""
    return None if thresholds is None else np.where(np.isfinite(thresholds), thresholds, np.inf)
