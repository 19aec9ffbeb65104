"""Dataset cards: one TOML file per dataset describing its format, location and protocol.

Cards are looked up, in order, in the folders named by `BENCH_DATASETS_PATH` (os.pathsep
separated), `./datasets` in the working directory, and the suite's own `datasets/` folder.
Adding a dataset in a known format is one card, no code.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medad_bench.errors import BenchError, unknown_name
from medad_bench.shipped import builtin_cards

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The suite's own cards: package data (medad_bench.datasets; datasets/ in a checkout).
BUILTIN_CARDS = builtin_cards()

KNOWN_FORMATS = ("synthetic", "covidx", "chestxray14", "brain_mri", "folder", "bmad",
                 "medianomaly", "medmnist")
#: MRI slices are rescaled floats (16 bits keep them); radiograph files are 8-bit. A folder of
#: 16-bit PNGs or DICOM files sets `bit_depth = 16` in its card.
DEFAULT_BIT_DEPTH = {"brain_mri": 16}


@dataclass(frozen=True)
class DatasetCard:
    name: str
    description: str
    format: str
    channels: int
    image_size: int
    path: Path
    #: Where to download the data and what tree to put where (real datasets only).
    download: str = ""
    layout: str = ""
    default_data_root: str = ""
    #: Data shipped with the suite, relative to the card's folder (PneumoniaMNIST): used when
    #: neither --data-root nor $BENCH_<NAME>_ROOT is given. No download needed.
    bundled_data_root: str = ""
    #: Evaluation unit: "image", or "subject" (slice scores averaged per subject).
    unit: str = "image"
    #: Bits per pixel the cache keeps (8 or 16): the source's precision. Default: 16 for MRI
    #: volumes (scaled floats), 8 for everything else (8-bit PNG / JPEG radiographs).
    bit_depth: int = 8
    #: Read files reached through symbolic links that leave the data root (a tree that links
    #: into shared storage on purpose). Off: such a link stops preparation, naming it.
    allow_links_outside_root: bool = False
    #: Format-specific settings (generator knobs for `synthetic`, protocol for real sets).
    settings: dict[str, Any] = field(default_factory=dict)
    #: The card file's text, part of the cache key.
    text: str = ""

    @property
    def is_synthetic(self) -> bool:
        return self.format == "synthetic"


def card_folders() -> list[Path]:
    folders = [Path(p) for p in os.environ.get("BENCH_DATASETS_PATH", "").split(os.pathsep) if p]
    folders += [Path.cwd() / "datasets", BUILTIN_CARDS]
    unique: list[Path] = []
    for folder in folders:
        resolved = folder.resolve()
        if resolved.is_dir() and resolved not in unique:
            unique.append(resolved)
    return unique


def available_cards() -> dict[str, Path]:
    """Card name -> card file; earlier folders win over later ones."""
    cards: dict[str, Path] = {}
    for folder in card_folders():
        for path in sorted(folder.glob("*.toml")):
            cards.setdefault(path.stem, path)
    return dict(sorted(cards.items()))


def load_card(name: str) -> DatasetCard:
    """Read and validate the card called `name` (or at the path `name`, ending in .toml)."""
    if name.endswith(".toml"):
        path = Path(name)
        if not path.is_file():
            raise BenchError(f"dataset card {path} does not exist. Check the path.")
    else:
        cards = available_cards()
        if name not in cards:
            sized = _medmnist_size_variant(name, cards)
            if sized is not None:
                return sized
            raise unknown_name("dataset", name, list(cards))
        path = cards[name]
    return parse_card(path)


#: MedMNIST+'s larger files, named NAME_64.npz, ...: `--dataset NAME_64` reads one.
MEDMNIST_LARGER_SIZES = ("64", "128", "224")


def _medmnist_size_variant(name: str, cards: dict[str, Path]) -> DatasetCard | None:
    """`chestmnist_128`: the `chestmnist` card reading MedMNIST's 128 px file at 128 px, from
    the user's folder (the suite ships the 28 px PneumoniaMNIST only). None if no such card."""
    base, _, size = name.rpartition("_")
    if size not in MEDMNIST_LARGER_SIZES or base not in cards:
        return None
    card = parse_card(cards[base])
    if card.format != "medmnist":
        return None
    settings = {**card.settings, "size": int(size)}
    settings.pop("file", None)
    default_root = card.default_data_root or "~/.medmnist"
    # The text is the cache key: the size is part of what the images are.
    return replace(card, name=name, image_size=int(size), settings=settings,
                   bundled_data_root="", default_data_root=default_root,
                   description=f"{card.description} ({size} px file)",
                   text=f"{card.text}\n# read as {name}: the {size} px file at {size} px\n")


def parse_card(path: Path) -> DatasetCard:
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"dataset card {path} is not valid TOML: {exc}. Fix the card.") from exc

    def need(key: str, kind: type) -> Any:
        if key not in raw:
            raise BenchError(f"dataset card {path} lacks the key '{key}'. Add it to the card.")
        value = raw[key]
        if not isinstance(value, kind):
            raise BenchError(
                f"dataset card {path}: '{key}' must be a {kind.__name__}, got {value!r}."
            )
        return value

    fmt = need("format", str)
    if fmt not in KNOWN_FORMATS:
        raise BenchError(
            f"dataset card {path}: unknown format '{fmt}'. Known formats: "
            f"{', '.join(KNOWN_FORMATS)}."
        )
    channels = need("channels", int)
    if channels not in (1, 3):
        raise BenchError(f"dataset card {path}: channels must be 1 or 3, got {channels}.")
    image_size = need("image_size", int)
    if image_size < 16:
        raise BenchError(f"dataset card {path}: image_size must be >= 16, got {image_size}.")
    bit_depth = raw.get("bit_depth", DEFAULT_BIT_DEPTH.get(fmt, 8))
    if bit_depth not in (8, 16) or isinstance(bit_depth, bool):
        raise BenchError(f"dataset card {path}: bit_depth must be 8 or 16 (the source pixels' "
                         f"precision), got {bit_depth!r}.")
    unit = raw.get("unit", "image")
    if unit not in ("image", "subject"):
        raise BenchError(f"dataset card {path}: unit must be 'image' or 'subject', got {unit!r}.")
    settings = dict(raw.get(fmt, {}))
    # Accepted at the top or in the format's section, where the other tree settings live.
    allow_links = settings.pop("allow_links_outside_root",
                               raw.get("allow_links_outside_root", False))
    if not isinstance(allow_links, bool):
        raise BenchError(f"dataset card {path}: allow_links_outside_root must be true or false, "
                         f"got {allow_links!r}.")
    return DatasetCard(
        name=raw.get("name", path.stem),
        description=need("description", str),
        format=fmt,
        channels=channels,
        image_size=image_size,
        path=path,
        download=raw.get("download", ""),
        layout=raw.get("layout", ""),
        default_data_root=raw.get("default_data_root", ""),
        bundled_data_root=raw.get("bundled_data_root", ""),
        unit=unit,
        bit_depth=bit_depth,
        allow_links_outside_root=allow_links,
        settings=settings,
        text=text,
    )
