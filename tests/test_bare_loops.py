"""The bare loops `bench perf --methods` measures the suite against (benchmark/perf/bare_loops.py):
one per built-in method, each a working training and scoring of that method's networks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medad_bench.api.contract import available_methods, get_method, make_config
from medad_bench.data import load_card, prepare
from medad_bench.engine.run import training_set
from medad_bench.perf.bare_loops import BARE_LOOPS, bare_loop_for, covers


@pytest.fixture
def tiny():  # noqa: ANN201 - a prepared dataset
    return prepare(load_card("tiny"))


def test_every_built_in_method_has_a_bare_loop():
    assert covers(list(available_methods())) == []
    assert set(BARE_LOOPS) == set(available_methods())
    with pytest.raises(KeyError, match="no bare loop for method 'nosuch'"):
        bare_loop_for("nosuch")


@pytest.mark.parametrize("name", sorted(BARE_LOOPS))
def test_a_bare_loop_trains_and_scores_every_test_image(name: str, tiny) -> None:  # noqa: ANN001
    """A twentieth of the quick budget: finite scores, one per test image, not all equal."""
    cls = get_method(name)
    config = make_config(cls, "quick", image_size=32, channels=1)
    config = dataclasses.replace(config, **cls.budget_overrides(config, 0.02))
    images = tiny.images_of("test")
    scores = bare_loop_for(name)(config, training_set(cls, tiny), "cpu", 0)(images)
    assert scores.shape == (len(images),)
    assert np.isfinite(scores).all()
    assert np.ptp(scores) > 0, f"{name}: the same score for every test image"


def _ranks(scores: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(scores))


def _both(name: str, data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001
    cls = get_method(name)
    config = make_config(cls, "quick", image_size=32, channels=1)
    train, images = training_set(cls, data), data.images_of("test")
    bare = bare_loop_for(name)(config, train, "cpu", 0)(images)
    suite = cls(config).fit(train, seed=0, device="cpu").score(images)
    return bare, suite, data.labels_of("test")


def test_the_bare_padim_is_the_same_detector_as_the_suites(tiny) -> None:  # noqa: ANN001
    """A plain timm forward with PaDiM's Gaussian (another random 100 channels than
    anomalib's) finds the tiny set's lesions as the suite's anomalib model does and ranks the
    test images nearly alike."""
    bare, suite, labels = _both("padim", tiny)
    assert roc_auc_score(labels, suite) > 0.9 and roc_auc_score(labels, bare) > 0.9
    assert np.corrcoef(_ranks(bare), _ranks(suite))[0, 1] > 0.9


def test_the_bare_patchcore_ranks_the_test_images_exactly_as_the_suite(tiny) -> None:  # noqa: ANN001
    """Every patch of the 40 training images fits the bank, so the bank, the seeded coreset
    and the nearest-patch scores are the same computation: the same order of test images."""
    bare, suite, labels = _both("patchcore", tiny)
    assert roc_auc_score(labels, suite) > 0.7
    np.testing.assert_array_equal(_ranks(bare), _ranks(suite))
    np.testing.assert_allclose(bare, suite, rtol=1e-3)
