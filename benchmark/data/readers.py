"""Format name -> reader module. Each reader has `read(card, root) -> (source table, dropped)`
and may have `published_split(card, root, source) -> image_id -> split | None`."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pandas as pd

from medad_bench.data import (
    bmad,
    brain_mri,
    chestxray14,
    covidx,
    folder,
    medianomaly,
    medmnist,
)
from medad_bench.data.cards import DatasetCard

READERS: dict[str, ModuleType] = {"covidx": covidx, "chestxray14": chestxray14,
                                  "brain_mri": brain_mri, "folder": folder, "bmad": bmad,
                                  "medianomaly": medianomaly, "medmnist": medmnist}


def reader_for(fmt: str) -> ModuleType:
    return READERS[fmt]


def published_split(card: DatasetCard, root: Path, source: pd.DataFrame) -> pd.Series | None:
    """A published image -> split assignment, from readers that know one (COVIDx's lists):
    a reader module may define `published_split(card, root, source)`."""
    reader_hook = getattr(reader_for(card.format), "published_split", None)
    return reader_hook(card, root, source) if reader_hook else None
