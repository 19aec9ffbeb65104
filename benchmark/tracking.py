"""MLflow: where runs are logged and where reports and checks read them from.

Each (method, dataset, seed) is one MLflow run in the experiment `bench/<dataset>`. The default
store is a SQLite file under `results/`; `--tracking-uri` or `MLFLOW_TRACKING_URI` point
elsewhere (another file, or an `mlflow server`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd

from medad_bench.disk import write_error, writing
from medad_bench.errors import BenchError
from medad_bench.shipped import package_folder

logger = logging.getLogger(__name__)

DEFAULT_STORE = Path("results") / "mlflow.db"
DEFAULT_ARTIFACTS = Path("results") / "mlartifacts"
EXPERIMENT_PREFIX = "bench/"
TAG_PREFIX = "bench."
#: A running run rewrites this tag (unix seconds) every HEARTBEAT_SECONDS, so any machine that
#: shares the store can tell a live run from one whose process or host has gone.
HEARTBEAT_TAG = f"{TAG_PREFIX}heartbeat"
HEARTBEAT_SECONDS = 60.0
#: Heartbeats a run may miss (a slow server, a busy host) before it is taken for dead.
STALE_BEATS = 3


def heartbeat_seconds() -> float:
    """The interval between beats: $BENCH_HEARTBEAT_SECONDS, else HEARTBEAT_SECONDS."""
    return float(os.environ.get("BENCH_HEARTBEAT_SECONDS") or HEARTBEAT_SECONDS)


def heartbeat_stale_seconds() -> float:
    """How old a heartbeat may be before its run counts as dead:
    $BENCH_HEARTBEAT_STALE_SECONDS, else STALE_BEATS intervals."""
    return float(os.environ.get("BENCH_HEARTBEAT_STALE_SECONDS")
                 or STALE_BEATS * heartbeat_seconds())


def resolve_tracking_uri(uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the SQLite file results/mlflow.db."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        DEFAULT_STORE.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{DEFAULT_STORE.resolve()}"
    if "://" not in uri and not uri.startswith("sqlite:"):
        # A bare path: a SQLite file if it looks like one, else MLflow's file store.
        path = Path(uri).expanduser().resolve()
        uri = f"sqlite:///{path}" if path.suffix in (".db", ".sqlite") else path.as_uri()
    return uri


def _client(uri: str) -> Any:
    warnings.filterwarnings("ignore", module="mlflow")
    # Its per-download progress bars would land in the middle of printed tables.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    # MLflow announces its database migrations at INFO on every new store.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)

    return MlflowClient(tracking_uri=uri)


def experiment_name(dataset: str) -> str:
    return f"{EXPERIMENT_PREFIX}{dataset}"


def check_server(uri: str, timeout: float = 5.0) -> None:
    """For an http(s) store: one quick request, so an unreachable server stops the run before
    any training instead of after an hour (MLflow's own client retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            response.read()
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BenchError(
            f"cannot reach the MLflow server at {uri} ({reason}). Start it (e.g. `mlflow "
            f"server --host 127.0.0.1 --port 5000`) or fix --tracking-uri / "
            f"MLFLOW_TRACKING_URI. Nothing was trained."
        ) from exc


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// store, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:") else None


@contextlib.contextmanager
def store_lock(uri: str, timeout: float = 300.0) -> Iterator[None]:
    """Hold `<database>.lock` around creating or migrating a SQLite store and its experiment.

    Two `bench run` started at once on a new store (two terminals, a job array) would both
    run MLflow's schema migration and one would die in it ("duplicate column name"); with the
    lock the second waits and finds the store made. Other stores need nothing here: a server
    serialises its own database."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=timeout)
    except Timeout as exc:
        raise BenchError(f"another process has held {lock.lock_file} for {timeout:.0f} s while "
                         f"creating the store {uri}. If none is running, delete that lock "
                         f"file and run again.") from exc
    try:
        yield
    finally:
        lock.release()


#: Waits between tries when SQLite answers "database is locked" (another process writing).
LOCKED_RETRY_SECONDS = (0.2, 0.5, 1, 2, 4, 8, 15)


def retrying(call: Any, *args: Any, **kwargs: Any) -> Any:
    """`call(*args, **kwargs)`, tried again with backoff while the store says it is locked:
    several runs writing one SQLite file at once take turns instead of one failing."""
    for wait in LOCKED_RETRY_SECONDS:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if "database is locked" not in str(exc):
                raise
            logger.info("tracking store busy (%s); trying again in %.1f s", exc, wait)
            time.sleep(wait)
    return call(*args, **kwargs)


def ensure_experiment(uri: str, dataset: str) -> str:
    """The experiment id for `dataset`, created if needed; fails fast if the store is unusable.
    Creation runs under `store_lock`, so several processes may call it at once."""
    check_server(uri)
    name = experiment_name(dataset)
    try:
        with store_lock(uri):
            client = _client(uri)
            experiment = retrying(client.get_experiment_by_name, name)
            if experiment is not None:
                return experiment.experiment_id
            artifact_location = None
            db_path = sqlite_path(uri)
            if db_path is not None:
                # Keep artifacts beside the database rather than in ./mlruns of whatever
                # folder the command ran in.
                artifact_location = (db_path.parent / DEFAULT_ARTIFACTS.name).resolve().as_uri()
            return retrying(client.create_experiment, name,
                            artifact_location=artifact_location)
    except BenchError:
        raise
    except OSError as exc:  # the store's folder is full or read-only
        path = sqlite_path(uri) or Path(uri)
        refused = write_error(exc, path, "the tracking store",
                              fix="Make its folder writable or free space there, or log "
                                  "elsewhere with --tracking-uri")
        if refused is None:
            raise
        raise refused from exc
    except Exception as exc:
        raise BenchError(
            f"cannot use the MLflow tracking store {uri}: {exc}. Check --tracking-uri / "
            f"MLFLOW_TRACKING_URI (a server must be running and reachable)."
        ) from exc


@functools.cache  # the CPU does not change under a process: read /proc/cpuinfo once
def cpu_model() -> str:
    """The CPU's vendor, family and model (/proc/cpuinfo) and torch's vector ISA, e.g.
    "GenuineIntel family 6 model 167 AVX512": the kernels torch picks differ between CPU
    models, and a GAN's AUC with them (measured: ALAD -0.058 on PneumoniaMNIST seed 0, same
    code, threads and torch). The processor string where /proc/cpuinfo is absent."""
    import torch

    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor is enough
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "vendor_id" in fields:
        name = (f"{fields['vendor_id']} family {fields.get('cpu family', '?')} model "
                f"{fields.get('model', '?')}")
    else:
        name = platform.processor() or platform.machine()
    return f"{name} {torch.backends.cpu.get_cpu_capability()}".strip()


def environment_params() -> dict[str, str]:
    """Versions of the code and packages a run used, and the CPU it ran on."""
    import torch

    # The thread count changes float reduction order on the CPU: a GAN trained with 1 thread
    # ends elsewhere than with 2 (same seed). Recorded so such a difference can be explained.
    params = {"python": platform.python_version(), "git_commit": git_commit(),
              "torch_threads": str(torch.get_num_threads()), "cpu": cpu_model()}
    for package in ("medad-bench", "torch", "torchvision", "anomalib", "timm", "numpy",
                    "scikit-learn", "mlflow"):
        try:
            params[f"version.{package}"] = version(package)
        except PackageNotFoundError:
            params[f"version.{package}"] = "not installed"
    return params


#: Identity-relevant packages: another version of any of them may give another number.
IDENTITY_PACKAGES = ("torch", "torchvision", "anomalib", "timm")
#: What "the code" of a run is: the suite's own source and its built-in dataset cards, found
#: through the import system (a checkout's benchmark/, methods/, datasets/ or an installed
#: wheel's medad_bench/), never whatever else lies beside them. Generated reports and results
#: are not code, so writing a report (or `make demo`) never invalidates finished runs.
CODE_PACKAGES = (("medad_bench", "*.py"), ("medad_bench.methods", "*.py"),
                 ("medad_bench.datasets", "*.toml"))


def code_version(folders: dict[str, Path] | None = None) -> str:
    """A hash of the code's files (not of the commit: committing a report is not a code
    change, and an edited file is one even before it is committed). The same source gives the
    same version from a checkout and from an installed wheel."""
    digest = hashlib.sha256()
    for name, path in code_files(folders):
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return f"code-{digest.hexdigest()[:16]}"


def code_files(folders: dict[str, Path] | None = None) -> list[tuple[str, Path]]:
    """(name inside the package, path) of every file `code_version` hashes, sorted by name.
    `folders`: package -> folder (default: where each package is imported from)."""
    folders = folders or {package: package_folder(package) for package, _ in CODE_PACKAGES}
    roots = set(folders.values())
    files = []
    for package, pattern in CODE_PACKAGES:
        root = folders[package]
        for path in root.rglob(pattern):
            # A wheel nests methods/ inside medad_bench/: hash each file under its own package.
            nested = any(other != root and other in path.parents and root in other.parents
                         for other in roots)
            if "__pycache__" in path.parts or nested or not path.is_file():
                continue
            name = f"{package.replace('.', '/')}/{path.relative_to(root).as_posix()}"
            files.append((name, path))
    return sorted(files)


def environment_identity(device_type: str, threads: str) -> dict[str, str]:
    """What about the machine decides a number: device type, torch threads (they change the
    order of float sums on a CPU) and the versions of the numeric packages."""
    identity = {"device_type": device_type, "torch_threads": threads}
    for package in IDENTITY_PACKAGES:
        try:
            identity[f"version.{package}"] = version(package)
        except PackageNotFoundError:
            identity[f"version.{package}"] = "not installed"
    return identity


def git_commit() -> str:
    """The source checkout's commit, with `+dirty` when it has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
        return commit + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Heartbeat:
    """A daemon thread that stamps HEARTBEAT_TAG on a run every `interval` seconds until
    stopped; it dies with its process, so a killed run stops beating."""

    def __init__(self, uri: str, run_id: str, interval: float | None = None) -> None:
        self.uri = uri
        self.run_id = run_id
        self.interval = heartbeat_seconds() if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"bench-heartbeat-{run_id[:8]}",
                                        daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _beat(self) -> None:
        client = _client(self.uri)
        while not self._stop.wait(self.interval):
            try:
                client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.3f}")
            except Exception:  # noqa: S112
                # A missed beat must not end the run; beats missed for long enough make
                # other hosts take it for dead, which is then what it looks like to them.
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            # Bounded: a beat stuck in a retrying HTTP call must not hold up the run's end.
            self._thread.join(timeout=5)


#: Words of the errors MLflow's client raises when the store went away mid-run (an HTTP server
#: that stopped answering) or cannot take writes (a SQLite file on a full disk).
_UNREACHABLE = ("Connection refused", "Max retries exceeded", "ConnectionError",
                "Connection aborted", "RemoteDisconnected")
_STORE_FULL = ("database or disk is full", "disk I/O error")


def store_failure(exc: BaseException, uri: str) -> BenchError | None:
    """The user's message when `exc` means the tracking store itself failed (not the run):
    the grid must stop, since no other run could be logged either; None otherwise."""
    text = str(exc)
    if any(word in text for word in _UNREACHABLE):
        return BenchError(
            f"lost the connection to the MLflow server at {uri} in the middle of a run "
            f"({type(exc).__name__}). That run's numbers were not logged; runs finished before "
            f"are safe in the store. Start the server again and run the same command: "
            f"finished runs are skipped and the interrupted one is done again.")
    if any(word in text for word in _STORE_FULL):
        return BenchError(
            f"the tracking store {uri} cannot take writes ({text.splitlines()[0][:200]}). "
            f"Free space on its disk, then run the same command again: finished runs are "
            f"skipped and the interrupted one is done again.")
    return None


class RunLogger:
    """Logs one run: params, metrics and artifacts, then marks it finished or failed. While
    the run is open a Heartbeat keeps its HEARTBEAT_TAG fresh."""

    def __init__(self, uri: str, experiment_id: str, run_name: str, tags: dict[str, str]) -> None:
        self.client = _client(uri)
        run = retrying(self.client.create_run, experiment_id, run_name=run_name,
                       tags={**{f"{TAG_PREFIX}{k}": v for k, v in tags.items()},
                             HEARTBEAT_TAG: f"{time.time():.3f}"})
        self.run_id = run.info.run_id
        artifact_uri = run.info.artifact_uri or ""
        #: Where the artifacts go (a folder for a local store; the URI otherwise).
        self.artifact_root = (urllib.parse.unquote(urllib.parse.urlparse(artifact_uri).path)
                              if artifact_uri.startswith("file:") else artifact_uri)
        self.heartbeat = Heartbeat(uri, self.run_id).start()

    def params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_text(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's per-call limit
            retrying(self.client.log_batch, self.run_id, params=items[start:start + 100])

    def metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self.series([(name, value, step) for name, value in metrics.items()])

    def series(self, points: list[tuple[str, float, int]]) -> None:
        """Log (name, value, step) points, e.g. a training curve, in as few calls as possible."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(name, float(value), now, int(step)) for name, value, step in points]
        for start in range(0, len(items), 1000):  # MLflow's per-call limit
            retrying(self.client.log_batch, self.run_id, metrics=items[start:start + 1000])

    def _artifact(self, name: str) -> Any:
        """Turns a full or read-only disk, under the temporary copy or the artifact store,
        into one WriteError naming where the artifact was going."""
        return writing(Path(self.artifact_root), f"the run's artifact {name}",
                       fix="Free space there (the artifact store beside the tracking "
                           "database), or log to another --tracking-uri")

    def figure(self, figure: Any, name: str) -> None:
        import matplotlib.pyplot as plt

        with self._artifact(name), tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            figure.savefig(path, dpi=110)
            plt.close(figure)
            self.client.log_artifact(self.run_id, str(path))

    def table(self, frame: pd.DataFrame, name: str) -> None:
        with self._artifact(name), tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            frame.to_csv(path, index=False)
            self.client.log_artifact(self.run_id, str(path))

    def arrays(self, arrays: dict[str, Any], name: str) -> None:
        """Named numpy arrays as one compressed .npz artifact."""
        import numpy as np

        with self._artifact(name), tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            np.savez_compressed(path, **arrays)
            self.client.log_artifact(self.run_id, str(path))

    def json(self, data: dict[str, Any], name: str) -> None:
        with self._artifact(name), tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_text(json.dumps(data, indent=2, default=str) + "\n")
            self.client.log_artifact(self.run_id, str(path))

    def finish(self, ok: bool) -> None:
        self.heartbeat.stop()
        retrying(self.client.set_terminated, self.run_id, "FINISHED" if ok else "FAILED")


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]


def finished_runs(uri: str, dataset: str) -> pd.DataFrame:
    """All finished runs of `dataset`, newest first, one row each with params and metrics.

    Columns: run_id, start_time, method, seed, profile, split_hash, data_version, backbone,
    backbone_weights (for people), weights_identity (what was loaded), run_identity (all but
    the seed), contaminated, tuned ("true" when `--set` changed the config: hyper-parameters
    someone chose, perhaps on test data; "false" for runs logged before the param existed),
    tuned_fields, deterministic, competent ("true" / "false" from the competence checks, ""
    for runs logged before them), competence_failed and `metric.<name>` for each metric.
    """
    client = _client(uri)
    try:
        experiment = client.get_experiment_by_name(experiment_name(dataset))
    except Exception as exc:
        raise BenchError(f"cannot read the MLflow tracking store {uri}: {exc}. Check "
                         f"--tracking-uri / MLFLOW_TRACKING_URI.") from exc
    if experiment is None:
        return pd.DataFrame()
    rows = []
    token = None
    while True:
        page = client.search_runs([experiment.experiment_id], filter_string="",
                                  order_by=["attributes.start_time DESC"], max_results=1000,
                                  page_token=token)
        for run in page:
            if run.info.status != "FINISHED" or "method" not in run.data.params:
                continue  # failed runs, and the report's own run
            params = run.data.params
            row = {
                "run_id": run.info.run_id,
                "start_time": run.info.start_time,
                "method": params.get("method"),
                "seed": int(params.get("seed", -1)),
                "profile": params.get("profile"),
                "split_hash": params.get("split_hash"),
                "data_version": params.get("data_version", ""),
                "backbone": params.get("config.backbone", ""),
                "backbone_weights": params.get("backbone_weights", ""),
                "weights_identity": params.get("weights.identity", ""),
                "weights_fallback": params.get("weights.fallback", "none"),
                "run_identity": params.get("run_identity", ""),
                "warnings": params.get("warnings", ""),
                "budget_images_seen": params.get("budget_images_seen", ""),
                # "1" for runs logged before budget scales existed: the profile's budget.
                "budget_scale": params.get("budget_scale", "1"),
                "contaminated": params.get("contaminated", "false"),
                "tuned": params.get("tuned", "false"),
                "tuned_fields": params.get("tuned_fields", ""),
                "deterministic": params.get("deterministic", "false"),
                # What a recorded AUC depends on beyond code and data (benchmark/check/gate.py).
                "torch_threads": params.get("torch_threads", ""),
                "torch_version": params.get("version.torch", ""),
                "device": params.get("device", ""),
                "cpu": params.get("cpu", ""),  # "" for runs logged before it was recorded
                # "" for runs logged before the competence checks existed: unchecked.
                "competent": params.get("competent", ""),
                "competence_failed": params.get("competence_failed", ""),
            }
            row.update({f"metric.{k}": v for k, v in run.data.metrics.items()})
            rows.append(row)
        token = page.token
        if not token:
            break
    return pd.DataFrame(rows)


@dataclass
class KeyedRun:
    run_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED
    host: str
    pid: int
    start_time: int
    metrics: dict[str, float]
    #: Unix seconds of its last heartbeat; None for runs logged before heartbeats existed.
    heartbeat: float | None = None


def runs_by_key(uri: str, experiment_id: str) -> dict[str, list[KeyedRun]]:
    """Every run of the experiment that carries a run key, grouped by key, newest first."""
    client = _client(uri)
    grouped: dict[str, list[KeyedRun]] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string="",
                                  order_by=["attributes.start_time DESC"], max_results=1000,
                                  page_token=token)
        for run in page:
            tags = run.data.tags
            key = tags.get(f"{TAG_PREFIX}run_key")
            beat = tags.get(HEARTBEAT_TAG)
            if key:
                grouped.setdefault(key, []).append(KeyedRun(
                    run_id=run.info.run_id, status=run.info.status,
                    host=tags.get(f"{TAG_PREFIX}host", ""),
                    pid=int(tags.get(f"{TAG_PREFIX}pid", "0") or 0),
                    start_time=run.info.start_time, metrics=dict(run.data.metrics),
                    heartbeat=float(beat) if beat else None))
        token = page.token
        if not token:
            break
    return grouped


def is_alive_here(run: KeyedRun) -> bool:
    """True when the run's process is still alive on this machine."""
    if run.host != socket.gethostname() or run.pid <= 0:
        return False
    try:
        os.kill(run.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def heartbeat_age(run: KeyedRun, now: float | None = None) -> float | None:
    """Seconds since the run's last heartbeat (None: it has none)."""
    if run.heartbeat is None:
        return None
    return max(0.0, (time.time() if now is None else now) - run.heartbeat)


def is_alive(run: KeyedRun, now: float | None = None,
             stale_seconds: float | None = None) -> bool:
    """Whether a RUNNING run is still being worked on, by whichever machine.

    A fresh heartbeat means alive, whatever the host: a process id says nothing about another
    machine. On this host a process that no longer exists short-cuts to dead. A run logged
    before heartbeats existed has only its process id, so it is alive only here.
    """
    if run.status != "RUNNING":
        return False
    here = run.host == socket.gethostname()
    if here and run.pid > 0 and not is_alive_here(run):
        return False
    age = heartbeat_age(run, now)
    if age is None:
        return here and run.pid > 0
    return age < (heartbeat_stale_seconds() if stale_seconds is None else stale_seconds)


def mark_killed(uri: str, run_id: str) -> None:
    """A run left RUNNING by a killed process: mark it FAILED so no report uses it."""
    client = _client(uri)
    client.set_tag(run_id, f"{TAG_PREFIX}killed", "true")
    client.set_terminated(run_id, "FAILED")


@contextlib.contextmanager
def downloaded_artifact(uri: str, run_id: str, names: tuple[str, ...]) -> Iterator[Path | None]:
    """The first of `names` the run has, downloaded to a temp folder that is removed on exit;
    None when the run has none of them. One listing of the run's artifacts."""
    import mlflow.artifacts

    present = {item.path for item in _client(uri).list_artifacts(run_id)}
    name = next((n for n in names if n in present), None)
    if name is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bench-artifact-") as target:
        yield Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name,
                                                       dst_path=target, tracking_uri=uri))


def run_params(uri: str, run_id: str) -> dict[str, str]:
    """All params of one run, as logged (text)."""
    return dict(_client(uri).get_run(run_id).data.params)


def log_report(uri: str, dataset: str, files: list[Path], params: dict[str, Any]) -> str:
    """The report's files as one MLflow run (tag bench.kind=report) in the dataset's
    experiment, so the figures sit beside the runs they summarise."""
    experiment_id = ensure_experiment(uri, dataset)
    client = _client(uri)
    run = client.create_run(experiment_id, run_name=f"report-{dataset}",
                            tags={f"{TAG_PREFIX}kind": "report"})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, _param_text(value))
    for path in files:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
