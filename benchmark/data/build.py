"""Streaming cache builder for real datasets: decode in worker processes, write rows in order.

Memory stays flat however large the dataset: each worker holds one decoded image at a time and
the parent appends finished rows to the `.npy` file with plain writes (no memory map while
writing, so written pages do not pile up in the process). The row count of an MRI dataset is
only known once its volumes are cut into slices, so the `.npy` header is written with a
reserved fixed length and rewritten at the end with the true shape.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import struct
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from medad_bench.data import pixels
from medad_bench.data.images import quantize, storage_dtype

#: Below this many items a pool costs more (worker start-up) than it saves.
MIN_ITEMS_FOR_POOL = 64
#: Files per worker task, and tasks in flight per worker: bounds what waits in memory.
CHUNK = 4
WINDOW_PER_WORKER = 4
HEADER_BYTES = 128  # magic + version + length + padded dict; a multiple of 64 as numpy advises


@dataclass(frozen=True)
class Decoding:
    """How every item is turned into rows: the card's size, channels and preprocessing."""

    size: int
    channels: int
    intensity: str = "dtype"
    drop_top_fraction: float = 0.0
    min_foreground: float = 0.05
    #: 8 or 16: the cache stores uint8 / uint16 at the source's precision.
    bit_depth: int = 8


@dataclass
class BuildResult:
    manifest: pd.DataFrame  # image_id, split, label, subject_id, row
    image_sizes: dict[str, int]  # native "HxW" -> count
    #: What the user should know about the source (e.g. a file that is not the official one).
    notes: list[str] = field(default_factory=list)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


def build_images(items: pd.DataFrame, root: Path, target: Path, decoding: Decoding, *,
                 workers: int | None = None, show_progress: bool = True,
                 label: str = "preparing", masks_target: Path | None = None) -> BuildResult:
    """Decode every item (rows of the split table) into `target` (.npy, N x C x S x S of
    uint8 / uint16 by the decoding's bit depth). With `masks_target`, the items' `mask` files
    ("" for none: an empty mask) become the aligned (N x S x S) uint8 0/1 masks there."""
    with_masks = masks_target is not None
    tasks = [_task(root, item, with_masks) for item in items.itertuples(index=False)]
    upper_bound = sum(_rows_bound(root / p, k) for p, k in zip(items.path, items.kind,
                                                                   strict=True))
    shape = (decoding.channels, decoding.size, decoding.size)
    dtype = storage_dtype(decoding.bit_depth)
    records: list[dict] = []
    sizes: Counter[str] = Counter()
    bar = tqdm(total=len(tasks), desc=label, unit="file", disable=None if show_progress else True,
               leave=False)
    with target.open("wb") as handle, _mask_file(masks_target) as mask_handle:
        handle.write(_npy_header((upper_bound, *shape), dtype))
        masks = _MaskWriter(mask_handle, upper_bound, decoding.size)
        row = 0
        for item, (slices, native, mask) in zip(items.itertuples(index=False),
                                                _decoded(tasks, decoding, workers), strict=True):
            sizes[f"{native[0]}x{native[1]}"] += 1
            for index, array in slices:
                handle.write(np.ascontiguousarray(array).tobytes())
                masks.write(mask)
                image_id = item.image_id if index is None else f"{item.image_id}__{index:03d}"
                records.append({"image_id": image_id, "split": item.split, "label": item.label,
                                "subject_id": item.subject_id, "row": row})
                row += 1
            bar.update()
        handle.seek(0)
        handle.write(_npy_header((row, *shape), dtype))
        _truncate(handle, HEADER_BYTES + row * int(np.prod(shape)) * dtype.itemsize)
        masks.finish(row)
    bar.close()
    return BuildResult(manifest=pd.DataFrame(records), image_sizes=dict(sorted(sizes.items())))


def _task(root: Path, item: tuple, with_masks: bool) -> tuple:
    """What a worker decodes: (file, kind), plus (mask file or "", label) for a set with
    masks (the label: a healthy image's mask must be empty)."""
    if not with_masks:
        return (str(root / item.path), item.kind)
    mask = getattr(item, "mask", "") or ""
    return (str(root / item.path), item.kind, str(root / mask) if mask else "",
            int(item.label))


@contextlib.contextmanager
def _mask_file(path: Path | None) -> Iterator[BinaryIO | None]:
    if path is None:
        yield None
        return
    with path.open("wb") as handle:
        yield handle


class _MaskWriter:
    """Appends mask rows beside the image rows (a volume's slices get empty masks), with the
    same reserved .npy header rewritten at the end; does nothing for a set without masks."""

    def __init__(self, handle: BinaryIO | None, upper_bound: int, size: int) -> None:
        self.handle, self.size = handle, size
        self.empty = np.zeros((size, size), dtype=np.uint8)
        if handle is not None:
            handle.write(_npy_header((upper_bound, size, size), np.dtype(np.uint8)))

    def write(self, mask: np.ndarray | None) -> None:
        if self.handle is not None:
            self.handle.write((self.empty if mask is None else mask).tobytes())

    def finish(self, rows: int) -> None:
        if self.handle is not None:
            self.handle.seek(0)
            self.handle.write(_npy_header((rows, self.size, self.size), np.dtype(np.uint8)))
            _truncate(self.handle, HEADER_BYTES + rows * self.size * self.size)


def _decoded(tasks: list[tuple], decoding: Decoding,
             workers: int | None) -> Iterator[tuple[list, tuple[int, int], np.ndarray | None]]:
    workers = workers or default_workers()
    if workers == 1 or len(tasks) < MIN_ITEMS_FOR_POOL:
        for task in tasks:
            yield decode_row(task, decoding)
        return
    # spawn, not fork: the parent may hold torch/OpenMP threads, which a fork can deadlock.
    context = multiprocessing.get_context("spawn")
    chunks = iter([tasks[i:i + CHUNK] for i in range(0, len(tasks), CHUNK)])
    with context.Pool(workers, initializer=_set_decoding, initargs=(decoding,)) as pool:
        # A sliding window, not imap: imap queues every task at once, and when one worker
        # lags the others' finished images pile up in this process waiting for their turn.
        pending: deque = deque(pool.apply_async(_decode_in_worker, (chunk,))
                               for chunk in islice(chunks, workers * WINDOW_PER_WORKER))
        while pending:
            results = pending.popleft().get()
            following = next(chunks, None)
            if following is not None:
                pending.append(pool.apply_async(_decode_in_worker, (following,)))
            yield from results


_WORKER_DECODING: Decoding | None = None


def _set_decoding(decoding: Decoding) -> None:
    global _WORKER_DECODING
    _WORKER_DECODING = decoding


def _decode_in_worker(chunk: list[tuple]) -> list[tuple[list, tuple[int, int],
                                                          np.ndarray | None]]:
    assert _WORKER_DECODING is not None
    return [decode_row(task, _WORKER_DECODING) for task in chunk]


def decode_row(task: tuple, decoding: Decoding
               ) -> tuple[list[tuple[int | None, np.ndarray]], tuple[int, int], np.ndarray | None]:
    """`decode_stored`, and for a task with a mask part its (size, size) uint8 0/1 mask
    (None: the set has no masks)."""
    slices, native = decode_stored((task[0], task[1]), decoding)
    if len(task) == 2:
        return slices, native, None
    mask_path, label = task[2], task[3]
    if not mask_path:
        return slices, native, np.zeros((decoding.size, decoding.size), dtype=np.uint8)
    return slices, native, read_mask(Path(mask_path), Path(task[0]), native, label, decoding)


def read_mask(path: Path, image: Path, native: tuple[int, int], label: int,
              decoding: Decoding) -> np.ndarray:
    """A lesion mask file -> (size, size) uint8 0/1, cropped as its image is and resized with
    nearest neighbour. Lesion is every pixel that is not black (alpha ignored): 0/1 and 0/255
    masks and BMAD's colour-mapped RGBA renderings alike."""
    try:
        with Image.open(path) as im:
            im.load()
            lesion = _lesion_pixels(im)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad mask file
        raise pixels.ImageReadError(f"cannot read the mask '{path}' of '{image}': "
                                    f"{type(exc).__name__}: {exc}. Fix: re-export the mask "
                                    f"as a PNG, or remove the image.") from exc
    if lesion.shape != tuple(native):
        raise pixels.ImageReadError(
            f"the mask '{path}' is {lesion.shape[0]} x {lesion.shape[1]} pixels but its image "
            f"'{image}' is {native[0]} x {native[1]}: they must match pixel for pixel. Fix: "
            f"use the mask made for this image.")
    if label == 0 and lesion.any():
        raise pixels.ImageReadError(
            f"the mask '{path}' marks {int(lesion.sum())} lesion pixels, but its image "
            f"'{image}' is labelled healthy. Fix the label (move the image to the diseased "
            f"class) or the mask.")
    return _fit_mask(lesion, decoding.size, decoding.drop_top_fraction)


def _lesion_pixels(im: Image.Image) -> np.ndarray:
    """(H, W) bool: pixels that are not black in any colour channel."""
    if im.mode in ("P", "PA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif im.mode == "LA":
        im = im.convert("L")
    array = np.asarray(im)
    lesion = array != 0
    return lesion.any(axis=-1) if lesion.ndim == 3 else lesion


def _fit_mask(lesion: np.ndarray, size: int, drop_top_fraction: float) -> np.ndarray:
    """The crop `pixels.fit_to_square` gives an image (top rows dropped, centre square), then
    a nearest-neighbour resize: a mask stays 0/1 and in register with its image."""
    lesion = lesion[int(lesion.shape[0] * drop_top_fraction):, :]
    height, width = lesion.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(lesion[top:top + side, left:left + side].astype(np.uint8) * 255)
    if side != size:
        square = square.resize((size, size), Image.Resampling.NEAREST)
    return (np.asarray(square) > 0).astype(np.uint8)


def decode_stored(task: tuple[str, str], decoding: Decoding
                  ) -> tuple[list[tuple[int | None, np.ndarray]], tuple[int, int]]:
    """`decode_item` with the rows quantised to the cache's integers (in the worker: a
    quarter of the bytes to send back). 8-bit images take Pillow's 8-bit path, which skips
    four float copies of the full-size image."""
    if decoding.bit_depth == 8 and decoding.intensity == "dtype" and task[1] != "volume":
        fast = pixels.read_square_8bit(Path(task[0]), size=decoding.size,
                                       channels=decoding.channels,
                                       drop_top_fraction=decoding.drop_top_fraction)
        if fast is not None:
            return [(None, fast[0])], fast[1]
    slices, native = decode_item(task, decoding)
    dtype = storage_dtype(decoding.bit_depth)
    return [(index, quantize(array, dtype)) for index, array in slices], native


def decode_item(task: tuple[str, str], decoding: Decoding
                ) -> tuple[list[tuple[int | None, np.ndarray]], tuple[int, int]]:
    """One file -> its rows [(slice index or None, C x S x S)] and its native (H, W)."""
    path, kind = Path(task[0]), task[1]
    if kind == "volume":
        slices = pixels.read_volume_slices(path, size=decoding.size, channels=decoding.channels,
                                           min_foreground=decoding.min_foreground)
        if not slices:
            raise pixels.ImageReadError(f"{path}: every axial slice is empty (no brain "
                                        f"found). Check the volume, or remove the subject.")
        return slices, _volume_shape(path)
    image = pixels.read_image(path, channels=decoding.channels, intensity=decoding.intensity)
    native = (int(image.shape[1]), int(image.shape[2]))
    square = pixels.fit_to_square(image, decoding.size,
                                  drop_top_fraction=decoding.drop_top_fraction)
    return [(None, square)], native


def _rows_bound(path: Path, kind: str) -> int:
    """Rows an item can give: 1 for an image, the axial depth for a volume (header only)."""
    if kind != "volume":
        return 1
    return max(_volume_header_shape(path))


def _volume_shape(path: Path) -> tuple[int, int]:
    shape = _volume_header_shape(path)
    return int(shape[0]), int(shape[1])


def _volume_header_shape(path: Path) -> tuple[int, ...]:
    import nibabel

    try:
        return tuple(int(n) for n in nibabel.load(str(path)).shape[:3])
    except Exception as exc:
        raise pixels.ImageReadError(f"{path}: not a readable NIfTI volume ({exc}). "
                                    f"Re-export it, or remove the subject.") from exc


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """A version 1.0 .npy header padded to HEADER_BYTES, so it can be rewritten in place."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": tuple(shape)})
    body_length = HEADER_BYTES - 10
    body = text.encode("latin1").ljust(body_length - 1) + b"\n"
    assert len(body) == body_length, "shape too long for the reserved header"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", body_length) + body


def _truncate(handle: BinaryIO, length: int) -> None:
    handle.flush()
    handle.truncate(length)
