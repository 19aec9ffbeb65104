"""What a reader hands to the cache builder: one row per source item, checked against the tree.

A reader turns a dataset tree (label files, folders, CSVs) into a *source table* with columns

    image_id    unique id of the image (or, for an MRI volume, of the subject's volume)
    path        file path relative to the data root
    label       0 healthy, 1 diseased
    subject_id  patient / subject (splits are disjoint by it)
    pool        where the published split puts it: "train", "val", "test", or "any" when the
                dataset has no official split (the protocol then carves all splits from it)
    kind        "image" (one file, one row in the cache) or "volume" (one NIfTI file, many slices)

`check_table` adds `size` (bytes) and `mtime_ns`, read while checking that each file exists,
and `outside_link`: the symbolic link through which a file leaves the data root ("" for none).

The helpers here turn every way a tree can be wrong into one message naming the file and the
problem: a path escaping the root, a missing file, a duplicate id, an unknown label, an empty
class, a file that is not an image.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from medad_bench.data.pixels import IMAGE_SUFFIXES, VOLUME_SUFFIXES
from medad_bench.errors import BenchError

SOURCE_COLUMNS = ("image_id", "path", "label", "subject_id", "pool", "kind")
LABEL_NAMES = {0: "healthy", 1: "diseased"}


def source_table(rows: Iterable[dict], *, origin: str) -> pd.DataFrame:
    """Build the table from row dicts; an empty result is an error (wrong root or empty lists)."""
    table = pd.DataFrame(list(rows), columns=list(SOURCE_COLUMNS))
    if table.empty:
        raise BenchError(f"{origin} lists no images. Check that the data root is the right "
                         f"folder and that the label files are not empty.")
    table["label"] = table["label"].astype(int)
    return table


def resolve_inside(root: Path, relative: str, *, origin: str) -> Path:
    """`root/relative`, refusing absolute paths and `..` that would leave the data root."""
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise BenchError(f"{origin}: the file name '{relative}' points outside the folder it "
                         f"must be in ({root}/). Label files must name images inside the tree; "
                         f"fix that line.")
    return root / candidate


def require_files(root: Path, required: Iterable[str], *, dataset: str, layout: str,
                  allow_links: bool = False) -> None:
    """A wrong root fails here, listing what is missing and the layout it should have. A label
    file or folder that is a link out of the root fails too, unless links are allowed."""
    required = list(required)
    missing = [name for name in required if not (root / name).exists()]
    if missing:
        raise BenchError(
            f"{root} does not look like a {dataset} tree: {', '.join(missing)} not found.\n"
            f"Expected layout:\n{layout.rstrip()}\nPoint --data-root at the folder holding it."
        )
    if not allow_links:
        for name in required:
            link = link_outside(root, name)
            if link:
                raise outside_link_error(f"{dataset} tree {root}", root, name, link, count=1)


#: Where a link out of the data root is allowed besides the card: `bench run` / `bench data`
#: set it for --allow-external-links, and worker processes inherit it.
ALLOW_LINKS_ENV = "BENCH_ALLOW_EXTERNAL_LINKS"


def link_outside(root: Path, relative: str) -> str:
    """'LINK -> TARGET' for the first symbolic link on the way from `root` to `root/relative`
    whose target lies outside the root (links inside the tree are fine); "" when none."""
    base = os.path.realpath(root)
    current = root
    for part in Path(relative).parts:
        current = current / part
        if current.is_symlink():
            target = os.path.realpath(current)
            if not _is_within(target, base):
                return f"{current.relative_to(root).as_posix()} -> {target}"
    return ""


def outside_link_error(origin: str, root: Path, relative: str, link: str, *,
                       count: int) -> BenchError:
    more = f" ({count} files in all)" if count > 1 else ""
    return BenchError(
        f"{origin}: '{relative}' is reached through the symbolic link {link}, outside the "
        f"data root {root}{more}. The suite reads only files inside the root unless told "
        f"otherwise: copy the files into the tree, or, if the tree links into shared storage "
        f"on purpose, set allow_links_outside_root = true in the dataset card, or pass "
        f"--allow-external-links (or set {ALLOW_LINKS_ENV}=1).")


def _is_within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def cell(value: object) -> str:
    """A CSV cell as text, blank ("") for an empty one; read CSVs with keep_default_na=False
    so that a blank cell is "" rather than NaN (whose text, 'nan', would pass for a value)."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip()


def map_label(raw: str, label_map: Mapping[str, int | None], *, origin: str) -> int | None:
    """0/1 for a known label, None for one the card drops on purpose; unknown ones stop."""
    if raw in label_map:
        return label_map[raw]
    known = ", ".join(sorted(label_map))
    raise BenchError(f"{origin}: unknown label '{raw}'. Known labels: {known}. Add it to the "
                     f"card's label map (or fix the label file).")


def check_table(table: pd.DataFrame, root: Path, *, origin: str,
                allow_links: bool = False) -> None:
    """Files exist and are images; ids are unique; both classes are present; no file is reached
    through a link out of the root unless `allow_links`. Adds the columns `size`, `mtime_ns`
    and `outside_link`, read in the same pass, for the cache's tree fingerprint."""
    _check_duplicates(table, origin=origin)
    table["size"], table["mtime_ns"], table["outside_link"] = _file_stats(table, root,
                                                                          origin=origin)
    outside = table.outside_link != ""
    if outside.any() and not allow_links:
        first = table[outside].iloc[0]
        raise outside_link_error(origin, root, first.path, first.outside_link,
                                 count=int(outside.sum()))
    _check_classes(table, origin=origin)


def _check_duplicates(table: pd.DataFrame, *, origin: str) -> None:
    duplicated = table.image_id[table.image_id.duplicated()]
    if len(duplicated):
        raise BenchError(f"{origin}: image id '{duplicated.iloc[0]}' appears more than once "
                         f"({len(duplicated)} duplicate(s)). Each image must be listed once; "
                         f"remove the duplicate lines.")


def _file_stats(table: pd.DataFrame, root: Path, *,
                origin: str) -> tuple[list[int], list[int], list[str]]:
    """Size, modification time (ns) and outside link of every file. One lstat per file: the
    real folder of each parent is resolved once, and only a file that is itself a link is
    resolved on its own."""
    base = os.path.realpath(root)
    real_parents: dict[str, str] = {}
    missing: list[str] = []
    sizes: list[int] = []
    times: list[int] = []
    links: list[str] = []
    for path, kind in zip(table.path, table.kind, strict=True):
        suffixes = VOLUME_SUFFIXES if kind == "volume" else IMAGE_SUFFIXES
        if not any(path.lower().endswith(s) for s in suffixes):
            raise BenchError(f"{origin}: '{path}' is not an image file (expected one of "
                             f"{', '.join(suffixes)}). Remove it or convert it.")
        full = root / path
        try:
            info = os.lstat(full)
            if stat.S_ISLNK(info.st_mode):
                real = os.path.realpath(full)
                info = os.stat(full)
            else:
                parent = os.path.dirname(path)
                if parent not in real_parents:
                    real_parents[parent] = os.path.realpath(root / parent)
                real = os.path.join(real_parents[parent], full.name)
        except (FileNotFoundError, NotADirectoryError):
            info = None
        if info is None or not stat.S_ISREG(info.st_mode):
            missing.append(path)
            continue
        sizes.append(info.st_size)
        times.append(info.st_mtime_ns)
        links.append("" if _is_within(real, base) else link_outside(root, path))
    if missing:
        raise BenchError(f"{origin} names {len(missing)} image(s) that are not in {root}, "
                         f"first: '{missing[0]}'. Unpack the missing images there, or fix the "
                         f"label file.")
    return sizes, times, links


def _check_classes(table: pd.DataFrame, *, origin: str) -> None:
    for label, name in LABEL_NAMES.items():
        if not (table.label == label).any():
            raise BenchError(f"{origin}: no {name} images found, so the class is empty. "
                             f"Anomaly detection needs both; check the labels and the label map.")


def walk_files(folder: Path) -> list[Path]:
    """Every file under `folder` (sorted), following linked subfolders as a user expects:
    `Path.rglob` before Python 3.13 skips them without a word, so their images would silently
    drop out of the dataset. Paths keep the link in them, so `check_table` sees where a file
    leaves the root; a folder reached twice (a link to a folder already walked, or a loop) is
    walked once."""
    files: list[Path] = []
    seen: set[str] = set()
    for current, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        files += [Path(current) / name for name in filenames]
    return sorted(path for path in files if path.is_file())


def image_files(folder: Path, *, origin: str) -> list[Path]:
    """Every image in a folder tree (sorted); any other non-hidden file there is an error."""
    files: list[Path] = []
    for path in walk_files(folder):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # .DS_Store and friends
        if not path.name.lower().endswith(IMAGE_SUFFIXES):
            raise BenchError(f"{origin}: {path} is not an image file (expected one of "
                             f"{', '.join(IMAGE_SUFFIXES)}). Move it out of the image folders.")
        files.append(path)
    return files
