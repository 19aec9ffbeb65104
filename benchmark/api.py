"""The interface every method meets, the training set it receives, and the method registry.

A method is a class with a small `fit` / `score` surface (scikit-learn / PyOD style): its
hyper-parameters live in a config dataclass given to the constructor, `fit` trains on a
`TrainSet`, `score` returns one anomaly score per image (higher = more anomalous).

Methods are registered by name with `@register_method`; the built-in ones live in the top-level
`methods` package, and other packages add theirs through the entry-point group
`benchmark.methods` (each entry point names a Method subclass or a module that registers one).
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from benchmark.data.images import ImageSet
from benchmark.errors import BenchError, UsageError, unknown_name

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
    #: The labelled validation split, for methods that declare `uses_validation`.
    validation: LabelledSplit | None = None

    def __post_init__(self) -> None:
        for name in (*TRAINING_SETS, "selection"):
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
    published values, and implement `profile_config`, `fit` and `score`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    #: Which TrainSet fields the method trains on by default ("normal", "unlabeled").
    uses: ClassVar[tuple[str, ...]] = ("normal",)
    #: True if the method picks its checkpoint by AUCp on the unlabelled test images
    #: (TrainSet.selection); their labels are never handed over.
    uses_selection: ClassVar[bool] = False
    #: True if the method reads the labelled validation split (TrainSet.validation) during
    #: training, for diagnostics or validation-based choices. Test labels are never given.
    uses_validation: ClassVar[bool] = False
    #: The smallest image side (pixels) the method's networks take, and why; a dataset below it
    #: is refused before any training, with that reason.
    min_image_size: ClassVar[int] = 1
    min_image_size_reason: ClassVar[str] = ""
    Config: ClassVar[type]

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()
        #: Facts about the run the method wants recorded (e.g. which backbone weights it used).
        self.run_info: dict[str, Any] = {}
        #: A private folder for checkpoints, set by the runner; a method that finds its own
        #: checkpoint there resumes from it. None: keep everything in memory.
        self.workdir: Path | None = None
        #: Per checkpoint: (step, {"aucp": ..., ...}, test-image scores). The runner turns the
        #: scores into true AUCs after final scoring, to show how well selection worked.
        self.selection_history: list[tuple[int, dict[str, float], np.ndarray]] = []
        #: Numbers about the fitted model the runner logs as metrics (e.g. diagnostics).
        self.run_metrics: dict[str, float] = {}
        #: Problems the user must see (printed by the runner, logged, noted in reports).
        self.warnings: list[str] = []

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

    @classmethod
    @abstractmethod
    def profile_config(cls, profile: str, *, image_size: int, channels: int) -> Any:
        """The config for a profile: `quick` (CPU, minutes) or `full` (published settings)."""

    @abstractmethod
    def fit(
        self,
        train: TrainSet,
        *,
        seed: int,
        device: torch.device,
        progress: Progress | None = None,
    ) -> None:
        """Train on `train` (the fields named in `uses`), all randomness seeded from `seed`."""

    @abstractmethod
    def score(self, images: np.ndarray) -> np.ndarray:
        """One anomaly score per image, higher = more anomalous; images (N, C, H, W) in [0, 1]."""

    def anomaly_maps(self, images: np.ndarray) -> np.ndarray | None:
        """Per-pixel anomaly maps (N, H, W) where the method has them, else None."""
        return None

    def diagnostics(self, images: np.ndarray, labels: np.ndarray,
                    lesions: np.ndarray | None) -> dict[str, float]:
        """Numbers about how the fitted model treats labelled images (AnomalyPro: its mask M
        on healthy and diseased images). The runner calls it on the test split only after
        fitting and selection are done, and logs the values as test_* metrics."""
        return {}

    def figure(self, images: np.ndarray) -> Any | None:
        """A matplotlib figure explaining the method's output on `images`, or None."""
        return None

    def explain(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Extra per-pixel outputs worth showing beside the anomaly map, name -> (N, H, W)
        (AnomalyPro: the healthy-looking translation and its mask M). Default: none."""
        return {}

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
    for field in dataclasses.fields(method.Config):
        key = f"config.{field.name}"
        if key not in params:
            raise BenchError(f"the run has no param {key}: it was logged by another version.")
        text = params[key]
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text  # strings are logged bare
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return method.Config(**values)


# ----------------------------------------------------------------------------- registry

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
    """Import the built-in methods and every `benchmark.methods` entry point, once."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    importlib.import_module("methods")
    for entry in entry_points(group="benchmark.methods"):
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

