"""Brain MRI reader: a CSV of subjects plus one NIfTI volume or a folder of slices per subject.

`subjects.csv` has columns subject_id, label, split. Label values are the card's
`healthy_label` / `diseased_label`; split is train, val or test (or train_mixed / train_normal
to fix set A / set B by hand). Images are either `volumes/<subject>.nii[.gz]` (any orientation
and voxel size; cut into axial slices, empty ones dropped, when the cache is built) or
`slices/<subject>__NNN.png`. The subject is the unit: its slices share its label and split,
and evaluation averages slice scores per subject.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.data.cards import DatasetCard
from benchmark.data.sources import check_table, image_files, map_label, require_files, source_table
from benchmark.errors import BenchError

SPLITS = ("train", "val", "test", "train_mixed", "train_normal")
SLICE_SEPARATOR = "__"


def read(card: DatasetCard, root: Path) -> tuple[pd.DataFrame, dict]:
    require_files(root, ["subjects.csv"], dataset="brain-MRI", layout=card.layout)
    subjects = _read_subjects(card, root / "subjects.csv")
    if (root / "volumes").is_dir():
        rows = _volume_rows(root, subjects)
    elif (root / "slices").is_dir():
        rows = _slice_rows(root, subjects)
    else:
        raise BenchError(f"{root} has neither volumes/ nor slices/. Expected layout:\n"
                         f"{card.layout.rstrip()}")
    table = source_table(rows, origin=f"brain-MRI tree {root}")
    check_table(table, root, origin=f"brain-MRI tree {root}")
    return table, {}


def _read_subjects(card: DatasetCard, path: Path) -> pd.DataFrame:
    try:
        subjects = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path} is not a readable CSV ({exc}). Fix it.") from exc
    missing = {"subject_id", "label", "split"} - set(subjects.columns)
    if missing:
        raise BenchError(f"{path} lacks the column(s) {', '.join(sorted(missing))}; it needs "
                         f"subject_id,label,split.")
    _check_subject_once(subjects, path)
    label_map = {card.settings.get("healthy_label", "healthy"): 0,
                 card.settings.get("diseased_label", "diseased"): 1}
    labels, splits = [], []
    for number, (label, split) in enumerate(zip(subjects.label, subjects.split, strict=True)):
        origin = f"{path}, data row {number + 1}"
        labels.append(map_label(str(label).strip(), label_map, origin=origin))
        if str(split).strip() not in SPLITS:
            raise BenchError(f"{origin}: unknown split '{split}'. Use one of "
                             f"{', '.join(SPLITS)}.")
        splits.append(str(split).strip())
    return pd.DataFrame({"label": labels, "pool": splits},
                        index=subjects.subject_id.str.strip())


def _check_subject_once(subjects: pd.DataFrame, path: Path) -> None:
    counts = subjects.groupby(subjects.subject_id.str.strip())["split"].nunique()
    if (counts > 1).any():
        subject = counts[counts > 1].index[0]
        found = sorted(subjects.split[subjects.subject_id.str.strip() == subject].unique())
        raise BenchError(f"{path}: subject '{subject}' is in two splits ({', '.join(found)}). "
                         f"A subject's slices must all be in one split; fix the CSV.")
    duplicated = subjects.subject_id.str.strip().duplicated()
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
