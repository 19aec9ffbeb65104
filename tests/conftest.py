"""Shared fixtures: a tiny synthetic dataset card, a private cache and a private MLflow store.

Every test works in its own temp folders, so tests never touch the repository's results/.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY_CARD = """
name = "{name}"
description = "tiny synthetic set for tests"
format = "synthetic"
channels = 1
image_size = 32

[synthetic]
seed = 11
n_mixed = 20
n_normal = 40
n_val = 20
n_test = 30
lesion_contrast = {contrast}
lesion_size = 1.5
"""


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Cards, cache and tracking store in a temp folder; the working directory too."""
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "tiny.toml").write_text(TINY_CARD.format(name="tiny", contrast=0.3))
    (cards / "tiny-subtle.toml").write_text(TINY_CARD.format(name="tiny-subtle", contrast=0.05))
    monkeypatch.setenv("BENCH_DATASETS_PATH", str(cards))
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # One run at a time unless a test asks: two pytest workers already share the two cores.
    monkeypatch.setenv("BENCH_JOBS", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real MLflow SQLite store with its tables made and nothing logged, once per test
    process. A new store runs MLflow's schema migrations (about 1 s of CPU); a copy of this
    one opens at once. Tests of store creation itself make their own."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "empty.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path, empty_store: Path) -> str:
    path = tmp_path / "mlflow.db"
    shutil.copyfile(empty_store, path)
    return f"sqlite:///{path}"


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # `make test` runs two workers on a 2-core machine: one torch thread each (and in the
        # `bench` subprocesses they start), or the two would fight over the cores and run
        # several times slower than one process alone.
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


#: Obvious lesions, half of the mixed set diseased: a short real training run must learn them.
LEARNING_CARD = """
name = "learn"
description = "obvious lesions, half of the mixed set diseased"
format = "synthetic"
channels = 1
image_size = 32
[synthetic]
seed = 5
n_mixed = 80
n_normal = 60
n_val = 10
n_test = 40
diseased_share_mixed = 0.5
lesion_contrast = 0.4
lesion_size = 2.0
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on loopback with its own store and artifact folder."""
    process, uri, artifacts = start_mlflow_server(tmp_path, free_port())
    yield uri, artifacts
    stop_mlflow_server(process)


def start_mlflow_server(tmp_path: Path, port: int) -> tuple[subprocess.Popen, str, Path]:
    """`mlflow server` on 127.0.0.1:port with a store in tmp_path, once it answers /health."""
    artifacts = tmp_path / "server-artifacts"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
               str(port), "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
               "--artifacts-destination", str(artifacts), "--workers", "1"]
    log = (tmp_path / "server.log").open("a")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            import urllib.request

            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                break
        except OSError:
            if process.poll() is not None:
                pytest.fail((tmp_path / "server.log").read_text())
            time.sleep(0.5)
    else:
        pytest.fail("mlflow server did not come up")
    log.close()
    return process, uri, artifacts


def stop_mlflow_server(process: subprocess.Popen) -> None:
    """Kill the server's process group at once, as a crash or a lost host would: a graceful
    SIGTERM made uvicorn wait 6 s for its connections. SQLite keeps what was committed."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
