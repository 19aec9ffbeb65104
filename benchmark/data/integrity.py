"""Checksums of a prepared cache's arrays: a cache that changed since it was built never
yields a number.

A cache's `images.npy` (and `masks.npy`) can be cut short by an interrupted copy or changed in
place by a bad disk or another program; NumPy opens either without complaint and a run would
report a different AUC under the same data version. The build records, per array, its byte
size, shape, dtype, a SHA-256 of the whole file and a cheap sample fingerprint (SHA-256 of 64
blocks of 64 KB spread evenly over the file, plus the header) in `meta.json`.

- `check(folder, meta, full=True)`: the whole-file hash. The parent of a grid does it once,
  when it prepares the dataset, and so does `bench data prepare`; about 1 s per GB on one core
  (`python scripts/cache_check_cost.py` measures it at the published COVIDx size).
- `check(folder, meta, full=False)`: size, header and the sample fingerprint, a few
  milliseconds whatever the size; every worker process that opens the cache does it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

#: The arrays a cache may hold; absent ones are skipped.
ARRAY_FILES = ("images.npy", "masks.npy")
SAMPLE_BLOCKS = 64
SAMPLE_BLOCK_BYTES = 64 * 1024
_CHUNK = 8 << 20


def record(path: Path) -> dict[str, Any]:
    """What `check` compares later: bytes, shape, dtype, sha256 and the sample fingerprint."""
    header = np.load(path, mmap_mode="r")
    return {"bytes": path.stat().st_size, "shape": list(header.shape),
            "dtype": header.dtype.str, "sha256": file_sha256(path),
            "sample_sha256": sample_sha256(path)}


def records(folder: Path) -> dict[str, dict[str, Any]]:
    """A record per array file present in `folder`."""
    return {name: record(folder / name) for name in ARRAY_FILES if (folder / name).is_file()}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sample_sha256(path: Path) -> str:
    """SHA-256 of SAMPLE_BLOCKS evenly spaced blocks (the first holds the .npy header)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        span = max(0, size - SAMPLE_BLOCK_BYTES)
        for index in range(SAMPLE_BLOCKS):
            handle.seek(span * index // max(1, SAMPLE_BLOCKS - 1))
            digest.update(handle.read(SAMPLE_BLOCK_BYTES))
    return digest.hexdigest()


def check(folder: Path, meta: dict[str, Any], *, full: bool) -> list[str]:
    """Problems with the cache's arrays against the record in `meta` ([] when they match).
    A cache built before checksums existed has no record: nothing to compare ([])."""
    recorded = meta.get("arrays") or {}
    problems = []
    for name, expected in recorded.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if size != expected["bytes"]:
            problems.append(f"{name} is {size:,} bytes, not the {expected['bytes']:,} it was "
                            f"built with (cut short or replaced)")
            continue
        if sample_sha256(path) != expected["sample_sha256"]:
            problems.append(f"{name}'s contents changed since it was built (sampled blocks "
                            f"differ)")
        elif full and file_sha256(path) != expected["sha256"]:
            problems.append(f"{name}'s contents changed since it was built (its SHA-256 "
                            f"differs)")
    return problems
