"""PatchCore (Roth et al. 2022) through anomalib's torch model, in bounded memory.

Locally aggregated mid-level features of a pretrained CNN form a memory bank of healthy
patches, reduced by greedy k-center coreset selection; a patch's anomaly is its distance to the
nearest memory-bank patch, the image score the (re-weighted) maximum.

anomalib keeps every training patch before the coreset: at the published COVIDx size (10,031
images x 1,024 patches x 1,536 values) that is 63 GB, and the greedy coreset over 10 million
patches costs ~10^13 distance terms. Here `max_patches` bounds both: each image gives the same
seeded random share of its patches, so at most `max_patches` are held and searched. Scoring
computes query-to-bank distances in chunks of `distance_chunk` values. With `max_patches`
None (or a set small enough) the algorithm is anomalib's exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medad_bench.api import Images, Prediction, Progress, TrainSet, register_method
from medad_bench.methods._anomalib import (
    LITE0,
    BackboneMethod,
    backbone_input,
    chunks,
    drop_unused_stages,
    n_batches,
    resize_maps,
)
from medad_bench.methods._budget import QUICK_IMAGES_SEEN

#: EfficientNet-Lite0 stages at strides 8 and 16 (40 and 112 channels).
LITE0_PATCHCORE_LAYERS = ("blocks.2", "blocks.4")


@dataclass(frozen=True)
class PatchcoreConfig:
    """Defaults are anomalib's / the paper's published settings (the full profile), except
    `max_patches`: the published algorithm keeps every patch, which no machine holds at the
    COVIDx size (see the module docstring). 1,000,000 patches is ~3x what a published MVTec
    category gives (~300 images x 784 patches), so the bound binds only on larger sets."""

    backbone: str = "wide_resnet50_2"
    layers: tuple[str, ...] = ("layer2", "layer3")
    coreset_sampling_ratio: float = 0.1
    num_neighbors: int = 9
    image_size: int = 256
    #: "imagenet", "random" or the path of a local state-dict file.
    weights: str = "imagenet"
    batch_size: int = 32
    #: Training images embedded at most (a seeded random subset beyond it); None: all. The
    #: quick profile caps them at the equal training budget, so its cost does not grow with
    #: the tree.
    max_train_images: int | None = None
    #: Training patches held for the coreset at most: each image keeps the same seeded random
    #: share of its patches. None: every patch (anomalib's exact algorithm; memory and coreset
    #: time grow with the training set).
    max_patches: int | None = 1_000_000
    #: Memory-bank (coreset) size at most. The coreset keeps coreset_sampling_ratio of *all*
    #: the training patches, as the exact algorithm would, drawn from those held, up to this
    #: cap: a budget that drops patches does not shrink the bank with them. None: no cap.
    max_memory_bank: int | None = 100_000
    #: Query x memory-bank distances computed at once when scoring (float32 values): bounds
    #: the scoring memory to ~4 bytes x this, whatever the bank size.
    distance_chunk: int = 2**24

    def __post_init__(self) -> None:
        for name in ("max_patches", "max_memory_bank"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive or None, got {value}")
        if self.distance_chunk < 1:
            raise ValueError(f"distance_chunk must be positive, got {self.distance_chunk}")


#: The quick profile's patch budget: 100,000 x 152 values (EfficientNet-Lite0) = 61 MB, and a
#: coreset of at most 10,000 in about a minute on 2 CPU cores. The synthetic sets (300 images x
#: 64 patches) stay under it: there the algorithm is exact.
QUICK_MAX_PATCHES = 100_000
QUICK_MAX_MEMORY_BANK = 10_000


@register_method
class Patchcore(BackboneMethod):
    name = "patchcore"
    quick_cpu_seconds = 6
    description = "PatchCore: coreset memory bank of pretrained CNN patch features (anomalib)"
    uses = ("normal",)
    Config = PatchcoreConfig

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int, channels: int) -> PatchcoreConfig:
        if profile == "quick":
            # Real ImageNet features on any machine (EfficientNet-Lite0 from a PyPI package);
            # its stride-8/16 stages stand in for wide_resnet50_2's layer2-3.
            return PatchcoreConfig(backbone=LITE0, layers=LITE0_PATCHCORE_LAYERS,
                                   image_size=image_size, max_patches=QUICK_MAX_PATCHES,
                                   max_memory_bank=QUICK_MAX_MEMORY_BANK,
                                   max_train_images=QUICK_IMAGES_SEEN)
        return PatchcoreConfig()

    @classmethod
    def calibration_overrides(cls, config: PatchcoreConfig, scale: int) -> dict:
        # The coreset is timed on its own (calibrate_extra): keep it negligible in the fits.
        # A cap on the bank, not a tiny ratio: a ratio of 1e-3 keeps no patch of a small set
        # (the conformance suite's 48 images), and the fit would refuse it.
        return {"max_memory_bank": 64}

    @classmethod
    def calibrate_extra(cls, config: PatchcoreConfig, device: torch.device) -> dict[str, float]:
        """Patches per image and values per patch (one forward pass), and a coreset step's
        cost: fixed seconds per step and seconds per bank row, on random banks."""
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        from medad_bench.api import timed

        model = PatchcoreModel(layers=list(config.layers), backbone=config.backbone,
                               pre_trained=False).to(device).eval()
        with torch.inference_mode():
            x = torch.zeros(1, 3, config.image_size, config.image_size, device=device)
            patches = patch_embeddings(model, x)
        # A step costs a fixed part (Python, kernel launches) plus a part per bank row:
        # two bank sizes separate them.
        # Each bank size is timed at two step counts, so the projection (done once per
        # coreset) stays out of the per-step cost.
        times = {}
        for rows in (20_000, 200_000):
            bank = torch.randn(rows, patches.shape[2], device=device)
            greedy_coreset(bank[:1000], 2, seed=0, progress=Progress())  # warm-up
            seconds = []
            for steps in (50, 150):
                seconds.append(timed(partial(greedy_coreset, bank, steps, seed=0,
                                             progress=Progress()), device))
            times[rows] = max(seconds[1] - seconds[0], 0.0) / 100
            del bank
        per_row = max(times[200_000] - times[20_000], 0.0) / 180_000
        return {"patches_per_image": float(patches.shape[1]),
                "embedding_dims": float(patches.shape[2]),
                "coreset_step_seconds": max(times[20_000] - 20_000 * per_row, 0.0),
                "seconds_per_coreset_term": per_row}

    @classmethod
    def plan_extra(cls, config: PatchcoreConfig, trained_images: int,
                   measured: dict[str, float]) -> tuple[float, int, list[str]]:
        """The coreset (steps x kept patches) and the patch bank with its projection."""
        if not measured:
            return 0.0, 0, ["coreset not calibrated"]
        kept = trained_images * int(measured["patches_per_image"])
        if config.max_patches is not None:
            kept = min(kept, config.max_patches)
        coreset = coreset_size(config, trained_images * int(measured["patches_per_image"]),
                               kept)
        projected = johnson_lindenstrauss_dims(kept)
        seconds = coreset * (measured.get("coreset_step_seconds", 0.0)
                             + kept * measured["seconds_per_coreset_term"])
        bank_bytes = kept * (int(measured["embedding_dims"]) + projected) * 4
        return seconds, bank_bytes, [f"{kept:,} patches kept, coreset {coreset:,}"]

    def _fit(self, train: TrainSet, progress: Progress) -> None:
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        cfg = self.config
        images = self._training_images(train.normal)
        if len(images) == 0:
            raise ValueError("PatchCore needs healthy training images; none were given")
        model = PatchcoreModel(layers=list(cfg.layers), backbone=cfg.backbone, pre_trained=False,
                               num_neighbors=cfg.num_neighbors)
        self._load_backbone(model.feature_extractor.feature_extractor)
        drop_unused_stages(model.feature_extractor)  # same features, no wasted stages
        model = self.add_network("model", model).eval()

        bank = self._sampled_patches(model, images, progress)
        size = coreset_size(cfg, int(self.run_info["patches_total"]), len(bank))
        if size < 1:
            raise ValueError(
                f"coreset_sampling_ratio {cfg.coreset_sampling_ratio} keeps no patch of "
                f"{len(bank)}; raise it or give more training images"
            )
        progress.stage("coreset", size)
        chosen = greedy_coreset(bank, size, seed=self.seed, progress=progress)
        model.memory_bank = bank[chosen].contiguous()
        del bank

    def _sampled_patches(self, model: nn.Module, images: Images,
                         progress: Progress) -> torch.Tensor:
        """Every image's patch embeddings, or the same seeded random share of each when all of
        them would exceed `max_patches`: (kept patches, D) on the device, filled in place."""
        cfg, device = self.config, self.device
        n_images = len(images)
        choose = torch.Generator(device="cpu").manual_seed(self.seed + 1)
        bank: torch.Tensor | None = None
        row = 0
        progress.stage("embed", n_batches(n_images, cfg.batch_size))
        with torch.inference_mode():
            for chunk in chunks(images, cfg.batch_size):
                patches = patch_embeddings(model, backbone_input(chunk, cfg.image_size, device))
                per_image = patches.shape[1]
                if bank is None:
                    keep = per_image
                    if cfg.max_patches is not None and n_images * per_image > cfg.max_patches:
                        keep = max(1, cfg.max_patches // n_images)
                    bank = torch.empty(n_images * keep, patches.shape[2], device=device)
                    self.run_info.update({"patches_per_image": per_image,
                                          "patches_kept_per_image": keep,
                                          "patches_total": n_images * per_image,
                                          "patches_kept": n_images * keep})
                if keep < per_image:
                    pick = torch.rand(len(patches), per_image, generator=choose).argsort(dim=1)
                    pick = pick[:, :keep].to(device)
                    patches = torch.gather(patches, 1,
                                           pick.unsqueeze(-1).expand(-1, -1, patches.shape[2]))
                bank[row:row + len(patches) * keep] = patches.reshape(-1, patches.shape[2])
                row += len(patches) * keep
                progress.advance()
        assert bank is not None and row == len(bank)
        return bank

    def _predict(self, images: np.ndarray, *, maps: bool, extras: bool) -> Prediction:
        """anomalib's PatchcoreModel inference with the nearest-neighbour search chunked: the
        patch distances give the re-weighted image score and, when asked for, the map (the
        same distances, upsampled and blurred as anomalib does)."""
        model, cfg = self.model, self.config
        bank = model.memory_bank
        x = backbone_input(images, cfg.image_size, self.device)
        features = patch_embedding_maps(model, x)
        batch, _, height, width = features.shape
        embedding = features.permute(0, 2, 3, 1).reshape(batch, height * width, -1)
        distance, location = nearest(embedding.reshape(-1, embedding.shape[-1]), bank, 1,
                                     cfg.distance_chunk)
        patch_scores = distance[:, 0].reshape(batch, -1)
        locations = location[:, 0].reshape(batch, -1)
        scores = reweighted_score(patch_scores, locations, embedding, bank, cfg.num_neighbors,
                                  cfg.distance_chunk).float().cpu().numpy()
        if not maps:
            return Prediction(scores)
        anomaly_map = model.anomaly_map_generator(
            patch_scores.reshape(batch, 1, height, width), x.shape[-2:])
        return Prediction(scores, resize_maps(anomaly_map, images.shape[-2:]))


def coreset_size(config: PatchcoreConfig, total: int, kept: int) -> int:
    """coreset_sampling_ratio of all training patches (the exact algorithm's bank size), at most
    the patches held and `max_memory_bank`."""
    size = min(int(total * config.coreset_sampling_ratio), kept)
    return size if config.max_memory_bank is None else min(size, config.max_memory_bank)


def patch_embedding_maps(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) locally aware patch features, as PatchcoreModel.forward computes them."""
    features = model.feature_extractor(x)
    features = {layer: model.feature_pooler(feature) for layer, feature in features.items()}
    return model.generate_embedding(features)


def patch_embeddings(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, h*w, D): one row per patch, in PatchcoreModel.reshape_embedding's order."""
    features = patch_embedding_maps(model, x)
    return features.permute(0, 2, 3, 1).reshape(features.shape[0], -1, features.shape[1])


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, m) squared Euclidean distances, the matrix-product form anomalib uses."""
    result = x @ y.T
    result.mul_(-2).add_(x.pow(2).sum(1, keepdim=True)).add_(y.pow(2).sum(1))
    return result.clamp_(min=0)


def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int,
            chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and indices of the k nearest bank rows per query, (n, k) each, ascending.

    At most `chunk` query x bank distances exist at once: queries are taken in blocks, and a
    block against the bank in slices, keeping a running top-k.
    """
    k = min(k, len(bank))
    rows = max(1, min(len(queries), chunk // max(1, min(len(bank), chunk))))
    columns = max(k, chunk // rows)
    out_d, out_i = [], []
    for q in range(0, len(queries), rows):
        block = queries[q:q + rows]
        best_d = best_i = None
        for b in range(0, len(bank), columns):
            d = squared_distances(block, bank[b:b + columns])
            d, i = d.topk(min(k, d.shape[1]), dim=1, largest=False)
            i += b
            if best_d is not None:
                d, order = torch.cat([best_d, d], 1).topk(k, dim=1, largest=False)
                i = torch.gather(torch.cat([best_i, i], 1), 1, order)
            best_d, best_i = d, i
        out_d.append(best_d.sqrt())
        out_i.append(best_i)
    return torch.cat(out_d), torch.cat(out_i)


def reweighted_score(patch_scores: torch.Tensor, locations: torch.Tensor,
                     embedding: torch.Tensor, bank: torch.Tensor, num_neighbors: int,
                     chunk: int) -> torch.Tensor:
    """PatchCore's image score (anomalib's compute_anomaly_score): the largest patch distance
    s*, weighted by 1 - softmax over the distances from that test patch to its nearest bank
    patch m* and m*'s neighbours in the bank."""
    if num_neighbors == 1:
        return patch_scores.amax(1)
    batch = torch.arange(len(patch_scores), device=patch_scores.device)
    worst = torch.argmax(patch_scores, dim=1)
    worst_features = embedding[batch, worst]  # m^test,*
    score = patch_scores[batch, worst]  # s*
    neighbour_of = bank[locations[batch, worst]]  # m*
    _, support = nearest(neighbour_of, bank, num_neighbors, chunk)
    distances = torch.cdist(worst_features.unsqueeze(1), bank[support]).squeeze(1)
    return (1 - F.softmax(distances, 1))[..., 0] * score


def johnson_lindenstrauss_dims(n_samples: int, eps: float = 0.9) -> int:
    """The projected dimensions anomalib's SparseRandomProjection uses for `n_samples`."""
    return int(4 * math.log(max(n_samples, 2)) / (eps**2 / 2 - eps**3 / 3))


def greedy_coreset(embeddings: torch.Tensor, size: int, *, seed: int,
                   progress: Progress) -> torch.Tensor:
    """Indices of a k-center greedy coreset, as anomalib's KCenterGreedy selects it.

    Same algorithm (sparse random projection with eps 0.9, random first centre, farthest point
    next), with the projection seeded from the run's seed, progress reported to the suite's
    bar, and each step's distances as one matrix-vector product (|x|^2 - 2 x.c + |c|^2) instead
    of a (patches x dims) difference array: ~8x faster on a CPU, no temporary of the bank's
    size. The argmax is over squared distances, which orders points as distances do.
    """
    from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

    projection = SparseRandomProjection(eps=0.9, random_state=seed)
    projection.fit(embeddings)
    features = projection.transform(embeddings)
    norms = features.pow(2).sum(1)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    index = int(torch.randint(len(features), (1,), generator=generator))
    chosen = torch.empty(size, dtype=torch.long)
    min_distance = torch.full_like(norms, math.inf)
    for step in range(size):
        chosen[step] = index
        distance = torch.addmv(norms, features, features[index], alpha=-2.0).add_(norms[index])
        torch.minimum(min_distance, distance, out=min_distance)
        min_distance[index] = 0.0
        progress.advance()
        if step + 1 < size:
            index = int(torch.argmax(min_distance))
    return chosen.to(embeddings.device)
