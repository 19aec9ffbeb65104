"""Evaluation metrics: ROC AUC first, then threshold metrics at a threshold chosen without
test labels (Youden's J on the labelled validation split)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

#: Metric names in the order the report shows them.
METRIC_NAMES = ("auc", "precision", "recall", "specificity", "f1", "accuracy")


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
    """All report metrics for one run: AUC on the test split and the threshold metrics."""
    values = {"auc": roc_auc(test_labels, test_scores)}
    values.update(vars(threshold_metrics(test_labels, test_scores, threshold)))
    return values


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
