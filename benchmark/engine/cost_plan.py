"""`bench plan`: how long a grid will take and how much memory each run needs, before it starts.

Every estimate comes from costs measured on the machine that will run the grid (or one like
it), never from guesses:

- `calibrate` fits each method on stand-in images of the dataset's size and channels, with its
  profile's networks but a short budget (`Method.calibration_overrides`): a warm-up fit, then
  one at a short length and one three times as long. The difference of the two times over
  the difference of the training images they drew is the seconds per training image; what is
  left of the shorter fit is the fixed cost (building the model, the final checkpoint).
  Backbones load random weights (timing does not depend on their values). Scoring is timed
  on its own. PatchCore's coreset, whose cost grows with the square of the patches
  kept, is timed separately (`Method.calibrate_extra`).
- `estimate` multiplies those rates by the real run's work: the training images its config
  draws (`Method.images_seen`, or the training images a feature method embeds), the images it
  scores (validation + test, plus the AUCp images at each checkpoint), and the extra terms.

Costs are saved per device (results/costs/<device>.json) so a GPU grid can be planned on a
laptop from a table measured on the GPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medad_bench.api.contract import Method, TrainSet, make_config, timed
from medad_bench.engine.resources import MemoryWatch, megabytes
from medad_bench.errors import BenchError, UsageError

COSTS_DIR = Path("results") / "costs"
#: Stand-in training images per calibration fit (feature methods: the shorter fit; the longer
#: one embeds twice as many).
CALIBRATION_IMAGES = 64
SCORE_IMAGES = 64
#: The longer calibration fit is this many times the shorter one.
LONG_SCALE = 3


@dataclass(frozen=True)
class SplitCounts:
    """Images per split a run sees (train_normal = set B, train_mixed = set A)."""

    train_normal: int
    train_mixed: int
    val: int
    test: int


@dataclass
class MethodCost:
    """Measured costs of one method's profile at one image size on one device."""

    method: str
    profile: str
    image_size: int
    channels: int
    fixed_seconds: float
    seconds_per_train_image: float
    seconds_per_score_image: float
    peak_host_mb: float
    peak_gpu_mb: float | None
    #: Method-specific measured constants (PatchCore: its coreset's cost per step and term).
    extra: dict[str, float] = field(default_factory=dict)
    measured: str = ""
    #: What the first fit of a process pays on top (kernel selection, lazy library loading,
    #: allocator growth): the warm-up fit's excess over the same fit done again. Added to
    #: every run, so a grid's later seeds are slightly over-estimated.
    first_fit_seconds: float = 0.0

    def key(self) -> str:
        return cost_key(self.method, self.profile, self.image_size, self.channels)


@dataclass
class RunEstimate:
    method: str
    fit_seconds: float
    score_seconds: float
    peak_host_mb: float
    peak_gpu_mb: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.fit_seconds + self.score_seconds


def cost_key(method: str, profile: str, image_size: int, channels: int) -> str:
    return f"{method}/{profile}/{image_size}px/{channels}ch"


def device_name(device: torch.device) -> str:
    """A file-name-safe name of the device whose costs a table holds."""
    if device.type == "cuda":
        name = f"cuda-{torch.cuda.get_device_name(device)}"
    else:
        name = f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def costs_path(device: torch.device, folder: Path = COSTS_DIR) -> Path:
    return folder / f"{device_name(device)}.json"


def load_costs(path: Path) -> dict[str, MethodCost]:
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {key: MethodCost(**value) for key, value in raw["costs"].items()}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BenchError(f"the cost table {path} is not one `bench plan --calibrate` wrote "
                         f"({exc}). Delete it and calibrate again.") from exc


def save_costs(path: Path, costs: dict[str, MethodCost], device: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"device": device, "torch": torch.__version__,
               "costs": {k: dataclasses.asdict(v) for k, v in sorted(costs.items())}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


# ------------------------------------------------------------------------------- calibration

def stand_in(n: int, channels: int, size: int, seed: int) -> np.ndarray:
    """Random images of the dataset's shape: timing does not depend on what they show."""
    return np.random.default_rng(seed).random((n, channels, size, size), dtype=np.float32)


def calibrate(method_cls: type[Method], profile: str, *, image_size: int, channels: int,
              device: torch.device, overrides: dict[str, Any] | None = None) -> MethodCost:
    """Measure a method's costs: a warm-up fit, then a short fit and one LONG_SCALE times as
    long, each timed twice, and a scoring pass, on stand-in images. Run it alone: anything
    else on the machine slows it."""
    base = make_config(method_cls, profile, image_size=image_size, channels=channels,
                       overrides=overrides)
    if hasattr(base, "weights"):
        # Timing does not depend on the weight values: no weights file or hub needed.
        base = dataclasses.replace(base, weights="random")
    images = stand_in(LONG_SCALE * CALIBRATION_IMAGES, channels, image_size, seed=0)

    def fit(scale: int) -> tuple[int, float, MemoryWatch, Method]:
        config = dataclasses.replace(base, **method_cls.calibration_overrides(base, scale))
        iterative = method_cls.images_seen(config) is not None
        n = CALIBRATION_IMAGES if iterative else CALIBRATION_IMAGES * scale
        train = TrainSet(normal=images[:n], unlabeled=images[CALIBRATION_IMAGES:][:n],
                         selection=images[:16] if method_cls.uses_selection else None,
                         selection_normal_share=0.5 if method_cls.uses_selection else None,
                         selection_normals=images[16:32] if method_cls.uses_selection else None)
        method = method_cls(config)
        watch = MemoryWatch(device).start()
        seconds = timed(partial(method.fit, train, seed=0, device=device), device)
        return method_cls.images_seen(config) or n, seconds, watch, method

    # The first fit pays one-off costs (kernel selection, allocator growth) the later ones
    # do not: it is a warm-up, left out of the rates. Each length is then timed twice,
    # alternating, and the faster kept: a fast method's two lengths differ by a tenth of a
    # second, which a busy machine's noise would otherwise swamp (the rate came out 0).
    warm_seconds = fit(1)[1]
    timings = [fit(scale) for scale in (1, LONG_SCALE, 1, LONG_SCALE)]
    units_1, seconds_1, _, _ = min(timings[0::2], key=lambda timing: timing[1])
    units_2, seconds_2, watch, method = min(timings[1::2], key=lambda timing: timing[1])
    first_fit = max(warm_seconds - seconds_1, 0.0)
    per_image = max(seconds_2 - seconds_1, 0.0) / max(units_2 - units_1, 1)
    fixed = max(seconds_1 - units_1 * per_image, 0.0)
    method.score(images[:SCORE_IMAGES])  # warm-up: the first pass pays one-off costs
    per_score = timed(partial(method.score, images[:SCORE_IMAGES]), device) / SCORE_IMAGES
    return MethodCost(method=method_cls.name, profile=profile, image_size=image_size,
                      channels=channels, fixed_seconds=fixed, seconds_per_train_image=per_image,
                      seconds_per_score_image=per_score,
                      peak_host_mb=megabytes(watch.process_peak_bytes()) or 0.0,
                      peak_gpu_mb=megabytes(watch.peak_gpu_bytes()),
                      extra=method_cls.calibrate_extra(base, device),
                      measured=time.strftime("%Y-%m-%d %H:%M"), first_fit_seconds=first_fit)


#: `calibrate` under a name that bench_plan's flag of that name does not hide.
calibrate_method = calibrate


# -------------------------------------------------------------------------------- estimates

def estimate(method_cls: type[Method], config: Any, cost: MethodCost,
             counts: SplitCounts, contaminated: bool = False) -> RunEstimate:
    """Wall time and peak memory of one run of `config` on data of `counts`."""
    n_normal = counts.train_normal + (counts.train_mixed if contaminated else 0)
    trained = method_cls.images_seen(config)
    if trained is None and getattr(config, "epochs", 0):  # an epoch schedule (GANomaly full)
        batch = min(config.batch_size, n_normal)
        trained = config.epochs * (n_normal // batch) * batch
    elif trained is None:  # a feature method embeds each (allowed) training image once
        cap = getattr(config, "max_train_images", None)
        trained = n_normal if cap is None else min(n_normal, cap)
    fit = cost.first_fit_seconds + cost.fixed_seconds + trained * cost.seconds_per_train_image
    scored = counts.val + counts.test
    if method_cls.uses_selection and hasattr(config, "checkpoint_every"):
        checkpoints = math.ceil(config.iterations / config.checkpoint_every)
        aucp = min(config.aucp_normals or counts.train_normal, counts.train_normal)
        fit += checkpoints * (aucp + counts.test) * cost.seconds_per_score_image
    extra_seconds, extra_bytes, notes = method_cls.plan_extra(config, trained, cost.extra)
    # What grows with the data (PatchCore's patch bank) lives where the model runs.
    on_gpu = cost.peak_gpu_mb is not None
    extra_mb = extra_bytes / 2**20
    return RunEstimate(method=method_cls.name, fit_seconds=fit + extra_seconds,
                       score_seconds=scored * cost.seconds_per_score_image,
                       peak_host_mb=cost.peak_host_mb + (0.0 if on_gpu else extra_mb),
                       peak_gpu_mb=cost.peak_gpu_mb + extra_mb if on_gpu else None,
                       notes=notes)


def protocol_counts(card: Any) -> SplitCounts | None:
    """The split sizes a card's protocol asks for, where the card states them (COVIDx,
    synthetic); None where only the data can tell (then prepare the data first)."""
    s = card.settings
    if card.is_synthetic:
        return SplitCounts(s.get("n_normal", 0), s.get("n_mixed", 0), s.get("n_val", 0),
                           s.get("n_test", 0))
    needed = ("normal_healthy", "mixed_positive", "mixed_healthy", "val_positive",
              "val_healthy", "test_positive", "test_healthy")
    if all(k in s for k in needed):
        return SplitCounts(s["normal_healthy"], s["mixed_positive"] + s["mixed_healthy"],
                           s["val_positive"] + s["val_healthy"],
                           s["test_positive"] + s["test_healthy"])
    return None


def prepared_counts(data: Any) -> SplitCounts:
    sizes = data.manifest.split.value_counts()
    return SplitCounts(*(int(sizes.get(name, 0))
                         for name in ("train_normal", "train_mixed", "val", "test")))


def duration(seconds: float) -> str:
    """'45 s', '12.5 min', '3.2 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# -------------------------------------------------------------------------------- bench plan


@dataclass
class GridEstimate:
    """`bench plan`'s answer: the split sizes, the cost table read, each method's run."""

    counts: SplitCounts
    path: Path  # the cost table
    target: torch.device  # the device planned for
    runs: dict[str, RunEstimate]  # method -> one run's estimate
    total_seconds: float  # every run, one after another


def bench_plan(names: list[str], seeds: list[int], overrides: dict[str, dict[str, Any]], *,
               methods: str, dataset: str, profile: str, device: str, data_root: Path | None,
               contaminated: bool, calibrate: bool, costs_file: Path | None,
               announce: Callable[[str], None] = lambda line: None) -> GridEstimate:
    """Each run's expected cost from the device's measured cost table (calibrated first, and
    saved, with `calibrate`; `announce` gets a line per method calibrated). `methods`: the
    option as given, for the message that says how to measure missing costs."""
    from medad_bench.api.contract import get_method
    from medad_bench.data import load_card, prepare
    from medad_bench.shipped import resolve_reference

    card = load_card(dataset)
    counts = protocol_counts(card)
    if data_root is not None or counts is None:
        counts = prepared_counts(prepare(card, data_root=data_root))
    costs_file = resolve_reference(costs_file) if costs_file else None
    target = plan_device(device, costs_file, calibrate)
    path = costs_file or costs_path(target)
    costs = load_costs(path)
    keys = {name: cost_key(name, profile, card.image_size, card.channels) for name in names}
    missing = [name for name in names if keys[name] not in costs]
    todo = names if calibrate else []
    if missing and not calibrate:
        raise UsageError(
            f"no measured cost for {', '.join(missing)} ({profile}, {card.image_size}px) in "
            f"{path}. Measure them on the machine that will run the grid: bench plan "
            f"--methods {methods} --dataset {dataset} --profile {profile} --device "
            f"{device} --calibrate (or pass --costs FILE measured there).")
    for name in todo:
        announce(f"calibrating {name} ({profile}, {card.image_size}px) on {target} ...")
        cost = calibrate_method(get_method(name), profile, image_size=card.image_size,
                                channels=card.channels, device=target)
        costs[cost.key()] = cost
        save_costs(path, costs, device_name(target))
    runs: dict[str, RunEstimate] = {}
    total = 0.0
    for name in names:
        cls = get_method(name)
        config = make_config(cls, profile, image_size=card.image_size, channels=card.channels,
                             overrides=overrides.get(name))
        runs[name] = estimate(cls, config, costs[keys[name]], counts, contaminated)
        total += runs[name].seconds * len(seeds)
    return GridEstimate(counts=counts, path=path, target=target, runs=runs, total_seconds=total)


def plan_device(device: str, costs_file: Path | None, calibrate: bool) -> torch.device:
    """The device to plan for: a CUDA plan without a GPU here needs a measured table."""
    from medad_bench.engine.resources import resolve_device

    if device.startswith("cuda") and not torch.cuda.is_available():
        if calibrate:
            raise UsageError("--calibrate measures this machine's device, and it has no "
                             "CUDA GPU. Calibrate on the GPU machine and pass its table "
                             "here with --costs FILE.")
        if costs_file is None:
            raise UsageError("no CUDA GPU here to name the cost table: pass the table "
                             "measured on the GPU machine with --costs FILE (see "
                             "results/reference/costs/).")
        return torch.device(device)
    return resolve_device(device)
