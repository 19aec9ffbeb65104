"""The interface every method meets, the training set it receives, and the method registry.

A method is a class with a small `fit` / `predict` surface (scikit-learn / PyOD style): its
hyper-parameters live in a config dataclass given to the constructor (with the work folder for
its checkpoints), `fit` trains on a `TrainSet` and returns the method, `predict` returns a
`Prediction` per image batch: one anomaly score per image (higher = more anomalous), per-pixel
maps where the method has them, and named extras (AnomalyPro's translation and mask), all from
one pass of the model. `score` is `predict(...).scores`.

The contract is checked for every registered method, plug-ins included, by
`benchmark.api.conformance.check_method`.

Methods are registered by name with `@register_method`; the built-in ones live in the top-level
`methods` package, and other packages add theirs through the entry-point group
`medad_bench.methods` (each entry point names a Method subclass or a module that registers one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from medad_bench.data.images import ImageSet
from medad_bench.errors import BenchError, UsageError, unknown_name

PROFILES = ("quick", "full")
TRAINING_SETS = ("normal", "unlabeled")


@dataclass(frozen=True)
class LabelledSplit:
    """The labelled validation split, for choices and diagnostics made on validation data
    (never on test): images (N, C, H, W) in [0, 1], labels (N,) 0 healthy / 1 diseased, and
    lesion masks (N, H, W) where the dataset has them."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None


#: Training images: a view of the memory-mapped cache (`ImageSet`, read as float32 batch by
#: batch) or an in-memory float32 array; both index alike (`images[index]` -> floats).
Images = ImageSet | np.ndarray


@dataclass(frozen=True)
class TrainSet:
    """The images a method may train on; labels of `unlabeled` are withheld.

    normal:    images known to be healthy (set B in the paper), (N, C, H, W) in [0, 1].
    unlabeled: the mixed, unannotated set A (healthy and diseased together).

    Read them in batches (`images[index]`, `ImageSet.batches`), never whole: at the published
    size set B alone is 10,031 images.
    """

    normal: Images
    unlabeled: Images
    #: Unlabelled test images for label-free model selection (AUCp, docs/design.md section 4),
    #: and the protocol's share of healthy images among them (rho). None where selection is not
    #: used.
    selection: np.ndarray | None = None
    selection_normal_share: float | None = None
    #: Known-normal images held out of `normal` (never trained on): AUCp's pseudo-label 0.
    selection_normals: Images | None = None
    #: The labelled validation split, for methods that declare `uses_validation`.
    validation: LabelledSplit | None = None

    def __post_init__(self) -> None:
        for name in (*TRAINING_SETS, "selection", "selection_normals"):
            array = getattr(self, name)
            if array is None:
                continue
            if array.ndim != 4:
                raise ValueError(f"TrainSet.{name} must be (N, C, H, W), got shape {array.shape}")

    @property
    def channels(self) -> int:
        return int(self.normal.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.normal.shape[-1])


@dataclass(frozen=True)
class Prediction:
    """Everything a method says about N images, from one pass of its model.

    scores: (N,) float64, higher = more anomalous.
    maps:   (N, H, W) per-pixel anomaly maps at the input's size, or None (no maps, or not
            asked for).
    extras: name -> (N, H, W) per-pixel outputs worth showing beside the map (AnomalyPro: the
            translation and its mask M), at the input's size; empty unless asked for.
    """

    scores: np.ndarray
    maps: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def rows(self, index: np.ndarray) -> Prediction:
        """The prediction of a subset of the images."""
        return Prediction(self.scores[index], None if self.maps is None else self.maps[index],
                          {name: value[index] for name, value in self.extras.items()})

    @staticmethod
    def concatenate(parts: Sequence[Prediction]) -> Prediction:
        """Batches' predictions joined in order."""
        if not parts:
            return Prediction(np.zeros(0))
        maps = None if parts[0].maps is None else np.concatenate([p.maps for p in parts])
        extras = {name: np.concatenate([p.extras[name] for p in parts])
                  for name in parts[0].extras}
        return Prediction(np.concatenate([p.scores for p in parts]), maps, extras)


class NotFittedError(RuntimeError):
    """A method was asked to predict before `fit`."""


class Progress:
    """Reports a method's progress to the runner; the default does nothing.

    A method calls `stage(name, total)` when it starts a stage (e.g. "fit", "coreset") and
    `advance(n)` as it goes. The runner turns these into a progress bar.
    """

    def stage(self, name: str, total: int | None = None) -> None:  # noqa: B027 - optional hook
        """Start a new stage of `total` steps (None when the length is unknown)."""

    def advance(self, n: int = 1) -> None:  # noqa: B027 - optional hook
        """Mark `n` more steps of the current stage done."""

    def metric(self, name: str, value: float, step: int) -> None:  # noqa: B027 - optional hook
        """Record a value of a training curve (losses, AUCp per checkpoint) at `step`."""


class Method(ABC):
    """Base class of every anomaly-detection method in the suite.

    Subclasses set the class attributes, define a `Config` dataclass whose defaults are the
    published values, and implement `profile_config`, `_fit` and `_predict`. The base class
    owns the template around them: `fit` seeds every generator from the run's seed, gives the
    method its device and progress, and marks it fitted; `predict` checks that, batches the
    images and runs `_predict` without gradients with every network in eval mode.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    #: Which TrainSet fields the method trains on by default ("normal", "unlabeled").
    uses: ClassVar[tuple[str, ...]] = ("normal",)
    #: True if the method picks its checkpoint by AUCp on the unlabelled test images
    #: (TrainSet.selection, with held-out normals); their labels are never handed over. Every
    #: iterative method (benchmark.api.training.IterativeMethod) does.
    uses_selection: ClassVar[bool] = False
    #: True if the method reads the labelled validation split (TrainSet.validation) during
    #: training, for diagnostics or validation-based choices. Test labels are never given.
    uses_validation: ClassVar[bool] = False
    #: True if a method given a `workdir` resumes an interrupted `fit` from its checkpoint.
    supports_resume: ClassVar[bool] = False
    #: Extras `diagnostics` reads; the runner keeps these for the whole test split.
    diagnostic_extras: ClassVar[tuple[str, ...]] = ()
    #: The extra holding the image the method makes of each input (its reconstruction or
    #: translation: (N, H, W) in [0, 1] at the input's size), or None for a method that makes
    #: none (feature methods). The competence checks (benchmark/stats/competence.py) ask whether it
    #: follows the input and gives healthy inputs back.
    output_extra: ClassVar[str | None] = None
    #: The smallest image side (pixels) the method's networks take, and why; a dataset below it
    #: is refused before any training, with that reason.
    min_image_size: ClassVar[int] = 1
    min_image_size_reason: ClassVar[str] = ""
    #: The config fields that set how much the method trains (steps, epochs, and the
    #: schedules measured in steps), scaled together by `budget_overrides` for
    #: `bench run --budget-scale`. Empty: the method does not train iteratively (a feature
    #: method sees each training image once), so a budget scale does not apply to it.
    budget_fields: ClassVar[tuple[str, ...]] = ()
    #: About how many seconds one quick run takes on one CPU thread (fit and predict, 1x,
    #: measured on the gate's PneumoniaMNIST runs). Used only to start the longest runs first
    #: when several run at a time (`--jobs`, Ray); it never changes a result.
    quick_cpu_seconds: ClassVar[float] = 60.0
    Config: ClassVar[type]

    def __init__(self, config: Any = None, *, workdir: Path | str | None = None) -> None:
        self.config = config if config is not None else self.Config()
        #: A private folder for checkpoints; a method that finds its own checkpoint there
        #: resumes from it. None: keep everything in memory.
        self.workdir: Path | None = Path(workdir) if workdir is not None else None
        #: Facts about the run the method wants recorded (e.g. which backbone weights it used).
        self.run_info: dict[str, Any] = {}
        #: Numbers about the fitted model the runner logs as metrics (e.g. diagnostics).
        self.run_metrics: dict[str, float] = {}
        #: Problems the user must see (logged as warnings, recorded with the run).
        self.warnings: list[str] = []
        #: The torch modules of the model, by name (placed on the device by `add_network`).
        self.networks: dict[str, nn.Module] = {}
        self.device = torch.device("cpu")
        self.seed: int | None = None
        self.is_fitted = False

    # -- what the runner and users call -------------------------------------------------------

    def fit(self, train: TrainSet, *, seed: int, device: torch.device | str = "cpu",
            progress: Progress | None = None) -> Method:
        """Train on `train` (the fields named in `uses`), all randomness seeded from `seed`;
        returns the fitted method."""
        from medad_bench.api.seeding import seed_everything

        self.is_fitted = False
        self.networks = {}
        self.seed, self.device = seed, torch.device(device)
        seed_everything(seed)
        self._fit(train, progress or Progress())
        for network in self.networks.values():
            network.eval()
        self.is_fitted = True
        return self

    def predict(self, images: Images, *, maps: bool = True, extras: bool = False) -> Prediction:
        """Scores (and maps, extras where asked and available) for images (N, C, H, W) in
        [0, 1], in batches: one pass of the model per image."""
        if not self.is_fitted:
            raise NotFittedError(
                f"{self.name}: predict() or score() was called before fit(). Call "
                f"fit(train, seed=..., device=...) first; it returns the fitted method.")
        return self._predict_batches(images, maps=maps, extras=extras)

    def score(self, images: Images) -> np.ndarray:
        """One anomaly score per image, higher = more anomalous; images (N, C, H, W) in [0, 1]."""
        return self.predict(images, maps=False).scores

    # -- what a method implements -------------------------------------------------------------

    @classmethod
    @abstractmethod
    def profile_config(cls, profile: str, *, image_size: int, channels: int) -> Any:
        """The config for a profile: `quick` (CPU, minutes) or `full` (published settings)."""

    @abstractmethod
    def _fit(self, train: TrainSet, progress: Progress) -> None:
        """Train: build the networks with `add_network` (on `self.device`), seeded already."""

    @abstractmethod
    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        """The prediction for one batch (float32, N <= predict_batch_size), called without
        gradients and with the networks in eval mode. Compute maps / extras only if asked."""

    def competence_checks(self, extras: dict[str, np.ndarray],
                          labels: np.ndarray) -> dict[str, tuple[float, bool]]:
        """Checks of its own that say whether this method learned (name -> (value, passed)),
        from its validation prediction's diagnostic extras and labels; names and meanings in
        benchmark/stats/competence.py. None by default."""
        return {}

    # -- services for subclasses --------------------------------------------------------------

    def add_network(self, name: str, module: nn.Module, *,
                    channels_last: bool = False) -> nn.Module:
        """Place a network on the method's device and register it: it is set to eval mode
        for prediction, and iterative methods snapshot and checkpoint it."""
        module = module.to(self.device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.networks[name] = module
        return module

    @property
    def predict_batch_size(self) -> int:
        """Images per `_predict` call: the config's score_batch_size, else batch_size, else 64."""
        return int(getattr(self.config, "score_batch_size", 0)
                   or getattr(self.config, "batch_size", 0) or 64)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Networks in eval mode and no gradients for the duration; training modes restored."""
        modes = {name: net.training for name, net in self.networks.items()}
        for net in self.networks.values():
            net.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            for name, net in self.networks.items():
                net.train(modes[name])

    def _predict_batches(self, images: Images, *, maps: bool, extras: bool) -> Prediction:
        """`_predict` over batches (also while training: for checkpoint selection)."""
        parts = []
        size = self.predict_batch_size
        with self.evaluating():
            for start in range(0, len(images), size):
                chunk = np.asarray(images[start:start + size], dtype=np.float32)
                part = self._predict(chunk, maps=maps, extras=extras)
                parts.append(Prediction(np.asarray(part.scores, dtype=np.float64).reshape(-1),
                                        part.maps, part.extras))
        return Prediction.concatenate(parts)

    # -- optional hooks -----------------------------------------------------------------------

    @classmethod
    def provenance(cls, config: Any) -> dict[str, str]:
        """Facts outside the config that decide the result, resolved before the run (e.g. the
        exact weights file a backbone loads): part of the run key and the run's params."""
        return {}

    @classmethod
    def images_seen(cls, config: Any) -> int | None:
        """Training images the config draws into batches over the whole run (with repetition):
        the budget unit that makes quick profiles comparable. None: no iterative training
        (a feature method sees each training image once)."""
        return None

    @classmethod
    def budget_overrides(cls, config: Any, scale: float) -> dict[str, Any]:
        """The config changes that train `scale` times as long: every non-zero field of
        `budget_fields` multiplied (rounded, at least 1), so the schedules keep their share of
        the run. Empty for scale 1 and for a method without budget fields."""
        if scale == 1:
            return {}
        values = {name: getattr(config, name) for name in cls.budget_fields
                  if getattr(config, name, 0)}
        if values.get("iterations"):
            values.pop("epochs", None)  # a step count, where set, overrides epochs: unused
        return {name: max(1, round(value * scale)) for name, value in values.items()}

    @classmethod
    def calibration_overrides(cls, config: Any, scale: int) -> dict[str, Any]:
        """Settings that shorten a run to a few steps, `scale` times as many in the second
        calibration fit (`bench plan --calibrate`): the budget fields of an iterative method.
        Default: none (a feature method's work is set by the images it is given)."""
        return {}

    @classmethod
    def calibrate_extra(cls, config: Any, device: torch.device) -> dict[str, float]:
        """Measured constants of work that does not grow linearly with the training images
        (PatchCore's coreset), for `plan_extra`. Default: none."""
        return {}

    @classmethod
    def plan_extra(cls, config: Any, trained_images: int,
                   measured: dict[str, float]) -> tuple[float, int, list[str]]:
        """(seconds, bytes, notes) a run of `config` on `trained_images` adds beyond the
        linear training and scoring costs, from `calibrate_extra`'s constants."""
        return 0.0, 0, []

    def diagnostics(self, prediction: Prediction, labels: np.ndarray,
                    lesions: np.ndarray | None) -> dict[str, float]:
        """Numbers about how the fitted model treats labelled images (AnomalyPro: its mask M
        on healthy and diseased images), from the test prediction (with the extras named in
        `diagnostic_extras`). The runner calls it only after fitting and selection are done,
        and logs the values as test_* metrics."""
        return {}

    def figure(self, images: np.ndarray, prediction: Prediction) -> Any | None:
        """A matplotlib figure explaining the method's output on `images` (their prediction
        with maps and extras), or None."""
        return None

    def config_dict(self) -> dict[str, Any]:
        """The full resolved config, for logging."""
        return dataclasses.asdict(self.config)


def make_config(method: type[Method], profile: str, *, image_size: int, channels: int,
                overrides: dict[str, Any] | None = None) -> Any:
    """Resolve a method's config for a profile, then apply `overrides` (field -> value)."""
    if profile not in PROFILES:
        raise UsageError(f"unknown profile '{profile}'. Valid profiles: {', '.join(PROFILES)}.")
    config = method.profile_config(profile, image_size=image_size, channels=channels)
    if overrides:
        fields = {f.name for f in dataclasses.fields(config)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise UsageError(
                f"{method.name} has no setting {', '.join(unknown)}. "
                f"Its settings: {', '.join(sorted(fields))}."
            )
        try:
            config = dataclasses.replace(config, **overrides)
        except (TypeError, ValueError) as exc:  # the config's own checks (__post_init__)
            given = ", ".join(f"{method.name}.{k}={v!r}" for k, v in overrides.items())
            raise UsageError(f"{method.name}: the settings {given} make an invalid config: "
                             f"{exc}. Change the --set values.") from exc
    # The size the networks see: the dataset's, or the profile's working size (full: 256).
    working = getattr(config, "image_size", image_size)
    if working < method.min_image_size:
        raise UsageError(
            f"{method.name} needs images of at least {method.min_image_size} px "
            f"({method.min_image_size_reason or 'its networks cannot take smaller ones'}); "
            f"the dataset's image_size is {image_size}. Raise image_size in the dataset card, "
            f"or leave {method.name} out of --methods.")
    return config


def config_from_params(method: type[Method], params: dict[str, str]) -> Any:
    """Rebuild a method's config from a run's MLflow params (`config.<field>` entries), so a
    logged run can be reproduced exactly."""
    import json

    values = {}
    for entry in dataclasses.fields(method.Config):
        key = f"config.{entry.name}"
        if key not in params:
            raise BenchError(f"the run has no param {key}: it was logged by another version.")
        text = params[key]
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text  # strings are logged bare
        values[entry.name] = tuple(value) if isinstance(value, list) else value
    return method.Config(**values)


# ----------------------------------------------------------------------------- registry

# -- timing, for Method.calibrate_extra and the cost plan -------------------------------------

def timed(work: Callable[[], object], device: torch.device) -> float:
    """Seconds `work()` takes (for `Method.calibrate_extra` and the cost plan), queued GPU
    work included (synchronised before and after)."""
    _synchronise(device)
    started = time.perf_counter()
    work()
    _synchronise(device)
    return time.perf_counter() - started


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_REGISTRY: dict[str, type[Method]] = {}
_DISCOVERED = False


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a Method available under `cls.name`."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{cls!r} is not a Method subclass")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"two methods named '{cls.name}': {existing.__module__} and {cls.__module__}"
        )
    unknown_sets = set(cls.uses) - set(TRAINING_SETS)
    if unknown_sets:
        raise ValueError(f"{cls.name}.uses names unknown training sets {sorted(unknown_sets)}")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    """Load every `medad_bench.methods` entry point, once: the built-in methods (declared in
    the suite's own pyproject.toml) and plug-ins alike, so the core imports no method."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    for entry in entry_points(group="medad_bench.methods"):
        try:
            loaded = entry.load()
        except Exception as exc:  # a broken plug-in must not hide the others
            raise BenchError(
                f"the method plug-in '{entry.name}' ({entry.value}) failed to load: {exc}. "
                f"Fix or uninstall the package that provides it."
            ) from exc
        if isinstance(loaded, type) and issubclass(loaded, Method):
            register_method(loaded)
    _DISCOVERED = True


def available_methods() -> dict[str, type[Method]]:
    """All registered methods by name, sorted."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> type[Method]:
    """The method class registered as `name`; a clear error listing valid names otherwise."""
    methods = available_methods()
    if name not in methods:
        raise unknown_name("method", name, list(methods))
    return methods[name]


def parse_method_list(spec: str) -> list[str]:
    """`all` or a comma-separated list of names -> validated names, in the given order."""
    methods = available_methods()
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise UsageError("--methods is empty. Give `all` or names such as padim,patchcore.")
    if names == ["all"]:
        return list(methods)
    for name in names:
        if name not in methods:
            raise unknown_name("method", name, list(methods))
    return list(dict.fromkeys(names))

