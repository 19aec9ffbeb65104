"""The method contract as executable checks, for every method: built-in ones and plug-ins.

Like scikit-learn's `check_estimator`, `check_method(MyMethod)` runs every check on one
`benchmark.api.Method` subclass, at a tiny size and on a few training steps, and raises
AssertionError naming the method and the check that failed (with what it expected and what it
got). Each check is also a public function (`CHECKS` maps their names to them), so a test suite
can parametrise over methods x checks (tests/test_conformance.py does, over
`available_methods()`: a new method or an installed plug-in is checked without editing a test).

The checks (the contract: benchmark/api/contract.py, benchmark/api/training.py):

1. construction:  `cls(config)` and `cls(config, workdir=...)` with the quick profile at a tiny
   size, shortened by the method's own `calibration_overrides(config, scale)`; sane class
   attributes.
2. not_fitted:     `predict` / `score` before `fit` raise NotFittedError naming the method.
3. fit_returns_self: `fit` returns the method itself, fitted.
4. prediction:     scores (N,) finite floats; maps None or (N, H, W) at the input's size and
   finite; maps / extras only when asked for; the same scores with or without maps and extras,
   from `score`, and for a subset of the images (no batch-dependent scores); extras (N, H, W);
   `figure` and `diagnostics` take the prediction.
5. seed:           the same seed gives the same scores (two fresh fits), another seed others.
6. lesions:        after fitting on smooth images (a longer fit: `LESION_SCALE`), images with
   a large bright square score higher than held-out smooth ones: AUC > LESION_MIN_AUC (0.8).
7. uses:           the method trains only on what it declares: TrainSet fields not in `uses`
   are all NaN (a method reading them would score NaN); `validation` is given only with
   `uses_validation`, the selection images only with `uses_selection` (and then the method
   weighs them).
8. resume:         a fit with a workdir leaves the same scores as one without; where
   `supports_resume`, a fit interrupted (KeyboardInterrupt from `Progress.advance`) after its
   first checkpoint and finished by a fresh instance on the same workdir gives the scores of
   an uninterrupted fit.

Fits are shared between the checks of one method: the short seed-0 fit (`DEFAULT_SCALE`)
serves checks 3, 4, 5, 7 and 8, so an iterative method costs five short fits (seed 0 twice,
seed 1, with a workdir, interrupted + resumed) and the lesion check's longer one.

The images are synthetic, made here: smooth gradients with a little noise (healthy), the same
with a bright square (diseased). See `conformance_data`.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medad_bench.api.contract import (
    TRAINING_SETS,
    LabelledSplit,
    Method,
    NotFittedError,
    Prediction,
    Progress,
    TrainSet,
    make_config,
)
from medad_bench.stats.competence import OutputFollowing, competence

#: The default `scale` handed to `calibration_overrides` for the fits that check the contract's
#: mechanics (shapes, seeds, resume): a few training steps (10 iterations for most GANs).
DEFAULT_SCALE = 1
#: The `scale` of the lesion check's fit: long enough for every built-in method to rank the
#: obvious lesions right (100 iterations for most GANs, 40 + 40 for f-AnoGAN, which ranks them
#: backwards at 20 + 20).
LESION_SCALE = 10
#: The lesion check's bar. A random scorer passes 0.5 half the time; every built-in method
#: reached at least 0.929 (ALAD) at LESION_SCALE, so 0.8 fails a method that barely ranks.
LESION_MIN_AUC = 0.8
#: Relative tolerance of "the same scores" (the resume and seed checks).
RTOL = 1e-5


# ----------------------------------------------------------------------------- results


@dataclass
class CheckResult:
    """One check passed by one method: how long it took (with the fits it was the first to
    need) and what it measured (the lesion check: the AUC)."""

    method: str
    check: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        facts = ", ".join(f"{k}={_fmt(v)}" for k, v in self.details.items())
        return f"{self.method}.{self.check}: passed in {self.seconds:.2f} s" + (
            f" [{facts}]" if facts else "")


@dataclass
class ConformanceReport:
    """What `check_method` returns when every check passed."""

    method: str
    results: list[CheckResult]

    @property
    def passed(self) -> list[str]:
        return [r.check for r in self.results]

    def details(self, check: str) -> dict[str, Any]:
        """What `check` measured (e.g. `report.details("lesions")["auc"]`)."""
        return next(r.details for r in self.results if r.check == check)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.results)

    def __str__(self) -> str:
        return "\n".join(str(r) for r in self.results)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


class ConformanceError(AssertionError):
    """A method broke the contract: the message names the method and the check."""


def _fail(cls: type[Method], check: str, message: str) -> ConformanceError:
    return ConformanceError(f"method '{_name(cls)}' failed the conformance check '{check}': "
                            f"{message}")


def _name(cls: type[Method]) -> str:
    return str(getattr(cls, "name", cls.__name__))


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ConformanceData:
    """The synthetic images of the checks, all (N, C, H, W) float32 in [0, 1].

    normal:            healthy training images (set B).
    unlabeled:         a mixed set (half with lesions), labels withheld (set A).
    selection:         unlabelled "test" images for AUCp (half with lesions), and
    selection_normals: healthy images held out of training, for AUCp.
    validation:        a labelled split (half with lesions, their masks).
    test_normals, test_lesions: the held-out images the lesion check scores (test_masks: the
                       lesions' masks (N, H, W)).
    """

    normal: np.ndarray
    unlabeled: np.ndarray
    selection: np.ndarray
    selection_normals: np.ndarray
    validation: LabelledSplit
    test_normals: np.ndarray
    test_lesions: np.ndarray
    test_masks: np.ndarray

    @property
    def test_images(self) -> np.ndarray:
        return np.concatenate([self.test_normals, self.test_lesions])

    @property
    def test_labels(self) -> np.ndarray:
        return np.r_[np.zeros(len(self.test_normals)), np.ones(len(self.test_lesions))]


def smooth_images(n: int, image_size: int, channels: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Healthy images: a soft linear gradient (random direction, mean level 0.25-0.35, rising
    0.15 across the image) plus Gaussian noise of sigma 0.02."""
    axis = (np.arange(image_size) + 0.5) / image_size - 0.5
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    angle = rng.uniform(0, 2 * math.pi, n)[:, None, None]
    level = rng.uniform(0.25, 0.35, n)[:, None, None]
    ramp = level + 0.15 * (np.cos(angle) * xx + np.sin(angle) * yy)
    images = np.repeat(ramp[:, None], channels, axis=1)
    images = images + rng.normal(0, 0.02, images.shape)
    return np.clip(images, 0, 1).astype(np.float32)


def add_lesions(images: np.ndarray, rng: np.random.Generator,
                value: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The images with a bright square (side a quarter of the image, at a random place away
    from the border, intensity `value` in every channel); returns (images, masks (N, H, W))."""
    out = images.copy()
    n, _, size, _ = images.shape
    side = max(2, size // 4)
    masks = np.zeros((n, size, size), dtype=np.float32)
    for i in range(n):
        top, left = rng.integers(size // 8, size - side - size // 8 + 1, 2)
        out[i, :, top:top + side, left:left + side] = value
        masks[i, top:top + side, left:left + side] = 1.0
    return out, masks


def conformance_data(image_size: int = 32, channels: int = 1, seed: int = 1234,
                     ) -> ConformanceData:
    """The checks' images: 48 healthy training images, a mixed set of 48, 40 selection images
    and 20 held-out normals, a validation split of 16, and 40 + 40 test images (more than one
    prediction batch of 64: batching is exercised)."""
    rng = np.random.default_rng([seed, image_size, channels])

    def smooth(n: int) -> np.ndarray:
        return smooth_images(n, image_size, channels, rng)

    def mixed(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lesions, masks = add_lesions(smooth(n - n // 2), rng)
        order = rng.permutation(n)
        images = np.concatenate([smooth(n // 2), lesions])[order]
        labels = np.r_[np.zeros(n // 2), np.ones(n - n // 2)][order]
        all_masks = np.concatenate([np.zeros((n // 2, image_size, image_size), np.float32),
                                    masks])[order]
        return images, labels.astype(np.int64), all_masks

    normal = smooth(48)
    unlabeled, _, _ = mixed(48)
    selection, _, _ = mixed(40)
    selection_normals = smooth(20)
    val_images, val_labels, val_masks = mixed(16)
    test_normals = smooth(40)
    test_lesions, test_masks = add_lesions(smooth(40), rng)
    return ConformanceData(normal, unlabeled, selection, selection_normals,
                           LabelledSplit(val_images, val_labels, val_masks),
                           test_normals, test_lesions, test_masks)


def conformance_train_set(cls: type[Method], data: ConformanceData) -> TrainSet:
    """The TrainSet a method is fitted on in the checks: the fields it declares, and NaN
    images in the others (so a method that reads them scores NaN); the labelled validation
    split only with `uses_validation`, the selection images only with `uses_selection`."""
    def used(name: str) -> np.ndarray:
        images = getattr(data, name)
        return images if name in cls.uses else np.full_like(images, np.nan)

    selecting = bool(cls.uses_selection)
    share = 0.5 if selecting else None  # conformance_data's selection images: half healthy
    return TrainSet(
        normal=used("normal"), unlabeled=used("unlabeled"),
        selection=data.selection if selecting else None,
        selection_normals=data.selection_normals if selecting else None,
        selection_normal_share=share,
        validation=data.validation if cls.uses_validation else None,
    )


def conformance_config(cls: type[Method], *, image_size: int = 32, channels: int = 1,
                       scale: int = DEFAULT_SCALE) -> Any:
    """The quick profile at `image_size`, shortened by `cls.calibration_overrides(config,
    scale)`."""
    quick = cls.profile_config("quick", image_size=image_size, channels=channels)
    overrides = cls.calibration_overrides(quick, scale)
    return make_config(cls, "quick", image_size=image_size, channels=channels,
                       overrides=overrides)


# ----------------------------------------------------------------------------- fits


@dataclass(frozen=True)
class _Options:
    image_size: int
    channels: int
    scale: int
    device: str
    lesion_scale: int = LESION_SCALE

    @staticmethod
    def of(image_size: int, channels: int, scale: int | None, device: str,
           lesion_scale: int | None = None) -> _Options:
        return _Options(image_size, channels, DEFAULT_SCALE if scale is None else scale, device,
                        LESION_SCALE if lesion_scale is None else lesion_scale)


class _Session:
    """One method's data, configs and fits, shared by its checks."""

    def __init__(self, cls: type[Method], options: _Options) -> None:
        self.cls, self.options = cls, options
        self.data = conformance_data(options.image_size, options.channels)
        self.train = conformance_train_set(cls, self.data)
        self._configs: dict[int, Any] = {}
        self._fits: dict[Any, tuple[Method, Any, float]] = {}
        #: Fits that raised: the other checks report the same error without fitting again.
        self._failed: dict[Any, str] = {}
        self._test_scores: dict[Any, np.ndarray] = {}

    def config(self, check: str, scale: int | None = None) -> Any:
        """The quick config shortened to `scale` (default: the options' scale)."""
        scale = self.options.scale if scale is None else scale
        if scale not in self._configs:
            try:
                self._configs[scale] = conformance_config(
                    self.cls, image_size=self.options.image_size,
                    channels=self.options.channels, scale=scale)
            except Exception as exc:
                raise _fail(self.cls, check, f"could not build the quick config shortened by "
                                             f"calibration_overrides: {exc!r}") from exc
        return self._configs[scale]

    def new(self, check: str, workdir: Path | None = None, scale: int | None = None) -> Method:
        config = self.config(check, scale)
        try:
            return self.cls(config) if workdir is None else self.cls(config, workdir=workdir)
        except Exception as exc:
            raise _fail(self.cls, check, f"{self.cls.__name__}(config"
                        f"{', workdir=...' if workdir else ''}) raised {exc!r}") from exc

    def fit(self, check: str, seed: int, *, tag: str = "", workdir: Path | None = None,
            progress: Progress | None = None, scale: int | None = None) -> Method:
        """A fresh instance fitted with `seed`; cached by (seed, tag, config) when no workdir
        (a feature method's config is the same at every scale: one fit serves)."""
        key = (seed, tag, repr(self.config(check, scale)))
        if workdir is None and key in self._fits:
            return self._fits[key][0]
        if workdir is None and key in self._failed:
            raise _fail(self.cls, check, self._failed[key])
        method = self.new(check, workdir, scale)
        start = time.perf_counter()
        try:
            returned = method.fit(self.train, seed=seed, device=self.options.device,
                                  progress=progress)
        except _Interrupted:
            raise
        except Exception as exc:
            message = f"fit(seed={seed}) on the conformance TrainSet raised {exc!r}"
            if workdir is None:
                self._failed[key] = message
            raise _fail(self.cls, check, message) from exc
        if workdir is None:
            self._fits[key] = (method, returned, time.perf_counter() - start)
        return method

    def fit_seconds(self, check: str, seed: int = 0, scale: int | None = None) -> float:
        return self._fits[(seed, "", repr(self.config(check, scale)))][2]

    def returned(self, check: str, seed: int = 0) -> Any:
        self.fit(check, seed)
        return self._fits[(seed, "", repr(self.config(check)))][1]

    def scores(self, check: str, method: Method, images: np.ndarray | None = None) -> np.ndarray:
        images = self.data.test_images if images is None else images
        try:
            scores = np.asarray(method.predict(images, maps=False).scores)
        except Exception as exc:
            raise _fail(self.cls, check, f"predict(images, maps=False) raised {exc!r}") from exc
        if scores.shape != (len(images),):
            raise _fail(self.cls, check, f"predict gave scores of shape {scores.shape} for "
                                         f"{len(images)} images; expected ({len(images)},)")
        return scores

    def test_scores(self, check: str, seed: int = 0, scale: int | None = None) -> np.ndarray:
        key = (seed, repr(self.config(check, scale)))
        if key not in self._test_scores:
            self._test_scores[key] = self.scores(check, self.fit(check, seed, scale=scale))
        return self._test_scores[key]


_SESSION: list[_Session] = []  # the latest method's, so a suite's fits do not pile up


def _session(cls: type[Method], options: _Options) -> _Session:
    if _SESSION and _SESSION[0].cls is cls and _SESSION[0].options == options:
        return _SESSION[0]
    _SESSION[:] = [_Session(cls, options)]
    return _SESSION[0]


def clear_cache() -> None:
    """Forget the shared fits (the checks of a method share them)."""
    _SESSION.clear()


# ----------------------------------------------------------------------------- the checks

CheckFunction = Callable[..., CheckResult]


def _run(cls: type[Method], name: str, body: Callable[[_Session, CheckResult], None],
         options: _Options) -> CheckResult:
    start = time.perf_counter()
    _class_sanity(cls, name)
    result = CheckResult(_name(cls), name, 0.0)
    session = _session(cls, options)
    body(session, result)
    result.seconds = time.perf_counter() - start
    return result


def _class_sanity(cls: type[Method], check: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise AssertionError(f"{cls!r} is not a benchmark.api.Method subclass "
                             f"(conformance check '{check}')")


def _construction(session: _Session, result: CheckResult) -> None:
    """The class attributes are sane; the quick config at the tiny size, shortened by
    calibration_overrides, constructs the method with and without a workdir."""
    cls, check = session.cls, "construction"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.strip():
        raise _fail(cls, check, "the class attribute `name` must be a non-empty string")
    if not isinstance(getattr(cls, "description", None), str):
        raise _fail(cls, check, "the class attribute `description` must be a string")
    uses = tuple(cls.uses)
    if not uses or set(uses) - set(TRAINING_SETS):
        raise _fail(cls, check, f"`uses` = {uses!r}: must name one or more of {TRAINING_SETS}")
    for flag in ("uses_selection", "uses_validation", "supports_resume"):
        if not isinstance(getattr(cls, flag), bool):
            raise _fail(cls, check, f"`{flag}` must be a bool, got {getattr(cls, flag)!r}")
    if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
        raise _fail(cls, check, "the class attribute `Config` must be a dataclass (configs are "
                                "logged, compared and rebuilt field by field)")
    if session.options.image_size < cls.min_image_size:
        raise _fail(cls, check, f"the checks run at image_size={session.options.image_size}, "
                                f"below min_image_size={cls.min_image_size}; pass a larger "
                                f"image_size to check_method")
    opts = session.options
    for profile in ("quick", "full"):
        config = cls.profile_config(profile, image_size=opts.image_size, channels=opts.channels)
        if not isinstance(config, cls.Config):
            raise _fail(cls, check, f"profile_config({profile!r}) returned a "
                                    f"{type(config).__name__}, not a {cls.Config.__name__}")
    overrides = cls.calibration_overrides(
        cls.profile_config("quick", image_size=opts.image_size, channels=opts.channels),
        opts.scale)
    if not isinstance(overrides, dict):
        raise _fail(cls, check, f"calibration_overrides returned {type(overrides).__name__}, "
                                f"not a dict of config fields")
    config = session.config(check)
    method = session.new(check)
    if method.config is not config:
        raise _fail(cls, check, "the constructor did not keep the config it was given as "
                                "`self.config`")
    if method.is_fitted or method.workdir is not None:
        raise _fail(cls, check, "a new instance must be unfitted and have workdir None")
    with tempfile.TemporaryDirectory() as tmp:
        with_workdir = session.new(check, Path(tmp))
        if with_workdir.workdir != Path(tmp):
            raise _fail(cls, check, f"cls(config, workdir=...) set workdir to "
                                    f"{with_workdir.workdir!r}")
    result.details["overrides"] = overrides


def _not_fitted(session: _Session, result: CheckResult) -> None:
    """predict and score before fit raise NotFittedError, with a message naming the method."""
    cls, check = session.cls, "not_fitted"
    method = session.new(check)
    images = session.data.test_normals[:2]
    for call, run in (("predict", lambda: method.predict(images)),
                      ("score", lambda: method.score(images))):
        try:
            run()
        except NotFittedError as exc:
            if cls.name not in str(exc):
                raise _fail(cls, check, f"{call}() before fit() raised NotFittedError, but its "
                                        f"message does not name the method: {exc}") from exc
        except Exception as exc:
            raise _fail(cls, check, f"{call}() before fit() must raise "
                                    f"benchmark.api.NotFittedError, raised {exc!r}") from exc
        else:
            raise _fail(cls, check, f"{call}() before fit() returned instead of raising "
                                    f"benchmark.api.NotFittedError")


def _fit_returns_self(session: _Session, result: CheckResult) -> None:
    """fit returns the method itself, marked fitted."""
    cls, check = session.cls, "fit_returns_self"
    method = session.fit(check, 0)
    returned = session.returned(check)
    if returned is not method:
        raise _fail(cls, check, f"fit() returned {returned!r}, not the method itself")
    if not method.is_fitted:
        raise _fail(cls, check, "after fit(), is_fitted is False")
    result.details.update(scale=session.options.scale, fit_s=session.fit_seconds(check))


def _prediction(session: _Session, result: CheckResult) -> None:
    """Shapes and values of predict / score; maps and extras only when asked for and
    without changing the scores; batch-independent scores; figure and diagnostics."""
    cls, check = session.cls, "prediction"
    method = session.fit(check, 0)
    data = session.data
    images = data.test_images
    n, size = len(images), images.shape[-2:]

    def predict(subset: np.ndarray, **kwargs: bool) -> Prediction:
        try:
            prediction = method.predict(subset, **kwargs)
        except Exception as exc:
            raise _fail(cls, check, f"predict(images, {_kw(kwargs)}) raised {exc!r}") from exc
        if not isinstance(prediction, Prediction):
            raise _fail(cls, check, f"predict returned {type(prediction).__name__}, not a "
                                    f"benchmark.api.Prediction")
        return prediction

    full = predict(images, maps=True, extras=False)
    scores = np.asarray(full.scores)
    if scores.shape != (n,):
        raise _fail(cls, check, f"scores have shape {scores.shape} for {n} images; "
                                f"expected ({n},)")
    if not np.issubdtype(scores.dtype, np.floating):
        raise _fail(cls, check, f"scores have dtype {scores.dtype}; expected floats")
    if not np.all(np.isfinite(scores)):
        raise _fail(cls, check, f"{int(np.sum(~np.isfinite(scores)))} of {n} scores are not "
                                f"finite" + _nan_hint(cls))
    if full.maps is not None:
        _check_stack(cls, check, "maps", full.maps, n, size)
    if full.extras:
        raise _fail(cls, check, f"predict(extras=False) returned extras {sorted(full.extras)}; "
                                f"extras must be empty unless asked for")
    plain = predict(images, maps=False)
    if plain.maps is not None:
        raise _fail(cls, check, "predict(maps=False) returned maps; maps must be None unless "
                                "asked for (compute them only when asked)")
    _same(cls, check, plain.scores, scores, "predict(maps=False).scores",
          "predict(maps=True).scores")
    _same(cls, check, np.asarray(method.score(images)), scores, "score(images)",
          "predict(images).scores")
    everything = predict(images, maps=True, extras=True)
    _same(cls, check, everything.scores, scores, "predict(extras=True).scores",
          "predict(extras=False).scores")
    for key, stack in everything.extras.items():
        _check_stack(cls, check, f"extras[{key!r}]", stack, n, size)
    missing = set(cls.diagnostic_extras) - set(everything.extras)
    if missing:
        raise _fail(cls, check, f"diagnostic_extras names {sorted(missing)}, but "
                                f"predict(extras=True) did not return them")
    _check_output_extra(cls, check, everything)
    head = predict(images[:3], maps=False)
    _same(cls, check, head.scores, scores[:3], "the scores of the first 3 images predicted "
          "alone", "their scores predicted with the others (batch-dependent scores: a network "
          "left in training mode?)")
    labels, masks = data.test_labels, np.concatenate(
        [np.zeros((len(data.test_normals), *size), np.float32), data.test_masks])
    try:
        values = method.diagnostics(everything, labels, masks)
    except Exception as exc:
        raise _fail(cls, check, f"diagnostics(prediction, labels, lesions) raised "
                                f"{exc!r}") from exc
    if not isinstance(values, dict) or not all(isinstance(float(v), float)
                                               for v in values.values()):
        raise _fail(cls, check, f"diagnostics returned {values!r}, not a dict of numbers")
    try:
        figure = method.figure(images[:2], everything.rows(np.arange(2)))
    except Exception as exc:
        raise _fail(cls, check, f"figure(images, prediction) raised {exc!r}") from exc
    if figure is not None:
        import matplotlib.pyplot as plt

        plt.close(figure)
    result.details.update(maps=full.maps is not None, extras=sorted(everything.extras))


def _check_output_extra(cls: type[Method], check: str, prediction: Prediction) -> None:
    """The image named by `output_extra` (what the competence checks compare with the input)
    is among the extras, in [0, 1]."""
    name = cls.output_extra
    if name is None:
        return
    if name not in prediction.extras:
        raise _fail(cls, check, f"output_extra names {name!r}, but predict(extras=True) did not "
                                f"return it (extras: {sorted(prediction.extras)})")
    output = prediction.extras[name]
    if output.size and (float(np.min(output)) < -1e-6 or float(np.max(output)) > 1 + 1e-6):
        raise _fail(cls, check, f"extras[{name!r}] spans [{float(np.min(output)):.3f}, "
                                f"{float(np.max(output)):.3f}]; an output image is in [0, 1], "
                                f"like the inputs it is compared with")


def _seed(session: _Session, result: CheckResult) -> None:
    """Two fresh fits with the same seed give the same scores; another seed others."""
    cls, check = session.cls, "seed"
    first = session.test_scores(check, 0)
    again = session.scores(check, session.fit(check, 0, tag="again"))
    _same(cls, check, again, first, "the scores of a second fit with seed 0",
          "those of the first (some randomness is not drawn from the seed given to fit: "
          "seed every generator from it, e.g. torch.Generator().manual_seed(self.seed))")
    other = session.test_scores(check, 1)
    if np.allclose(other, first, rtol=RTOL, atol=0):
        raise _fail(cls, check, "fits with seeds 0 and 1 gave the same scores: the seed "
                                "given to fit() does not reach the method's randomness")
    result.details["max_rel_diff_other_seed"] = float(
        np.max(np.abs(other - first) / np.maximum(np.abs(first), 1e-12)))


def _lesions(session: _Session, result: CheckResult) -> None:
    """Fitted on smooth images, the method scores images with a large bright square higher
    than held-out smooth images: AUC > LESION_MIN_AUC."""
    from sklearn.metrics import roc_auc_score

    cls, check = session.cls, "lesions"
    scale = session.options.lesion_scale
    config = session.config(check, scale)
    scores = session.test_scores(check, 0, scale)
    result.details.update(scale=scale, images_seen=cls.images_seen(config),
                          fit_s=session.fit_seconds(check, 0, scale))
    if not np.all(np.isfinite(scores)):
        raise _fail(cls, check, "scores are not finite" + _nan_hint(cls))
    auc = float(roc_auc_score(session.data.test_labels, scores))
    result.details["auc"] = auc
    result.details.update(_competence_details(session, config, scale))
    if not auc > LESION_MIN_AUC:
        n = len(session.data.test_normals)
        raise _fail(cls, check, f"AUC {auc:.3f} of {n} images with an obvious bright square "
                                f"against {n} held-out healthy ones (must exceed "
                                f"{LESION_MIN_AUC}): higher scores must mean more anomalous")


def competence_of(method: Method, images: np.ndarray,
                  labels: np.ndarray) -> dict[str, float | str | bool]:
    """Predict labelled `images` (N, C, H, W) once and run every check, the method's own
    included: for callers outside the runner, whose single pass streams the same sums
    (benchmark/engine/evaluation.py: predict_split, competence_values); here in the api room
    because it needs a Method, which the stats room may not import."""
    prediction = method.predict(images, maps=False,
                                extras=method.output_extra is not None
                                or bool(method.diagnostic_extras))
    follow = None
    if method.output_extra is not None:
        follow = OutputFollowing()
        follow.add(np.asarray(images).mean(axis=1), prediction.extras[method.output_extra])
    return competence(prediction.scores, labels, inputs=images if follow else None,
                      outputs=follow,
                      method_checks=method.competence_checks(prediction.extras, labels))


def _competence_details(session: _Session, config: Any, scale: int | None) -> dict[str, Any]:
    """The competence checks (benchmark/stats/competence.py) of the lesion check's fit, on its test
    images: recorded in the result's details, so a method's conformance report says whether
    the short fit learned."""
    method = session.fit("lesions", 0, scale=scale)
    values = competence_of(method, session.data.test_images, session.data.test_labels)
    return {f"competence_{k}" if k not in ("competent", "competence_failed") else k: v
            for k, v in values.items()}


def _uses(session: _Session, result: CheckResult) -> None:
    """The fit saw NaN in the TrainSet fields outside `uses`, validation only with
    uses_validation, selection images only with uses_selection: its scores stay finite, and
    a method that uses selection weighed the selection images."""
    cls, check = session.cls, "uses"
    scores = session.test_scores(check, 0)
    if not np.all(np.isfinite(scores)):
        raise _fail(cls, check, "scores are not finite after a fit whose TrainSet fields "
                                "outside `uses` were NaN" + _nan_hint(cls))
    method = session.fit(check, 0)
    history = getattr(method, "selection_history", None)
    if cls.uses_selection and history is not None and not history:
        raise _fail(cls, check, "uses_selection is True and the TrainSet had selection images "
                                "and held-out normals, but no checkpoint was weighed by AUCp")
    result.details.update(
        given=[name for name in (*TRAINING_SETS, "selection", "validation")
               if name in cls.uses or (name == "selection" and cls.uses_selection)
               or (name == "validation" and cls.uses_validation)])


def _resume(session: _Session, result: CheckResult) -> None:
    """A workdir does not change an uninterrupted fit's scores; where supports_resume, a fit
    interrupted after its first checkpoint and finished by a fresh instance on the same
    workdir gives the uninterrupted fit's scores."""
    cls, check = session.cls, "resume"
    reference = session.test_scores(check, 0)
    with tempfile.TemporaryDirectory() as tmp:
        plain = session.scores(check, session.fit(check, 0, workdir=Path(tmp) / "whole"))
        _same(cls, check, plain, reference, "the scores of a fit with a workdir",
              "those of the same fit without one")
        if not cls.supports_resume:
            result.details["interruption"] = "not tried: supports_resume is False"
            return
        workdir = Path(tmp) / "interrupted"
        interrupter = _InterruptAfterCheckpoint(workdir)
        try:
            session.fit(check, 0, workdir=workdir, progress=interrupter)
        except _Interrupted:
            pass
        else:
            raise _fail(cls, check, "a fit with a workdir ran to the end without writing a "
                        "checkpoint there (or swallowed the KeyboardInterrupt raised from "
                        "Progress.advance after it)" if interrupter.seen is None else
                        "fit() swallowed the KeyboardInterrupt raised from Progress.advance")
        resumed_method = session.fit(check, 0, workdir=workdir)
        resumed = session.scores(check, resumed_method)
        from_step = resumed_method.run_info.get("resumed_from_step")
        if from_step is not None and not from_step:
            raise _fail(cls, check, f"the fresh instance did not resume from the checkpoint "
                                    f"in {workdir} (run_info resumed_from_step = {from_step})")
        _same(cls, check, resumed, reference, "the scores of a fit interrupted after its first "
              "checkpoint and resumed by a fresh instance", "those of an uninterrupted fit "
              "with the same seed", exact=True)
        result.details.update(interrupted_after=interrupter.steps, resumed_from_step=from_step,
                              checkpoint=interrupter.seen)


class _Interrupted(KeyboardInterrupt):
    """The checks' own Ctrl-C: caught by the resume check, never a real one."""


class _InterruptAfterCheckpoint(Progress):
    """Raises KeyboardInterrupt from `advance` once the workdir holds a checkpoint."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.steps, self.seen = workdir, 0, None

    def advance(self, n: int = 1) -> None:
        self.steps += n
        written = _checkpoint_file(self.workdir)
        if written is not None:
            self.seen = written
            raise _Interrupted(f"conformance check: interrupted after {written} was written")


def _checkpoint_file(workdir: Path) -> str | None:
    """workdir/last.pt (the engine's), else any finished file in the workdir."""
    if (workdir / "last.pt").is_file():
        return "last.pt"
    if workdir.is_dir():
        for path in sorted(workdir.rglob("*")):
            if path.is_file() and path.suffix != ".tmp":
                return str(path.relative_to(workdir))
    return None


# ----------------------------------------------------------------------------- helpers


def _kw(kwargs: dict[str, bool]) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())


def _nan_hint(cls: type[Method]) -> str:
    unused = [name for name in TRAINING_SETS if name not in cls.uses]
    if not unused:
        return ""
    return (f" (the TrainSet's {', '.join(unused)} images were all NaN, as `uses` = "
            f"{tuple(cls.uses)} does not list them: a method that reads them scores NaN)")


def _check_stack(cls: type[Method], check: str, what: str, stack: Any, n: int,
                 size: tuple[int, ...]) -> None:
    if not isinstance(stack, np.ndarray):
        raise _fail(cls, check, f"{what} is a {type(stack).__name__}, not a NumPy array")
    if stack.shape != (n, *size):
        raise _fail(cls, check, f"{what} have shape {stack.shape}; expected {(n, *size)} "
                                f"(N, H, W at the input's size)")
    if not np.all(np.isfinite(stack)):
        raise _fail(cls, check, f"{what} hold {int(np.sum(~np.isfinite(stack)))} non-finite "
                                f"values")


def _same(cls: type[Method], check: str, actual: np.ndarray, expected: np.ndarray,
          what: str, versus: str, exact: bool = False) -> None:
    """Equal within RTOL, or bit for bit where `exact` (a resumed fit must be the same fit: a
    state left out of the checkpoint, such as an average of the weights, moves scores by only
    ~1e-6)."""
    rtol, atol = (0.0, 0.0) if exact else (RTOL, 1e-8)
    try:
        np.testing.assert_allclose(np.asarray(actual, dtype=np.float64),
                                   np.asarray(expected, dtype=np.float64), rtol=rtol, atol=atol)
    except AssertionError as exc:
        detail = str(exc).strip().splitlines()
        raise _fail(cls, check, f"{what} differ from {versus} (rtol {rtol}): "
                                + " ".join(line.strip() for line in detail[1:5])) from None


# ----------------------------------------------------------------------------- public checks


def check_construction(cls: type[Method], *, image_size: int = 32, channels: int = 1,
                       scale: int | None = None, device: str = "cpu") -> CheckResult:
    """The class attributes are sane; the quick config at the tiny size, shortened by
    `calibration_overrides`, constructs the method, with and without `workdir=`."""
    options = _Options.of(image_size, channels, scale, device)
    return _run(cls, "construction", _construction, options)


def check_not_fitted(cls: type[Method], *, image_size: int = 32, channels: int = 1,
                     scale: int | None = None, device: str = "cpu") -> CheckResult:
    """`predict` and `score` before `fit` raise NotFittedError naming the method."""
    options = _Options.of(image_size, channels, scale, device)
    return _run(cls, "not_fitted", _not_fitted, options)


def check_fit_returns_self(cls: type[Method], *, image_size: int = 32, channels: int = 1,
                           scale: int | None = None, device: str = "cpu") -> CheckResult:
    """`fit` returns the method itself, marked fitted."""
    options = _Options.of(image_size, channels, scale, device)
    return _run(cls, "fit_returns_self", _fit_returns_self, options)


def check_prediction(cls: type[Method], *, image_size: int = 32, channels: int = 1,
                     scale: int | None = None, device: str = "cpu") -> CheckResult:
    """Shapes and values of `predict` / `score`: scores (N,) finite floats, maps None or
    (N, H, W) at the input size, extras (N, H, W); maps and extras only when asked for and
    without changing the scores; batch-independent scores; `figure` and `diagnostics` take
    the prediction."""
    options = _Options.of(image_size, channels, scale, device)
    return _run(cls, "prediction", _prediction, options)


def check_seed(cls: type[Method], *, image_size: int = 32, channels: int = 1,
               scale: int | None = None, device: str = "cpu") -> CheckResult:
    """Two fresh fits with the same seed give the same scores; another seed other scores."""
    options = _Options.of(image_size, channels, scale, device)
    return _run(cls, "seed", _seed, options)


def check_lesions(cls: type[Method], *, image_size: int = 32, channels: int = 1,
                  scale: int | None = None, device: str = "cpu",
                  lesion_scale: int | None = None) -> CheckResult:
    """Fitted on smooth images, the method ranks images with a large bright square above
    held-out smooth images: AUC > LESION_MIN_AUC (the result's details hold the AUC)."""
    options = _Options.of(image_size, channels, scale, device, lesion_scale)
    return _run(cls, "lesions", _lesions, options)


def check_uses(cls: type[Method], *, image_size: int = 32, channels: int = 1,
               scale: int | None = None, device: str = "cpu") -> CheckResult:
    """The fit saw NaN images in the TrainSet fields outside `uses`, `validation` only with
    `uses_validation`, selection images only with `uses_selection`: its scores stay finite,
    and a method that uses selection weighed the selection images."""
    options = _Options.of(image_size, channels, scale, device)
    return _run(cls, "uses", _uses, options)


def check_resume(cls: type[Method], *, image_size: int = 32, channels: int = 1,
                 scale: int | None = None, device: str = "cpu") -> CheckResult:
    """A workdir leaves an uninterrupted fit's scores unchanged; where `supports_resume`, a
    fit interrupted (KeyboardInterrupt from Progress.advance) after its first checkpoint and
    finished by a fresh instance on the same workdir gives the uninterrupted fit's scores."""
    options = _Options.of(image_size, channels, scale, device)
    return _run(cls, "resume", _resume, options)


#: The checks by name, in the order `check_method` runs them.
CHECKS: dict[str, CheckFunction] = {
    "construction": check_construction,
    "not_fitted": check_not_fitted,
    "fit_returns_self": check_fit_returns_self,
    "prediction": check_prediction,
    "seed": check_seed,
    "lesions": check_lesions,
    "uses": check_uses,
    "resume": check_resume,
}


# ----------------------------------------------------------------------------- the suite


def check_method(cls: type[Method], *, image_size: int = 32, channels: int = 1,
                 scale: int | None = None, device: str = "cpu",
                 lesion_scale: int | None = None,
                 checks: tuple[str, ...] | None = None) -> ConformanceReport:
    """Run every conformance check (or those named in `checks`) on the Method subclass `cls`.

    image_size / channels: the synthetic images' size (at least `cls.min_image_size`);
    scale: handed to `cls.calibration_overrides` to shorten the fits of the mechanical checks
    (default DEFAULT_SCALE: a few steps), lesion_scale that of the lesion check's fit (default
    LESION_SCALE); device: where to fit ("cpu").

    Returns a ConformanceReport (per check: seconds and measured values, such as the lesion
    AUC). Raises AssertionError (ConformanceError) naming the method and every failed check;
    if construction fails, the other checks are not run.
    """
    names = tuple(CHECKS) if checks is None else tuple(checks)
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown checks {unknown}; the checks are {list(CHECKS)}")
    results, failures = [], []
    try:
        for name in names:
            try:
                extra = {"lesion_scale": lesion_scale} if name == "lesions" else {}
                results.append(CHECKS[name](cls, image_size=image_size, channels=channels,
                                            scale=scale, device=device, **extra))
            except AssertionError as exc:
                failures.append(str(exc))
                if name == "construction":
                    break
    finally:
        clear_cache()
    if failures:
        raise ConformanceError(f"method '{_name(cls)}' failed {len(failures)} of "
                               f"{len(names)} conformance checks:\n- " + "\n- ".join(failures))
    return ConformanceReport(_name(cls), results)


__all__ = [
    "CHECKS",
    "CheckResult",
    "ConformanceError",
    "ConformanceData",
    "ConformanceReport",
    "DEFAULT_SCALE",
    "LESION_SCALE",
    "add_lesions",
    "check_construction",
    "check_fit_returns_self",
    "check_lesions",
    "check_method",
    "check_not_fitted",
    "check_prediction",
    "check_resume",
    "check_seed",
    "check_uses",
    "clear_cache",
    "conformance_config",
    "conformance_data",
    "conformance_train_set",
    "smooth_images",
]
