import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from benchmark import stats


def binormal(rng, n_pos, n_neg, separation):
    """Healthy N(0, 1), diseased N(separation, 1): true AUC = Phi(separation / sqrt 2)."""
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    return labels, rng.normal(size=labels.size) + separation * labels


def noisy_copies(rng, n=200, separation=1.0, noise=0.5):
    """Two methods sharing a latent score, each with its own noise: equal true AUCs."""
    labels, latent = binormal(rng, n // 2, n // 2, separation)
    return (labels, latent + noise * rng.normal(size=n), latent + noise * rng.normal(size=n))


def slow_delong_variance(labels, scores):
    """DeLong et al. (1988) from the O(m n) kernel: psi = 1 if x > y, 1/2 if tied, 0 otherwise."""
    x, y = scores[labels == 1], scores[labels == 0]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), v10.var(ddof=1) / x.size + v01.var(ddof=1) / y.size


def test_delong_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    labels, scores = binormal(rng, 37, 53, 0.7)
    scores = np.round(scores, 1)  # many ties, within and across classes
    auc, _ = stats.delong_auc_variance(labels, scores)
    assert auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_delong_variance_matches_slow_structural_components():
    rng = np.random.default_rng(2)
    for n_pos, n_neg in [(5, 7), (12, 9), (30, 30)]:
        labels, scores = binormal(rng, n_pos, n_neg, 0.5)
        scores = np.round(scores, 1)
        auc, var = stats.delong_auc_variance(labels, scores)
        ref_auc, ref_var = slow_delong_variance(labels, scores)
        assert auc == pytest.approx(ref_auc, abs=1e-12)
        assert var == pytest.approx(ref_var, rel=1e-10)
        assert var > 0


def test_delong_ci_covers_true_auc_about_95_percent():
    rng = np.random.default_rng(3)
    separation = 1.0
    true_auc = norm.cdf(separation / np.sqrt(2))
    covered = []
    for _ in range(300):
        interval = stats.auc_ci(*binormal(rng, 50, 50, separation))
        covered.append(interval.low <= true_auc <= interval.high)
    assert 0.90 <= np.mean(covered) <= 0.99


def test_bootstrap_ci_close_to_delong_ci():
    labels, scores = binormal(np.random.default_rng(4), 100, 100, 1.0)
    delong = stats.auc_ci(labels, scores)
    boot = stats.auc_ci(labels, scores, method="bootstrap")
    assert delong.method == "DeLong"
    assert boot.method == "bootstrap (2000 resamples)"
    assert delong.low < delong.high and boot.low < boot.high
    assert boot.low == pytest.approx(delong.low, abs=0.03)
    assert boot.high == pytest.approx(delong.high, abs=0.03)


def test_bootstrap_ci_is_seeded():
    labels, scores = binormal(np.random.default_rng(5), 20, 20, 1.0)
    first = stats.auc_ci(labels, scores, method="bootstrap", n_boot=200, seed=7)
    assert stats.auc_ci(labels, scores, method="bootstrap", n_boot=200, seed=7) == first
    assert stats.auc_ci(labels, scores, method="bootstrap", n_boot=200, seed=8) != first


def test_delong_ci_is_clipped_to_unit_interval():
    labels = np.r_[np.ones(5, int), np.zeros(5, int)]
    scores = labels + 0.01 * np.arange(10)  # AUC 1 with variance 0
    interval = stats.auc_ci(labels, scores, level=0.99)
    assert (interval.low, interval.high) == (1.0, 1.0)


def test_paired_tests_give_p_one_for_identical_rankings():
    labels, scores = binormal(np.random.default_rng(6), 40, 60, 0.8)
    for other in (scores, 3 * scores + 1, np.exp(scores)):  # monotone maps keep the ranking
        assert stats.delong_paired_test(labels, scores, other) == (0.0, 1.0)
        assert stats.paired_bootstrap_test(labels, scores, other, n_boot=200) == (0.0, 1.0)


def test_paired_test_detects_a_clearly_better_method():
    rng = np.random.default_rng(7)
    labels, latent = binormal(rng, 100, 100, 0.0)
    good = latent + 2.0 * labels
    weak = latent + 0.3 * labels + rng.normal(size=200)
    delta, p = stats.delong_paired_test(labels, good, weak)
    assert delta > 0.2
    assert p < 0.01
    delta_ba, p_ba = stats.delong_paired_test(labels, weak, good)
    assert delta_ba == pytest.approx(-delta) and p_ba == pytest.approx(p)


def test_paired_test_keeps_noisy_copies_apart_from_significance():
    rng = np.random.default_rng(8)
    p = [stats.delong_paired_test(*noisy_copies(rng))[1] for _ in range(20)]
    assert np.mean(np.array(p) > 0.05) >= 0.8


def test_paired_test_p_values_are_roughly_uniform_under_the_null():
    rng = np.random.default_rng(9)
    p = np.array([stats.delong_paired_test(*noisy_copies(rng, n=100))[1] for _ in range(200)])
    assert 0.01 <= np.mean(p < 0.05) <= 0.10
    assert 0.35 <= np.mean(p < 0.5) <= 0.65


def test_paired_bootstrap_agrees_with_delong():
    rng = np.random.default_rng(10)
    labels, latent = binormal(rng, 100, 100, 0.8)
    scores_a = latent + 0.5 * rng.normal(size=200)
    scores_b = latent + 2.0 * rng.normal(size=200)
    delta, p_delong = stats.delong_paired_test(labels, scores_a, scores_b)
    boot_delta, p_boot = stats.paired_bootstrap_test(labels, scores_a, scores_b)
    assert boot_delta == pytest.approx(delta)
    assert delta > 0
    assert 1e-3 < p_delong < 0.1  # an informative case, neither 0 nor 1
    assert abs(np.log10(p_boot) - np.log10(p_delong)) < 1.0


def test_paired_test_of_a_perfect_against_a_constant_scorer():
    labels = np.r_[np.ones(6, int), np.zeros(6, int)]
    delta, p = stats.delong_paired_test(labels, labels + 0.1 * np.arange(12) / 12,
                                        np.zeros(12))
    assert delta == 0.5
    assert p == 0.0  # variance 0 but every component favours the perfect scorer


@pytest.fixture
def table():
    rng = np.random.default_rng(11)
    labels, latent = binormal(rng, 100, 100, 0.0)
    strong = latent + 2.0 * labels
    return {
        "weak": (labels, latent + 0.2 * labels),
        "strong": (labels, strong),
        "strong-copy": (labels, strong + 0.05 * rng.normal(size=200)),
    }


@pytest.mark.parametrize("test", ["delong", "bootstrap"])
def test_compare_to_best_marks_ties(table, test):
    frame = stats.compare_to_best(table, test=test, n_boot=500)
    assert list(frame.columns) == ["method", "auc", "delta", "p_value", "tied_with_best"]
    assert list(frame["auc"]) == sorted(frame["auc"], reverse=True)
    rows = frame.set_index("method")
    best = frame["method"].iloc[0]
    assert best in {"strong", "strong-copy"}
    assert np.isnan(rows.loc[best, "p_value"]) and rows.loc[best, "delta"] == 0.0
    assert rows["tied_with_best"].to_dict() == {"strong": True, "strong-copy": True,
                                                "weak": False}
    assert rows.loc["weak", "p_value"] < 0.01
    assert rows.loc["weak", "delta"] == pytest.approx(rows.loc["weak", "auc"] - rows["auc"].max())
    assert frame["tied_with_best"].dtype == bool


def test_compare_to_best_alpha_decides_ties(table):
    frame = stats.compare_to_best(table, alpha=1.0).set_index("method")
    assert frame["tied_with_best"].sum() == 1  # only the best itself: every p < 1


def test_compare_to_best_rejects_mismatched_labels(table):
    labels, scores = table["weak"]
    table["weak"] = (labels[::-1], scores)
    with pytest.raises(ValueError, match="labels"):
        stats.compare_to_best(table)
    with pytest.raises(ValueError, match="labels"):
        stats.pairwise_p_values(table)


def test_unknown_test_is_rejected(table):
    with pytest.raises(ValueError, match="unknown test"):
        stats.compare_to_best(table, test="wilcoxon")


def test_pairwise_p_values(table):
    frame = stats.pairwise_p_values(table)
    names = list(table)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index) == names and list(frame.columns) == names
    assert np.allclose(np.diag(frame), 1.0)
    assert np.allclose(frame.to_numpy(), frame.to_numpy().T)
    _, p = stats.delong_paired_test(table["weak"][0], table["weak"][1], table["strong"][1])
    assert frame.loc["weak", "strong"] == pytest.approx(p)
    compared = stats.compare_to_best(table).set_index("method")
    best = compared.index[0]
    assert frame.loc["weak", best] == pytest.approx(compared.loc["weak", "p_value"])


def test_one_class_is_rejected():
    with pytest.raises(ValueError):
        stats.delong_auc_variance(np.ones(10, int), np.arange(10.0))


@pytest.mark.parametrize("positive_share", [0.1, 0.9])
@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_pixel_auroc_matches_sklearn(monkeypatch, positive_share, chunk):
    monkeypatch.setattr(stats, "_PIXEL_CHUNK", chunk)  # exercise the streaming path
    rng = np.random.default_rng(12)
    masks = rng.random((5, 8, 8)) < positive_share
    maps = np.round(rng.normal(size=masks.shape) + masks, 1).astype(np.float16)  # with ties
    expected = roc_auc_score(masks.ravel(), maps.ravel().astype(float))
    assert stats.pixel_auroc(masks.astype(np.uint8), maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_edge_cases():
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[1, 1:3, 1:3] = 1
    assert stats.pixel_auroc(masks, masks.astype(np.float32)) == 1.0
    assert stats.pixel_auroc(masks, 1.0 - masks.astype(np.float32)) == 0.0
    assert stats.pixel_auroc(masks, np.zeros(masks.shape)) == 0.5
    assert np.isnan(stats.pixel_auroc(np.zeros_like(masks), np.ones(masks.shape)))
    with pytest.raises(ValueError, match="shape"):
        stats.pixel_auroc(masks, np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="binary"):
        stats.pixel_auroc(masks * 255, masks.astype(float))


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
    assert stats.dice_at_threshold(mask[None], amap[None], 0.6) == pytest.approx(0.75)
    # Threshold 0.5 adds (3, 3): |P| = 5 -> 6 / 9.
    assert stats.dice_at_threshold(mask[None], amap[None], 0.5) == pytest.approx(6 / 9)
    assert stats.dice_at_threshold(mask[None], amap[None], 1.0) == 0.0
    assert stats.dice_at_threshold(np.zeros((1, 4, 4)), amap[None], 1.0) == 1.0


def test_dice_compares_float16_maps_in_float64():
    mask = np.array([[[1, 0]]])
    amap = np.array([[[0.1, 0.0]]], np.float16)
    # 0.1 rounds to 0.0999755859375 in float16: a threshold of 0.1 must not catch it.
    assert stats.dice_at_threshold(mask, amap, 0.1) == 0.0


@pytest.fixture
def separable():
    rng = np.random.default_rng(13)
    masks = np.zeros((4, 16, 16), bool)
    masks[:, 4:10, 5:12] = True
    maps = np.where(masks, rng.uniform(0.6, 0.9, masks.shape), rng.uniform(0.0, 0.4, masks.shape))
    return masks, maps.astype(np.float32)


def test_youden_threshold_separates_a_separable_case(separable):
    masks, maps = separable
    threshold = stats.youden_pixel_threshold(masks, maps)
    # The most specific threshold with J = 1: the lowest lesion pixel.
    assert threshold == maps[masks].min()
    assert stats.dice_at_threshold(masks, maps, threshold) == 1.0


def test_youden_threshold_on_a_subsample(separable):
    masks, maps = separable
    thresholds = {stats.youden_pixel_threshold(masks, maps, max_pixels=300, seed=s)
                  for s in range(3)}
    assert len(thresholds) > 1  # the seeded subsample is really used
    for threshold in thresholds:
        # Separates the sample, so lies between the classes; lesion pixels below the sample's
        # lowest one are missed, which costs little Dice.
        assert 0.4 < threshold < 0.65
        assert stats.dice_at_threshold(masks, maps, threshold) > 0.9


def test_seed_mean_comparison_matches_single_seed_auc_and_flags_clear_winner():
    from benchmark.stats import seed_mean_comparison

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
    look-alike images per patient (benchmark/coverage.py; scripts/ci_coverage.py runs more)."""
    from benchmark.coverage import SCENARIOS, coverage

    result = coverage(SCENARIOS[0], repetitions=300, n_boot=300, seed=3)
    by_kind = result.set_index("interval").coverage
    assert by_kind["two-level (now)"] >= 0.93
    assert by_kind["images only (before)"] < 0.85
