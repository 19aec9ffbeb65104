"""The embedded synthetic chest X-ray generator: no download, deterministic from a seed.

Each image is a frontal radiograph drawn in the usual convention (dense = bright, air = dark):
a body outline of soft tissue, two lung fields, posterior ribs, the spine, the heart shadow, and
acquisition effects (exposure, blur, quantum noise). Anatomy, position and exposure vary per
image. Diseased images carry 1-3 lesions inside the lungs (consolidation, nodule, ground-glass
opacity) whose pixel masks are kept for localisation metrics.

Every image is drawn from its own random stream, seeded by (dataset seed, image index), so a
dataset can be generated in any order, in pieces, and always comes out bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

#: Bump when the drawing changes: it is part of the cache key, so old caches are not reused.
GENERATOR_VERSION = 2

LESION_KINDS = ("consolidation", "nodule", "ground_glass")
SPLITS = ("train_mixed", "train_normal", "val", "test")


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic dataset (all of them can be set in a dataset card)."""

    seed: int = 2024
    image_size: int = 64
    #: Images per split: mixed unannotated set A, healthy set B, labelled validation, test.
    n_mixed: int = 300
    n_normal: int = 300
    n_val: int = 100
    n_test: int = 200
    #: Share of diseased images in the mixed set A (the paper's COVIDx set A: 1570/5233 = 0.30).
    diseased_share_mixed: float = 0.30
    #: Share of diseased images in the validation and test splits (balanced, as in the paper).
    diseased_share_eval: float = 0.5
    #: Lesion intensity above the surrounding tissue (0-1 scale) and size multiplier.
    lesion_contrast: float = 0.12
    lesion_size: float = 1.0
    lesion_kinds: tuple[str, ...] = field(default=LESION_KINDS)
    max_lesions: int = 3

    def __post_init__(self) -> None:
        problems = []
        if self.image_size < 16:
            problems.append(f"image_size must be >= 16 (got {self.image_size})")
        for name in ("n_mixed", "n_normal", "n_val", "n_test"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        for name in ("diseased_share_mixed", "diseased_share_eval"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be within [0, 1]")
        if self.lesion_contrast <= 0 or self.lesion_size <= 0:
            problems.append("lesion_contrast and lesion_size must be > 0")
        unknown = set(self.lesion_kinds) - set(LESION_KINDS)
        if unknown or not self.lesion_kinds:
            problems.append(f"lesion_kinds must be a non-empty subset of {list(LESION_KINDS)}")
        if self.max_lesions < 1:
            problems.append("max_lesions must be >= 1")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def total(self) -> int:
        return self.n_mixed + self.n_normal + self.n_val + self.n_test


@dataclass(frozen=True)
class ImageSpec:
    """What one image of the dataset is: its id, split, label (1 = diseased) and index."""

    index: int
    image_id: str
    split: str
    label: int


def image_specs(config: SyntheticConfig) -> list[ImageSpec]:
    """The dataset's manifest rows, in generation order; labels drawn from the dataset seed."""
    rng = np.random.default_rng([config.seed, 0xC0FFEE])
    plan = [
        ("train_mixed", config.n_mixed, config.diseased_share_mixed),
        ("train_normal", config.n_normal, 0.0),
        ("val", config.n_val, config.diseased_share_eval),
        ("test", config.n_test, config.diseased_share_eval),
    ]
    specs: list[ImageSpec] = []
    for split, count, share in plan:
        n_diseased = int(round(count * share))
        labels = np.zeros(count, dtype=int)
        labels[:n_diseased] = 1
        rng.shuffle(labels)
        for label in labels:
            index = len(specs)
            specs.append(ImageSpec(index, f"syn{index:06d}", split, int(label)))
    return specs


def generate_image(config: SyntheticConfig, spec: ImageSpec) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image and its lesion mask: ((H, W) float32 in [0, 1], (H, W) uint8)."""
    # Anatomy, lesions and acquisition draw from separate streams, so the healthy twin of a
    # diseased image (same index, label 0) differs from it by the lesions alone.
    anatomy_rng, lesion_rng, acquisition_rng = (
        np.random.default_rng([config.seed, spec.index, stream]) for stream in range(3))
    size = config.image_size
    x, y = _patient_grid(anatomy_rng, size)
    anatomy = _draw_anatomy(anatomy_rng, x, y)
    density = anatomy.density
    mask = np.zeros((size, size), dtype=bool)
    if spec.label:
        lesion, mask = _draw_lesions(lesion_rng, config, x, y, anatomy.lungs)
        density = density + lesion
    image = _acquire(acquisition_rng, density, size)
    return image.astype(np.float32), mask.astype(np.uint8)


def iter_images(config: SyntheticConfig,
                specs: list[ImageSpec]) -> Iterator[tuple[ImageSpec, np.ndarray, np.ndarray]]:
    """Generate the images of `specs` one at a time (memory stays flat)."""
    for spec in specs:
        image, mask = generate_image(config, spec)
        yield spec, image, mask


# ----------------------------------------------------------------------------- drawing


@dataclass
class _Anatomy:
    density: np.ndarray
    lungs: np.ndarray  # soft lung-field membership in [0, 1]


def _patient_grid(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised patient coordinates: the patient shifts, scales and tilts per image."""
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    shift_x, shift_y = rng.uniform(-0.06, 0.06, size=2)
    scale = rng.uniform(0.9, 1.08)
    angle = np.deg2rad(rng.uniform(-5.0, 5.0))
    xs, ys = (xx - shift_x) / scale, (yy - shift_y) / scale
    cos, sin = np.cos(angle), np.sin(angle)
    return cos * xs + sin * ys, -sin * xs + cos * ys


def _soft_inside(distance: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (distance < 1), 0 outside, with a smooth edge of relative width `edge`."""
    return 1.0 / (1.0 + np.exp((distance - 1.0) / edge))


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float,
             power: float = 2.0) -> np.ndarray:
    """Normalised (super-)elliptical distance from (cx, cy): 1 on the boundary."""
    return (np.abs((x - cx) / ax) ** power + np.abs((y - cy) / ay) ** power) ** (1.0 / power)


def _draw_anatomy(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> _Anatomy:
    body = _soft_inside(_ellipse(x, y, 0.0, 0.1, rng.uniform(0.8, 0.92), 1.15, 2.6), 0.03)
    density = 0.06 + 0.36 * body

    # Lung fields: super-ellipses narrowing towards the apex, one per side.
    lung_w, lung_h = rng.uniform(0.22, 0.28), rng.uniform(0.5, 0.6)
    lung_y = rng.uniform(-0.08, 0.0)
    lungs = np.zeros_like(x)
    for side in (-1.0, 1.0):
        cx = side * rng.uniform(0.34, 0.4)
        taper = 1.0 + 0.35 * np.clip(-(y - lung_y) / lung_h, 0.0, 1.0)  # narrower apex
        field = _soft_inside(_ellipse(x * taper, y, cx * taper, lung_y, lung_w, lung_h, 2.4), 0.05)
        lungs = np.maximum(lungs, field)
    density = density - 0.22 * lungs

    # Heart shadow: soft-tissue dense, lower mediastinum, bulging to the patient's left
    # (image right), hiding the medial part of that lung.
    heart = _soft_inside(
        _ellipse(x, y, rng.uniform(0.06, 0.12), rng.uniform(0.3, 0.38),
                 rng.uniform(0.24, 0.3), rng.uniform(0.2, 0.25)), 0.1)
    density = density * (1 - heart) + (0.38 + 0.04 * rng.random()) * heart * body

    # Spine: a bright vertical band with faint vertebral segmentation.
    spine_w = rng.uniform(0.07, 0.1)
    spine = _soft_inside(np.abs(x) / spine_w, 0.15) * body
    segments = 0.5 + 0.5 * np.cos(y * rng.uniform(24, 30))
    density = density + spine * (0.16 + 0.04 * segments)

    # Posterior ribs: arcs sloping down laterally, visible over the lungs.
    rib_gap = rng.uniform(0.13, 0.16)
    rib_width = rng.uniform(0.025, 0.035)
    first_rib = lung_y - 0.62
    ribs = np.zeros_like(x)
    for k in range(9):
        centre = first_rib + k * rib_gap - 0.15 * np.abs(x) + 0.9 * x**2
        ribs = np.maximum(ribs, np.exp(-(((y - centre) / rib_width) ** 2)))
    density = density + 0.08 * ribs * body * (0.3 + 0.7 * lungs)
    return _Anatomy(density=density, lungs=lungs)


def _draw_lesions(rng: np.random.Generator, config: SyntheticConfig, x: np.ndarray,
                  y: np.ndarray, lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum of 1..max_lesions lesions placed in the lungs, and their union mask."""
    inside = np.argwhere(lungs > 0.9)
    lesion = np.zeros_like(x)
    mask = np.zeros(x.shape, dtype=bool)
    for _ in range(int(rng.integers(1, config.max_lesions + 1))):
        row, col = inside[rng.integers(len(inside))]
        cx, cy = x[row, col], y[row, col]
        kind = config.lesion_kinds[int(rng.integers(len(config.lesion_kinds)))]
        shape = _LESION_DRAWERS[kind](rng, config, x, y, cx, cy)
        contribution = shape * lungs
        lesion += contribution
        mask |= contribution > 0.25 * config.lesion_contrast
    return lesion, mask


def _consolidation(rng: np.random.Generator, config: SyntheticConfig, x: np.ndarray,
                   y: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """A dense, irregular patch: an ellipse whose edge is perturbed by smooth noise."""
    size = config.lesion_size * rng.uniform(0.1, 0.18)
    noise = gaussian_filter(rng.standard_normal(x.shape), sigma=max(1.0, x.shape[0] / 16))
    noise /= noise.std() + 1e-8
    distance = _ellipse(x, y, cx, cy, size * rng.uniform(0.8, 1.3), size) + 0.25 * noise
    return config.lesion_contrast * _soft_inside(distance, 0.08)


def _nodule(rng: np.random.Generator, config: SyntheticConfig, x: np.ndarray, y: np.ndarray,
            cx: float, cy: float) -> np.ndarray:
    """A small round, sharply bounded opacity."""
    radius = config.lesion_size * rng.uniform(0.04, 0.07)
    return 1.3 * config.lesion_contrast * _soft_inside(_ellipse(x, y, cx, cy, radius, radius),
                                                       0.12)


def _ground_glass(rng: np.random.Generator, config: SyntheticConfig, x: np.ndarray,
                  y: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """A wide, hazy opacity with fine texture; vessels stay visible through it."""
    size = config.lesion_size * rng.uniform(0.15, 0.25)
    haze = _soft_inside(_ellipse(x, y, cx, cy, size * rng.uniform(0.8, 1.2), size), 0.2)
    texture = gaussian_filter(rng.standard_normal(x.shape), sigma=max(0.6, x.shape[0] / 96))
    texture /= texture.std() + 1e-8
    return config.lesion_contrast * haze * (0.6 + 0.2 * texture)


_LESION_DRAWERS = {
    "consolidation": _consolidation,
    "nodule": _nodule,
    "ground_glass": _ground_glass,
}


def _acquire(rng: np.random.Generator, density: np.ndarray, size: int) -> np.ndarray:
    """Exposure, detector blur and quantum noise, then clip to [0, 1]."""
    image = gaussian_filter(density, sigma=rng.uniform(0.3, 0.8) * size / 64)
    gamma = rng.uniform(0.8, 1.25)
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-0.05, 0.05)
    image = gain * np.clip(image, 0.0, 1.0) ** gamma + offset
    noise_level = rng.uniform(0.008, 0.02)
    image = image + noise_level * rng.standard_normal(image.shape)
    return np.clip(image, 0.0, 1.0)
