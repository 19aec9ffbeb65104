"""Brain MRI reader: a CSV of subjects plus one NIfTI volume or a folder of slices per subject.

`subjects.csv` has columns subject_id, label, split. Label values are the card's
`healthy_label` / `diseased_label`; split is train, val or test (or train_mixed / train_normal
to fix set A / set B by hand); a blank split leaves the subject to the protocol, which carves it
into whichever split its counts need. A blank subject_id or label is an error, and so is a
subject_id that is a path rather than a name. Images are either `volumes/<subject>.nii[.gz]`
(any orientation and voxel size; cut into axial slices, empty ones dropped, when the cache is
built) or `slices/<subject>__NNN.png`. The subject is the unit: its slices share its label and
split, and evaluation averages slice scores per subject.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medad_bench.data.cards import DatasetCard
from medad_bench.data.sources import (
    cell,
    check_table,
    image_files,
    map_label,
    require_files,
    source_table,
)
from medad_bench.errors import BenchError

SPLITS = ("train", "val", "test", "train_mixed", "train_normal")
SLICE_SEPARATOR = "__"


def read(card: DatasetCard, root: Path) -> tuple[pd.DataFrame, dict]:
    allow_links = card.allow_links_outside_root
    require_files(root, ["subjects.csv"], dataset="brain-MRI", layout=card.layout,
                  allow_links=allow_links)
    subjects = _read_subjects(card, root / "subjects.csv")
    if (root / "volumes").is_dir():
        rows = _volume_rows(root, subjects)
    elif (root / "slices").is_dir():
        rows = _slice_rows(root, subjects)
    else:
        raise BenchError(f"{root} has neither volumes/ nor slices/. Expected layout:\n"
                         f"{card.layout.rstrip()}")
    table = source_table(rows, origin=f"brain-MRI tree {root}")
    check_table(table, root, origin=f"brain-MRI tree {root}", allow_links=allow_links)
    return table, {}


def _read_subjects(card: DatasetCard, path: Path) -> pd.DataFrame:
    try:
        subjects = pd.read_csv(path, dtype=str, skipinitialspace=True, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path} is not a readable CSV ({exc}). Fix it.") from exc
    missing = {"subject_id", "label", "split"} - set(subjects.columns)
    if missing:
        raise BenchError(f"{path} lacks the column(s) {', '.join(sorted(missing))}; it needs "
                         f"subject_id,label,split.")
    subjects = subjects.map(cell)
    label_map = {card.settings.get("healthy_label", "healthy"): 0,
                 card.settings.get("diseased_label", "diseased"): 1}
    labels, splits = [], []
    for number, (subject, label, split) in enumerate(
            zip(subjects.subject_id, subjects.label, subjects.split, strict=True), start=1):
        origin = f"{path}, data row {number}"
        _check_subject_name(subject, origin)
        if not label:
            raise BenchError(f"{origin}: subject '{subject}' has no label. Give it "
                             f"{' or '.join(label_map)}, or remove the row.")
        labels.append(map_label(label, label_map, origin=origin))
        if split and split not in SPLITS:
            raise BenchError(f"{origin}: unknown split '{split}'. Use one of "
                             f"{', '.join(SPLITS)}, or leave it blank for the protocol to "
                             f"choose.")
        splits.append(split or "any")
    _check_subject_once(subjects, path)
    return pd.DataFrame({"label": labels, "pool": splits}, index=subjects.subject_id)


def _check_subject_name(subject: str, origin: str) -> None:
    """The subject names its volume file (volumes/<subject>.nii.gz), so it must be a plain
    file name: a path such as '../../x' would read a volume outside the data root."""
    if not subject:
        raise BenchError(f"{origin}: the subject_id is blank. Give every row its subject, or "
                         f"remove the row.")
    if "/" in subject or "\\" in subject or subject in (".", ".."):
        where = ", outside the data root" if ".." in subject.replace("\\", "/").split("/") \
            else ""
        raise BenchError(f"{origin}: subject_id '{subject}' is a path, not a name (its volume "
                         f"would be volumes/{subject}.nii.gz{where}). Subject ids must be plain "
                         f"names without '/', '\\' or '..'; fix the row.")


def _check_subject_once(subjects: pd.DataFrame, path: Path) -> None:
    counts = subjects.groupby(subjects.subject_id)["split"].nunique()
    if (counts > 1).any():
        subject = counts[counts > 1].index[0]
        found = sorted(subjects.split[subjects.subject_id == subject].unique())
        raise BenchError(f"{path}: subject '{subject}' is in two splits ({', '.join(found)}). "
                         f"A subject's slices must all be in one split; fix the CSV.")
    duplicated = subjects.subject_id.duplicated()
    if duplicated.any():
        raise BenchError(f"{path}: subject '{subjects.subject_id[duplicated].iloc[0]}' is "
                         f"listed twice. List each subject once.")


def _volume_rows(root: Path, subjects: pd.DataFrame) -> list[dict]:
    rows = []
    for subject, info in subjects.iterrows():
        found = [root / "volumes" / f"{subject}{s}" for s in (".nii.gz", ".nii")]
        path = next((p for p in found if p.is_file()), None)
        if path is None:
            raise BenchError(f"{root / 'subjects.csv'} lists subject '{subject}', but "
                             f"volumes/{subject}.nii.gz (or .nii) is missing. Add the volume "
                             f"or remove the subject.")
        rows.append({"image_id": subject, "path": path.relative_to(root).as_posix(),
                     "label": info.label, "subject_id": subject, "pool": info.pool,
                     "kind": "volume"})
    return rows


def _slice_rows(root: Path, subjects: pd.DataFrame) -> list[dict]:
    rows = []
    for path in image_files(root / "slices", origin=f"brain-MRI slices in {root}"):
        subject, separator, _ = path.stem.rpartition(SLICE_SEPARATOR)
        if not separator:
            raise BenchError(f"{path}: slice files must be named <subject>__NNN.png. "
                             f"Rename it.")
        if subject not in subjects.index:
            raise BenchError(f"{path}: subject '{subject}' is not in subjects.csv. Add it "
                             f"(with label and split) or remove its slices.")
        info = subjects.loc[subject]
        rows.append({"image_id": path.stem, "path": path.relative_to(root).as_posix(),
                     "label": info.label, "subject_id": subject, "pool": info.pool,
                     "kind": "image"})
    without = sorted(set(subjects.index) - {r["subject_id"] for r in rows})
    if without:
        raise BenchError(f"{root / 'subjects.csv'} lists subject '{without[0]}' "
                         f"({len(without)} in all) with no slices in slices/. Add the slices "
                         f"or remove the subject.")
    return rows
