"""Did the model learn? The competence checks (benchmark/stats/competence.py) on real images, a
method that emits one image for every input, and what reports do with a run that failed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from click.testing import CliRunner

from medad_bench.api import Method, Prediction, TrainSet
from medad_bench.cli import cli
from medad_bench.data import load_card, prepare
from medad_bench.engine import evaluation
from medad_bench.report.table import select_runs
from medad_bench.stats.competence import OUTPUT_CORRELATION_MIN, OutputFollowing, competence


@pytest.fixture
def tiny():
    return prepare(load_card("tiny"), show_progress=False)


def followed(inputs: np.ndarray, outputs: np.ndarray) -> OutputFollowing:
    follow = OutputFollowing()
    for start in range(0, len(inputs), 7):  # in chunks, as predict_split streams them
        follow.add(inputs[start:start + 7], outputs[start:start + 7])
    return follow


def test_the_correlation_across_images_tells_a_copy_from_one_image_for_all(tiny):
    grey = tiny.images_of("val").mean(axis=1)
    rng = np.random.default_rng(0)
    assert followed(grey, grey).correlation() == pytest.approx(1.0)
    same = np.broadcast_to(grey[0], grey.shape)
    assert followed(grey, same).correlation() == 0.0
    noise = rng.random(grey.shape)
    assert abs(followed(grey, noise).correlation()) < 0.1
    # A blurred copy (2x2 box) keeps most of how the images differ.
    blurred = (grey + np.roll(grey, 1, -1) + np.roll(grey, 1, -2)
               + np.roll(np.roll(grey, 1, -1), 1, -2)) / 4
    assert followed(grey, blurred).correlation() > OUTPUT_CORRELATION_MIN
    # Adding the same texture to every input (the lattice of a collapsed generator) keeps the
    # correlation: that failure shows in the PSNR and the AUC, not here.
    assert followed(grey, grey + 0.3 * noise[0]).correlation() > 0.99


def test_scores_that_do_not_vary_or_rank_healthy_first_fail(tiny):
    labels = tiny.labels_of("val")
    constant = competence(np.full(len(labels), 0.25), labels)
    assert not constant["competent"]
    assert constant["competence_failed"] == "score_spread,val_auc"
    inverted = competence(-labels + 0.01 * np.arange(len(labels)), labels)
    assert inverted["val_auc"] < 0.5 and inverted["competence_failed"] == "val_auc"
    good = competence(labels + 0.01 * np.arange(len(labels)), labels)
    assert good["competent"] and good["competence_failed"] == ""


@dataclass
class _NoConfig:
    pass


class OneImageForAll(Method):
    """A collapsed generator: the same output image whatever the input, scored by the mean
    difference to it (a score that still varies across inputs, like AnomalyPro's collapse)."""

    name = "one-image"
    description = "test double of a collapsed generator"
    output_extra = "translated"
    Config = _NoConfig

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int, channels: int) -> _NoConfig:
        return _NoConfig()

    def _fit(self, train: TrainSet, progress: object) -> None:
        self.texture = np.random.default_rng(self.seed).random(train.normal.shape[-2:])

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        grey = images.mean(axis=1)
        output = np.broadcast_to(self.texture, grey.shape).astype(np.float32)
        scores = np.abs(grey - output).mean(axis=(1, 2)).astype(np.float64)
        return Prediction(scores, None, {"translated": output} if extras else {})


class Copier(OneImageForAll):
    """Gives every input back unchanged, scored by how bright it is (lesions are bright)."""

    name = "copier"

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        grey = images.mean(axis=1)
        return Prediction(grey.mean(axis=(1, 2)).astype(np.float64), None,
                          {"translated": grey.copy()} if extras else {})


class BreaksOnLesions(OneImageForAll):
    """Gives the dimmer half of the inputs back unchanged and turns the brighter half (where
    the lesions are) into one checkerboard: it scores by breaking, not by translating."""

    name = "breaks-on-lesions"

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        grey = images.mean(axis=1)
        brightness = grey.mean(axis=(1, 2))
        broken = brightness > np.median(brightness)
        board = (np.indices(grey.shape[1:]).sum(axis=0) % 2).astype(grey.dtype)
        output = np.where(broken[:, None, None], board, grey)
        return Prediction(brightness.astype(np.float64), None,
                          {"translated": output} if extras else {})


class AddsOnePattern(OneImageForAll):
    """Gives every input back plus one faint fixed dot lattice (AnomalyPro's published
    transposed convolutions on PneumoniaMNIST, issue 24): the output follows the input,
    healthy inputs come back close, anatomy is kept, and yet the model changed nothing about
    any particular image."""

    name = "adds-one-pattern"

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        grey = images.mean(axis=1)
        rows, cols = np.indices(grey.shape[1:])
        dots = ((rows % 4 == 0) & (cols % 4 == 0)).astype(grey.dtype) * 0.05
        return Prediction(grey.mean(axis=(1, 2)).astype(np.float64), None,
                          {"translated": grey + dots} if extras else {})


def _checks(method: Method, data) -> dict:
    method.fit(data.train_set(), seed=0)
    follow = OutputFollowing()
    val = evaluation.predict_split(method, data.images_of("val"), keep_maps=False,
                                   follow=follow)
    return evaluation.competence_values(method, data, val, data.images_of("val"), follow)


def test_a_method_that_outputs_one_image_for_every_input_is_flagged(tiny):
    collapsed = _checks(OneImageForAll(), tiny)
    assert not collapsed["competent"]
    assert "output_correlation" in collapsed["competence_failed"].split(",")
    assert collapsed["output_correlation"] == 0.0
    assert collapsed["healthy_psnr_gain_db"] < 0  # worse than the mean healthy image
    copier = _checks(Copier(), tiny)
    assert copier["output_correlation"] == pytest.approx(1.0)
    assert copier["healthy_psnr_gain_db"] == np.inf or copier["healthy_psnr_gain_db"] > 20
    assert "output_correlation" not in copier["competence_failed"]
    assert copier["diseased_structure"] == pytest.approx(1.0)


def test_a_method_that_breaks_diseased_inputs_into_noise_is_flagged(tiny):
    """What it makes of the broken inputs has nothing of their anatomy left; the copier above
    keeps all of it (1.0)."""
    broken = _checks(BreaksOnLesions(), tiny)
    assert broken["diseased_structure"] < 0.5
    assert "diseased_structure" in broken["competence_failed"].split(",")
    assert not broken["competent"]


def _report(uri: str) -> str:
    result = CliRunner().invoke(cli, ["report", "--dataset", "tiny", "--out", "-",
                                      "--no-figures", "--no-log", "--tracking-uri", uri],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_run_that_did_not_learn_is_marked_never_bold_never_ranked(tracking_uri):
    # An autoencoder with a learning rate of 0 never trains: its output is its random
    # initialisation's. PaDiM (random backbone, to stay fast) learns the tiny set's lesions.
    result = CliRunner().invoke(cli, [
        "run", "--dataset", "tiny", "--methods", "padim,autoencoder", "--seeds", "0",
        "--no-progress", "--weights", "padim=random", "--set", "autoencoder.lr=0",
        "--tracking-uri", tracking_uri], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    runs = select_runs(tracking_uri, "tiny", statistics=False).runs.set_index("method")
    assert runs.loc["autoencoder", "competent"] == "false"
    assert runs.loc["padim", "competent"] == "true"
    assert "metric.competence_output_correlation" in runs.columns
    report = _report(tracking_uri)
    row = next(line for line in report.splitlines() if line.startswith("| autoencoder"))
    assert "✗" in row and "**" not in row and "not ranked" in row
    assert "autoencoder did not learn (validation checks failed: seed 0:" in report
    statistics = select_runs(tracking_uri, "tiny").statistics
    assert list(statistics.method) == ["padim"]  # the best is chosen among those that learned


def test_anomalypro_fails_when_its_mask_does_not_mark_the_diseased_images():
    from medad_bench.methods.anomalypro import AnomalyPro

    labels = np.array([0] * 10 + [1] * 10)
    rng = np.random.default_rng(0)
    lattice = (rng.random((8, 8)) < 0.3).astype(np.float32)  # one pattern for every input
    same = {"mask M": np.broadcast_to(lattice, (20, 8, 8)).copy()}
    checks = AnomalyPro().competence_checks(same, labels)
    assert checks["mask_follows_input"] == (0.0, False)
    verdict = competence(labels + 0.01 * np.arange(20), labels, method_checks=checks)
    assert verdict["competence_failed"] == "mask_follows_input"
    marked = same["mask M"].copy() * 0.1
    marked[10:, 2:4, 2:4] = 1.0  # lesions marked on the diseased images only
    checks = AnomalyPro().competence_checks({"mask M": marked}, labels)
    assert checks["mask_follows_input"][1] and checks["mask_not_saturated"][1]
    saturated = AnomalyPro().competence_checks({"mask M": np.ones((20, 8, 8))}, labels)
    assert saturated["mask_not_saturated"][1] is False


def test_a_method_that_adds_one_fixed_pattern_to_every_input_is_flagged(tiny):
    """Only the shared-change check catches it; the copier changes nothing (no share: passes)."""
    patterned = _checks(AddsOnePattern(), tiny)
    assert patterned["common_change_share"] == pytest.approx(1.0)
    assert patterned["competence_failed"].split(",") == ["common_change_share"]
    assert not patterned["competent"]
    copier = _checks(Copier(), tiny)
    assert np.isnan(copier["common_change_share"])
    assert "common_change_share" not in copier["competence_failed"]


@pytest.mark.parametrize(("pattern_energy", "flagged"), [(0.7, True), (0.3, False)])
def test_a_fixed_pattern_carrying_most_of_the_change_is_flagged(pattern_energy, flagged):
    """A lattice added to every input beside changes that differ per image: failed when the
    lattice carries more than half of the change's energy, as Brainomaly's at 16x."""
    from medad_bench.stats.competence import COMMON_CHANGE_MAX

    rng = np.random.default_rng(0)
    inputs = rng.random((400, 16, 16))
    lattice = np.zeros((16, 16))
    lattice[::3, ::3] = 1.0
    lattice *= np.sqrt(pattern_energy / (lattice ** 2).mean())
    own = rng.normal(0.0, np.sqrt(1 - pattern_energy), inputs.shape)  # image by image
    follow = OutputFollowing()
    follow.add(inputs, inputs + lattice + own)
    share = follow.common_change_share()
    assert share == pytest.approx(pattern_energy, abs=0.02)
    assert (share >= COMMON_CHANGE_MAX) == flagged
