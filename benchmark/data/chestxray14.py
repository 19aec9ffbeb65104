"""NIH ChestX-ray14 reader: `Data_Entry_2017.csv`, the official split lists, `images*/` folders.

Only the card's views (PA by default) are kept: AP films are mostly bedside images of sicker
patients and would let a method detect the view instead of the disease. `No Finding` is healthy,
any finding (`|`-separated) is diseased. The official `train_val_list.txt` / `test_list.txt`
are disjoint by patient; the protocol carves the training sets and validation from the first.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medad_bench.data.sources import check_table, require_files, source_table, walk_files
from medad_bench.errors import BenchError

from .cards import DatasetCard

NEEDED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")


def read(card: DatasetCard, root: Path) -> tuple[pd.DataFrame, dict]:
    require_files(root, ["Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt"],
                  dataset="ChestX-ray14", layout=card.layout,
                  allow_links=card.allow_links_outside_root)
    entries = _read_entries(root / "Data_Entry_2017.csv")
    views = list(card.settings.get("views", ["PA"]))
    other_views = int((~entries["View Position"].isin(views)).sum())
    entries = entries[entries["View Position"].isin(views)]
    pools = _official_pools(root)
    locations = _image_locations(root)
    rows = []
    unlisted = 0
    for name, findings, patient in zip(entries["Image Index"], entries["Finding Labels"],
                                       entries["Patient ID"], strict=True):
        pool = pools.get(name)
        if pool is None:
            unlisted += 1
            continue
        if name not in locations:
            raise BenchError(f"{root / 'Data_Entry_2017.csv'} names '{name}', which is in no "
                             f"images*/ folder under {root}. Unpack all twelve image archives "
                             f"there.")
        rows.append({"image_id": name, "path": locations[name],
                     "label": 0 if findings.strip() == "No Finding" else 1,
                     "subject_id": str(patient), "pool": pool, "kind": "image"})
    table = source_table(rows, origin=f"ChestX-ray14 entries in {root} (views {views})")
    check_table(table, root, origin=f"ChestX-ray14 tree {root}",
                allow_links=card.allow_links_outside_root)
    return table, {"dropped_views": other_views, "not_in_official_lists": unlisted}


def _read_entries(path: Path) -> pd.DataFrame:
    try:
        entries = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path} is not a readable CSV ({exc}). Re-download it.") from exc
    missing = [c for c in NEEDED_COLUMNS if c not in entries.columns]
    if missing:
        raise BenchError(f"{path} lacks the column(s) {', '.join(missing)}; is it the "
                         f"original Data_Entry_2017.csv?")
    # A cell of spaces is as blank as an empty one (it would become patient ' ').
    needed = entries[list(NEEDED_COLUMNS)].apply(lambda column: column.str.strip())
    entries[list(NEEDED_COLUMNS)] = needed
    empty = needed == ""
    if empty.to_numpy().any():
        row = int(empty.any(axis=1).to_numpy().argmax())
        column = empty.columns[empty.iloc[row].to_numpy().argmax()]
        raise BenchError(f"{path}, data row {row + 1}: the '{column}' cell is blank. Fix "
                         f"the row.")
    return entries


def _official_pools(root: Path) -> dict[str, str]:
    pools: dict[str, str] = {}
    for name, pool in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        for line in (root / name).read_text(encoding="utf-8").split():
            if line in pools:
                raise BenchError(f"{root / name}: '{line}' is also in the other split list. "
                                 f"Use the official lists unchanged.")
            pools[line] = pool
    return pools


def _image_locations(root: Path) -> dict[str, str]:
    """Image name -> path relative to root, over every images*/ folder (any depth)."""
    locations: dict[str, str] = {}
    for folder in sorted(root.glob("images*")):
        for path in (f for f in walk_files(folder) if f.suffix.lower() == ".png"):
            locations.setdefault(path.name, path.relative_to(root).as_posix())
    return locations
