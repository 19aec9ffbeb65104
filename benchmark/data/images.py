"""A split of the image cache, read on demand: the unit every method trains and scores on.

The cache keeps pixels at the source's precision (uint8, or uint16 for 16-bit sources) in one
memory-mapped `.npy` file. An `ImageSet` names some of its rows and turns only the rows asked
for into float32 in [0, 1], so a method that draws batches of 64 from set B (10,031 COVIDx
images) holds 64 images in memory, not 10,031. In-memory float arrays (tests, small splits)
work wherever an `ImageSet` does: both index the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

#: Storage dtype per bit depth of a card's source pixels.
STORAGE_DTYPES = {8: np.uint8, 16: np.uint16}


def storage_dtype(bit_depth: int) -> np.dtype:
    if bit_depth not in STORAGE_DTYPES:
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    return np.dtype(STORAGE_DTYPES[bit_depth])


def quantize(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """[0, 1] floats -> the storage integers (rounded to the nearest level)."""
    top = np.iinfo(dtype).max
    return np.rint(np.clip(image, 0.0, 1.0) * top).astype(dtype)


def dequantize(stored: np.ndarray) -> np.ndarray:
    """Storage integers (or floats, passed through) -> float32 in [0, 1]."""
    if stored.dtype.kind == "f":
        return np.asarray(stored, dtype=np.float32)
    # float32 arithmetic is exact here: at most 65,535 levels, divided once.
    return stored.astype(np.float32) / np.float32(np.iinfo(stored.dtype).max)


class ImageSet:
    """Rows `rows` of a (N, C, H, W) image store, as float32 (n, C, H, W) in [0, 1] on read.

    Indexing (`images[i]`, `images[a:b]`, `images[index_array]`) reads those rows and returns
    floats, like a NumPy array would; `subset` and `concat` give other views without reading.
    """

    def __init__(self, storage: np.ndarray, rows: np.ndarray | None = None) -> None:
        if storage.ndim != 4:
            raise ValueError(f"an image store must be (N, C, H, W), got shape {storage.shape}")
        self.storage = storage
        self.rows = (np.arange(len(storage)) if rows is None
                     else np.asarray(rows, dtype=np.int64).reshape(-1))

    # -- array-like surface -----------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.rows), *self.storage.shape[1:])

    ndim = 4
    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> np.ndarray:
        return dequantize(self.raw(key))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self[:]
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"ImageSet({len(self)} rows of {self.storage.dtype} {self.storage.shape[1:]})"

    # -- reading ------------------------------------------------------------------------------
    def raw(self, key: Any) -> np.ndarray:
        """The rows as stored (uint8 / uint16), without conversion."""
        if isinstance(key, int | np.integer):
            return np.asarray(self.storage[self.rows[key]])
        if hasattr(key, "cpu"):  # a torch index tensor
            key = key.cpu().numpy()
        rows = self.rows[key]
        if len(rows) and np.all(rows[1:] == rows[:-1] + 1):
            return np.asarray(self.storage[rows[0]:rows[-1] + 1])  # one contiguous read
        return self.storage[rows]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Consecutive float batches of at most `batch_size` images."""
        for start in range(0, len(self), batch_size):
            yield self[start:start + batch_size]

    # -- views --------------------------------------------------------------------------------
    def subset(self, key: Any) -> ImageSet:
        return ImageSet(self.storage, self.rows[key])

    def concat(self, other: ImageSet) -> ImageSet:
        if other.storage is not self.storage:
            raise ValueError("only views of the same image store can be joined")
        return ImageSet(self.storage, np.concatenate([self.rows, other.rows]))



def join(first: ImageSet | np.ndarray, second: ImageSet | np.ndarray) -> ImageSet | np.ndarray:
    """Both sets as one (views stay views; arrays are concatenated)."""
    if isinstance(first, ImageSet) and isinstance(second, ImageSet):
        return first.concat(second)
    return np.concatenate([np.asarray(first), np.asarray(second)])


def empty_like(images: ImageSet | np.ndarray) -> ImageSet | np.ndarray:
    """No images, with the same image shape."""
    if isinstance(images, ImageSet):
        return images.subset(slice(0, 0))
    return images[:0]
