"""COVIDx (COVID-Net) reader: `train.txt` / `test.txt` label files and `train/`, `test/` images.

Each label-file line is `patient_id filename label source`, space separated. Recent releases
label `positive` / `negative`; older ones `COVID-19` / `normal` / `pneumonia`. Which label means
what is the card's `label_map` (pneumonia is neither healthy nor COVID-positive, so the shipped
card drops it and the run reports how many were dropped).

The published HealthyGAN split can be reproduced exactly: put its five pickled lists (`train_pos`,
`train_neg_mixed`, `train_neg`, `test_pos`, `test_neg`, file names relative to `train/` or
`test/`) in a folder and name it in the card (`split_lists`) or as `<root>/split_lists/`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pandas as pd

from medad_bench.data.cards import DatasetCard
from medad_bench.data.sources import (
    check_table,
    map_label,
    require_files,
    resolve_inside,
    source_table,
)
from medad_bench.errors import BenchError

DEFAULT_LABEL_MAP = {"positive": 1, "negative": 0, "COVID-19": 1, "normal": 0,
                     "pneumonia": None}
#: The HealthyGAN lists and the split each feeds.
PUBLISHED_LISTS = {"train_pos": ("train", "train_mixed", 1),
                   "train_neg_mixed": ("train", "train_mixed", 0),
                   "train_neg": ("train", "train_normal", 0),
                   "test_pos": ("test", "test", 1),
                   "test_neg": ("test", "test", 0)}


def read(card: DatasetCard, root: Path) -> tuple[pd.DataFrame, dict]:
    """The source table of a COVIDx tree, and what was dropped (for the run's notes)."""
    allow_links = card.allow_links_outside_root
    require_files(root, ["train.txt", "train"], dataset="COVIDx", layout=card.layout,
                  allow_links=allow_links)
    test_file = "test.txt" if (root / "test.txt").exists() else "val.txt"
    require_files(root, [test_file, "test"], dataset="COVIDx", layout=card.layout,
                  allow_links=allow_links)
    label_map = {**DEFAULT_LABEL_MAP, **card.settings.get("label_map", {})}
    rows: list[dict] = []
    dropped: dict[str, int] = {}
    for pool, name, folder in (("train", "train.txt", "train"), ("test", test_file, "test")):
        for row in _parse_label_file(root / name, folder, label_map, dropped):
            rows.append({**row, "pool": pool})
    table = source_table(rows, origin=f"COVIDx label files in {root}")
    # The same file name can appear in train/ and test/: ids carry the folder.
    check_table(table, root, origin=f"COVIDx tree {root}", allow_links=allow_links)
    return table, {"dropped_labels": dropped}


def _parse_label_file(path: Path, folder: str, label_map: dict,
                      dropped: dict[str, int]) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        origin = f"{path}, line {number}"
        if len(parts) < 3:
            raise BenchError(f"{origin}: expected 'patient_id filename label source', got "
                             f"'{line.strip()}'. Fix or remove the line.")
        patient, filename, raw_label = parts[0], parts[1], parts[2]
        label = map_label(raw_label, label_map, origin=origin)
        if label is None:
            dropped[raw_label] = dropped.get(raw_label, 0) + 1
            continue
        relative = resolve_inside(Path(folder), filename, origin=origin).as_posix()
        rows.append({"image_id": relative, "path": relative, "label": label,
                     "subject_id": patient, "kind": "image"})
    return rows


def published_split(card: DatasetCard, root: Path, table: pd.DataFrame) -> pd.Series | None:
    """image_id -> split from the HealthyGAN lists, when the card or the tree provides them."""
    folder = _lists_folder(card, root)
    if folder is None:
        return None
    assigned: dict[str, str] = {}
    for list_name, (subfolder, split, label) in PUBLISHED_LISTS.items():
        names = read_name_list(_list_file(folder, list_name))
        for name in names:
            image_id = resolve_inside(Path(subfolder), name, origin=f"{folder}/{list_name}")
            image_id = image_id.as_posix()
            if image_id in assigned:
                raise BenchError(f"published split {folder}: '{name}' is in two lists. "
                                 f"Re-download the lists.")
            assigned[image_id] = split
            _check_published_label(table, image_id, label, folder / list_name)
    return pd.Series(assigned, name="split")


def _lists_folder(card: DatasetCard, root: Path) -> Path | None:
    configured = card.settings.get("split_lists")
    folder = resolve_inside(root, configured, origin=str(card.path)) if configured \
        else root / "split_lists"
    if not folder.is_dir():
        if configured:
            raise BenchError(f"dataset card {card.path} names split_lists = '{configured}', but "
                             f"{folder} does not exist. Download the published lists there "
                             f"or remove the setting.")
        return None
    return folder


def _list_file(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.pkl", folder / f"{name}.pickle"):
        if candidate.is_file():
            return candidate
    raise BenchError(f"published split folder {folder} lacks the list '{name}' (expected "
                     f"{', '.join(PUBLISHED_LISTS)}). Download all five lists.")


def _check_published_label(table: pd.DataFrame, image_id: str, label: int, origin: Path) -> None:
    match = table.label[table.image_id == image_id]
    if match.empty:
        raise BenchError(f"published split list {origin} names '{image_id}', which is not in "
                         f"the label files (or has a dropped label). Use the lists that match "
                         f"your COVIDx release.")
    if int(match.iloc[0]) != label:
        raise BenchError(f"published split list {origin} puts '{image_id}' in a "
                         f"{'positive' if label else 'healthy'} list, but the label file says "
                         f"otherwise. Use the lists that match your COVIDx release.")


class _ListsOnly(pickle.Unpickler):
    """Unpickling runs code; a list of strings needs no globals at all, so allow none."""

    def find_class(self, module: str, name: str) -> type:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_name_list(path: Path) -> list[str]:
    """A pickled list of file names, loaded without running anything it might contain."""
    try:
        with path.open("rb") as handle:
            value = _ListsOnly(handle).load()
    except Exception as exc:  # noqa: BLE001 - any failure is a bad file
        raise BenchError(f"{path} is not a pickled list of file names ({exc}). "
                         f"Re-download it.") from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BenchError(f"{path} must hold a list of file names (strings); it holds "
                         f"{type(value).__name__}. Re-download it.")
    return value
