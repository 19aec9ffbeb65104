"""Split manifests: which image is in which split, with its label and subject, and their hash.

A dataset's splits are written once and reused by every method; the SHA-256 of the sorted
manifest identifies them in every run and every report.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

MANIFEST_COLUMNS = ("image_id", "split", "label", "subject_id")


def manifest_hash(manifest: pd.DataFrame) -> str:
    """SHA-256 of the manifest's identifying columns, sorted by image id (row order-free)."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    table = manifest.loc[:, list(MANIFEST_COLUMNS)].astype(str).sort_values("image_id")
    text = table.to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_manifest(manifest: pd.DataFrame, path: Path) -> None:
    manifest.to_csv(path, index=False, lineterminator="\n")


def read_manifest(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_id": str, "split": str, "subject_id": str})


#: Sets A and B are both training data: a patient in both leaks nothing (published lists such as
#: HealthyGAN's COVIDx split do this); training, validation and test must not share one.
LEAKAGE_GROUPS = {"train_mixed": "train", "train_normal": "train", "val": "val", "test": "test"}


def check_subject_disjoint(manifest: pd.DataFrame) -> None:
    """Raise if a subject is in two of training / validation / test (leakage)."""
    groups = manifest.split.map(LEAKAGE_GROUPS).fillna(manifest.split)
    splits_per_subject = groups.groupby(manifest.subject_id).nunique()
    leaked = splits_per_subject[splits_per_subject > 1]
    if len(leaked):
        example = leaked.index[0]
        found = sorted(manifest.loc[manifest.subject_id == example, "split"].unique())
        raise ValueError(
            f"subject {example} appears in splits {found} ({len(leaked)} subjects leak): "
            f"splits must be disjoint by subject"
        )
