"""Kill a grid mid-way (SIGTERM, then SIGKILL), restart it, and compare with an uninterrupted run.

    python scripts/grid_resume_check.py [--workdir /tmp/grid-resume]

The grid is PaDiM and a shortened AnomalyPro on `synthetic`, seeds 0 and 1 (4 runs). Each
scenario runs in its own folder with its own SQLite store; the kill lands after AnomalyPro's
first checkpoint of seed 0 (PaDiM's two runs are finished by then). The script prints, per
scenario, the MLflow run statuses after the kill and after the restart, which runs the restart
skipped, and whether `bench report` gives the same table as the uninterrupted grid.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

GRID = ["run", "--methods", "padim,anomalypro", "--dataset", "synthetic", "--seeds", "0,1",
        "--no-progress", "--set", "anomalypro.iterations=1000", "--set",
        "anomalypro.decay_iterations=250"]


def bench(args: list[str], cwd: Path, uri: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medad_bench.cli", *args, "--tracking-uri", uri],
                          cwd=cwd, capture_output=True, text=True, env=dict(os.environ))


def statuses(uri: str) -> list[str]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bench/synthetic")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])
    return [f"{r.data.params.get('method')}-s{r.data.params.get('seed')}:{r.info.status}"
            + (" (killed)" if r.data.tags.get("bench.killed") else "") for r in runs
            if "method" in r.data.params]


def table(cwd: Path, uri: str) -> str:
    result = bench(["report", "--dataset", "synthetic", "--out", "-"], cwd, uri)
    return result.stdout


def scenario(folder: Path, sig: signal.Signals | None) -> tuple[str, float]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    started = time.perf_counter()
    if sig is None:
        result = bench(GRID, folder, uri)
        assert result.returncode == 0, result.stderr
        return table(folder, uri), time.perf_counter() - started
    process = subprocess.Popen([sys.executable, "-m", "medad_bench.cli", *GRID, "--tracking-uri",
                                uri], cwd=folder, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    while not list((folder / "results" / "runs").glob("synthetic/anomalypro-s0-*/last.pt")):
        if process.poll() is not None:
            raise SystemExit(f"grid ended early:\n{process.stdout.read()}")
        time.sleep(0.5)
    process.send_signal(sig)
    process.wait()
    print(f"\n== {sig.name}: exit code {process.returncode}")
    print("   after the kill:   ", ", ".join(statuses(uri)))
    restart = bench(GRID, folder, uri)
    assert restart.returncode == 0, restart.stderr
    print("   restart output:")
    for line in restart.stdout.splitlines() + restart.stderr.splitlines():
        if line.startswith(("padim", "anomalypro")) or "resumed" in line:
            print("     ", line)
    print("   after the restart:", ", ".join(statuses(uri)))
    return table(folder, uri), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/grid-resume"))
    args = parser.parse_args()
    os.environ.setdefault("BENCH_CACHE_DIR", str(args.workdir / "cache"))  # one data cache
    reference, seconds = scenario(args.workdir / "uninterrupted", None)
    print(f"uninterrupted grid: {seconds:.0f} s\n{reference}")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        text, seconds = scenario(args.workdir / sig.name.lower(), sig)
        same = "the same table" if text == reference else "A DIFFERENT table"
        print(f"   {sig.name}: kill + restart {seconds:.0f} s; report gives {same} as the "
              f"uninterrupted grid")
        if text != reference:
            print(text)


if __name__ == "__main__":
    main()
