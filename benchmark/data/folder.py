"""Generic reader: a folder per class, or a CSV manifest.

Folder per class: `<root>/normal/...` and `<root>/abnormal/...` (names set by the card's
`healthy_folders` / `diseased_folders`); every file there must be an image. The protocol carves
every split from the pool.

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

from benchmark.data.cards import DatasetCard
from benchmark.data.sources import (
    cell,
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
    require_files(root, [name for name, _ in classes], dataset=f"'{card.name}'",
                  layout=card.layout or "\n".join(f"  {n}/  images" for n, _ in classes),
                  allow_links=card.allow_links_outside_root)
    rule = _subject_rule(card)
    rows = []
    for name, label in classes:
        files = image_files(root / name, origin=f"class folder {root / name}")
        if not files:
            raise BenchError(f"class folder {root / name} holds no images: the class is "
                             f"empty. Put its images there or fix the card.")
        for path in files:
            relative = path.relative_to(root).as_posix()
            subject = _subject(rule, relative, origin=f"class folder {root / name}")
            rows.append({"image_id": relative, "path": relative, "label": label,
                         "subject_id": subject, "pool": "any", "kind": "image"})
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
