"""BMAD reader (Bao et al., CVPRW 2024; github.com/DorisBao/BMAD): a folder per split and class.

    train/good/              healthy images only: BMAD's training set, the suite's set B
    valid/good|Ungood/       the labelled validation split (`val/` in some of the authors' trees)
    test/good|Ungood/        the test split

Image-level sets (RSNA, OCT2017, Camelyon16) keep a class's images in the class folder itself.
Pixel-level sets (BraTS2021 slices, liver CT, RESC) put them in `img/` and the masks, under the
same file names, in `label/` (the authors' BraTS2021 tree keeps `train/good/` flat, their README
shows `train/good/img/`: both are read). The masks are the authors' `plt.imsave(seg,
cmap="bone")` renderings, RGBA on a black background: any pixel that is not black is lesion.

The card's `[bmad]` section: `masks = true` makes the set pixel-level (every `Ungood` image needs
its mask; a `good` image without one gets an empty mask); `subject_pattern` names a file's
patient as in the folder reader (BraTS2021 slices are `<subject>_<slice>.png`). BMAD publishes
its split and no unlabelled pool: the folders are used as given and set A (`train_mixed`) is
empty, so methods that train on unlabelled images cannot run on a BMAD set.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from medad_bench.data.cards import DatasetCard
from medad_bench.data.folder import _subject, _subject_rule
from medad_bench.data.sources import (
    check_table,
    image_files,
    link_outside,
    outside_link_error,
    source_table,
)
from medad_bench.errors import BenchError

#: BMAD's class folders and the label each means.
CLASSES = (("good", 0), ("Ungood", 1))
#: Split folder (alternatives, first found wins) -> the suite's split, and the classes it has.
SPLIT_FOLDERS = ((("train",), "train_normal", ("good",)),
                 (("valid", "val"), "val", ("good", "Ungood")),
                 (("test",), "test", ("good", "Ungood")))
#: Columns the mask adds to a source table (read by the cache builder and its fingerprint).
MASK_COLUMNS = ("mask", "mask_size", "mask_mtime_ns")


def read(card: DatasetCard, root: Path) -> tuple[pd.DataFrame, dict]:
    """The source table of a BMAD tree (pools are the published splits) and nothing dropped."""
    with_masks = _masks_setting(card)
    rule = _subject_rule(card)
    rows: list[dict] = []
    masks: dict[str, str] = {}
    for names, split, classes in SPLIT_FOLDERS:
        folder = _split_folder(card, root, names)
        if split == "train_normal" and (folder / "Ungood").exists():
            raise BenchError(f"{folder / 'Ungood'}: BMAD's train/ holds healthy images only "
                             f"(train/good). Move those images out, or use the folder format.")
        for name in classes:
            label = dict(CLASSES)[name]
            for image, mask in _class_files(card, root, folder / name, with_masks, label):
                relative = image.relative_to(root).as_posix()
                rows.append({"image_id": relative, "path": relative, "label": label,
                             "subject_id": _subject(rule, relative, origin=str(folder / name)),
                             "pool": split, "kind": "image"})
                if mask is not None:
                    masks[relative] = mask.relative_to(root).as_posix()
    table = source_table(rows, origin=f"BMAD tree {root}")
    check_table(table, root, origin=f"BMAD tree {root}",
                allow_links=card.allow_links_outside_root)
    if with_masks:
        attach_masks(table, root, masks, allow_links=card.allow_links_outside_root)
    return table, {}


def published_split(card: DatasetCard, root: Path, source: pd.DataFrame) -> pd.Series:
    """BMAD's split is its folders: every image stays where the authors put it."""
    return pd.Series(source.pool.to_numpy(), index=source.image_id.to_numpy(), name="split")


def _masks_setting(card: DatasetCard) -> bool:
    value = card.settings.get("masks", False)
    if not isinstance(value, bool):
        raise BenchError(f"dataset card {card.path}: [bmad] masks must be true (pixel-level: "
                         f"label/ masks beside img/) or false, got {value!r}.")
    return value


def _split_folder(card: DatasetCard, root: Path, names: tuple[str, ...]) -> Path:
    found = [root / n for n in names if (root / n).is_dir()]
    if len(found) > 1:
        raise BenchError(f"{root} has both {' and '.join(f'{n}/' for n in names)}: BMAD's "
                         f"validation split is one folder. Keep one of them.")
    if not found:
        wanted = " or ".join(f"{n}/" for n in names)
        raise BenchError(f"{root} does not look like a BMAD tree: {wanted} not found.\n"
                         f"Expected layout:\n{card.layout.rstrip()}\n"
                         f"Point --data-root at the folder holding it.")
    return found[0]


def _class_files(card: DatasetCard, root: Path, folder: Path, with_masks: bool,
                 label: int) -> list[tuple[Path, Path | None]]:
    """(image, mask or None) for every image of one class folder."""
    if not folder.is_dir():
        raise BenchError(f"{root} does not look like a BMAD tree: "
                         f"{folder.relative_to(root).as_posix()}/ not found.\n"
                         f"Expected layout:\n{card.layout.rstrip()}\n"
                         f"Point --data-root at the folder holding it.")
    images_folder = folder / "img" if (folder / "img").is_dir() else folder
    labels = folder / "label"
    if images_folder == folder and labels.exists():
        raise BenchError(f"{folder} has label/ but no img/: a pixel-level BMAD class keeps "
                         f"its images in img/ and their masks in label/. Move the images "
                         f"into img/.")
    images = image_files(images_folder, origin=f"BMAD class folder {images_folder}")
    if not images:
        raise BenchError(f"BMAD class folder {images_folder} holds no images: the class is "
                         f"empty. Unpack the dataset completely.")
    if not with_masks:
        return [(image, None) for image in images]
    if label == 1 and not labels.is_dir():
        raise BenchError(f"{folder} has no label/ folder, but the card {card.path} says the "
                         f"set is pixel-level (masks = true): every Ungood image needs its "
                         f"mask in label/. Unpack the masks, or set masks = false.")
    pairs = []
    for image in images:
        mask = labels / image.relative_to(images_folder)
        if not mask.is_file():
            if label == 1:
                raise BenchError(f"the diseased image {image} has no mask: "
                                 f"{mask.relative_to(root).as_posix()} is missing. Pixel "
                                 f"metrics need a mask for every Ungood image; unpack it, or "
                                 f"set masks = false in {card.path}.")
            mask = None  # a healthy image without a mask: its mask is empty
        pairs.append((image, mask))
    return pairs


def attach_masks(table: pd.DataFrame, root: Path, masks: dict[str, str], *,
                 allow_links: bool) -> None:
    """Add `mask` (path relative to root, "" for none: an empty mask), `mask_size` and
    `mask_mtime_ns` (the cache's tree fingerprint sees an edited mask). A mask reached through
    a link out of the root is refused as an image would be."""
    paths = table.image_id.map(masks).fillna("")
    sizes, times = [], []
    for relative in paths:
        if not relative:
            sizes.append(0)
            times.append(0)
            continue
        if not allow_links:
            link = link_outside(root, relative)
            if link:
                raise outside_link_error(f"mask tree {root}", root, relative, link, count=1)
        info = os.stat(root / relative)
        sizes.append(info.st_size)
        times.append(info.st_mtime_ns)
    table["mask"], table["mask_size"], table["mask_mtime_ns"] = list(paths), sizes, times
