"""Evaluation metrics: ROC AUC first, then threshold metrics at a threshold chosen without
test labels (Youden's J on the labelled validation split, or a percentile of the healthy
validation scores where that split has no diseased image), and the threshold-free clinical
operating points: average precision, sensitivity at a fixed specificity, specificity at a fixed
sensitivity.

Operating points are the ROC's real ones: one per distinct score (predict `score >= t`), plus
"nothing positive" above the highest score. Tied scores are one point (a tie is flagged whole
or not at all); nothing is interpolated between points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

#: Metric names in the order the report shows them.
METRIC_NAMES = ("auc", "precision", "recall", "specificity", "f1", "accuracy")
#: The threshold-free clinical metrics `evaluate` adds (issue 15); runs logged before them
#: lack these.
CLINICAL_NAMES = ("ap", "sens_at_spec95", "sens_at_spec90", "spec_at_sens95")
#: Fixed specificities / sensitivities of CLINICAL_NAMES.
SENS_AT_SPEC = {"sens_at_spec95": 0.95, "sens_at_spec90": 0.90}
SPEC_AT_SENS = {"spec_at_sens95": 0.95}
#: Which rule chose a threshold, logged as the metric `threshold_rule` (image) and
#: `pixel_threshold_rule` (pixel) by benchmark.engine.evaluation: MLflow metrics are numbers,
#: so each rule has a code.
THRESHOLD_RULES = {"youden_val": 0.0, "healthy_val_percentile": 1.0}
#: The image threshold's percentile of healthy validation scores when validation has no
#: diseased image: at most 5% of healthy validation images flagged.
HEALTHY_PERCENTILE = 95.0
#: The pixel threshold's percentile of healthy validation pixels when validation has no lesion
#: pixel: at most 1% of healthy pixels flagged (a lesion is a few % of an image).
PIXEL_HEALTHY_PERCENTILE = 99.0
# Ratios compared with a target (e.g. specificity 19/20 >= 0.95) carry float rounding of
# ~1e-16: this slack keeps an operating point that meets the target exactly.
_SLACK = 1e-12


def _check_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=float).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity: the method diverged")
    if set(np.unique(labels)) - {0, 1}:
        raise ValueError("labels must be 0 (healthy) or 1 (diseased)")
    return labels, scores


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; needs both classes."""
    labels, scores = _check_scores(labels, scores)
    if labels.min() == labels.max():
        raise ValueError("ROC AUC needs both healthy and diseased images")
    return float(roc_auc_score(labels, scores))


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising Youden's J = sensitivity + specificity - 1.

    Predictions are `score >= threshold`. Among ties the first (highest) threshold on the ROC
    curve wins, which is the most specific operating point with that J.
    """
    labels, scores = _check_scores(labels, scores)
    if labels.min() == labels.max():
        raise ValueError(
            "Youden's J needs both healthy and diseased images in the validation split")
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    threshold = float(thresholds[best])
    if not np.isfinite(threshold):  # sklearn's first threshold is +inf (predict nothing positive)
        threshold = float(np.nextafter(scores.max(), np.inf))
    return threshold


@dataclass(frozen=True)
class ThresholdMetrics:
    precision: float
    recall: float
    specificity: float
    f1: float
    accuracy: float


def threshold_metrics(labels: np.ndarray, scores: np.ndarray,
                      threshold: float) -> ThresholdMetrics:
    """Precision, recall (sensitivity), specificity, F1 and accuracy of `score >= threshold`.

    A ratio whose denominator is zero (e.g. precision with no positive prediction) is 0, as in
    scikit-learn's `zero_division=0`.
    """
    labels, scores = _check_scores(labels, scores)
    predicted = scores >= threshold
    positive = labels == 1
    tp = int(np.sum(predicted & positive))
    fp = int(np.sum(predicted & ~positive))
    tn = int(np.sum(~predicted & ~positive))
    fn = int(np.sum(~predicted & positive))

    def ratio(num: int, den: int) -> float:
        return num / den if den else 0.0

    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    return ThresholdMetrics(
        precision=precision,
        recall=recall,
        specificity=ratio(tn, tn + fp),
        f1=ratio(2 * tp, 2 * tp + fp + fn),
        accuracy=ratio(tp + tn, labels.size),
    )


def evaluate(test_labels: np.ndarray, test_scores: np.ndarray,
             threshold: float) -> dict[str, float]:
    """All report metrics for one run: AUC on the test split, the threshold metrics and the
    clinical operating points (CLINICAL_NAMES)."""
    values = {"auc": roc_auc(test_labels, test_scores)}
    values.update(vars(threshold_metrics(test_labels, test_scores, threshold)))
    values.update(clinical_metrics(test_labels, test_scores))
    return values


def clinical_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AP, sensitivity at 95% and 90% specificity and specificity at 95% sensitivity."""
    tp, fp, _ = operating_counts(labels, scores)
    values = {"ap": float(ap_from_counts(tp, fp)[0])}
    values.update({name: float(sens_at_spec_from_counts(tp, fp, target)[0])
                   for name, target in SENS_AT_SPEC.items()})
    values.update({name: float(spec_at_sens_from_counts(tp, fp, target)[0])
                   for name, target in SPEC_AT_SENS.items()})
    return values


def operating_counts(labels: np.ndarray,
                     scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tp, fp, thresholds), each (1, G): per distinct score t, highest first, the diseased
    and healthy images with `score >= t`. Needs both classes."""
    labels, scores = _check_scores(labels, scores)
    if labels.min() == labels.max():
        raise ValueError("these metrics need both healthy and diseased images")
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    positive = labels[order].astype(np.float64)
    tp = np.cumsum(np.add.reduceat(positive, starts))
    fp = np.cumsum(np.add.reduceat(1.0 - positive, starts))
    return tp[None], fp[None], ordered[starts]


def ap_from_counts(tp: np.ndarray, fp: np.ndarray,
                   gained: np.ndarray | None = None) -> np.ndarray:
    """Average precision of (B, G) cumulative counts (as `operating_counts`, or weighted by
    whole-number resampling weights): sum over the operating points of (recall gained) x
    (precision there), i.e. scikit-learn's `average_precision_score` (step-wise, no
    interpolation). `gained`: the diseased count of each point, if already at hand. (B,)"""
    if gained is None:
        gained = np.diff(tp, axis=1, prepend=0.0)
    # Counts are whole numbers: a point flagging nothing (tp = fp = 0) gains nothing either.
    precision = tp / np.maximum(tp + fp, 1.0)
    return np.einsum("ij,ij->i", gained, precision) / tp[:, -1]


def sens_at_spec_from_counts(tp: np.ndarray, fp: np.ndarray, specificity: float) -> np.ndarray:
    """The highest sensitivity among the operating points whose specificity is at least
    `specificity` (the conservative side: never below the asked specificity). The point
    "nothing positive" (sensitivity 0, specificity 1) always qualifies. (B,)"""
    _check_target("specificity", specificity)
    meets = 1.0 - fp / fp[:, -1:] >= specificity - _SLACK  # a prefix: fp only grows
    last = meets.sum(axis=1) - 1
    rows = np.arange(tp.shape[0])
    return np.where(last >= 0, tp[rows, np.maximum(last, 0)], 0.0) / tp[:, -1]


def spec_at_sens_from_counts(tp: np.ndarray, fp: np.ndarray, sensitivity: float) -> np.ndarray:
    """The highest specificity among the operating points whose sensitivity is at least
    `sensitivity` (never below it); the lowest threshold (everything positive, sensitivity 1)
    always qualifies. (B,)"""
    _check_target("sensitivity", sensitivity)
    first = np.argmax(tp / tp[:, -1:] >= sensitivity - _SLACK, axis=1)
    rows = np.arange(tp.shape[0])
    return 1.0 - fp[rows, first] / fp[:, -1]


def _check_target(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"the {name} to reach must be in (0, 1], got {value}")


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, step-wise): the mean over
    diseased images of the precision at their score's operating point; tied scores share one
    point. Equals scikit-learn's `average_precision_score`."""
    return float(ap_from_counts(*operating_counts(labels, scores)[:2])[0])


def sensitivity_at_specificity(labels: np.ndarray, scores: np.ndarray,
                               specificity: float = 0.95) -> float:
    """The highest sensitivity of `score >= t` over the ROC's real operating points whose
    specificity is >= `specificity`; 0 when only "nothing positive" qualifies."""
    tp, fp, _ = operating_counts(labels, scores)
    return float(sens_at_spec_from_counts(tp, fp, specificity)[0])


def specificity_at_sensitivity(labels: np.ndarray, scores: np.ndarray,
                               sensitivity: float = 0.95) -> float:
    """The highest specificity of `score >= t` over the ROC's real operating points whose
    sensitivity is >= `sensitivity`."""
    tp, fp, _ = operating_counts(labels, scores)
    return float(spec_at_sens_from_counts(tp, fp, sensitivity)[0])


def healthy_percentile_threshold(healthy_scores: np.ndarray, percentile: float = 95.0) -> float:
    """A threshold from healthy validation scores alone, for validation splits without
    diseased images: the lowest threshold t, among the scores and just above the highest, at
    which `score >= t` flags at most (100 - percentile)% of them (floor of that share of n).

    The 95th percentile flags at most 5% of the healthy validation images, so their
    specificity is at least 95%. A tie is flagged whole or not at all, so fewer may be flagged
    (never more); no interpolation between scores (numpy's percentile would put t between
    two of them). With too few images to flag any (n < 20 at 95), t is just above the highest.
    """
    scores = np.asarray(healthy_scores, dtype=float).ravel()
    if scores.size == 0:
        raise ValueError("a percentile threshold needs at least one healthy score")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity: the method diverged")
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"the percentile must be in (0, 100), got {percentile}")
    allowed = int(np.floor(scores.size * (100.0 - percentile) / 100.0 + 1e-9))
    values, counts = np.unique(scores, return_counts=True)
    flagged = np.cumsum(counts[::-1])  # flagged at each distinct value, highest first
    within = np.flatnonzero(flagged <= allowed)
    if within.size == 0:
        return float(np.nextafter(values[-1], np.inf))
    return float(values[::-1][within[-1]])


def roc_points(labels: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """The ROC curve's points (fpr, tpr, threshold), for plotting and archiving."""
    labels, scores = _check_scores(labels, scores)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    return {"fpr": fpr, "tpr": tpr, "threshold": thresholds}


def aucp(normal_scores: np.ndarray, unlabeled_scores: np.ndarray) -> float:
    """AUCp: the AUC of known-normal images (pseudo-label 0) against unlabelled test images
    (pseudo-label 1). Needs no test label; higher means the model separates better."""
    normal_scores = np.asarray(normal_scores, dtype=float).ravel()
    unlabeled_scores = np.asarray(unlabeled_scores, dtype=float).ravel()
    labels = np.r_[np.zeros(normal_scores.size), np.ones(unlabeled_scores.size)]
    return roc_auc(labels, np.r_[normal_scores, unlabeled_scores])


def debiased_aucp(aucp_value: float, normal_share: float) -> float:
    """Estimate of the true AUC from AUCp: (AUCp - 0.5 rho) / (1 - rho), rho the share of
    healthy images among the unlabelled test images (the healthy ones score like the known
    normals, contributing AUC 0.5 for their share)."""
    if not 0.0 <= normal_share < 1.0:
        raise ValueError(f"the share of normals must be in [0, 1), got {normal_share}")
    return (aucp_value - 0.5 * normal_share) / (1.0 - normal_share)
