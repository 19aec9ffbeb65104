"""MedMNIST reader (Yang et al., Scientific Data 2023; medmnist.com): one `.npz` per set and size.

A MedMNIST file is read exactly as published: `NAME.npz` at 28 px, `NAME_64.npz`,
`NAME_128.npz`, `NAME_224.npz` for MedMNIST+; keys `train_images`, `val_images`, `test_images`
(uint8, (N, H, W) grey or (N, H, W, 3) RGB) and `train_labels`, ... ((N, 1) class index, or
(N, K) 0/1 for a multi-label set such as ChestMNIST). The official metadata (label names,
counts, file names, MD5s) comes from the `medmnist` package's `INFO`, not from a copy here.

Card settings (section [medmnist]):

    flag            MedMNIST's name of the set, e.g. "pneumoniamnist" (a key of medmnist.INFO)
    size            the published file's side: 28, 64, 128 or 224 (picks the file name)
    file            optional: another file name inside the data root
    healthy_labels  class indices that are healthy (single-label sets; the rest are diseased).
                    Multi-label sets: an image is healthy when none of its findings is set.

The official splits become the pools (train, val, test); the card's protocol counts do the
rest (benchmark/data/protocol.py). MedMNIST has no patient ids: each image is its own subject,
which is all a user can do with these files and is said in every card.

Images are streamed from the zip member a chunk at a time, so a 224 px ChestMNIST (5.6 GB of
pixels) is never held in memory whole.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medad_bench.data import pixels
from medad_bench.data.build import BuildResult, Decoding
from medad_bench.data.cards import DatasetCard
from medad_bench.data.images import quantize, storage_dtype
from medad_bench.data.sources import link_outside, outside_link_error
from medad_bench.disk import preallocated_npy
from medad_bench.errors import BenchError

SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)
#: Rows decoded per read from a zip member: bounds memory at the largest size (224 px RGB:
#: 150 KB a row, 77 MB a chunk).
CHUNK_ROWS = 512
DOWNLOAD_HINT = ("Get it with `bench data download --dataset {card}` where the internet is "
                 "reachable (MedMNIST's files are on zenodo.org/records/10519652), or copy "
                 "the file there by hand.")


def official_info(flag: str, *, origin: str) -> dict[str, Any]:
    """medmnist.INFO[flag]: the official label names, counts, file names and MD5s."""
    try:
        from medmnist.info import INFO
    except ImportError as exc:  # pragma: no cover - a dependency of the suite
        raise BenchError("the MedMNIST reader needs the `medmnist` package for the official "
                         "metadata: pip install medmnist") from exc
    if flag not in INFO:
        known = ", ".join(sorted(k for k in INFO if not k.endswith("3d")))
        raise BenchError(f"{origin}: unknown MedMNIST set '{flag}'. Known 2D sets: {known}.")
    if flag.endswith("3d"):
        raise BenchError(f"{origin}: '{flag}' is a 3D MedMNIST set; the suite reads the 2D "
                         f"sets only.")
    return dict(INFO[flag])


def file_name(flag: str, size: int) -> str:
    """MedMNIST's name for the file of `flag` at `size` px."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def settings_of(card: DatasetCard) -> tuple[str, int, str]:
    """(flag, size, file name) from the card, each checked."""
    settings = card.settings
    origin = f"dataset card {card.path}"
    flag = settings.get("flag")
    if not isinstance(flag, str) or not flag:
        raise BenchError(f"{origin}: the [medmnist] section needs flag = \"NAME\" (MedMNIST's "
                         f"name of the set, e.g. \"pneumoniamnist\").")
    size = settings.get("size", 28)
    if size not in SIZES or isinstance(size, bool):
        raise BenchError(f"{origin}: [medmnist] size must be one of "
                         f"{', '.join(map(str, SIZES))} (the published files), got {size!r}.")
    name = settings.get("file", file_name(flag, size))
    if not isinstance(name, str) or "/" in name or "\\" in name:
        raise BenchError(f"{origin}: [medmnist] file must be a file name inside the data root, "
                         f"got {name!r}.")
    return flag, int(size), name


def read(card: DatasetCard, root: Path) -> tuple[pd.DataFrame, dict]:
    """The source table of a MedMNIST file: one row per image, its official split as pool."""
    flag, size, name = settings_of(card)
    info = official_info(flag, origin=f"dataset card {card.path}")
    path = root / name
    if not path.is_file():
        raise BenchError(f"{root} holds no '{name}' (MedMNIST's {flag} at {size} px). "
                         + DOWNLOAD_HINT.format(card=card.name))
    if not card.allow_links_outside_root:
        link = link_outside(root, name)
        if link:
            raise outside_link_error(f"MedMNIST file {path}", root, name, link, count=1)
    multi_label = "multi-label" in info["task"]
    n_classes = len(info["label"])
    healthy = _healthy_labels(card, info, multi_label)
    stat = path.stat()
    content = content_fingerprint(path, stat.st_size)
    rows: list[dict] = []
    with _open_npz(path) as archive:
        for split in SPLITS:
            shape = _check_images(archive, path, split, size=size, card=card, info=info)
            labels = _read_labels(archive, path, split, count=shape[0],
                                  n_classes=n_classes, multi_label=multi_label)
            diseased = (labels.any(axis=1) if multi_label
                        else ~np.isin(labels[:, 0], list(healthy)))
            for index, label in enumerate(diseased.astype(int)):
                image_id = f"{split}-{index:06d}"
                rows.append({"image_id": image_id, "path": name, "label": int(label),
                             "subject_id": image_id, "pool": split, "kind": "array",
                             "size": stat.st_size,
                             "mtime_ns": 0 if content else stat.st_mtime_ns,
                             "outside_link": "", "content_sha256": content})
    table = pd.DataFrame(rows)
    for label, what in ((0, "healthy"), (1, "diseased")):
        if not (table.label == label).any():
            raise BenchError(f"{path}: no {what} images with healthy_labels = "
                             f"{sorted(healthy)}. Check the card's healthy_labels against "
                             f"MedMNIST's labels {info['label']}.")
    return table, {}


#: Files up to this size key the cache by their contents, not their modification time: a
#: fresh clone (new times) of the shipped PneumoniaMNIST keeps its data version, and so the CI
#: gate's reference. Hashing 64 MB takes ~0.1 s; the 224 px sets (GBs) keep name, size and time.
CONTENT_KEY_MAX_BYTES = 64 * 2**20


def content_fingerprint(path: Path, size: int) -> str:
    """SHA-256 of a file small enough to hash on every open, else ""."""
    if size > CONTENT_KEY_MAX_BYTES:
        return ""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _healthy_labels(card: DatasetCard, info: dict, multi_label: bool) -> set[int]:
    names = info["label"]
    origin = f"dataset card {card.path}"
    given = card.settings.get("healthy_labels")
    if multi_label:
        if given is not None:
            raise BenchError(f"{origin}: {card.settings['flag']} is multi-label; an image is "
                             f"healthy when none of its findings is set, so healthy_labels does "
                             f"not apply. Remove it.")
        return set()
    if (not isinstance(given, list) or not given
            or not all(isinstance(v, int) and str(v) in names for v in given)):
        listing = ", ".join(f"{k} = {v}" for k, v in names.items())
        raise BenchError(f"{origin}: [medmnist] healthy_labels must list the healthy class "
                         f"indices of {card.settings['flag']} ({listing}), got {given!r}.")
    return set(given)


def _open_npz(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BenchError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc}); "
                         f"it may be truncated by an interrupted download. Download it "
                         f"again.") from exc


def _member_header(archive: zipfile.ZipFile, path: Path, key: str
                   ) -> tuple[IO[bytes], tuple[int, ...], np.dtype]:
    """An open stream positioned at the array's data, its shape and dtype."""
    member = f"{key}.npy"
    if member not in archive.namelist():
        present = ", ".join(sorted(n.removesuffix(".npy") for n in archive.namelist()))
        raise BenchError(f"{path} lacks the key '{key}' (it holds: {present or 'nothing'}). "
                         f"MedMNIST files hold train/val/test _images and _labels; this is not "
                         f"one, or it was re-saved without it. Download the official file.")
    try:
        stream = archive.open(member)
        version = np.lib.format.read_magic(stream)
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = reader(stream)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise BenchError(f"{path}: the array '{key}' cannot be read ({type(exc).__name__}: "
                         f"{exc}); the file is damaged. Download it again.") from exc
    if fortran:
        raise BenchError(f"{path}: '{key}' is stored in Fortran order, which MedMNIST never "
                         f"writes. Download the official file.")
    return stream, tuple(shape), np.dtype(dtype)


def _shape_of(archive: zipfile.ZipFile, path: Path, key: str) -> tuple[int, ...]:
    stream, shape, _ = _member_header(archive, path, key)
    stream.close()
    return shape


def _check_images(archive: zipfile.ZipFile, path: Path, split: str, *, size: int,
                  card: DatasetCard, info: dict) -> tuple[int, ...]:
    key = f"{split}_images"
    stream, shape, dtype = _member_header(archive, path, key)
    stream.close()
    if dtype != np.uint8:
        raise BenchError(f"{path}: '{key}' holds {dtype} pixels; MedMNIST stores uint8. The "
                         f"file was re-saved in another type; download the official file.")
    channels = info["n_channels"]
    expected = "(N, H, W)" if channels == 1 else "(N, H, W, 3)"
    if len(shape) != (3 if channels == 1 else 4) or (channels == 3 and shape[3] != 3):
        raise BenchError(f"{path}: '{key}' has shape {shape}; {card.settings['flag']} is "
                         f"{'grey' if channels == 1 else 'RGB'}, stored as {expected}.")
    if shape[1:3] != (size, size):
        actual = f"{shape[1]} x {shape[2]}"
        flag = card.settings["flag"]
        hint = (f" (that is the {shape[1]} px file, published as "
                f"'{file_name(flag, shape[1])}': save it under that name and use "
                f"--dataset {flag}{'' if shape[1] == 28 else f'_{shape[1]}'}, or put the "
                f"{size} px file here)" if shape[1] == shape[2] and shape[1] in SIZES else "")
        raise BenchError(f"{path}: '{key}' holds {actual} px images, but the card reads it as "
                         f"the {size} px file{hint}.")
    return shape


def _read_labels(archive: zipfile.ZipFile, path: Path, split: str, *, count: int,
                 n_classes: int, multi_label: bool) -> np.ndarray:
    key = f"{split}_labels"
    stream, shape, dtype = _member_header(archive, path, key)
    try:
        data = stream.read()
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise BenchError(f"{path}: the array '{key}' cannot be read ({type(exc).__name__}: "
                         f"{exc}); the file is damaged. Download it again.") from exc
    finally:
        stream.close()
    width = n_classes if multi_label else 1
    if len(shape) != 2 or shape != (count, width):
        raise BenchError(f"{path}: '{key}' has shape {shape}, expected ({count}, {width}): one "
                         f"row per image of '{split}_images'"
                         f"{', one 0/1 column per finding' if multi_label else ''}.")
    if dtype.kind not in "iu":
        raise BenchError(f"{path}: '{key}' holds {dtype} values; labels are integers. "
                         f"Download the official file.")
    if len(data) != dtype.itemsize * count * width:
        raise BenchError(f"{path}: '{key}' is cut short ({len(data)} of "
                         f"{dtype.itemsize * count * width} bytes). Download the file again.")
    labels = np.frombuffer(data, dtype=dtype).reshape(shape)
    top = 1 if multi_label else n_classes - 1
    bad = (labels < 0) | (labels > top)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise BenchError(f"{path}: '{key}' row {row} holds the label {labels[row].tolist()}, "
                         f"outside 0..{top} ({'0/1 per finding' if multi_label else 'the '}"
                         f"{'' if multi_label else f'{n_classes} classes of the set'}). "
                         f"The file is damaged or not this set; download it again.")
    return labels


def write_images(card: DatasetCard, root: Path, items: pd.DataFrame, target: Path,
                 decoding: Decoding, *, show_progress: bool = True,
                 label: str = "preparing") -> BuildResult:
    """The cache (N x C x S x S) for `items` (rows of the split table, sorted by image id),
    streamed from the file's members; notes where the file differs from the official one."""
    flag, size, name = settings_of(card)
    path = root / name
    info = official_info(flag, origin=f"dataset card {card.path}")
    wanted = _rows_wanted(items)
    dtype = storage_dtype(decoding.bit_depth)
    shape = (decoding.channels, decoding.size, decoding.size)
    records: list[dict] = []
    bar = tqdm(total=len(items), desc=label, unit="img", disable=None if show_progress else True,
               leave=False)
    out = preallocated_npy(target, dtype, (len(items), *shape))
    with _open_npz(path) as archive:
        row = 0
        for split, indices in wanted.items():
            for index, image in _stream_rows(archive, path, split, indices):
                item = items.iloc[row]
                if item.image_id != f"{split}-{index:06d}":
                    raise AssertionError("the items are not in the file's order")
                out[row] = quantize(_to_square(image, decoding), dtype)
                records.append({"image_id": item.image_id, "split": item.split,
                                "label": item.label, "subject_id": item.subject_id,
                                "row": row})
                row += 1
                bar.update()
        counts = {split: _shape_of(archive, path, f"{split}_images")[0] for split in SPLITS}
    out.flush()
    del out
    bar.close()
    notes = _official_file_notes(path, info, size, archive_counts=counts)
    return BuildResult(manifest=pd.DataFrame(records),
                       image_sizes={f"{size}x{size}": len(items)}, notes=notes)


def _rows_wanted(items: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per split of the file (in the items' order), the image indices the protocol uses."""
    split_of = items.image_id.str.split("-").str[0]
    index_of = items.image_id.str.split("-").str[1].astype(int)
    return {split: index_of[split_of == split].to_numpy()
            for split in dict.fromkeys(split_of)}


def _stream_rows(archive: zipfile.ZipFile, path: Path, split: str,
                 indices: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(index, image) for the wanted indices (ascending), reading CHUNK_ROWS rows at a time."""
    key = f"{split}_images"
    stream, shape, dtype = _member_header(archive, path, key)
    row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
    wanted = iter(indices)
    following = next(wanted, None)
    try:
        for start in range(0, shape[0], CHUNK_ROWS):
            if following is None:
                break
            count = min(CHUNK_ROWS, shape[0] - start)
            data = stream.read(count * row_bytes)
            if len(data) != count * row_bytes:
                where = start + len(data) // row_bytes
                raise BenchError(f"{path}: '{key}' is cut short at image {where} of "
                                 f"{shape[0]}. Download the file again.")
            chunk = np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:])
            while following is not None and following < start + count:
                yield int(following), chunk[following - start]
                following = next(wanted, None)
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise BenchError(f"{path}: the array '{key}' cannot be read ({type(exc).__name__}: "
                         f"{exc}); the file is damaged. Download it again.") from exc
    finally:
        stream.close()


def _to_square(image: np.ndarray, decoding: Decoding) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) -> float (C, S, S) in [0, 1] at the card's channels."""
    floats = pixels.to_channels(image.astype(np.float32) / 255.0, decoding.channels)
    return pixels.fit_to_square(floats, decoding.size,
                                drop_top_fraction=decoding.drop_top_fraction)


def _official_file_notes(path: Path, info: dict, size: int, *,
                         archive_counts: dict[str, int]) -> list[str]:
    """Where the file is not byte-identical to the official one, or its counts differ: notes,
    not errors (a reassembled or re-saved file is legitimate; its checks passed)."""
    notes = []
    official = info["n_samples"]
    if archive_counts != {s: official[s] for s in SPLITS}:
        notes.append(f"{path.name}: image counts {archive_counts} differ from MedMNIST's "
                     f"official {dict(official)}")
    key = "MD5" if size == 28 else f"MD5_{size}"
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != info.get(key):
        notes.append(f"{path.name}: MD5 {digest.hexdigest()} is not the official file's "
                     f"{info.get(key)} (a re-saved or reassembled copy; its keys, shapes, "
                     f"types and labels passed the checks)")
    return notes


def download(card: DatasetCard, root: Path) -> tuple[Path, bool]:
    """Fetch the card's file into `root` through the medmnist package (MD5-checked by it).
    (path, whether it was fetched now); a file already there is kept. Where the download host
    cannot be reached: one message saying where to get the file and where to put it."""
    flag, size, name = settings_of(card)
    info = official_info(flag, origin=f"dataset card {card.path}")
    target = root / name
    if target.is_file():
        return target, False
    official = file_name(flag, size)
    suffix = "" if size == 28 else f"_{size}"
    url, md5 = info[f"url{suffix}"], info[f"MD5{suffix}"]
    if name != official:
        raise BenchError(f"{target} is missing, and the card names it '{name}', not MedMNIST's "
                         f"'{official}': download {url} (MD5 {md5}) and save it under that "
                         f"name, or remove `file` from the card.")
    try:
        root.mkdir(parents=True, exist_ok=True)
        from medmnist import dataset

        getattr(dataset, info["python_class"])(split="test", download=True, root=str(root),
                                               size=size)
    except (RuntimeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"could not download {official} ({reason}). The download host may be "
                         f"unreachable from this machine: download {url} (MD5 {md5}) "
                         f"elsewhere and copy it to {target}, or pass --data-root to a folder "
                         f"holding it.") from exc
    return target, True
