"""What the suite's engine costs each method: fit and predict through the suite against the
same method's own training steps and batch prediction driven by a bare loop, side by side.

- suite fit: `Method.fit` as `bench run` calls it: for iterative methods the engine's loop with
  its six checkpoints (the method's checkpoint hook, AUCp scoring of the held-out normals and
  the unlabelled test images, the checkpoint file), progress and loss logging;
- bare fit: the same seeded set-up and `_train_step` calls in a plain `for` loop, nothing else
  (a feature method, which has no steps, runs its own `_fit`: the two sides then differ only by
  the engine's wrapper);
- suite predict: `Method.predict` with maps; bare predict: the method's `_predict` over the
  same batches under `torch.inference_mode`.

The ratio suite / bare of images per second says what the engine adds; it is not a
comparison with a loop written from scratch (`bench perf --method anomalypro` has one of
those). Both sides alternate `repeats` times in one process; medians are compared.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from medad_bench.api.contract import Method, TrainSet
from medad_bench.api.training import IterativeMethod


@dataclass
class Overhead:
    """Seconds of each timed side, one entry per repeat."""

    method: str
    suite_fit: list[float] = field(default_factory=list)
    bare_fit: list[float] = field(default_factory=list)
    suite_predict: list[float] = field(default_factory=list)
    bare_predict: list[float] = field(default_factory=list)

    def row(self) -> dict[str, float | str]:
        med = statistics.median
        return {"method": self.method,
                "suite_fit_s": med(self.suite_fit), "bare_fit_s": med(self.bare_fit),
                "fit_ratio": med(self.bare_fit) / med(self.suite_fit),
                "suite_predict_s": med(self.suite_predict),
                "bare_predict_s": med(self.bare_predict),
                "predict_ratio": med(self.bare_predict) / med(self.suite_predict)}


def bare_fit(method: Method, train: TrainSet, seed: int, device: torch.device) -> Method:
    """`Method.fit` (its seeding and bookkeeping) with the engine's loop replaced by the
    method's own set-up and steps in a plain loop; a method without steps fits as usual."""
    if isinstance(method, IterativeMethod):
        method._fit = lambda train, progress: _plain_steps(method, train)  # this instance only
    return method.fit(train, seed=seed, device=device)


def _plain_steps(method: IterativeMethod, train: TrainSet) -> None:
    method.optimizers, method.generators = {}, {}
    method._setup(train)
    for network in method.networks.values():
        network.train()
    for step in range(1, method.total_steps(train) + 1):
        method._train_step(step)


def bare_predict(method: Method, images: np.ndarray) -> None:
    size = method.predict_batch_size
    with torch.inference_mode():
        for start in range(0, len(images), size):
            method._predict(np.asarray(images[start:start + size], dtype=np.float32),
                            maps=True, extras=False)


def _seconds(function: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_overhead(method_cls: type[Method], config: object, train: TrainSet,
                     test_images: np.ndarray, device: torch.device, *, repeats: int,
                     seed: int = 0, report: Callable[[str], None] = print) -> Overhead:
    """Alternate suite and bare fit and predict of one method `repeats` times."""
    result = Overhead(method_cls.name)
    for repeat in range(repeats):
        suite, bare = method_cls(config), method_cls(config)
        result.suite_fit.append(_seconds(
            lambda m=suite: m.fit(train, seed=seed, device=device), device))
        result.bare_fit.append(_seconds(lambda m=bare: bare_fit(m, train, seed, device), device))
        result.suite_predict.append(_seconds(
            lambda m=suite: m.predict(test_images, maps=True), device))
        result.bare_predict.append(_seconds(lambda m=bare: bare_predict(m, test_images), device))
        report(f"{method_cls.name} repeat {repeat + 1}/{repeats}: fit suite "
               f"{result.suite_fit[-1]:.1f} s vs bare {result.bare_fit[-1]:.1f} s; predict "
               f"suite {result.suite_predict[-1]:.2f} s vs bare {result.bare_predict[-1]:.2f} s")
    return result


def bench_overhead(names: list[str], dataset: str, *, budget_scale: float, repeats: int,
                   device: str, threads: int | None,
                   report: Callable[[str], None]) -> list[dict[str, float | str]]:
    """`bench perf --methods`: each method's quick profile on `dataset` at `budget_scale` of
    the equal quick budget, through the suite and bare; one row of medians per method."""
    from medad_bench.api.contract import get_method, make_config
    from medad_bench.data import load_card, prepare
    from medad_bench.engine.resources import resolve_device
    from medad_bench.engine.run import training_set

    if threads:
        torch.set_num_threads(threads)
    card = load_card(dataset)
    data = prepare(card)
    torch_device = resolve_device(device)
    test_images = data.images_of("test")
    report(f"{len(names)} method(s) on {dataset}, quick profile at {budget_scale:g}x the "
           f"training budget, {torch.get_num_threads()} threads, {repeats} repeats")
    rows = []
    for name in names:
        cls = get_method(name)
        config = make_config(cls, "quick", image_size=card.image_size, channels=card.channels)
        if budget_scale != 1:
            config = dataclasses.replace(config, **cls.budget_overrides(config, budget_scale))
        train = training_set(cls, data)
        rows.append(measure_overhead(cls, config, train, test_images, torch_device,
                                     repeats=repeats, report=report).row())
    return rows
