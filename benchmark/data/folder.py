"""Generic reader: a folder per class, or a CSV manifest.

Folder per class: `<root>/normal/...` and `<root>/abnormal/...` (names set by the card's
`healthy_folders` / `diseased_folders`); every file there must be an image. Subjects are the
file stems unless the card says otherwise, and the protocol carves every split from the pool.

CSV manifest (card `manifest = "labels.csv"`): columns path, label and optionally split
(train / val / test / train_mixed / train_normal) and subject_id.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.data.cards import DatasetCard
from benchmark.data.sources import (
    check_table,
    image_files,
    map_label,
    require_files,
    resolve_inside,
    source_table,
)
from benchmark.errors import BenchError

DEFAULT_LABEL_MAP = {"normal": 0, "healthy": 0, "0": 0, "abnormal": 1, "diseased": 1, "1": 1}
SPLITS = ("train", "val", "test", "train_mixed", "train_normal")


def read(card: DatasetCard, root: Path) -> tuple[pd.DataFrame, dict]:
    manifest = card.settings.get("manifest")
    rows = _csv_rows(card, root, manifest) if manifest else _folder_rows(card, root)
    table = source_table(rows, origin=f"dataset tree {root}")
    check_table(table, root, origin=f"dataset tree {root}")
    return table, {}


def _folder_rows(card: DatasetCard, root: Path) -> list[dict]:
    classes = [(name, 0) for name in card.settings.get("healthy_folders", ["normal"])]
    classes += [(name, 1) for name in card.settings.get("diseased_folders", ["abnormal"])]
    require_files(root, [name for name, _ in classes], dataset=f"'{card.name}'",
                  layout=card.layout or "\n".join(f"  {n}/  images" for n, _ in classes))
    rows = []
    for name, label in classes:
        files = image_files(root / name, origin=f"class folder {root / name}")
        if not files:
            raise BenchError(f"class folder {root / name} holds no images: the class is "
                             f"empty. Put its images there or fix the card.")
        for path in files:
            relative = path.relative_to(root).as_posix()
            rows.append({"image_id": relative, "path": relative, "label": label,
                         "subject_id": relative, "pool": "any", "kind": "image"})
    return rows


def _csv_rows(card: DatasetCard, root: Path, manifest: str) -> list[dict]:
    path = resolve_inside(root, manifest, origin=str(card.path))
    require_files(root, [manifest], dataset=f"'{card.name}'", layout=card.layout)
    table = pd.read_csv(path, dtype=str, skipinitialspace=True)
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise BenchError(f"{path} lacks the column(s) {', '.join(sorted(missing))}.")
    label_map = {**DEFAULT_LABEL_MAP, **card.settings.get("label_map", {})}
    rows = []
    for number, record in enumerate(table.to_dict("records"), start=1):
        origin = f"{path}, data row {number}"
        relative = resolve_inside(Path("."), record["path"], origin=origin).as_posix()
        pool = str(record.get("split") or "any").strip()
        if pool not in (*SPLITS, "any"):
            raise BenchError(f"{origin}: unknown split '{pool}'. Use one of {', '.join(SPLITS)}.")
        rows.append({"image_id": relative, "path": relative,
                     "label": map_label(str(record["label"]).strip(), label_map, origin=origin),
                     "subject_id": str(record.get("subject_id") or relative), "pool": pool,
                     "kind": "image"})
    return rows
