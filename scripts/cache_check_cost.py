"""What the cache's integrity check costs (issue 27): the whole-file hash the grid's parent
does once per grid, and the cheap check every worker does on open.

    python scripts/cache_check_cost.py [--images 15864] [--size 256] [--repeats 3]

Writes a cache-sized images.npy (the published COVIDx size by default: 15,864 grey images at
256 px, uint8, 1.04 GB) into a temporary folder beside results/, records it as a build would,
and prints the median seconds of each check (warm page cache: the file was just written; a
cold disk adds its read time to the full hash), then the same for the built-in synthetic set.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from medad_bench.data import integrity, load_card, prepare


def timed(call: object, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure(folder: Path, repeats: int) -> tuple[int, float, float]:
    meta = {"arrays": integrity.records(folder)}
    size = sum(r["bytes"] for r in meta["arrays"].values())
    full = timed(lambda: integrity.check(folder, meta, full=True), repeats)
    cheap = timed(lambda: integrity.check(folder, meta, full=False), repeats)
    return size, full, cheap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=15_864)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    Path("results").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir="results") as folder:
        path = Path(folder) / "images.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                        shape=(args.images, 1, args.size, args.size))
        rng = np.random.default_rng(0)
        for start in range(0, args.images, 512):
            stop = min(args.images, start + 512)
            out[start:stop] = rng.integers(0, 256, (stop - start, 1, args.size, args.size),
                                           dtype=np.uint8)
        out.flush()
        del out
        size, full, cheap = measure(Path(folder), args.repeats)
        print(f"{args.images:,} images at {args.size} px ({size / 1e9:.2f} GB): whole-file "
              f"hash {full:.2f} s, cheap check {cheap * 1000:.1f} ms (median of {args.repeats})")
    synthetic = prepare(load_card("synthetic"), show_progress=False)
    size, full, cheap = measure(synthetic.folder, args.repeats)
    print(f"synthetic ({len(synthetic.images):,} images, {size / 1e6:.1f} MB with masks): "
          f"whole-file hash {full * 1000:.1f} ms, cheap check {cheap * 1000:.1f} ms")


if __name__ == "__main__":
    main()
