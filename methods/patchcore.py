"""PatchCore (Roth et al. 2022) through anomalib's torch model.

Locally aggregated mid-level features of a pretrained CNN form a memory bank of healthy
patches, reduced by greedy k-center coreset selection; a patch's anomaly is its distance to the
nearest memory-bank patch, the image score the (re-weighted) maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.api import Progress, TrainSet, register_method
from benchmark.seeding import seed_everything
from methods._anomalib import (
    LITE0,
    BackboneMethod,
    backbone_input,
    batches,
    n_batches,
)

#: EfficientNet-Lite0 stages at strides 8 and 16 (40 and 112 channels).
LITE0_PATCHCORE_LAYERS = ("blocks.2", "blocks.4")


@dataclass(frozen=True)
class PatchcoreConfig:
    """Defaults are anomalib's / the paper's published settings (the full profile)."""

    backbone: str = "wide_resnet50_2"
    layers: tuple[str, ...] = ("layer2", "layer3")
    coreset_sampling_ratio: float = 0.1
    num_neighbors: int = 9
    image_size: int = 256
    #: "imagenet", "random" or the path of a local state-dict file.
    weights: str = "imagenet"
    batch_size: int = 32


@register_method
class Patchcore(BackboneMethod):
    name = "patchcore"
    description = "PatchCore: coreset memory bank of pretrained CNN patch features (anomalib)"
    uses = ("normal",)
    Config = PatchcoreConfig

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int, channels: int) -> PatchcoreConfig:
        if profile == "quick":
            # Real ImageNet features on any machine (EfficientNet-Lite0 from a PyPI package);
            # its stride-8/16 stages stand in for wide_resnet50_2's layer2-3.
            return PatchcoreConfig(backbone=LITE0, layers=LITE0_PATCHCORE_LAYERS,
                                   image_size=image_size)
        return PatchcoreConfig()

    def fit(self, train: TrainSet, *, seed: int, device: torch.device,
            progress: Progress | None = None) -> None:
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        progress = progress or Progress()
        cfg = self.config
        seed_everything(seed)
        model = PatchcoreModel(layers=list(cfg.layers), backbone=cfg.backbone, pre_trained=False,
                               num_neighbors=cfg.num_neighbors)
        self._load_backbone(model.feature_extractor.feature_extractor)
        model = model.to(device).train()

        progress.stage("embed", n_batches(len(train.normal), cfg.batch_size))
        with torch.inference_mode():
            for chunk in batches(train.normal, cfg.batch_size):
                model(backbone_input(chunk, cfg.image_size, device))  # appends to embedding_store
                progress.advance()
        embeddings = torch.vstack(model.embedding_store)
        model.embedding_store.clear()

        coreset_size = int(len(embeddings) * cfg.coreset_sampling_ratio)
        if coreset_size < 1:
            raise ValueError(
                f"coreset_sampling_ratio {cfg.coreset_sampling_ratio} keeps no patch of "
                f"{len(embeddings)}; raise it or give more training images"
            )
        progress.stage("coreset", coreset_size)
        chosen = greedy_coreset(embeddings, coreset_size, seed=seed, progress=progress)
        model.memory_bank = embeddings[chosen].contiguous()
        self.model = model.eval()


def greedy_coreset(embeddings: torch.Tensor, size: int, *, seed: int,
                   progress: Progress) -> torch.Tensor:
    """Indices of a k-center greedy coreset, as anomalib's KCenterGreedy selects it.

    Same algorithm (sparse random projection with eps 0.9, random first centre, farthest point
    next), with the projection seeded from the run's seed and progress reported to the suite's
    bar instead of a bar of its own.
    """
    from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

    projection = SparseRandomProjection(eps=0.9, random_state=seed)
    projection.fit(embeddings)
    features = projection.transform(embeddings)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    index = int(torch.randint(len(features), (1,), generator=generator))
    chosen = [index]
    min_distance = torch.linalg.norm(features - features[index], dim=1)
    min_distance[index] = 0.0
    progress.advance()
    for _ in range(size - 1):
        index = int(torch.argmax(min_distance))
        chosen.append(index)
        min_distance = torch.minimum(min_distance,
                                     torch.linalg.norm(features - features[index], dim=1))
        min_distance[index] = 0.0
        progress.advance()
    return torch.tensor(chosen, device=embeddings.device)
