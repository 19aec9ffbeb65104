from dataclasses import dataclass

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

from medad_bench.api import Method, Prediction
from medad_bench.stats import image_metrics as metrics


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


# -- clinical operating points and AP (issue 15) ------------------------------------------------


def test_average_precision_by_hand_and_against_sklearn():
    from sklearn.metrics import average_precision_score

    # Ranked: D (precision 1/1), H, D (2/3), H, D (3/5): AP = (1 + 2/3 + 3/5) / 3.
    labels = np.array([1, 0, 1, 0, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    assert metrics.average_precision(labels, scores) == pytest.approx(34 / 45, abs=1e-15)
    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = np.r_[0, 1, rng.integers(0, 2, 40)]
        scores = np.round(rng.random(labels.size) + 0.3 * labels, 1)  # ties across classes
        assert metrics.average_precision(labels, scores) == pytest.approx(
            average_precision_score(labels, scores), abs=1e-12)


@pytest.fixture
def operating():
    """20 healthy scores 0.00, 0.05, ..., 0.95 and 10 diseased; 0.9 and 0.0 are tied across
    the classes."""
    healthy = np.arange(20) / 20
    diseased = np.array([0.97, 0.96, 0.9, 0.85, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    return np.r_[np.zeros(20, int), np.ones(10, int)], np.r_[healthy, diseased]


def test_sensitivity_at_specificity_by_hand(operating):
    labels, scores = operating
    # >= 0.95 flags 1 healthy (specificity 0.95) and 2 diseased. The next point, >= 0.9, flags
    # the tied healthy 0.9 with the diseased 0.9: 2 healthy (0.90), 3 diseased. Never
    # interpolated between the two.
    assert metrics.sensitivity_at_specificity(labels, scores, 0.95) == pytest.approx(0.2)
    assert metrics.sensitivity_at_specificity(labels, scores, 0.90) == pytest.approx(0.3)
    # Specificity 1: only points flagging no healthy image, i.e. >= 0.96.
    assert metrics.sensitivity_at_specificity(labels, scores, 1.0) == pytest.approx(0.2)


def test_specificity_at_sensitivity_by_hand(operating):
    labels, scores = operating
    # 9 of 10 diseased at >= 0.1, which flags the 18 healthy 0.10..0.95: specificity 2/20.
    assert metrics.specificity_at_sensitivity(labels, scores, 0.9) == pytest.approx(0.1)
    # 95% needs all 10: >= 0.0 flags every healthy image too (the tie at 0.0).
    assert metrics.specificity_at_sensitivity(labels, scores, 0.95) == 0.0


def test_operating_points_match_torchmetrics_and_the_roc():
    import torch
    from sklearn.metrics import roc_curve
    from torchmetrics.functional.classification import (
        binary_sensitivity_at_specificity,
        binary_specificity_at_sensitivity,
    )

    rng = np.random.default_rng(2)
    for _ in range(15):
        labels = np.r_[0, 1, rng.integers(0, 2, 50)]
        scores = np.round(rng.random(labels.size) * 0.6 + 0.4 * labels, 2)  # in [0, 1], ties
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
        preds, target = torch.tensor(scores), torch.tensor(labels)
        for target_rate in (0.95, 0.9, 0.6):
            sens = metrics.sensitivity_at_specificity(labels, scores, target_rate)
            assert sens == max(t for f, t in zip(fpr, tpr, strict=True)
                               if 1 - f >= target_rate - 1e-12)
            assert sens == pytest.approx(float(binary_sensitivity_at_specificity(
                preds, target, target_rate)[0]), abs=1e-6)
            spec = metrics.specificity_at_sensitivity(labels, scores, target_rate)
            assert spec == pytest.approx(max(1 - f for f, t in zip(fpr, tpr, strict=True)
                                             if t >= target_rate - 1e-12), abs=1e-12)
            assert spec == pytest.approx(float(binary_specificity_at_sensitivity(
                preds, target, target_rate)[0]), abs=1e-6)


def test_evaluate_logs_the_clinical_metrics(scored):
    labels, scores = scored
    values = metrics.evaluate(labels, scores, 0.4)
    assert set(metrics.CLINICAL_NAMES) <= set(values)
    assert values["sens_at_spec95"] <= values["sens_at_spec90"]
    with pytest.raises(ValueError, match="both healthy and diseased"):
        metrics.average_precision(np.zeros(4), np.arange(4.0))
    with pytest.raises(ValueError, match="specificity to reach"):
        metrics.sensitivity_at_specificity(labels, scores, 0.0)


def test_healthy_percentile_threshold_by_hand():
    # 100 scores 0..99: >= 95 flags 95..99, exactly 5%.
    assert metrics.healthy_percentile_threshold(np.arange(100.0), 95) == 95.0
    # 40 scores at the 90th percentile: 4 flagged, >= 36.
    assert metrics.healthy_percentile_threshold(np.arange(40.0), 90) == 36.0
    # Too few to flag any (5% of 19 < 1): just above the highest, nothing flagged.
    threshold = metrics.healthy_percentile_threshold(np.arange(19.0), 95)
    assert 18.0 < threshold < 18.001
    # A tie is flagged whole or not at all: six tied at the top of 100 are more than 5%, so
    # none is flagged (never more than 5%).
    tied = np.r_[np.arange(94.0), np.full(6, 99.0)]
    assert metrics.healthy_percentile_threshold(tied, 95) > 99.0
    assert np.mean(tied >= metrics.healthy_percentile_threshold(tied, 80)) <= 0.2
    for bad, match in (([], "at least one"), ([0.0, np.nan], "NaN")):
        with pytest.raises(ValueError, match=match):
            metrics.healthy_percentile_threshold(np.array(bad), 95)
    with pytest.raises(ValueError, match="percentile"):
        metrics.healthy_percentile_threshold(np.arange(5.0), 100)


# -- a validation split without diseased images (evaluation.evaluate) ---------------------------


@dataclass(frozen=True)
class _NoConfig:
    pass


class MeanDistance(Method):
    """A tiny real method: mean |x - mean healthy image|, the per-pixel distance as its map."""

    name = "mean-distance"
    description = "mean |x - mean healthy image|"
    Config = _NoConfig

    @classmethod
    def profile_config(cls, profile, *, image_size, channels):
        return _NoConfig()

    def _fit(self, train, progress):
        self.mean = np.asarray(train.normal[:], dtype=np.float64).mean(0)

    def _predict(self, images, *, maps, extras):
        difference = np.abs(images - self.mean).mean(1)
        return Prediction(difference.mean((1, 2)), difference if maps else None)


def _healthy_validation(data):
    """The prepared tiny set with the diseased validation images left out, as in published
    splits that validate on healthy images only."""
    drop = (data.manifest.split == "val") & (data.manifest.label == 1)
    data.manifest = data.manifest[~drop].reset_index(drop=True)
    return data


def test_validation_without_diseased_images_uses_the_healthy_percentile():
    from medad_bench.data import load_card
    from medad_bench.data.prepared import prepare
    from medad_bench.engine import evaluation
    from medad_bench.stats import pixel_metrics

    data = _healthy_validation(prepare(load_card("tiny"), show_progress=False))
    assert set(data.labels_of("val")) == {0} and data.masks_of("val").sum() == 0
    method = MeanDistance().fit(data.train_set(), seed=0)
    val = evaluation.predict_split(method, data.images_of("val"), keep_maps=True)
    test = evaluation.predict_split(method, data.images_of("test"), keep_maps=True)
    values = evaluation.evaluate(method, data, val, test)
    assert values["threshold_rule"] == metrics.THRESHOLD_RULES["healthy_val_percentile"]
    assert values["threshold_percentile"] == metrics.HEALTHY_PERCENTILE
    assert values["threshold"] == metrics.healthy_percentile_threshold(val.scores, 95)
    assert np.mean(val.scores >= values["threshold"]) <= 0.05
    assert "val_auc" not in values  # one class: no AUC
    assert values["pixel_threshold_rule"] == metrics.THRESHOLD_RULES["healthy_val_percentile"]
    assert values["pixel_threshold"] == pixel_metrics.healthy_pixel_threshold(
        data.masks_of("val"), val.maps, metrics.PIXEL_HEALTHY_PERCENTILE)
    for name in ("auc", "ap", "sens_at_spec95", "spec_at_sens95", "f1", "pixel_ap", "aupro",
                 "pixel_dice", "pixel_dice_best_oracle"):
        assert np.isfinite(values[name]), name
    assert values["pixel_dice_best_oracle"] >= values["pixel_dice"]  # the oracle's hindsight
    assert evaluation.rule_params(values) == {"threshold_rule": "healthy_val_percentile",
                                              "pixel_threshold_rule": "healthy_val_percentile"}


def test_validation_with_both_classes_keeps_youden_and_none_healthy_is_refused():
    from medad_bench.engine import evaluation
    from medad_bench.errors import BenchError

    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert evaluation.image_threshold(labels, scores) == (
        metrics.youden_threshold(labels, scores), "youden_val")
    with pytest.raises(BenchError, match="none is healthy"):
        evaluation.image_threshold(np.ones(3, int), np.arange(3.0))
