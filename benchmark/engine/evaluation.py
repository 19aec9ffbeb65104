"""Evaluating a fitted method: one prediction pass per split, then everything from it.

`predict_split` runs the method once over a split's images, keeping the maps only where the
dataset has lesion masks (localisation needs them all) and the maps and extras of the sample
images the report shows. Labels are read only after that, by `evaluate`: image (or subject)
metrics at a threshold from the validation split, localisation, the method's diagnostics, and
what the selection rule chose against the other checkpoints.

Thresholds never see test labels. The image threshold maximises Youden's J on the validation
split; where that split has no diseased image (some published splits validate on healthy
images only) it is the HEALTHY_PERCENTILE-th percentile of the healthy validation scores, and
`threshold_rule` says which rule was used (THRESHOLD_RULES). Likewise the pixel threshold:
Youden's J on the validation pixels, or the PIXEL_HEALTHY_PERCENTILE-th percentile of the
healthy validation pixels where validation has no lesion pixel (`pixel_threshold_rule`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from medad_bench.api.contract import Images, Method, Prediction
from medad_bench.data import PreparedDataset
from medad_bench.errors import BenchError
from medad_bench.stats import image_metrics as metrics
from medad_bench.stats import pixel_metrics
from medad_bench.stats.competence import OutputFollowing, competence
from medad_bench.stats.image_metrics import (
    HEALTHY_PERCENTILE,
    PIXEL_HEALTHY_PERCENTILE,
    THRESHOLD_RULES,
)

#: Images predicted at once: bounds the maps held for a split without lesion masks.
PREDICT_CHUNK = 256


@dataclass(frozen=True)
class SplitPrediction:
    """A split's scores, its maps where kept, the diagnostics' extras, and the full prediction
    (maps and extras) of the sample images."""

    scores: np.ndarray
    maps: np.ndarray | None
    extras: dict[str, np.ndarray]
    samples: Prediction | None


def sample_rows(labels: np.ndarray, per_class: int = 4) -> np.ndarray:
    """The first `per_class` healthy then diseased test images: the same ones for every method."""
    return np.r_[np.flatnonzero(labels == 0)[:per_class], np.flatnonzero(labels == 1)[:per_class]]


def predict_split(method: Method, images: Images, *, keep_maps: bool,
                  samples: np.ndarray | None = None,
                  follow: OutputFollowing | None = None) -> SplitPrediction:
    """One pass of `method` over `images`, chunk by chunk: scores for all, maps for all if
    `keep_maps`, the extras `method.diagnostic_extras` names for all, and maps and extras of
    the rows `samples` (for the report's figures). With `follow`, each chunk's inputs and the
    method's output images (`method.output_extra`) are streamed into it for the competence
    checks, never kept whole."""
    want_samples = samples is not None and len(samples) > 0
    output = method.output_extra if follow is not None else None
    extras = want_samples or bool(method.diagnostic_extras) or output is not None
    parts, kept = [], []
    for start in range(0, len(images), PREDICT_CHUNK):
        chunk = images[start:start + PREDICT_CHUNK]
        prediction = method.predict(chunk, maps=keep_maps or want_samples, extras=extras)
        checked_scores(method, prediction.scores, len(chunk))
        if output is not None:
            follow.add(np.asarray(chunk).mean(axis=1), prediction.extras[output])
        parts.append(Prediction(prediction.scores,
                                prediction.maps if keep_maps else None,
                                {k: prediction.extras[k] for k in method.diagnostic_extras
                                 if k in prediction.extras}))
        if want_samples:
            inside = samples[(samples >= start) & (samples < start + len(chunk))]
            kept.append((inside, prediction.rows(inside - start)))
    whole = Prediction.concatenate(parts)
    sample_prediction = None
    if want_samples:
        found = np.concatenate([rows for rows, _ in kept])
        joined = Prediction.concatenate([p for _, p in kept])
        position = {int(row): i for i, row in enumerate(found)}  # chunk order -> given order
        sample_prediction = joined.rows(np.array([position[int(r)] for r in samples], int))
    return SplitPrediction(whole.scores, whole.maps, whole.extras, sample_prediction)


def checked_scores(method: Method, scores: np.ndarray, expected: int) -> np.ndarray:
    """The scores, if there is one finite score per image; otherwise the run fails."""
    if scores.shape != (expected,):
        raise RuntimeError(f"{method.name}.predict returned {scores.shape} scores for "
                           f"{expected} images")
    if not np.all(np.isfinite(scores)):
        raise RuntimeError(f"{method.name} produced NaN/infinite scores")
    return scores


def evaluation_units(data: PreparedDataset, split: str,
                     scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) per evaluation unit: per image, or slice scores averaged per subject."""
    labels = data.labels_of(split)
    if data.card.unit != "subject":
        return labels, scores
    table = pd.DataFrame({"subject": data.subjects_of(split), "label": labels, "score": scores})
    grouped = table.groupby("subject", sort=True).agg(label=("label", "first"),
                                                      score=("score", "mean"))
    return grouped.label.to_numpy(), grouped.score.to_numpy()


def evaluate(method: Method, data: PreparedDataset, val: SplitPrediction,
             test: SplitPrediction) -> dict[str, float]:
    """Test metrics (AUC, AP, sensitivity / specificity operating points, and the threshold
    metrics at the validation threshold: `image_threshold`), localisation, diagnostics.
    Labels are read here, after both splits were predicted. `val_auc` only where validation
    has both classes."""
    val_labels, val_units = evaluation_units(data, "val", val.scores)
    test_labels, test_units = evaluation_units(data, "test", test.scores)
    threshold, rule = image_threshold(val_labels, val_units)
    values = metrics.evaluate(test_labels, test_units, threshold)
    values.update(localisation(data, val, test))
    test_prediction = Prediction(test.scores, test.maps, test.extras)
    values.update({f"test_{key}": value for key, value in method.diagnostics(
        test_prediction, data.labels_of("test"), data.masks_of("test")).items()})
    values["threshold"] = threshold
    values.update(_rule_metrics("threshold", rule, HEALTHY_PERCENTILE))
    if rule == "youden_val":
        values["val_auc"] = metrics.roc_auc(val_labels, val_units)
    return values


def competence_values(method: Method, data: PreparedDataset, val: SplitPrediction,
                      val_images: np.ndarray,
                      follow: OutputFollowing | None) -> dict[str, float | str | bool]:
    """The competence checks (benchmark/stats/competence.py) on the validation split (`val_images`,
    predicted as `val`, its outputs streamed into `follow`): its labels are read here, after
    both splits were scored."""
    labels = data.labels_of("val")
    return competence(val.scores, labels, inputs=val_images if follow is not None else None,
                      outputs=follow, method_checks=method.competence_checks(val.extras, labels))


def image_threshold(val_labels: np.ndarray, val_units: np.ndarray) -> tuple[float, str]:
    """(threshold, rule): Youden's J on the validation units where they hold both classes;
    else the HEALTHY_PERCENTILE-th percentile of the healthy ones (a split validating on
    healthy images only). No healthy validation image leaves nothing to set it on."""
    healthy = val_units[val_labels == 0]
    if healthy.size and healthy.size < val_labels.size:
        return metrics.youden_threshold(val_labels, val_units), "youden_val"
    if healthy.size:
        return metrics.healthy_percentile_threshold(healthy, HEALTHY_PERCENTILE), \
            "healthy_val_percentile"
    raise BenchError(f"the validation split has {val_labels.size} images and none is healthy: "
                     f"no threshold can be set without test labels. Give the dataset's "
                     f"validation split healthy images (its card's protocol).")


def _rule_metrics(prefix: str, rule: str, percentile: float) -> dict[str, float]:
    """`<prefix>_rule` (THRESHOLD_RULES' code) and, for a percentile rule, its percentile."""
    values = {f"{prefix}_rule": THRESHOLD_RULES[rule]}
    if rule == "healthy_val_percentile":
        values[f"{prefix}_percentile"] = percentile
    return values


def rule_params(values: dict[str, float]) -> dict[str, str]:
    """The threshold rules of an `evaluate` result by name, for run params (e.g.
    {"threshold_rule": "healthy_val_percentile"})."""
    names = {code: name for name, code in THRESHOLD_RULES.items()}
    return {key: names[values[key]] for key in ("threshold_rule", "pixel_threshold_rule")
            if key in values}


def localisation(data: PreparedDataset, val: SplitPrediction,
                 test: SplitPrediction) -> dict[str, float]:
    """Pixel metrics on the test split where the dataset has lesion masks and the method
    gives maps: pixel AUROC, Dice at a pixel threshold from the validation split
    (`pixel_threshold`), pixel AP, AUPRO, and the best Dice over thresholds with its threshold
    (`pixel_dice_best_oracle`: chosen with the test masks, an oracle, never a result). NaN
    where the test masks hold no lesion pixel."""
    val_masks = data.masks_of("val")
    if val_masks is None or val.maps is None or test.maps is None:
        return {}
    test_masks = data.masks_of("test")
    threshold, rule = pixel_threshold(val_masks, val.maps)
    return {"pixel_auroc": pixel_metrics.pixel_auroc(test_masks, test.maps),
            "pixel_dice": pixel_metrics.dice_at_threshold(test_masks, test.maps, threshold),
            "pixel_threshold": threshold,
            **_rule_metrics("pixel_threshold", rule, PIXEL_HEALTHY_PERCENTILE),
            **pixel_metrics.pixel_curve_metrics(test_masks, test.maps)}


def pixel_threshold(val_masks: np.ndarray, val_maps: np.ndarray) -> tuple[float, str]:
    """(threshold, rule): Youden's J on the validation pixels where they hold lesion and
    healthy pixels; else the PIXEL_HEALTHY_PERCENTILE-th percentile of the healthy ones."""
    lesion = int(np.count_nonzero(val_masks))
    if 0 < lesion < val_masks.size:
        return pixel_metrics.youden_pixel_threshold(val_masks, val_maps), "youden_val"
    return pixel_metrics.healthy_pixel_threshold(val_masks, val_maps, PIXEL_HEALTHY_PERCENTILE), \
        "healthy_val_percentile"


def selection_table(method: Method, data: PreparedDataset) -> pd.DataFrame | None:
    """After final scoring only: every checkpoint the engine weighed, its label-free AUCp
    beside its true test AUC, which one AUCp chose and which was last. None for a method
    without checkpoints."""
    history = getattr(method, "selection_history", None)
    if not history:
        return None
    rows = []
    for checkpoint in history:
        labels, units = evaluation_units(data, "test", checkpoint.test_scores)
        rows.append({"step": checkpoint.step, **checkpoint.values,
                     "test_auc": metrics.roc_auc(labels, units), "eligible": 1,
                     "aucp_choice": int(checkpoint.step == method.aucp_step),
                     "last": int(checkpoint.step == method.last_step)})
    return pd.DataFrame(rows)


def selection_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Test AUC of the last checkpoint, of AUCp's choice, and of the best in hindsight
    (oracle: chosen with the test labels; shown to judge the rule, never a result)."""
    return {"selection_last_auc": float(table.loc[table["last"] == 1, "test_auc"].iloc[0]),
            "selection_aucp_auc": float(table.loc[table["aucp_choice"] == 1,
                                                  "test_auc"].iloc[0]),
            "selection_oracle_auc": float(table.loc[table["eligible"] == 1, "test_auc"].max())}


def scores_table(data: PreparedDataset, val_scores: np.ndarray,
                 test_scores: np.ndarray) -> pd.DataFrame:
    parts = []
    for split, scores in (("val", val_scores), ("test", test_scores)):
        # The subject lets the report resample patients, not images, for its intervals.
        parts.append(pd.DataFrame({"image_id": data.ids_of(split), "split": split,
                                   "subject_id": data.subjects_of(split),
                                   "label": data.labels_of(split), "score": scores}))
    return pd.concat(parts, ignore_index=True)


def subject_table(data: PreparedDataset, val_scores: np.ndarray,
                  test_scores: np.ndarray) -> pd.DataFrame:
    parts = []
    for split, scores in (("val", val_scores), ("test", test_scores)):
        labels, units = evaluation_units(data, split, scores)
        subjects = np.unique(data.subjects_of(split))
        parts.append(pd.DataFrame({"subject_id": subjects, "split": split, "label": labels,
                                   "score": units}))
    return pd.concat(parts, ignore_index=True)


def map_samples(data: PreparedDataset, test_images: np.ndarray, rows: np.ndarray,
                samples: Prediction) -> dict[str, np.ndarray]:
    """Inputs, anomaly maps, ground-truth masks and the method's extras of the sample test
    images, for the report's map grids."""
    arrays: dict[str, np.ndarray] = {"input": test_images[rows].mean(axis=1),
                                     "label": data.labels_of("test")[rows]}
    if samples.maps is not None:
        arrays["anomaly map"] = samples.maps
    masks = data.masks_of("test")
    if masks is not None:
        arrays["ground truth"] = masks[rows]
    arrays.update(samples.extras)
    return arrays
