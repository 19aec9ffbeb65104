"""The training engine of iterative methods: one loop, one checkpoint schedule, label-free
model selection, and resume.

An `IterativeMethod` says how to build its networks and optimisers (`_setup`) and how to take
one training step (`_train_step`); the engine runs the steps, logs the losses every
`log_every` steps, and at `CHECKPOINTS` evenly spaced steps it

- scores the known-normal images held out of training (pseudo-label 0) and the unlabelled test
  images (pseudo-label 1): their AUC is AUCp (docs/design.md section 4; labels never read);
- keeps a copy of the networks with the highest AUCp (first on ties);
- writes everything a resumed run needs to `workdir/last.pt` (atomically).

After the last step it keeps the AUCp choice (rule `aucp`) or the last networks (rule `last`).
Every checkpoint's test scores stay in `selection_history`, so the runner can show, after final
scoring, how the rule did against the last checkpoint and the best one in hindsight.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medad_bench.api.contract import Images, Method, Progress, TrainSet
from medad_bench.data.images import ImageSet
from medad_bench.disk import writing
from medad_bench.errors import BenchError
from medad_bench.stats.image_metrics import aucp, debiased_aucp

logger = logging.getLogger(__name__)

#: Checkpoints per run, evenly spaced over the steps where the model can score: the same
#: schedule for every iterative method, whatever its length.
CHECKPOINTS = 6
#: Known-normal images held out of training for AUCp, at most (and at most a tenth of them).
SELECTION_NORMALS = 256
SELECTION_RULES = ("aucp", "last")


def checkpoint_steps(first: int, total: int, count: int = CHECKPOINTS) -> list[int]:
    """`count` steps evenly spaced over (first, total], the last one `total` (fewer when the
    range is shorter)."""
    span = total - first
    if span <= 0:
        return [total]
    return sorted({first + max(1, round(span * k / count)) for k in range(1, count + 1)})


def hold_out_normals(normal: Images, seed_material: int = 0) -> tuple[Images, Images]:
    """(training normals, held-out normals): a tenth of the known-normal images, at most
    SELECTION_NORMALS, chosen by a generator that depends only on the set's size, so every
    method and seed of a split holds out the same images."""
    count = min(SELECTION_NORMALS, len(normal) // 10)
    rng = np.random.default_rng([len(normal), 17, seed_material])
    held = np.zeros(len(normal), dtype=bool)
    held[rng.choice(len(normal), count, replace=False)] = True
    return _rows(normal, np.flatnonzero(~held)), _rows(normal, np.flatnonzero(held))


def _rows(images: Images, rows: np.ndarray) -> Images:
    return images.subset(rows) if isinstance(images, ImageSet) else images[rows]


@dataclass
class Checkpoint:
    """One checkpoint the selection weighed: its AUCp and the scores of the test images."""

    step: int
    values: dict[str, float]
    test_scores: np.ndarray


def multi_tensor(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Run `optimizer`'s update as PyTorch's multi-tensor ("foreach") implementation where it
    was left to PyTorch to choose (PyTorch picks it only on CUDA). The same arithmetic, bit for
    bit; on a CPU it saves one Python-level update per parameter tensor."""
    for group in optimizer.param_groups:
        if "foreach" in group and group["foreach"] is None:
            group["foreach"] = True
    return optimizer


class IterativeMethod(Method):
    """A method trained in steps; the engine owns the loop, checkpoints and selection.

    Subclasses implement `total_steps`, `_setup` (networks via `add_network`, optimisers via
    `add_optimizer`, random streams via `add_generator`) and `_train_step`; optional hooks:
    `first_selectable_step`, `_stage_name`, `_on_checkpoint`, `_on_fitted`.
    """

    uses_selection = True
    supports_resume = True
    budget_fields = ("iterations", "epochs")

    def __init__(self, config: Any = None, *, workdir: Path | str | None = None,
                 selection: str = "aucp") -> None:
        super().__init__(config, workdir=workdir)
        if selection not in SELECTION_RULES:
            raise ValueError(f"selection must be one of {SELECTION_RULES}, got {selection!r}")
        #: "aucp": keep the checkpoint with the highest AUCp; "last": the last one.
        self.selection = selection
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.generators: dict[str, Any] = {}
        self.selection_history: list[Checkpoint] = []
        #: Steps of the AUCp choice and of the last checkpoint, and the kept one.
        self.selected_step: int | None = None
        self.aucp_step: int | None = None
        self.last_step: int | None = None

    # -- what a subclass supplies ------------------------------------------------------------

    @abstractmethod
    def total_steps(self, train: TrainSet) -> int:
        """Training steps of the whole run."""

    @abstractmethod
    def _setup(self, train: TrainSet) -> None:
        """Build networks, optimisers and random streams (seeded already)."""

    @abstractmethod
    def _train_step(self, step: int) -> dict[str, torch.Tensor | float]:
        """One training step (1-based); returns the losses to log."""

    def first_selectable_step(self) -> int:
        """Steps before this cannot be kept (f-AnoGAN: its encoder does not exist yet)."""
        return 0

    def _stage_name(self, step: int) -> str:
        """The progress bar's stage at `step` (a method with phases names them)."""
        return "train"

    def _on_checkpoint(self, train: TrainSet, progress: Progress, step: int) -> None:
        """Called at every checkpoint, before the selection scores it."""

    def _on_fitted(self, train: TrainSet) -> None:
        """Called once the kept networks are loaded."""

    # -- services ---------------------------------------------------------------------------

    def add_optimizer(self, name: str, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Register an optimiser (checkpointed and resumed with the run).

        Where the method left PyTorch to choose, its update runs as the multi-tensor
        ("foreach") implementation, which PyTorch picks only on CUDA: on a CPU the default
        updates one tensor at a time from Python (Reverse Distillation's Adam: 4.3 of its 19 s
        of training steps at a quarter of the quick budget). Both do the same arithmetic, bit
        for bit (tests/test_training.py checks Adam, SGD and RMSprop)."""
        self.optimizers[name] = multi_tensor(optimizer)
        return optimizer

    def add_generator(self, name: str, stream: Any) -> Any:
        """Register a random stream (a torch.Generator, or anything with get_state/set_state)
        so a resumed run continues it exactly."""
        self.generators[name] = stream
        return stream

    @property
    def log_every(self) -> int:
        return int(getattr(self.config, "log_every", 25) or 25)

    # -- the loop ------------------------------------------------------------------------------

    def _fit(self, train: TrainSet, progress: Progress) -> None:
        self.optimizers, self.generators, self.selection_history = {}, {}, []
        self._setup(train)
        for network in self.networks.values():
            network.train()
        total = self.total_steps(train)
        schedule = set(checkpoint_steps(self.first_selectable_step(), total))
        selection = selection_images(train)
        best = _Best()
        step = self._resume(best)
        self.run_info["resumed_from_step"] = step
        if step:
            logger.info("%s: resumed from the checkpoint at step %d (%s)", self.name, step,
                        self.workdir)
        stage = None
        while step < total:
            step += 1
            if self._stage_name(step) != stage:
                stage = self._stage_name(step)
                progress.stage(stage, total)
                progress.advance(step - 1)
            losses = self._train_step(step)
            progress.advance()
            if step % self.log_every == 0:
                for key, value in losses.items():
                    progress.metric(f"train_{key}", float(value), step)
            if step in schedule:
                self._on_checkpoint(train, progress, step)
                if selection is not None:
                    self._weigh(step, selection, train, best, progress)
                self._save(step, best)
        self._keep(best, step, selection is not None)
        self._on_fitted(train)

    def _weigh(self, step: int, selection: tuple[Images, np.ndarray], train: TrainSet,
               best: _Best, progress: Progress) -> None:
        normals, unlabeled = selection
        normal_scores = self._predict_batches(normals, maps=False, extras=False).scores
        test_scores = self._predict_batches(unlabeled, maps=False, extras=False).scores
        value = aucp(normal_scores, test_scores)
        values = {"aucp": value}
        if train.selection_normal_share is not None:
            values["aucp_debiased"] = debiased_aucp(value, train.selection_normal_share)
        for key, number in values.items():
            progress.metric(key, number, step)
        self.selection_history.append(Checkpoint(step, values, test_scores))
        if best.aucp is None or value > best.aucp:  # first on ties
            best.aucp, best.step = value, step
            best.networks = _cpu_copy(self.networks)

    def _keep(self, best: _Best, last: int, selecting: bool) -> None:
        self.last_step, self.aucp_step = last, best.step
        if self.selection == "aucp" and best.networks is not None:
            for name, network in self.networks.items():
                network.load_state_dict(best.networks[name])
            self.selected_step = best.step
            self.run_info["selected_aucp"] = round(best.aucp, 6)
        else:
            self.selected_step = last
            if self.selection == "aucp" and not selecting:
                self.run_info["selection_note"] = ("no held-out normals or unlabelled test "
                                                   "images given: last kept")
        self.run_info["selected_step"] = self.selected_step

    # -- resume ----------------------------------------------------------------------------

    def _save(self, step: int, best: _Best) -> None:
        if self.workdir is None:
            return
        path = Path(self.workdir) / "last.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": dataclasses.asdict(self.config),
            "selection": self.selection,
            "step": step,
            "networks": {k: v.state_dict() for k, v in self.networks.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "generators": {k: v.get_state() for k, v in self.generators.items()},
            "torch_rng": torch.get_rng_state(),
            "best": {"aucp": best.aucp, "step": best.step, "networks": best.networks},
            # Tensors, not NumPy arrays: the checkpoint then loads with weights_only=True.
            "history": [(c.step, c.values, torch.from_numpy(np.asarray(c.test_scores)))
                        for c in self.selection_history],
        }
        tmp = path.with_suffix(".tmp")
        with writing(path, "the training checkpoint", fix="Free space there (the work "
                     "folder of unfinished runs), then run the same command again: the run "
                     "resumes from its previous checkpoint"):
            try:
                torch.save(payload, tmp)
                os.replace(tmp, path)  # atomic: a kill mid-save leaves the previous one intact
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def _resume(self, best: _Best) -> int:
        """Load the workdir's checkpoint if it belongs to this config; returns its step."""
        if self.workdir is None or not (Path(self.workdir) / "last.pt").is_file():
            return 0
        path = Path(self.workdir) / "last.pt"
        try:
            # weights_only: a checkpoint on a shared disk must not be able to run code.
            payload = torch.load(path, map_location=self.device, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise BenchError(
                f"refused to resume from {path}: it holds objects other than tensors and plain "
                f"values, and loading them could run code (someone else may have written it). "
                f"Delete {path.parent} to train from the start.") from exc
        if (payload.get("config") != dataclasses.asdict(self.config)
                or payload.get("selection") != self.selection
                or set(payload.get("networks", {})) != set(self.networks)):
            return 0  # another config: start afresh (the runner keys workdirs by config anyway)
        for name, network in self.networks.items():
            network.load_state_dict(payload["networks"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(payload["optimizers"][name])
        for name, stream in self.generators.items():
            stream.set_state(payload["generators"][name])
        torch.set_rng_state(payload["torch_rng"])
        best.aucp, best.step = payload["best"]["aucp"], payload["best"]["step"]
        best.networks = payload["best"]["networks"]
        self.selection_history = [Checkpoint(step, values, scores.cpu().numpy())
                                  for step, values, scores in payload["history"]]
        return int(payload["step"])


@dataclass
class _Best:
    aucp: float | None = None
    step: int | None = None
    networks: dict[str, dict[str, torch.Tensor]] | None = None


def selection_images(train: TrainSet) -> tuple[Images, np.ndarray] | None:
    """Held-out normals and unlabelled test images for AUCp, or None without selection."""
    if (train.selection is None or len(train.selection) == 0
            or train.selection_normals is None or len(train.selection_normals) == 0):
        return None
    return train.selection_normals, train.selection


def _cpu_copy(networks: dict[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {key: value.detach().to("cpu", copy=True)
                   for key, value in network.state_dict().items()}
            for name, network in networks.items()}
