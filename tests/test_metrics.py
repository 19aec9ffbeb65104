import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from benchmark import metrics


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    scores = rng.normal(size=120) + 0.8 * labels
    return labels, scores


def test_auc_matches_sklearn(scored):
    labels, scores = scored
    assert metrics.roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_auc_of_a_perfect_and_an_inverted_scorer():
    labels = np.array([0, 0, 1, 1])
    assert metrics.roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert metrics.roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0


@pytest.mark.parametrize("threshold", [-0.5, 0.0, 0.4, 1.2])
def test_threshold_metrics_match_sklearn(scored, threshold):
    labels, scores = scored
    predicted = (scores >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted).ravel()
    got = metrics.threshold_metrics(labels, scores, threshold)
    assert got.precision == pytest.approx(precision_score(labels, predicted, zero_division=0))
    assert got.recall == pytest.approx(recall_score(labels, predicted))
    assert got.specificity == pytest.approx(tn / (tn + fp))
    assert got.f1 == pytest.approx(f1_score(labels, predicted))
    assert got.accuracy == pytest.approx(accuracy_score(labels, predicted))


def test_precision_is_zero_when_nothing_is_predicted_positive(scored):
    labels, scores = scored
    got = metrics.threshold_metrics(labels, scores, scores.max() + 1)
    assert got.precision == 0.0 and got.recall == 0.0 and got.specificity == 1.0


def test_youden_threshold_maximises_j_by_brute_force(scored):
    labels, scores = scored
    threshold = metrics.youden_threshold(labels, scores)

    def youden(t):
        m = metrics.threshold_metrics(labels, scores, t)
        return m.recall + m.specificity - 1

    best = max(youden(t) for t in np.unique(scores))
    assert youden(threshold) == pytest.approx(best)


def test_youden_threshold_separates_a_separable_set():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    threshold = metrics.youden_threshold(labels, scores)
    assert 0.3 < threshold <= 0.7


def test_one_class_and_bad_scores_are_rejected():
    with pytest.raises(ValueError, match="both"):
        metrics.roc_auc(np.zeros(4), np.arange(4.0))
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_auc(np.array([0, 1]), np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="labels"):
        metrics.roc_auc(np.array([0, 1]), np.array([0.0, 1.0, 2.0]))
