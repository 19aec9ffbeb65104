"""The method contract, checked for every registered method (built-in and plug-in) by
benchmark.api.conformance; a plug-in package is discovered and checked; broken methods fail.

The parametrisation runs over `available_methods()` x the checks, so a new method, or a
plug-in installed in the environment, is checked without editing this file. The checks of one
method share its fits (benchmark/api/conformance.py), so its cases run one after another.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from medad_bench.api import Method, Prediction, available_methods
from medad_bench.api.conformance import CHECKS, check_method

REPO = Path(__file__).resolve().parents[1]

CASES = [pytest.param(name, check, id=f"{name}-{check}")
         for name in available_methods() for check in CHECKS]


@pytest.mark.parametrize(("name", "check"), CASES)
def test_method_meets_the_contract(name: str, check: str,
                                   record_property: pytest.RecordProperty) -> None:
    result = CHECKS[check](available_methods()[name])
    print(result)
    for key, value in result.details.items():
        record_property(key, value)


# ----------------------------------------------------------------------------- a plug-in

PLUGIN_NAME = "meanplug"

#: A plug-in that follows the contract: the mean absolute difference to the mean healthy
#: image of a seeded random three quarters of the training images.
PLUGIN_MODULE = '''
"""A throwaway benchmark plug-in, written by tests/test_conformance.py."""

from dataclasses import dataclass

import numpy as np

from medad_bench.api import Method, Prediction


@dataclass(frozen=True)
class MeanDistanceConfig:
    share: float = 0.75


class MeanDistance(Method):
    name = "meanplug"
    description = "mean |x - mean healthy image| (a seeded share of the training images)"
    uses = ("normal",)
    Config = MeanDistanceConfig

    @classmethod
    def profile_config(cls, profile, *, image_size, channels):
        return MeanDistanceConfig()

    def _fit(self, train, progress):
        rng = np.random.default_rng(self.seed)
        count = max(1, int(len(train.normal) * self.config.share))
        rows = np.sort(rng.choice(len(train.normal), count, replace=False))
        self.mean = np.asarray(train.normal[rows], dtype=np.float64).mean(0)

    def _predict(self, images, *, maps, extras):
        difference = np.abs(images - self.mean).mean(1)
        return Prediction(difference.mean((1, 2)), difference if maps else None)
'''


def write_plugin(root: Path) -> None:
    """A module and its distribution's metadata, with the `medad_bench.methods` entry point:
    what `pip install` of a plug-in package leaves in site-packages."""
    (root / "meanplug_pkg.py").write_text(PLUGIN_MODULE)
    info = root / f"{PLUGIN_NAME}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PLUGIN_NAME}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[medad_bench.methods]\n{PLUGIN_NAME} = meanplug_pkg:MeanDistance\n")


def test_an_installed_plugin_is_discovered_and_checked(tmp_path: Path) -> None:
    write_plugin(tmp_path)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path),
                                                       os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", str(REPO / "tests" / "test_conformance.py"),
         "-k", PLUGIN_NAME, "-p", "no:cacheprovider"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    passed = re.search(r"(\d+) passed", run.stdout)
    assert passed and int(passed.group(1)) == len(CHECKS), output
    assert "failed" not in run.stdout and "error" not in run.stdout.lower(), output


def test_check_method_passes_a_plugin_class_in_process(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import meanplug_pkg

    report = check_method(meanplug_pkg.MeanDistance)
    assert report.method == PLUGIN_NAME
    assert report.passed == list(CHECKS)
    assert report.details("lesions")["auc"] > 0.9


# ----------------------------------------------------------------------------- teeth


@dataclass(frozen=True)
class BrokenConfig:
    pass


class MeanDistance(Method):
    """A correct little method (as the plug-in); the broken ones below each break one rule."""

    name = "broken-baseline"
    description = "mean |x - mean healthy image|"
    Config = BrokenConfig

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int, channels: int) -> BrokenConfig:
        return BrokenConfig()

    def _fit(self, train, progress) -> None:
        rows = np.random.default_rng(self.seed).choice(len(train.normal), 30, replace=False)
        self.mean = np.asarray(train.normal[np.sort(rows)], dtype=np.float64).mean(0)

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        difference = np.abs(images - self.mean).mean(1)
        return Prediction(difference.mean((1, 2)), difference if maps else None)


class HalfSizeMaps(MeanDistance):
    name = "half-size-maps"

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        whole = super()._predict(images, maps=maps, extras=extras)
        return Prediction(whole.scores, None if whole.maps is None else whole.maps[:, ::2, ::2])


class IgnoresSeed(MeanDistance):
    name = "ignores-seed"

    def _fit(self, train, progress) -> None:
        self.seed = 0  # draws its subset from a fixed seed, whatever it was given
        super()._fit(train, progress)


class PredictsUnfitted(MeanDistance):
    name = "predicts-unfitted"
    mean = 0.0

    def predict(self, images, *, maps: bool = True, extras: bool = False) -> Prediction:
        return self._predict_batches(images, maps=maps, extras=extras)


class ReadsUnlabeled(MeanDistance):
    name = "reads-unlabeled"  # uses = ("normal",) but trains on the mixed set too

    def _fit(self, train, progress) -> None:
        both = np.concatenate([train.normal, train.unlabeled])
        self.mean = both.astype(np.float64).mean(0)


class Inverted(MeanDistance):
    name = "inverted"  # higher = more normal

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        whole = super()._predict(images, maps=maps, extras=extras)
        return Prediction(-whole.scores, whole.maps)


class ClaimsResume(MeanDistance):
    name = "claims-resume"  # supports_resume, but writes no checkpoint
    supports_resume = True


BROKEN = [
    (HalfSizeMaps, "prediction", r"maps have shape \(80, 16, 16\); expected \(80, 32, 32\)",
     ["prediction"]),
    (IgnoresSeed, "seed", "fits with seeds 0 and 1 gave the same scores", ["seed"]),
    (PredictsUnfitted, "not_fitted", r"predict\(\) before fit\(\) returned instead of raising",
     ["not_fitted"]),
    (ReadsUnlabeled, "uses", "scores are not finite.*unlabeled images were all NaN",
     ["prediction", "lesions", "uses"]),
    (Inverted, "lesions", r"AUC 0\.\d+ of 40 images with an obvious bright square",
     ["lesions"]),
    (ClaimsResume, "resume", "ran to the end without writing a checkpoint", ["resume"]),
]


@pytest.mark.parametrize(("broken", "check", "message", "failures"),
                         [pytest.param(*case, id=case[0].name) for case in BROKEN])
def test_a_broken_method_fails_with_a_clear_message(broken: type[Method], check: str,
                                                    message: str, failures: list[str]) -> None:
    pattern = f"method '{broken.name}' failed the conformance check '{check}': .*{message}"
    with pytest.raises(AssertionError, match=pattern):
        CHECKS[check](broken)
    with pytest.raises(AssertionError) as raised:
        check_method(broken)
    text = str(raised.value)
    assert text.startswith(f"method '{broken.name}' failed {len(failures)} of {len(CHECKS)} "
                           f"conformance checks"), text
    assert re.findall(r"the conformance check '(\w+)'", text) == failures, text


def test_the_correct_baseline_passes() -> None:
    assert check_method(MeanDistance).passed == list(CHECKS)


def test_check_method_names_unknown_checks() -> None:
    with pytest.raises(ValueError, match="unknown checks"):
        check_method(MeanDistance, checks=("prediction", "nonsense"))

