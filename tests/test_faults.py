"""Faults a user meets: a damaged cache, a full or read-only disk, a killed preparation, runs
started together on a new store, a server that goes away mid-run.

Each ends in one message that names the problem and the fix, leaves nothing half-written, and
changes no finished run's number. The disks are real where the machine allows (a small tmpfs,
a read-only bind mount: root on Linux); elsewhere the same code path is reached by a write
that raises the errno the kernel would.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import free_port, start_mlflow_server, stop_mlflow_server
from mlflow.tracking import MlflowClient

from medad_bench.cli import cli
from medad_bench.data import load_card, prepare
from medad_bench.data.prepared import open_prepared
from medad_bench.errors import BenchError
from medad_bench.tracking import experiment_name, finished_runs

REPO = Path(__file__).resolve().parents[1]


def bench(*args: str) -> object:
    return CliRunner().invoke(cli, list(args))


def padim(uri: str, *extra: str) -> object:
    return bench("run", "--methods", "padim", "--dataset", "tiny", "--no-progress",
                 "--tracking-uri", uri, *extra)


def auc_of(result: object, method: str = "padim", seed: int = 0) -> str:
    found = re.search(rf"{method}\s+{seed}\s+(\d\.\d{{4}})", result.output)
    assert found, result.output
    return found.group(1)


def the_cache(isolated: Path) -> Path:
    (folder,) = [p for p in (isolated / "cache").iterdir() if (p / "meta.json").is_file()]
    return folder


def _can_mount() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0 and shutil.which("mount")


@contextmanager
def mounted(*args: str) -> Iterator[bool]:
    """`mount ARGS` for the block (unmounted after); yields False where mounting is refused."""
    target = args[-1]
    done = _can_mount() and subprocess.run(["mount", *args], capture_output=True).returncode == 0
    try:
        yield done
    finally:
        if done:  # lazy: a map still held by a traceback must not keep the mount busy
            subprocess.run(["umount", "-l", target], check=False)


# -- the cache checks itself -----------------------------------------------------------------

def test_a_cache_cut_short_is_rebuilt_and_gives_the_same_auc(tracking_uri, isolated, caplog):
    baseline = auc_of(padim(tracking_uri))
    images = the_cache(isolated) / "images.npy"
    with images.open("r+b") as handle:
        handle.truncate(images.stat().st_size // 2)  # an interrupted copy
    caplog.set_level("INFO")
    again = padim(tracking_uri, "--force")
    assert again.exit_code == 0, again.output
    assert "rebuilt because it was damaged: images.npy is" in caplog.text
    assert "cut short or replaced" in caplog.text
    assert auc_of(again) == baseline


def test_a_cache_changed_in_place_is_caught_by_its_checksum(tracking_uri, isolated, caplog):
    """Same size, same header, 2 KB of pixels overwritten (bit rot, another program): the
    sampled blocks may miss it, the whole-file hash of the grid's parent does not."""
    baseline = auc_of(padim(tracking_uri))
    images = the_cache(isolated) / "images.npy"
    offset = images.stat().st_size // 2 + 1000
    with images.open("r+b") as handle:
        handle.seek(offset)
        handle.write(np.random.default_rng(0).integers(0, 255, 2048, np.uint8).tobytes())
    caplog.set_level("INFO")
    again = padim(tracking_uri, "--force")
    assert again.exit_code == 0, again.output
    assert "images.npy's contents changed since it was built" in caplog.text
    assert auc_of(again) == baseline


def test_a_worker_refuses_a_cache_changed_after_the_grid_prepared_it(isolated):
    prepared = prepare(load_card("tiny"), show_progress=False)
    masks = prepared.folder / "masks.npy"
    with masks.open("r+b") as handle:
        handle.truncate(masks.stat().st_size - 10)
    with pytest.raises(BenchError, match=r"changed after this grid prepared it: masks.npy is"):
        open_prepared(load_card("tiny"), prepared.folder)


def test_a_cache_built_before_checksums_gets_them_then_is_checked(isolated, caplog):
    folder = prepare(load_card("tiny"), show_progress=False).folder
    meta = json.loads((folder / "meta.json").read_text())
    recorded = meta.pop("arrays")
    (folder / "meta.json").write_text(json.dumps(meta))
    caplog.set_level("INFO")
    prepare(load_card("tiny"), show_progress=False)
    assert "recorded the checksums" in caplog.text
    assert json.loads((folder / "meta.json").read_text())["arrays"] == recorded


# -- full and read-only disks -----------------------------------------------------------------

def test_a_full_disk_under_the_cache_names_the_folder_and_leaves_nothing(
        tracking_uri, isolated, monkeypatch):
    baseline = auc_of(padim(tracking_uri))
    small = isolated / "small-disk"
    small.mkdir()
    fallocate = os.posix_fallocate
    monkeypatch.setenv("BENCH_CACHE_DIR", str(small))
    with mounted("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)) as real:
        if not real:  # the kernel's answer, without the mount
            def full(*args: object) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(os, "posix_fallocate", full)
        result = padim(tracking_uri, "--force")
        assert result.exit_code == 1
        assert f"could not write the dataset cache to {small}" in result.output
        assert "no space left on the device" in result.output
        assert "it needs about" in result.output and "BENCH_CACHE_DIR" in result.output
        assert "Traceback" not in result.output
        assert list(small.iterdir()) == []  # no half-built cache, no temp folder
    monkeypatch.setenv("BENCH_CACHE_DIR", str(isolated / "cache"))  # space freed
    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    assert auc_of(padim(tracking_uri, "--force")) == baseline
    assert len(finished_runs(tracking_uri, "tiny")) == 2


def test_a_full_artifact_store_fails_the_run_and_the_grid_goes_on(isolated, monkeypatch):
    store = isolated / "store"
    artifacts = store / "mlartifacts"
    artifacts.mkdir(parents=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    with mounted("-t", "tmpfs", "-o", "size=16k", "tmpfs", str(artifacts)) as real:
        if not real:
            from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

            def full(*args: object, **kwargs: object) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(LocalArtifactRepository, "log_artifact", full)
        result = bench("run", "--methods", "padim", "--dataset", "tiny", "--seeds", "0,1",
                       "--no-progress", "--tracking-uri", uri)
    assert result.exit_code == 1
    assert re.search(r"padim\s+0\s+FAILED: could not write the run's artifact", result.output)
    assert re.search(r"padim\s+1\s+FAILED: could not write the run's artifact", result.output)
    assert "2 of 2 runs failed" in result.output
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name("tiny"))
    statuses = [r.info.status for r in client.search_runs([experiment.experiment_id])]
    assert statuses == ["FAILED", "FAILED"]  # none left looking finished


def test_a_read_only_folder_refuses_reports_and_references_with_one_message(
        tracking_uri, isolated, monkeypatch):
    assert padim(tracking_uri).exit_code == 0
    locked = isolated / "locked"
    locked.mkdir()
    (locked / "tiny.md").write_text("the old report\n")
    with mounted("--bind", "-o", "ro", str(locked), str(locked)) as real:
        if not real:
            import tempfile

            def read_only(*args: object, **kwargs: object) -> None:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))

            monkeypatch.setattr(tempfile, "mkstemp", read_only)
        report = bench("report", "--dataset", "tiny", "--no-figures", "--no-log", "--out",
                       str(locked / "tiny.md"), "--tracking-uri", tracking_uri)
        assert report.exit_code == 1
        assert f"could not write the report to {locked / 'tiny.md'}" in report.output
        assert "not writable" in report.output and "--out" in report.output
        reference = bench("check", "--dataset", "tiny", "--update", "--against",
                          str(locked / "ref.json"), "--tracking-uri", tracking_uri)
        assert reference.exit_code == 1
        assert "could not write the gate reference" in reference.output
        stored = bench("run", "--methods", "padim", "--dataset", "tiny", "--no-progress",
                       "--tracking-uri", f"sqlite:///{locked / 'mlflow.db'}")
        if real:  # the lock file is the first write; a patched mkstemp is not reached
            assert stored.exit_code == 1
            assert "could not write the tracking store" in stored.output
            assert "not writable" in stored.output and "--tracking-uri" in stored.output
    assert (locked / "tiny.md").read_text() == "the old report\n"
    assert not (locked / "ref.json").exists()


# -- a killed preparation ----------------------------------------------------------------------

BIG_CARD = """
name = "big"
description = "large enough to kill its preparation midway"
format = "synthetic"
channels = 1
image_size = 64
[synthetic]
seed = 3
n_mixed = 1500
n_normal = 1500
n_val = 300
n_test = 300
"""


def test_a_killed_preparation_leaves_no_cache_and_the_next_one_is_whole(isolated):
    (isolated / "cards" / "big.toml").write_text(BIG_CARD)
    command = [sys.executable, "-m", "medad_bench.cli", "data", "prepare", "--dataset", "big",
               "--no-progress"]
    process = subprocess.Popen(command, cwd=isolated, env=os.environ | {"PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = isolated / "cache"
    deadline = time.monotonic() + 120
    while not any(cache.glob(".big-*/images.npy")):
        assert process.poll() is None, "the preparation ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not [p for p in cache.iterdir() if not p.name.startswith(".")]  # nothing usable
    rebuilt = prepare(load_card("big"), show_progress=False)
    assert rebuilt.built and len(rebuilt.images) == 3600
    assert not [problem for problem in rebuilt.meta.get("notes", []) if "damaged" in problem]


# -- several processes, one store --------------------------------------------------------------

def test_four_runs_started_at_once_on_a_new_store_are_all_logged(isolated):
    uri = f"sqlite:///{isolated / 'new' / 'mlflow.db'}"
    prepare(load_card("tiny"), show_progress=False)  # the cache is not what is tested here
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(
        [sys.executable, "-m", "medad_bench.cli", "run", "--methods", "autoencoder", "--dataset",
         "tiny", "--seeds", str(seed), "--set", "autoencoder.iterations=3", "--no-progress",
         "--tracking-uri", uri], cwd=isolated, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for seed in range(4)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output
        assert "Traceback" not in output
    runs = finished_runs(uri, "tiny")
    assert sorted(runs.seed) == [0, 1, 2, 3]


# -- a server that goes away mid-run ------------------------------------------------------------

def test_a_server_lost_mid_run_stops_the_grid_with_one_message(tmp_path, isolated):
    port = free_port()
    server, uri, _ = start_mlflow_server(tmp_path, port)
    try:
        env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                            "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
        command = [sys.executable, "-m", "medad_bench.cli", "run", "--methods", "autoencoder",
                   "--dataset", "tiny", "--no-progress", "--tracking-uri", uri,
                   "--set", "autoencoder.log_every=1"]
        first = subprocess.run([*command, "--seeds", "0", "--set",
                                "autoencoder.iterations=3"], cwd=isolated, env=env,
                               capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        finished = finished_runs(uri, "tiny")
        assert len(finished) == 1
        slow = [*command, "--seeds", "1", "--set", "autoencoder.iterations=20000"]
        process = subprocess.Popen(slow, cwd=isolated, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(experiment_name("tiny"))
        deadline = time.monotonic() + 120
        while not client.search_runs([experiment.experiment_id], "attributes.status = "
                                     "'RUNNING'"):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        stop_mlflow_server(server)
        output = process.communicate(timeout=120)[0]
        assert process.returncode == 1, output
        assert f"lost the connection to the MLflow server at {uri}" in output
        assert "runs finished before are safe" in output and "Traceback" not in output, output

        # The server's own store, read directly: what finished before the loss is intact.
        after = finished_runs(f"sqlite:///{tmp_path / 'server.db'}", "tiny")
        assert after.loc[after.seed == 0, "metric.auc"].tolist() == \
            finished.loc[finished.seed == 0, "metric.auc"].tolist()
    finally:
        stop_mlflow_server(server)
