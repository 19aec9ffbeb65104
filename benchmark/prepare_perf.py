"""Benchmark of `bench data prepare`: images/s and peak memory on generated COVIDx trees.

Each measurement runs `bench data prepare` in a fresh process with an empty cache and samples
the resident memory of that process and its decoding workers together (psutil, every 50 ms),
so the figure is what the whole preparation holds at its peak, not one process's share.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmark.data import fixtures

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
        command = [sys.executable, "-m", "benchmark.cli", "data", "prepare", "--dataset", card,
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
