"""Benchmark of `bench data prepare`: images/s and peak memory on COVIDx trees, beside a bare
decode of the same tree.

Each measurement runs `bench data prepare` in a fresh process with an empty cache and samples
the resident memory of that process and its decoding workers together (psutil, every 50 ms),
so the figure is what the whole preparation holds at its peak, not one process's share.

The bare decode is the floor the suite is measured against: a fresh process whose pool of the
same number of workers does only the card's preprocessing on every image of the tree (Pillow
decode, gray, drop the top rows, centre square crop, BOX resize, float32) and keeps nothing:
no label files, no split, no checks, no cache. Start-up is included in both.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from medad_bench.data import fixtures

SAMPLE_SECONDS = 0.05


@dataclass
class PrepareMeasurement:
    count: int  # files in the tree
    seconds: float
    peak_rss_bytes: int
    decoded: int = 0  # images the protocol used (the rest are checked, not decoded)

    @property
    def images_per_second(self) -> float:
        return self.decoded / self.seconds


def ensure_tree(folder: Path, count: int, size: int) -> Path:
    """A COVIDx tree of `count` PNGs at `size` px (written once, reused)."""
    tree = folder / f"covidx-{count}-{size}px"
    if not (tree / "test.txt").is_file():
        n_test = max(4, count // 5)
        fixtures.write_covidx(tree, n_train=count - n_test, n_test=n_test, size=size)
    return tree


def measure_prepare(tree: Path, count: int, *, workers: int | None = None,
                    card: str = "covidx") -> PrepareMeasurement:
    """Run one cold `bench data prepare` and sample the whole process tree's memory."""
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as cache:
        command = [sys.executable, "-m", "medad_bench.cli", "data", "prepare", "--dataset", card,
                   "--data-root", str(tree), "--no-progress"]
        if workers:
            command += ["--workers", str(workers)]
        env = {**_environ(), "BENCH_CACHE_DIR": cache}
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        peak = _watch(psutil.Process(process.pid))
        output = process.communicate()[0]
        seconds = time.perf_counter() - started
        if process.returncode:
            raise RuntimeError(f"bench data prepare failed:\n{output}")
        meta = json.loads(next(Path(cache).glob("*/meta.json")).read_text())
    return PrepareMeasurement(count=count, seconds=seconds, peak_rss_bytes=peak,
                              decoded=int(meta["n_images"]))


def _watch(process: psutil.Process) -> int:
    peak = 0
    while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
        try:
            members = [process, *process.children(recursive=True)]
            peak = max(peak, sum(_rss(p) for p in members))
        except psutil.Error:
            pass
        time.sleep(SAMPLE_SECONDS)
    return peak


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def median_measurement(runs: list[PrepareMeasurement]) -> PrepareMeasurement:
    return PrepareMeasurement(count=runs[0].count,
                              seconds=statistics.median(r.seconds for r in runs),
                              peak_rss_bytes=int(statistics.median(r.peak_rss_bytes
                                                                   for r in runs)),
                              decoded=runs[0].decoded)


@dataclass
class BareMeasurement:
    count: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.count / self.seconds


def measure_bare(tree: Path, *, workers: int | None = None, size: int = 256,
                 drop_top_fraction: float = 0.08) -> BareMeasurement:
    """One bare decode of every PNG in the tree, in a fresh process (start-up included)."""
    from medad_bench.data.build import default_workers

    command = [sys.executable, "-m", "medad_bench.perf.preparation", str(tree),
               str(workers or default_workers()), str(size), str(drop_top_fraction)]
    started = time.perf_counter()
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    seconds = time.perf_counter() - started
    return BareMeasurement(count=int(output.split()[0]), seconds=seconds)


def _bare_decode(task: tuple[str, int, float]) -> int:
    import numpy as np
    from PIL import Image

    path, size, drop = task
    with Image.open(path) as im:
        gray = im.convert("L")
        width, height = gray.size
        top = int(height * drop)
        side = min(height - top, width)
        y0, x0 = top + (height - top - side) // 2, (width - side) // 2
        square = gray.crop((x0, y0, x0 + side, y0 + side)).resize((size, size),
                                                                    Image.Resampling.BOX)
        pixels = np.asarray(square, dtype=np.float32) / 255.0
    return int(pixels.shape[0])


def _bare_main(tree: str, workers: str, size: str, drop: str) -> None:
    import multiprocessing

    files = sorted(str(p) for p in Path(tree).glob("*/*.png"))
    tasks = [(f, int(size), float(drop)) for f in files]
    with multiprocessing.get_context("spawn").Pool(int(workers)) as pool:
        done = sum(1 for _ in pool.imap_unordered(_bare_decode, tasks, chunksize=16))
    print(done)




# -- bench data perf ---------------------------------------------------------------------------


def perf_trees(counts: str, size: int, trees: Path, given_tree: Path | None,
               announce: Callable[[str], None] = lambda line: None) -> list[tuple[int, Path]]:
    """(file count, tree) to measure: `given_tree` as it is, else a generated COVIDx tree per
    count of `counts` ("1000,5000"), kept in `trees` between runs (`announce`d as made)."""
    if given_tree is not None:
        return [(sum(1 for _ in given_tree.glob("*/*.png")), given_tree)]
    jobs = []
    for count in (int(c) for c in counts.split(",") if c.strip()):
        announce(f"generating/reusing a {count}-image {size}px COVIDx tree in {trees} ...")
        jobs.append((count, ensure_tree(trees, count, size)))
    return jobs


@dataclass
class PreparationStep:
    """One repeat (`repeat` 1, 2, ...: `suite` and `bare`) or, last, the medians (`repeat`
    None: `suite` the median measurement, `bare_rate` the bare decode's median images/s)."""

    repeat: int | None
    suite: PrepareMeasurement
    bare: BareMeasurement | None = None
    bare_rate: float | None = None


def compare_preparation(tree: Path, count: int, *, repeats: int,
                        workers: int | None) -> Iterator[PreparationStep]:
    """`bench data prepare` on `tree` beside a bare decode with the same processes and
    preprocessing (the COVIDx card's), `repeats` times each, alternated so a slow spell of the
    machine hits both alike; yields each repeat, then the medians."""
    from medad_bench.data import load_card

    card = load_card("covidx")
    drop = float(card.settings.get("drop_top_fraction", 0.0))
    runs, bare = [], []
    for repeat in range(repeats):
        runs.append(measure_prepare(tree, count, workers=workers))
        bare.append(measure_bare(tree, workers=workers, size=card.image_size,
                                 drop_top_fraction=drop))
        yield PreparationStep(repeat + 1, runs[-1], bare[-1])
    yield PreparationStep(None, median_measurement(runs),
                          bare_rate=statistics.median(b.images_per_second for b in bare))


if __name__ == "__main__":
    _bare_main(*sys.argv[1:5])
