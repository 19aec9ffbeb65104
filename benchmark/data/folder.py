"""Generic reader: a folder per class, or a CSV manifest.

Folder per class: `<root>/normal/...` and `<root>/abnormal/...` (names set by the card's
`healthy_folders` / `diseased_folders`); every file there must be an image. The protocol carves
every split from the pool.

Split folders (card `split_folders = ["train", "val", "test"]`): the class folders sit inside
each split folder, `<root>/<split>/<class>/...` (Kermany's chest X-rays on Kaggle:
`train/NORMAL`, `val/PNEUMONIA`, ...); each image's pool is its split folder's name (one of
train, val, test), from which the protocol draws that split. Subjects are named within their
split folder (`train/person1`), since such releases number patients per folder.

CSV manifest (card `manifest = "labels.csv"`): columns path, label and optionally split
(train / val / test / train_mixed / train_normal) and subject_id. A blank split cell means "let
the protocol choose"; a blank path or label is an error.

Subjects (splits never share one): the CSV's subject_id where given; else the first group (or
the whole match) of the card's `subject_pattern`, a regular expression searched in the file
name, e.g. `subject_pattern = "^(patient\\d+)_"` makes patient0042_a.png and patient0042_b.png
one subject. A file name the pattern does not match is an error. Without a pattern every file
is its own subject (its path), which is right only when each patient has one image.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from medad_bench.data.cards import DatasetCard
from medad_bench.data.sources import (
    cell,
    check_table,
    image_files,
    map_label,
    require_files,
    resolve_inside,
    source_table,
)
from medad_bench.errors import BenchError

DEFAULT_LABEL_MAP = {"normal": 0, "healthy": 0, "0": 0, "abnormal": 1, "diseased": 1, "1": 1}
SPLITS = ("train", "val", "test", "train_mixed", "train_normal")
#: What `split_folders` may name: the pools of a published split (benchmark/data/protocol.py).
SPLIT_FOLDERS = ("train", "val", "test")


def read(card: DatasetCard, root: Path) -> tuple[pd.DataFrame, dict]:
    manifest = card.settings.get("manifest")
    rows = _csv_rows(card, root, manifest) if manifest else _folder_rows(card, root)
    table = source_table(rows, origin=f"dataset tree {root}")
    check_table(table, root, origin=f"dataset tree {root}",
                allow_links=card.allow_links_outside_root)
    return table, {}


def _subject_rule(card: DatasetCard) -> re.Pattern | None:
    pattern = card.settings.get("subject_pattern")
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except (re.error, TypeError) as exc:
        raise BenchError(f"dataset card {card.path}: subject_pattern {pattern!r} is not a "
                         f"regular expression ({exc}). Fix the card.") from exc


def _subject(rule: re.Pattern | None, relative: str, *, origin: str) -> str:
    """The subject a file belongs to: the pattern's first group (or whole match) in its
    name, or, without a pattern, the file itself."""
    if rule is None:
        return relative
    name = relative.rsplit("/", 1)[-1]
    match = rule.search(name)
    subject = (match.group(1) if rule.groups else match.group(0)) if match else None
    if not subject:
        raise BenchError(f"{origin}: the file name '{name}' does not match the card's "
                         f"subject_pattern '{rule.pattern}', so its patient is unknown. Rename "
                         f"the file, widen the pattern, or give its subject_id in a CSV "
                         f"manifest.")
    return subject


def _folder_rows(card: DatasetCard, root: Path) -> list[dict]:
    classes = [(name, 0) for name in card.settings.get("healthy_folders", ["normal"])]
    classes += [(name, 1) for name in card.settings.get("diseased_folders", ["abnormal"])]
    splits = _split_folders(card)
    layout = card.layout or "\n".join(f"  {n}/  images" for n, _ in classes)
    if splits:  # the split folders first: a wrong root names them, not every class folder
        require_files(root, splits, dataset=f"'{card.name}'", layout=layout,
                      allow_links=card.allow_links_outside_root)
    places = [(f"{split}/{name}" if split else name, label, split or "any")
              for split in (splits or [""]) for name, label in classes]
    require_files(root, [place for place, _, _ in places], dataset=f"'{card.name}'",
                  layout=layout, allow_links=card.allow_links_outside_root)
    rule = _subject_rule(card)
    rows = []
    for place, label, pool in places:
        rows += _class_rows(root, place, label, pool, rule)
    return rows


def _split_folders(card: DatasetCard) -> list[str]:
    """The card's `split_folders` (each one of the pools train, val, test); [] without it."""
    splits = card.settings.get("split_folders", [])
    allowed = ", ".join(SPLIT_FOLDERS)
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise BenchError(f"dataset card {card.path}: split_folders must be a list of folder "
                         f"names ({allowed}), got {splits!r}. Fix the card.")
    unknown = [s for s in splits if s not in SPLIT_FOLDERS]
    if unknown or len(set(splits)) < len(splits):
        problem = (f"unknown split folder(s) {', '.join(unknown)}" if unknown
                   else f"a split folder is named twice ({', '.join(splits)})")
        raise BenchError(f"dataset card {card.path}: {problem}. split_folders names the "
                         f"folders of the published split, each one of {allowed} (the pool "
                         f"its images are drawn from). Rename the folder or fix the card.")
    return splits


def _class_rows(root: Path, place: str, label: int, pool: str,
                rule: re.Pattern | None) -> list[dict]:
    """One row per image of the class folder `root/place`; an empty one is an error."""
    folder = root / place
    files = image_files(folder, origin=f"class folder {folder}")
    if not files:
        raise BenchError(f"class folder {folder} holds no images: the class is "
                         f"empty. Put its images there or fix the card.")
    rows = []
    for path in files:
        relative = path.relative_to(root).as_posix()
        subject = _subject(rule, relative, origin=f"class folder {folder}")
        if pool != "any":
            # A published split numbers its patients per folder (Kermany's train/ and test/
            # both hold a `person1`): the subject is the patient within its split folder, so
            # the published split stands as published.
            subject = f"{pool}/{subject}"
        rows.append({"image_id": relative, "path": relative, "label": label,
                     "subject_id": subject, "pool": pool, "kind": "image"})
    return rows


def _csv_rows(card: DatasetCard, root: Path, manifest: str) -> list[dict]:
    path = resolve_inside(root, manifest, origin=str(card.path))
    require_files(root, [manifest], dataset=f"'{card.name}'", layout=card.layout,
                  allow_links=card.allow_links_outside_root)
    try:
        table = pd.read_csv(path, dtype=str, skipinitialspace=True, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path} is not a readable CSV ({exc}). Fix it.") from exc
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise BenchError(f"{path} lacks the column(s) {', '.join(sorted(missing))}.")
    label_map = {**DEFAULT_LABEL_MAP, **card.settings.get("label_map", {})}
    rule = _subject_rule(card)
    rows = []
    for number, record in enumerate(table.to_dict("records"), start=1):
        origin = f"{path}, data row {number}"
        record = {key: cell(value) for key, value in record.items()}
        for column in ("path", "label"):
            if not record[column]:
                raise BenchError(f"{origin}: the {column} is blank. Fill it in or remove the "
                                 f"row.")
        relative = resolve_inside(Path("."), record["path"], origin=origin).as_posix()
        pool = record.get("split") or "any"
        if pool not in (*SPLITS, "any"):
            raise BenchError(f"{origin}: unknown split '{pool}'. Use one of {', '.join(SPLITS)}"
                             f", or leave it blank for the protocol to choose.")
        subject = record.get("subject_id") or _subject(rule, relative, origin=origin)
        rows.append({"image_id": relative, "path": relative,
                     "label": map_label(record["label"], label_map, origin=origin),
                     "subject_id": subject, "pool": pool, "kind": "image"})
    return rows
