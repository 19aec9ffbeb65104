"""Every method through the suite against its bare PyTorch loop, side by side.

- suite fit: `Method.fit` as `bench run` calls it: for iterative methods the engine's loop with
  its six checkpoints (the method's checkpoint hook, AUCp scoring of the held-out normals and
  the unlabelled test images, the checkpoint file), progress and loss logging; for feature
  methods anomalib's model, streamed statistics and the suite's bookkeeping;
- bare fit: the loop a researcher would write around the same networks and losses
  (`perf/bare_loops.py`: one tensor of training images, random batches, the same optimisers
  and steps; a plain timm forward for PaDiM and PatchCore);
- suite predict: `Method.score` (scores only, as the AUC needs them); bare predict: the bare
  loop's scoring in batches under `torch.inference_mode`.

The ratio is bare seconds over suite seconds (1.0: the suite costs nothing extra; 0.9: the
suite takes 11% longer). Both sides alternate `repeats` times in one process after one
untimed warm-up of each; medians are compared.

The label-free checkpoint selection is protocol (docs/design.md section 4), not overhead, and
the bare loop does not do it. Two more figures separate the two:
- `fit_ratio_without_selection`: the suite's fit less the seconds of its checkpoint work;
- `fit_ratio_same_scoring`: the bare loop plus the scoring the protocol asks of it, done the
  bare way: the bare scorer over the same held-out normals and unlabelled test images, as many
  times as the suite weighed a checkpoint. The suite's extra diagnostics at checkpoints
  (AnomalyPro's mask) stay on the suite's side.
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
from medad_bench.api.training import selection_images


@dataclass
class Overhead:
    """Seconds of each timed side, one entry per repeat."""

    method: str
    suite_fit: list[float] = field(default_factory=list)
    #: Of suite_fit: the label-free model selection at the checkpoints (scoring held-out
    #: normals and unlabelled test images, the method's checkpoint diagnostics): protocol work
    #: the bare loop does not do.
    selection: list[float] = field(default_factory=list)
    bare_fit: list[float] = field(default_factory=list)
    #: The bare scorer over the selection images, once per checkpoint the suite weighed.
    bare_selection: list[float] = field(default_factory=list)
    suite_predict: list[float] = field(default_factory=list)
    bare_predict: list[float] = field(default_factory=list)

    def row(self) -> dict[str, float | str]:
        med = statistics.median
        loop = [fit - chosen for fit, chosen in zip(self.suite_fit, self.selection, strict=True)]
        scoring = [fit + chosen for fit, chosen in zip(self.bare_fit, self.bare_selection,
                                                         strict=True)]
        return {"method": self.method,
                "suite_fit_s": med(self.suite_fit), "selection_s": med(self.selection),
                "bare_fit_s": med(self.bare_fit),
                "fit_ratio": med(self.bare_fit) / med(self.suite_fit),
                "fit_ratio_without_selection": med(self.bare_fit) / med(loop),
                "bare_selection_s": med(self.bare_selection),
                "fit_ratio_same_scoring": med(scoring) / med(self.suite_fit),
                "suite_predict_s": med(self.suite_predict),
                "bare_predict_s": med(self.bare_predict),
                "predict_ratio": med(self.bare_predict) / med(self.suite_predict)}


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
    """Alternate suite and bare fit and predict of one method `repeats` times (after one
    untimed warm-up of each at a twentieth of the budget)."""
    from medad_bench.perf.bare_loops import bare_loop_for

    bare_fit = bare_loop_for(method_cls.name)
    warm = dataclasses.replace(config, **method_cls.budget_overrides(config, 0.05))
    method_cls(warm).fit(train, seed=seed, device=device).score(test_images[:8])
    bare_fit(warm, train, device, seed)(test_images[:8])
    result = Overhead(method_cls.name)
    for repeat in range(repeats):
        suite = method_cls(config)
        selection = _time_selection(suite, device)
        result.suite_fit.append(_seconds(
            lambda m=suite: m.fit(train, seed=seed, device=device), device))
        result.selection.append(sum(selection))
        scorer: list = []
        result.bare_fit.append(_seconds(
            lambda kept=scorer: kept.append(bare_fit(config, train, device, seed)), device))
        result.bare_selection.append(_seconds(
            lambda s=scorer[0], n=len(getattr(suite, "selection_history", ())):
            _score_checkpoints(s, train, n), device))
        result.suite_predict.append(_seconds(lambda m=suite: m.score(test_images), device))
        result.bare_predict.append(_seconds(lambda s=scorer[0]: s(test_images), device))
        report(f"{method_cls.name} repeat {repeat + 1}/{repeats}: fit suite "
               f"{result.suite_fit[-1]:.1f} s ({result.selection[-1]:.1f} s selecting) vs bare "
               f"{result.bare_fit[-1]:.1f} s; predict "
               f"suite {result.suite_predict[-1]:.2f} s vs bare {result.bare_predict[-1]:.2f} s")
    return result


def _score_checkpoints(score: Callable[[np.ndarray], np.ndarray], train: TrainSet,
                       checkpoints: int) -> None:
    """What the protocol's selection asks of a bare loop: score the held-out normals and the
    unlabelled test images at each of `checkpoints` checkpoints."""
    selection = selection_images(train)
    if not checkpoints or selection is None:
        return
    normals, unlabeled = selection
    normals = np.asarray(normals[:], dtype=np.float32)  # read once, as a notebook would
    for _ in range(checkpoints):
        score(normals)
        score(unlabeled)


def _time_selection(method: Method, device: torch.device) -> list[float]:
    """Wrap this instance's checkpoint work (`_weigh`, `_on_checkpoint`) so that each call's
    seconds land in the returned list; a method without checkpoints leaves it empty."""
    seconds: list[float] = []
    for name in ("_weigh", "_on_checkpoint"):
        original = getattr(method, name, None)
        if original is None:
            continue

        def timed(*args: object, _original: Callable = original) -> None:
            seconds.append(_seconds(lambda: _original(*args), device))
        setattr(method, name, timed)  # this instance only
    return seconds


def bench_overhead(names: list[str], dataset: str, *, budget_scale: float, repeats: int,
                   device: str, threads: int | None, working_size: int | None = None,
                   report: Callable[[str], None]) -> list[dict[str, float | str]]:
    """`bench perf --methods`: each method's quick profile on `dataset` at `budget_scale` of
    the equal quick budget, through the suite and bare; one row of medians per method.
    `working_size` replaces the profile's image size (256: the published size of the
    backbone methods; the images are resized to it as the methods resize them)."""
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
    size = f", {working_size} px" if working_size else ""
    report(f"{len(names)} method(s) on {dataset}, quick profile{size} at {budget_scale:g}x "
           f"the training budget, {torch.get_num_threads()} threads, {repeats} repeats")
    rows = []
    for name in names:
        cls = get_method(name)
        config = make_config(cls, "quick", image_size=card.image_size, channels=card.channels)
        if budget_scale != 1:
            config = dataclasses.replace(config, **cls.budget_overrides(config, budget_scale))
        if working_size:
            config = dataclasses.replace(config, image_size=working_size)
        train = training_set(cls, data)
        rows.append(measure_overhead(cls, config, train, test_images, torch_device,
                                     repeats=repeats, report=report).row())
    return rows
