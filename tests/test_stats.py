import numpy as np
import pytest
from scipy.stats import t as student_t
from sklearn.metrics import roc_auc_score

from medad_bench.stats import intervals as stats
from medad_bench.stats import pixel_metrics


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(37, int), np.zeros(53, int)]
    scores = np.round(rng.normal(size=labels.size) + 0.7 * labels, 1)  # ties within and across
    summary, _ = stats.seed_mean_comparison(labels, {"m": scores[None]}, n_boot=50)
    assert summary.auc[0] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_one_class_is_rejected():
    with pytest.raises(ValueError, match="two healthy and two diseased"):
        stats.seed_mean_comparison(np.ones(10, int), {"m": np.arange(10.0)})


@pytest.mark.parametrize("positive_share", [0.1, 0.9])
@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_pixel_auroc_matches_sklearn(monkeypatch, positive_share, chunk):
    monkeypatch.setattr(pixel_metrics, "_PIXEL_CHUNK", chunk)  # exercise the streaming path
    rng = np.random.default_rng(12)
    masks = rng.random((5, 8, 8)) < positive_share
    maps = np.round(rng.normal(size=masks.shape) + masks, 1).astype(np.float16)  # with ties
    expected = roc_auc_score(masks.ravel(), maps.ravel().astype(float))
    assert pixel_metrics.pixel_auroc(masks.astype(np.uint8), maps) == pytest.approx(expected,
                                                                          abs=1e-12)


def test_pixel_auroc_edge_cases():
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[1, 1:3, 1:3] = 1
    assert pixel_metrics.pixel_auroc(masks, masks.astype(np.float32)) == 1.0
    assert pixel_metrics.pixel_auroc(masks, 1.0 - masks.astype(np.float32)) == 0.0
    assert pixel_metrics.pixel_auroc(masks, np.zeros(masks.shape)) == 0.5
    assert np.isnan(pixel_metrics.pixel_auroc(np.zeros_like(masks), np.ones(masks.shape)))
    with pytest.raises(ValueError, match="shape"):
        pixel_metrics.pixel_auroc(masks, np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="binary"):
        pixel_metrics.pixel_auroc(masks * 255, masks.astype(float))


def test_dice_by_hand():
    mask = np.array([[0, 0, 0, 0],
                     [0, 1, 1, 0],
                     [0, 1, 1, 0],
                     [0, 0, 0, 0]])
    amap = np.array([[0.0, 0.0, 0.0, 0.0],
                     [0.0, 0.9, 0.8, 0.6],
                     [0.0, 0.2, 0.7, 0.0],
                     [0.0, 0.0, 0.0, 0.5]])
    # P = {0.9, 0.8, 0.6, 0.7}: |P| = 4, |G| = 4, |P & G| = 3 -> 6 / 8.
    assert pixel_metrics.dice_at_threshold(mask[None], amap[None], 0.6) == pytest.approx(0.75)
    # Threshold 0.5 adds (3, 3): |P| = 5 -> 6 / 9.
    assert pixel_metrics.dice_at_threshold(mask[None], amap[None], 0.5) == pytest.approx(6 / 9)
    assert pixel_metrics.dice_at_threshold(mask[None], amap[None], 1.0) == 0.0
    assert pixel_metrics.dice_at_threshold(np.zeros((1, 4, 4)), amap[None], 1.0) == 1.0


def test_dice_compares_float16_maps_in_float64():
    mask = np.array([[[1, 0]]])
    amap = np.array([[[0.1, 0.0]]], np.float16)
    # 0.1 rounds to 0.0999755859375 in float16: a threshold of 0.1 must not catch it.
    assert pixel_metrics.dice_at_threshold(mask, amap, 0.1) == 0.0


@pytest.fixture
def separable():
    rng = np.random.default_rng(13)
    masks = np.zeros((4, 16, 16), bool)
    masks[:, 4:10, 5:12] = True
    maps = np.where(masks, rng.uniform(0.6, 0.9, masks.shape), rng.uniform(0.0, 0.4, masks.shape))
    return masks, maps.astype(np.float32)


def test_youden_threshold_separates_a_separable_case(separable):
    masks, maps = separable
    threshold = pixel_metrics.youden_pixel_threshold(masks, maps)
    # The most specific threshold with J = 1: the lowest lesion pixel.
    assert threshold == maps[masks].min()
    assert pixel_metrics.dice_at_threshold(masks, maps, threshold) == 1.0


def test_youden_threshold_on_a_subsample(separable):
    masks, maps = separable
    thresholds = {pixel_metrics.youden_pixel_threshold(masks, maps, max_pixels=300, seed=s)
                  for s in range(3)}
    assert len(thresholds) > 1  # the seeded subsample is really used
    for threshold in thresholds:
        # Separates the sample, so lies between the classes; lesion pixels below the sample's
        # lowest one are missed, which costs little Dice.
        assert 0.4 < threshold < 0.65
        assert pixel_metrics.dice_at_threshold(masks, maps, threshold) > 0.9


def test_seed_mean_comparison_matches_single_seed_auc_and_flags_clear_winner():
    from medad_bench.stats.intervals import seed_mean_comparison

    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(100, int), np.ones(100, int)]
    strong = np.stack([labels * 2.0 + rng.normal(size=200) for _ in range(3)])
    weak = np.stack([labels * 0.3 + rng.normal(size=200) for _ in range(3)])
    twin = strong + rng.normal(scale=0.05, size=strong.shape)
    summary, pairwise = seed_mean_comparison(labels, {"weak": weak, "strong": strong,
                                                      "twin": twin}, n_boot=500)
    by_name = summary.set_index("method")
    expected = np.mean([roc_auc_score(labels, s) for s in strong])
    assert by_name.loc["strong", "auc"] == pytest.approx(expected)
    assert by_name.loc["weak", "p_value"] < 0.01 and not by_name.loc["weak", "tied_with_best"]
    assert by_name.loc["strong", "tied_with_best"] and by_name.loc["twin", "tied_with_best"]
    for name in ("weak", "strong"):
        row = by_name.loc[name]
        assert row.ci_low < row.auc < row.ci_high
    assert pairwise.loc["weak", "strong"] == pairwise.loc["strong", "weak"]
    assert pairwise.loc["weak", "weak"] == 1.0


# -- two levels: seeds and patients ------------------------------------------------------------

def test_weighted_aucs_equal_the_auc_of_the_expanded_resample():
    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(40, int), np.ones(25, int)]
    scores = np.round(rng.normal(size=(3, 65)) + labels, 1)  # rounding makes ties
    weights = rng.integers(0, 4, (6, 65))
    got = stats.weighted_aucs(labels, scores, weights)
    for b, w in enumerate(weights):
        expanded = np.repeat(np.arange(65), w)
        for r, row in enumerate(scores):
            assert got[b, r] == pytest.approx(roc_auc_score(labels[expanded], row[expanded]))


def test_cluster_weights_move_a_patients_images_together_and_keep_both_classes():
    rng = np.random.default_rng(5)
    subjects = np.repeat(np.arange(30), 3)
    labels = (subjects >= 20).astype(int)
    weights = stats.cluster_weights(labels, subjects, 200, rng)
    assert weights.shape == (200, 90)
    per_subject = weights.reshape(200, 30, 3)
    assert (per_subject == per_subject[:, :, :1]).all()  # one draw per patient, all images
    # Ten diseased and twenty healthy patients drawn per resample: the strata keep their size.
    assert (per_subject[:, 20:, 0].sum(axis=1) == 10).all()
    assert (per_subject[:, :20, 0].sum(axis=1) == 20).all()
    singles = stats.cluster_weights(labels, np.arange(90), 3, np.random.default_rng(5))
    assert not (singles.reshape(3, 30, 3) == singles.reshape(3, 30, 3)[:, :, :1]).all()


def test_holm_adjustment_by_hand():
    adjusted = stats.holm(np.array([0.01, 0.04, np.nan, 0.03, 0.5]))
    # Sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1, then made non-decreasing.
    np.testing.assert_allclose(adjusted, [0.04, 0.09, np.nan, 0.09, 0.5])


def test_seed_noise_widens_the_interval_and_one_seed_cannot_show_it():
    rng = np.random.default_rng(6)
    labels = np.r_[np.zeros(100, int), np.ones(100, int)]
    base = labels + rng.normal(size=200)
    steady = np.stack([base + rng.normal(scale=0.05, size=200) for _ in range(3)])
    shaky = np.stack([labels * (1 + shift) + base - labels for shift in (-0.6, 0.0, 0.6)])
    summary, _ = stats.seed_mean_comparison(labels, {"steady": steady, "shaky": shaky},
                                            n_boot=500)
    width = (summary.ci_high - summary.ci_low).set_axis(summary.method)
    sd = summary.set_index("method").seed_sd
    assert sd["shaky"] > 5 * sd["steady"]
    assert width["shaky"] > 1.5 * width["steady"]
    one, _ = stats.seed_mean_comparison(labels, {"shaky": shaky[:1]}, n_boot=500)
    assert one.n_seeds[0] == 1 and np.isnan(one.seed_sd[0])


def test_clustered_images_widen_the_interval():
    """Ten images per patient that look alike carry less information than 10x the patients."""
    rng = np.random.default_rng(7)
    subjects = np.repeat(np.arange(40), 10)
    labels = (subjects >= 20).astype(int)
    scores = (labels + rng.normal(size=40)[subjects] + rng.normal(scale=0.2, size=400))[None]
    clustered, _ = stats.seed_mean_comparison(labels, {"m": scores}, subjects, n_boot=500)
    naive, _ = stats.seed_mean_comparison(labels, {"m": scores}, n_boot=500)
    assert clustered.auc[0] == naive.auc[0]
    width = clustered.ci_high[0] - clustered.ci_low[0]
    assert width > 2 * (naive.ci_high[0] - naive.ci_low[0])


def test_ties_with_the_best_are_decided_on_holm_adjusted_p_values():
    rng = np.random.default_rng(8)
    labels = np.r_[np.zeros(150, int), np.ones(150, int)]
    best = np.stack([1.2 * labels + rng.normal(size=300) for _ in range(2)])
    others = {f"m{i}": np.stack([0.9 * labels + rng.normal(size=300) for _ in range(2)])
              for i in range(6)}
    summary, pairwise = stats.seed_mean_comparison(labels, {"best": best, **others}, n_boot=400)
    rest = summary.iloc[1:]
    assert (rest.p_holm >= rest.p_value).all()
    np.testing.assert_array_equal(rest.tied_with_best, rest.p_holm >= 0.05)
    assert summary.tied_with_best[0]
    raw = pairwise.to_numpy()
    assert (raw[np.triu_indices(7, 1)] <= 1.0).all() and (np.diag(raw) == 1.0).all()


def test_coverage_simulation_two_level_covers_and_the_old_interval_does_not():
    """The report's 95% interval against a known truth, with training-seed noise and several
    look-alike images per patient (benchmark/stats/coverage.py; scripts/ci_coverage.py runs
    more)."""
    from medad_bench.stats.coverage import SCENARIOS, coverage

    result = coverage(SCENARIOS[0], repetitions=300, n_boot=300, seed=3)
    by_kind = result.set_index("interval").coverage
    assert by_kind["two-level (now)"] >= 0.93
    assert by_kind["images only (before)"] < 0.85


# -- pixel AP, AUPRO, the best Dice (an oracle), the healthy pixel threshold (issue 15) ---------


def _lesions(seed: int, n: int = 4, size: int = 12, ties: bool = True):
    """Masks with 0-2 rectangular lesions per image (some touching) and maps that see them."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for image in masks:
        for _ in range(rng.integers(0, 3)):
            y, x = rng.integers(0, size - 3, 2)
            image[y:y + rng.integers(1, 4), x:x + rng.integers(1, 4)] = 1
    masks[0, 1:3, 1:3] = 1  # at least one lesion
    maps = rng.random(masks.shape) + 0.5 * masks
    return masks, (np.round(maps, 1) if ties else maps).astype(np.float32)


def test_pixel_ap_by_hand():
    # Ranked: lesion (1/1), healthy, lesion (2/3), healthy: AP = (1 + 2/3) / 2.
    masks = np.array([[[1, 0, 1, 0]]])
    maps = np.array([[[0.9, 0.8, 0.7, 0.1]]], np.float32)
    assert pixel_metrics.pixel_ap(masks, maps) == pytest.approx(5 / 6)
    assert np.isnan(pixel_metrics.pixel_ap(np.zeros_like(masks), maps))


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_pixel_ap_matches_sklearn(monkeypatch, chunk):
    from sklearn.metrics import average_precision_score

    monkeypatch.setattr(pixel_metrics, "_PIXEL_CHUNK", chunk)  # one image per chunk: streamed
    for seed in range(3):
        masks, maps = _lesions(seed)
        expected = average_precision_score(masks.ravel(), maps.ravel().astype(float))
        assert pixel_metrics.pixel_ap(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_aupro_by_hand():
    """Two regions (one pixel at 0.9; two pixels at 0.8 and 0.3) and ten healthy pixels.

    Going down: 0.9 covers region A (PRO 1/2); healthy 0.85 (FPR 0.1); 0.8 covers half of B
    (PRO 3/4); healthy 0.7, 0.6 (FPR 0.2, 0.3). Area up to 0.3: 0.1 x 0.5 + 0.2 x 0.75 = 0.2,
    over 0.3: 2/3. Up to 0.25: (0.05 + 0.15 x 0.75) / 0.25 = 0.65.
    """
    masks = np.array([[[1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]]])
    maps = np.array([[[0.9, 0.85, 0.8, 0.3, 0.7, 0.6, 0.5, 0.4, 0.2, 0.1, 0.05, 0.02,
                       0.01]]])
    assert pixel_metrics.aupro(masks, maps) == pytest.approx(2 / 3)
    assert pixel_metrics.aupro(masks, maps, fpr_limit=0.25) == pytest.approx(0.65)
    assert pixel_metrics.aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert np.isnan(pixel_metrics.aupro(np.zeros_like(masks), maps))


def test_aupro_regions_are_8_connected():
    masks = np.zeros((2, 5, 5), np.uint8)
    masks[0, 1, 1] = masks[0, 2, 2] = 1  # touch at a corner: one region
    masks[1, 1, 1] = 1  # same place in the next image: its own region, never joined
    curve = pixel_metrics.lesion_curve(masks, np.random.default_rng(0).random(masks.shape))
    assert curve.n_regions == 2 and curve.n_lesion == 3 and curve.n_healthy == 47


@pytest.mark.parametrize("ties", [False, True])
def test_aupro_matches_anomalib(monkeypatch, ties):
    from types import SimpleNamespace

    import torch
    from anomalib.metrics import AUPRO

    monkeypatch.setattr(pixel_metrics, "_PIXEL_CHUNK", 300)  # two images per chunk: streamed
    for seed in range(4):
        masks, maps = _lesions(seed, ties=ties)
        metric = AUPRO(fields=("anomaly_map", "gt_mask"), fpr_limit=0.3)
        metric.update(SimpleNamespace(anomaly_map=torch.from_numpy(maps),
                                      gt_mask=torch.from_numpy(masks)))
        assert pixel_metrics.aupro(masks, maps) == pytest.approx(float(metric.compute()), abs=1e-5)


def test_best_dice_oracle_by_hand_and_by_brute_force():
    mask = np.array([[0, 0, 0, 0],
                     [0, 1, 1, 0],
                     [0, 1, 1, 0],
                     [0, 0, 0, 0]])
    amap = np.array([[0.0, 0.0, 0.0, 0.0],
                     [0.0, 0.9, 0.8, 0.6],
                     [0.0, 0.2, 0.7, 0.0],
                     [0.0, 0.0, 0.0, 0.5]])
    # >= 0.7: 3 lesion pixels, no healthy: 6 / 7; >= 0.2 adds the last lesion pixel and two
    # healthy ones: 8 / 10.
    assert pixel_metrics.best_dice_oracle(mask[None], amap[None]) == (pytest.approx(6 / 7), 0.7)
    for seed in range(3):
        masks, maps = _lesions(seed)
        dice, threshold = pixel_metrics.best_dice_oracle(masks, maps)
        assert dice == pytest.approx(max(pixel_metrics.dice_at_threshold(masks, maps, t)
                                         for t in np.unique(maps)))
        assert pixel_metrics.dice_at_threshold(masks, maps, threshold) == pytest.approx(dice)
    assert np.isnan(pixel_metrics.best_dice_oracle(np.zeros_like(mask)[None], amap[None])[0])


def test_pixel_curve_metrics_are_the_single_metrics():
    masks, maps = _lesions(5)
    together = pixel_metrics.pixel_curve_metrics(masks, maps)
    assert together["pixel_ap"] == pixel_metrics.pixel_ap(masks, maps)
    assert together["aupro"] == pixel_metrics.aupro(masks, maps)
    assert (together["pixel_dice_best_oracle"], together["pixel_threshold_best_oracle"]) == \
        pixel_metrics.best_dice_oracle(masks, maps)
    empty = pixel_metrics.pixel_curve_metrics(np.zeros_like(masks), maps)
    assert all(np.isnan(value) for value in empty.values())
    with pytest.raises(ValueError, match="binary"):
        pixel_metrics.pixel_curve_metrics(masks * 2, maps)
    with pytest.raises(ValueError, match="NaN"):
        pixel_metrics.pixel_curve_metrics(masks, np.where(masks, np.nan, maps))


def test_healthy_pixel_threshold_ignores_lesion_pixels():
    maps = np.r_[np.arange(100.0), [500.0, 600.0]].reshape(1, 2, 51)
    masks = np.zeros(maps.shape, np.uint8)
    masks[0, 1, 49:] = 1  # the two highest pixels are lesion pixels
    # 100 healthy pixels 0..99: the 99th percentile flags one, 99.
    assert pixel_metrics.healthy_pixel_threshold(masks, maps, 99.0) == 99.0
    sampled = pixel_metrics.healthy_pixel_threshold(masks, maps, 90.0, max_pixels=50, seed=1)
    assert 70.0 <= sampled <= 99.0


# -- intervals of the other image metrics ----------------------------------------------------------


def test_weighted_image_metrics_equal_the_metrics_of_the_expanded_resample():
    from medad_bench.stats import image_metrics as metrics

    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(40, int), np.ones(25, int)]
    scores = np.round(rng.normal(size=(3, 65)) + labels, 1)  # rounding makes ties
    weights = rng.integers(0, 4, (5, 65))
    thresholds = np.array([0.3, 0.5, -0.2])
    got = stats.weighted_image_metrics(labels, scores, weights, thresholds)
    for b, w in enumerate(weights):
        expanded = np.repeat(np.arange(65), w)
        for r, row in enumerate(scores):
            expected = metrics.clinical_metrics(labels[expanded], row[expanded])
            expected.update(vars(metrics.threshold_metrics(labels[expanded], row[expanded],
                                                           thresholds[r])))
            for name, value in expected.items():
                assert got[name][b, r] == pytest.approx(value, abs=1e-12), name


def test_seed_mean_intervals_use_the_aucs_resamples():
    from medad_bench.stats import image_metrics as metrics

    rng = np.random.default_rng(9)
    labels = np.r_[np.zeros(60, int), np.ones(40, int)]
    subjects = np.arange(100) // 2  # two images per patient
    scores = {"a": labels + rng.normal(size=(1, 100)),
              "b": np.stack([0.5 * labels + rng.normal(size=100) for _ in range(3)])}
    thresholds = {"a": np.array([0.5]), "b": np.array([0.2, np.nan, 0.3])}
    table = stats.seed_mean_intervals(labels, scores, subjects, thresholds, n_boot=300, seed=4)
    rows = table.set_index(["method", "metric"])
    one = rows.loc[("a", "ap")]
    assert one.value == pytest.approx(metrics.average_precision(labels, scores["a"][0]))
    # One seed: the test level alone, t with n - 1 degrees of freedom (n = 20 diseased
    # patients), from the resamples of `cluster_weights` with the AUC's seed.
    weights = stats.cluster_weights(labels, subjects, 300, np.random.default_rng(4))
    boots = stats.weighted_image_metrics(labels, scores["a"], weights)["ap"][:, 0]
    half = student_t.ppf(0.975, 19) * np.sqrt(20 / 19 * np.var(boots, ddof=1))
    assert (one.ci_low, one.ci_high) == (pytest.approx(one.value - half),
                                          pytest.approx(min(1.0, one.value + half)))
    assert rows.loc[("b", "sens_at_spec95")].ci_low < rows.loc[("b", "sens_at_spec95")].value
    assert np.isnan(rows.loc[("b", "f1")].value)  # a run without its threshold
    assert np.isfinite(rows.loc[("a", "f1")].ci_high) and (rows.n_seeds <= 3).all()
