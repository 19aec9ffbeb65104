"""MedIAnomaly reader (Cai et al., Medical Image Analysis 2025; github.com/caiyu6666/MedIAnomaly):
an `images/` folder and a `data.json` that splits it.

    {"train": {"0": [known normal images],
               "unlabeled": {"0": [healthy images], "1": [diseased images]}},
     "test": {"0": [healthy test images], "1": [diseased test images]}}

File names are relative to `images/` (their RSNA, VinCXR, BrainTumor and LAG sets; the same file
the authors' DDAD-ASR ships). `train.0` is the suite's set B (`train_normal`); the unlabelled
pool is set A (`train_mixed`): its 0/1 labels are kept in the manifest for the report but never
handed to a method; `test` is the test split, as published. MedIAnomaly has no validation split:
the protocol carves the labelled validation split (threshold) out of the unlabelled pool, a
tenth of each class unless the card's `val_positive` / `val_healthy` say otherwise, and the rest
of the pool is set A. The card must send every healthy image left in the pool to set A
(`mixed_healthy_share = 1.0`): an unlabelled image in set B would be a known normal it is not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from medad_bench.data.cards import DatasetCard
from medad_bench.data.folder import _subject, _subject_rule
from medad_bench.data.sources import (
    check_table,
    require_files,
    resolve_inside,
    source_table,
)
from medad_bench.errors import BenchError

#: Where each list of data.json goes: (keys, pool, label). Pool "train" feeds val and set A.
LISTS = ((("train", "0"), "train_normal", 0),
         (("train", "unlabeled", "0"), "train", 0),
         (("train", "unlabeled", "1"), "train", 1),
         (("test", "0"), "test", 0),
         (("test", "1"), "test", 1))
LABEL_KEYS = ("0", "1")


def read(card: DatasetCard, root: Path) -> tuple[pd.DataFrame, dict]:
    """The source table of a MedIAnomaly tree, and nothing dropped."""
    _check_settings(card)
    require_files(root, ["data.json", "images"], dataset="MedIAnomaly", layout=card.layout,
                  allow_links=card.allow_links_outside_root)
    path = root / "data.json"
    lists = read_data_json(path)
    rule = _subject_rule(card)
    rows: list[dict] = []
    seen: dict[str, str] = {}
    for keys, pool, label in LISTS:
        where = ".".join(keys)
        for number, name in enumerate(lists[where]):
            origin = f"{path}, {where}[{number}]"
            relative = resolve_inside(Path("images"), name, origin=origin).as_posix()
            if relative in seen:
                raise BenchError(f"{origin}: '{name}' is also in {seen[relative]}. An image "
                                 f"belongs to one list; re-download data.json.")
            seen[relative] = where
            rows.append({"image_id": relative, "path": relative, "label": label,
                         "subject_id": _subject(rule, relative, origin=origin),
                         "pool": pool, "kind": "image"})
    table = source_table(rows, origin=f"MedIAnomaly data.json in {root}")
    check_table(table, root, origin=f"MedIAnomaly tree {root}",
                allow_links=card.allow_links_outside_root)
    return table, {}


def read_data_json(path: Path) -> dict[str, list[str]]:
    """'train.0', 'train.unlabeled.0', ... -> file names; any other shape is a clear error."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path} is not valid JSON ({exc}). Re-download it.") from exc
    _check_label_keys(raw, path)
    lists = {}
    for keys, _, _ in LISTS:
        value: Any = raw
        for depth, key in enumerate(keys):
            if not isinstance(value, dict) or key not in value:
                where = ".".join(keys[:depth + 1])
                raise BenchError(f"{path} lacks the key '{where}'. MedIAnomaly's data.json has "
                                 f"train.0, train.unlabeled.0/1 and test.0/1; re-download it.")
            value = value[key]
        where = ".".join(keys)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BenchError(f"{path}: '{where}' must be a list of file names, got "
                             f"{type(value).__name__}. Re-download data.json.")
        lists[where] = value
    return lists


def _check_label_keys(raw: Any, path: Path) -> None:
    """Labels are the keys "0" and "1" of train.unlabeled and test; another key is a label the
    suite does not know, and would be silently left out."""
    if not isinstance(raw, dict):
        raise BenchError(f"{path} must hold a JSON object with 'train' and 'test', got "
                         f"{type(raw).__name__}. Re-download it.")
    extra = sorted(set(raw) - {"train", "test"})
    if extra:
        raise BenchError(f"{path}: unknown key '{extra[0]}' (expected 'train' and 'test'). "
                         f"Re-download data.json.")
    for where, allowed in (("train", ("0", "unlabeled")), ("train.unlabeled", LABEL_KEYS),
                           ("test", LABEL_KEYS)):
        value = raw
        for key in where.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        unknown = sorted(set(value) - set(allowed)) if isinstance(value, dict) else []
        if unknown:
            raise BenchError(f"{path}: unknown label '{unknown[0]}' in '{where}' (expected "
                             f"the keys {', '.join(allowed)}; labels are 0 healthy, 1 "
                             f"diseased). Fix data.json.")


def _check_settings(card: DatasetCard) -> None:
    settings = card.settings
    if "mixed_healthy" not in settings and settings.get("mixed_healthy_share", 0.5) != 1.0:
        raise BenchError(f"dataset card {card.path}: a MedIAnomaly set's unlabelled healthy "
                         f"images all belong to set A; set mixed_healthy_share = 1.0 in its "
                         f"[medianomaly] section (otherwise some would join the known normals).")
