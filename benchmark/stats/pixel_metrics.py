"""Pixel-level (segmentation) metrics: pixel AUROC, Dice, the pixel thresholds, pixel AP, AUPRO
and the best Dice over thresholds (an oracle: chosen with the test masks), streamed over chunks
of images to bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medad_bench.stats import image_metrics as metrics
from medad_bench.stats.image_metrics import youden_threshold

# Pixels streamed per step in `pixel_auroc`.
_PIXEL_CHUNK = 1 << 20

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


def healthy_pixel_threshold(masks: np.ndarray, maps: np.ndarray, percentile: float = 99.0, *,
                            max_pixels: int = 2_000_000, seed: int = 0) -> float:
    """A pixel threshold from the pixels outside the lesion masks alone, for validation splits
    without lesion pixels: `metrics.healthy_percentile_threshold` of their values (at 99, at
    most 1% of healthy pixels flagged; a lesion is a small share of an image, so flagging 5%
    would swamp it).

    Above `max_pixels` pixels a uniform seeded subsample is used, as in
    `youden_pixel_threshold`: a percentile is a population quantity.
    """
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    flat_masks, flat_maps = masks.reshape(-1), maps.reshape(-1)
    if flat_maps.size > max_pixels:
        keep = np.sort(np.random.default_rng(seed).choice(flat_maps.size, max_pixels,
                                                          replace=False))
        flat_masks, flat_maps = flat_masks[keep], flat_maps[keep]
    flat_masks, flat_maps = _check_pixels(flat_masks, flat_maps)
    healthy = flat_maps[~flat_masks]
    if healthy.size == 0:
        raise ValueError("every validation pixel is a lesion pixel: no healthy pixels to set "
                         "a percentile threshold on")
    return metrics.healthy_percentile_threshold(healthy.astype(np.float64), percentile)


# -- pixel AP, AUPRO and the best Dice from one streamed pass ------------------------------------

#: Lesion regions are 8-connected in the image plane (MVTec AD's evaluation and anomalib's
#: OpenCV labelling); images of a chunk are never joined.
_REGION_STRUCTURE = np.zeros((3, 3, 3), bool)
_REGION_STRUCTURE[1] = True
#: AUPRO integrates the per-region overlap up to this pixel false-positive rate (MVTec AD).
AUPRO_FPR_LIMIT = 0.3


@dataclass(frozen=True)
class LesionCurve:
    """The pixel operating points of `maps >= t`, one per distinct lesion-pixel value t,
    highest first: every threshold at which the lesion side changes. Between two of them only
    healthy pixels are added, which lowers AP's precision and Dice and only moves AUPRO's
    curve right, so these points carry AP, the best Dice and (with the counts strictly above
    each t) the whole per-region overlap curve."""

    thresholds: np.ndarray  # (m,) distinct lesion-pixel values, descending, float64
    lesion: np.ndarray  # lesion pixels equal to each threshold
    tp: np.ndarray  # lesion pixels >= threshold
    fp: np.ndarray  # healthy pixels >= threshold
    fp_above: np.ndarray  # healthy pixels > threshold
    overlap: np.ndarray  # sum over lesion regions of their share of pixels >= threshold
    n_lesion: int
    n_healthy: int
    n_regions: int


def _image_chunks(masks: np.ndarray, maps: np.ndarray) -> list[slice]:
    """Slices of whole images holding at most about _PIXEL_CHUNK pixels each (at least one)."""
    per = max(1, _PIXEL_CHUNK // max(1, int(np.prod(masks.shape[1:]))))
    return [slice(start, start + per) for start in range(0, masks.shape[0], per)]


def _checked_chunk(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One chunk's masks as bool and maps as they are, validated (no full-size copies)."""
    if masks.dtype != bool:
        if np.any((masks != 0) & (masks != 1)):
            raise ValueError("masks must be binary (0/1)")
        masks = masks != 0
    if not np.isfinite(maps).all():
        raise ValueError("anomaly maps contain NaN or infinity")
    return masks, maps


def lesion_curve(masks: np.ndarray, maps: np.ndarray) -> LesionCurve | None:
    """The LesionCurve of (N, H, W) masks and maps; None when there is no lesion pixel.

    Memory stays near the lesion pixels' size: they are gathered (float64) with their region's
    weight, sorted and made unique; the healthy pixels are then streamed, a chunk of images at
    a time, through two binary searches into the distinct lesion values (as `pixel_auroc`
    does). Maps keep their dtype: float16 values compare exactly in float64.
    """
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    if masks.ndim != 3:
        raise ValueError(f"masks and maps must be (N, H, W), got {masks.shape}")
    chunks = _image_chunks(masks, maps)
    values, weights, n_regions, n_pixels = [], [], 0, 0
    for part in chunks:
        chunk_masks, chunk_maps = _checked_chunk(masks[part], maps[part])
        n_pixels += chunk_masks.size
        regions, found = ndimage.label(chunk_masks, _REGION_STRUCTURE)
        if found:
            sizes = np.bincount(regions.ravel())
            values.append(chunk_maps[chunk_masks].astype(np.float64))
            weights.append(1.0 / sizes[regions[chunk_masks]])
            n_regions += found
    if not values:
        return None
    lesion_values, lesion_weights = np.concatenate(values), np.concatenate(weights)
    order = np.argsort(lesion_values, kind="stable")
    lesion_values, lesion_weights = lesion_values[order], lesion_weights[order]
    starts = np.flatnonzero(np.r_[True, lesion_values[1:] != lesion_values[:-1]])
    distinct = lesion_values[starts]  # ascending
    counts = np.diff(np.r_[starts, lesion_values.size])
    # Healthy pixels by position among the distinct lesion values: with `left`, k = how many
    # values lie below the pixel (it is above values 0..k-1); with `right`, at or below.
    below = np.zeros(distinct.size + 1, np.int64)
    at_or_below = np.zeros(distinct.size + 1, np.int64)
    for part in chunks:
        healthy = maps[part][masks[part] == 0].astype(np.float64)
        healthy.sort()  # sorted keys make the searches cache-friendly
        below += np.bincount(np.searchsorted(distinct, healthy, "left"),
                             minlength=distinct.size + 1)
        at_or_below += np.bincount(np.searchsorted(distinct, healthy, "right"),
                                   minlength=distinct.size + 1)

    def at_least(per_value: np.ndarray) -> np.ndarray:
        return np.cumsum(per_value[::-1])  # descending thresholds: everything from t upwards

    return LesionCurve(
        thresholds=distinct[::-1], lesion=counts[::-1], tp=at_least(counts),
        fp=at_least(at_or_below[1:]), fp_above=at_least(below[1:]),
        overlap=at_least(np.add.reduceat(lesion_weights, starts)),
        n_lesion=int(lesion_values.size), n_healthy=n_pixels - int(lesion_values.size),
        n_regions=n_regions)


def pixel_ap(masks: np.ndarray, maps: np.ndarray) -> float:
    """Pixel-level average precision pooled over all pixels (scikit-learn's step-wise
    `average_precision_score` on the flattened pixels; ties share one point); NaN without
    lesion pixels."""
    curve = lesion_curve(masks, maps)
    return float("nan") if curve is None else _curve_ap(curve)


def _curve_ap(curve: LesionCurve) -> float:
    return float(np.sum(curve.lesion * curve.tp / (curve.tp + curve.fp)) / curve.n_lesion)


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """Area under the per-region overlap (PRO) curve up to a pixel FPR of `fpr_limit`,
    divided by `fpr_limit` (MVTec AD's AU-PRO, as anomalib's AUPRO computes it).

    Regions: 8-connected components of each image's mask (scipy.ndimage.label). At threshold
    t, a region's overlap is the share of its pixels with `map >= t`; PRO is the mean over all
    regions of all images; FPR is the share of all healthy pixels (every image, lesion-free
    ones included) with `map >= t`. The curve joins the operating points of the distinct map
    values (a tie moves both coordinates at once: a straight segment), starts at (0, 0), and
    is integrated by trapezoids, linearly interpolated at `fpr_limit`. NaN without lesion
    pixels or without healthy pixels.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"the FPR limit must be in (0, 1], got {fpr_limit}")
    curve = lesion_curve(masks, maps)
    return float("nan") if curve is None else _curve_aupro(curve, fpr_limit)


def _curve_aupro(curve: LesionCurve, fpr_limit: float) -> float:
    if curve.n_healthy == 0:
        return float("nan")
    pro = curve.overlap / curve.n_regions
    # Per lesion value: the point just above it (its ties not yet flagged), then the point
    # with them; healthy-only values between lesion values add flat stretches.
    fpr = np.column_stack([curve.fp_above, curve.fp]).ravel() / curve.n_healthy
    height = np.column_stack([np.r_[0.0, pro[:-1]], pro]).ravel()
    fpr, height = np.r_[0.0, fpr, 1.0], np.r_[0.0, height, pro[-1]]
    last = int(np.searchsorted(fpr, fpr_limit, "right")) - 1  # last point within the limit
    area = float(np.sum(np.diff(fpr[:last + 1]) * (height[1:last + 1] + height[:last]) / 2))
    if fpr[last] < fpr_limit and last + 1 < fpr.size:
        share = (fpr_limit - fpr[last]) / (fpr[last + 1] - fpr[last])
        at_limit = height[last] + share * (height[last + 1] - height[last])
        area += (fpr_limit - fpr[last]) * (height[last] + at_limit) / 2
    return float(area / fpr_limit)


def best_dice_oracle(masks: np.ndarray, maps: np.ndarray) -> tuple[float, float]:
    """(Dice, threshold): the best pooled Dice of `maps >= t` over every threshold, and that
    t (the highest on ties). An ORACLE: chosen with the test masks, it shows what a threshold
    could reach, never a result. The best t is a lesion-pixel value (between two of them only
    healthy pixels are added). (NaN, NaN) without lesion pixels."""
    curve = lesion_curve(masks, maps)
    return (float("nan"), float("nan")) if curve is None else _curve_best_dice(curve)


def _curve_best_dice(curve: LesionCurve) -> tuple[float, float]:
    dice = 2.0 * curve.tp / (curve.tp + curve.fp + curve.n_lesion)
    best = int(np.argmax(dice))  # first = highest threshold on ties
    return float(dice[best]), float(curve.thresholds[best])


def pixel_curve_metrics(masks: np.ndarray, maps: np.ndarray,
                        fpr_limit: float = AUPRO_FPR_LIMIT) -> dict[str, float]:
    """pixel_ap, aupro, pixel_dice_best_oracle and pixel_threshold_best_oracle from one
    `lesion_curve` pass; NaN without lesion pixels."""
    curve = lesion_curve(masks, maps)
    if curve is None:
        return dict.fromkeys(("pixel_ap", "aupro", "pixel_dice_best_oracle",
                              "pixel_threshold_best_oracle"), float("nan"))
    dice, threshold = _curve_best_dice(curve)
    return {"pixel_ap": _curve_ap(curve), "aupro": _curve_aupro(curve, fpr_limit),
            "pixel_dice_best_oracle": dice, "pixel_threshold_best_oracle": threshold}
