"""What the anomalib-based methods share: input conversion and backbone weights.

We call anomalib's torch models directly instead of its Lightning `Engine`, so that every method
scores exactly the suite's test images (anomalib's `Folder` datamodule would move half of the
test folder into a validation set) and no time goes to checkpoints and visualisations.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import Method

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneMethod(Method):
    """Scoring shared by anomalib's feature-based torch models (PaDiM, PatchCore): `fit` sets
    `self.model`; the image score is the model's `pred_score`, the map its `anomaly_map`."""

    model: nn.Module

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        device = next(self.model.parameters()).device
        scores, maps = [], []
        with torch.inference_mode():
            for chunk in batches(images, self.config.batch_size):
                out = self.model(backbone_input(chunk, self.config.image_size, device))
                scores.append(out.pred_score.float().reshape(-1).cpu().numpy())
                maps.append(resize_maps(out.anomaly_map, chunk.shape[-2:]))
        return np.concatenate(scores), np.concatenate(maps)

    def score(self, images: np.ndarray) -> np.ndarray:
        return self._infer(images)[0]

    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        return self._infer(images)[1]


class BackboneWeightsWarning(UserWarning):
    """Pretrained weights could not be loaded: the backbone is randomly initialised."""


warnings.simplefilter("always", BackboneWeightsWarning)


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


def batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def n_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def load_backbone_weights(module: nn.Module, backbone: str, weights: str) -> str:
    """Load weights into a timm feature extractor; returns a description of what was loaded.

    weights: "random" (deliberately untrained), "imagenet" (timm's pretrained weights, from the
    local Hugging Face cache or, when the hub is reachable, downloaded), or the path of a local
    file (a torchvision/timm state dict, `.pth`/`.pt`/`.bin`/`.safetensors`). When "imagenet"
    cannot be had the backbone stays randomly initialised and a loud warning says so.
    """
    if weights == "random":
        return "random (requested)"
    if weights != "imagenet":
        path = Path(weights).expanduser()
        _load_state(module, _read_state_dict(path), source=str(path))
        return f"file {path} (sha256 {_sha256(path)[:16]})"
    try:
        path = _pretrained_file(backbone)
    except Exception as exc:  # noqa: BLE001 - any failure means: no pretrained weights
        message = (
            f"\n{'!' * 78}\n"
            f"!! ImageNet weights for {backbone} could not be loaded ({exc}).\n"
            f"!! The backbone is RANDOMLY INITIALISED: results are not comparable with\n"
            f"!! published ones. Download the weights on a connected machine and pass\n"
            f"!! --weights PATH (a torchvision or timm state dict of {backbone}).\n"
            f"{'!' * 78}"
        )
        warnings.warn(message, BackboneWeightsWarning, stacklevel=2)
        return f"random (FALLBACK: ImageNet weights unavailable: {exc})"
    _load_state(module, _read_state_dict(path), source=str(path))
    return f"imagenet (timm {backbone}, {path.name})"


def _pretrained_file(backbone: str) -> Path:
    """The cached (or freshly downloaded) file of timm's default pretrained weights."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(backbone)
    if cfg is None or not cfg.hf_hub_id:
        raise RuntimeError(f"timm knows no pretrained weights for {backbone}")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(cached, str):
            return Path(cached)
    # Only try the network when the hub resolves: offline, the hub client would retry for ~45 s.
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError as exc:
        raise RuntimeError(
            f"not in the local cache and the model hub is unreachable: {exc}") from exc
    return Path(hf_hub_download(cfg.hf_hub_id, "model.safetensors"))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from benchmark.errors import BenchError

    if not path.is_file():
        raise BenchError(f"backbone weights file {path} does not exist. Check --weights.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BenchError(f"cannot read backbone weights {path}: {exc}. "
                         f"Give a torchvision/timm state dict file.") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BenchError(
            f"backbone weights {path} hold a {type(state).__name__}, not a state dict.")
    return state


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load `state` into `module`, requiring every tensor the module has (extra keys are fine:
    a full classifier's `fc` and `layer4` are not part of the feature extractor)."""
    from benchmark.errors import BenchError

    own = module.state_dict()
    missing = [k for k in own if k not in state]
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or mismatched:
        problem = (f"lacks {len(missing)} tensors (e.g. {missing[0]})" if missing
                   else f"has tensors of the wrong shape (e.g. {mismatched[0]})")
        raise BenchError(f"backbone weights {source} do not fit this backbone: the file {problem}. "
                         f"Give weights of the backbone named in the method's config.")
    module.load_state_dict({k: state[k] for k in own}, strict=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
