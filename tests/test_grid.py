"""Grids that outgrow one session: run keys, skipping, killed runs, executors, a real MLflow
server, and the report's statistics and figures.

Runs are real (PaDiM / a few AnomalyPro iterations on the tiny synthetic card), the MLflow
stores are real (a SQLite file, and `mlflow server` on 127.0.0.1 started and stopped here).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import free_port
from mlflow.tracking import MlflowClient

from medad_bench.cli import cli
from medad_bench.tracking import experiment_name, finished_runs

# Checkpoints every 10 steps: the kill lands after the first, with 50 steps still to go.
SLOW_ANOMALYPRO = ["--set", "anomalypro.iterations=60", "--set", "anomalypro.log_every=10",
                   "--set", "anomalypro.decay_iterations=10"]


def bench(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


RUN_COLUMNS = ["run_id", "status", "method", "seed", "killed"]


def all_runs(uri: str, dataset: str = "tiny") -> pd.DataFrame:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name(dataset))
    if experiment is None:
        return pd.DataFrame(columns=RUN_COLUMNS)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    rows = [{"run_id": r.info.run_id, "status": r.info.status,
             "method": r.data.params.get("method"), "seed": r.data.params.get("seed"),
             "killed": r.data.tags.get("bench.killed") == "true"} for r in runs]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def test_a_finished_run_is_skipped_and_force_reruns_it(tracking_uri):
    args = ["run", "--methods", "padim", "--dataset", "tiny", "--seeds", "0,1",
            "--no-progress", "--tracking-uri", tracking_uri]
    first = bench(*args)
    assert first.exit_code == 0, first.output
    second = bench(*args)
    assert second.exit_code == 0, second.output
    assert second.output.count("skipped: finished before") == 2
    assert len(all_runs(tracking_uri)) == 2  # nothing new was run or logged
    # The skipped rows report the finished runs' own figures.
    aucs = re.findall(r"padim\s+\d\s+(\d\.\d{4})", first.output)
    assert re.findall(r"padim\s+\d\s+(\d\.\d{4})", second.output) == aucs
    forced = bench(*args, "--force")
    assert forced.exit_code == 0 and "skipped: finished before" not in forced.output
    assert len(all_runs(tracking_uri)) == 4
    assert re.findall(r"padim\s+\d\s+(\d\.\d{4})", forced.output) == aucs


def test_a_changed_config_is_a_new_run_key(tracking_uri):
    base = ["run", "--methods", "padim", "--dataset", "tiny", "--no-progress",
            "--tracking-uri", tracking_uri]
    assert bench(*base).exit_code == 0
    changed = bench(*base, "--set", "padim.n_features=50")
    assert changed.exit_code == 0, changed.output
    assert "skipped: finished before" not in changed.output
    assert len(all_runs(tracking_uri)) == 2


def _start_grid(uri: str, workdir: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "medad_bench.cli", "run", "--methods", "padim,anomalypro",
               "--dataset", "tiny", "--seeds", "0", "--no-progress", "--tracking-uri", uri,
               *SLOW_ANOMALYPRO]
    return subprocess.Popen(command, cwd=workdir, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(workdir: Path, method: str, process: subprocess.Popen,
                         timeout: float = 240) -> None:
    """Until the method's first checkpoint is on disk: the kill then lands mid-training."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list((workdir / "results" / "runs" / "tiny").glob(f"{method}-*/last.pt")):
            return
        if process.poll() is not None:
            pytest.fail(f"the grid ended before {method} started:\n{process.stdout.read()}")
        time.sleep(0.5)
    process.kill()
    pytest.fail(f"{method} never started")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_grid_resumes_where_it_stopped(tracking_uri, isolated, sig):
    process = _start_grid(tracking_uri, isolated)
    try:
        _wait_for_checkpoint(isolated, "anomalypro", process)
        process.send_signal(sig)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:  # never leave a training process behind a failed test
            process.kill()
    runs = all_runs(tracking_uri)
    assert runs.loc[runs.method == "padim", "status"].tolist() == ["FINISHED"]
    if sig == signal.SIGTERM:
        assert process.returncode == 128 + signal.SIGTERM
        assert runs.loc[runs.method == "anomalypro", "status"].tolist() == ["FAILED"]
    else:  # SIGKILL: nothing could be logged; the run is left RUNNING
        assert runs.loc[runs.method == "anomalypro", "status"].tolist() == ["RUNNING"]
    # The same command again: padim is skipped, anomalypro is rerun and resumes.
    restart = subprocess.run(
        [sys.executable, "-m", "medad_bench.cli", "run", "--methods", "padim,anomalypro",
         "--dataset", "tiny", "--seeds", "0", "--no-progress", "--tracking-uri", tracking_uri,
         *SLOW_ANOMALYPRO], cwd=isolated, capture_output=True, text=True, timeout=600)
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert re.search(r"padim\s+0\s+\d\.\d{4}.*skipped", restart.stdout)
    runs = all_runs(tracking_uri)
    killed = runs[runs.method == "anomalypro"]
    assert sorted(killed.status) == ["FAILED", "FINISHED"]
    if sig == signal.SIGKILL:
        assert killed.loc[killed.status == "FAILED", "killed"].all()
    finished_id = killed.loc[killed.status == "FINISHED", "run_id"].iloc[0]
    params = MlflowClient(tracking_uri).get_run(finished_id).data.params
    assert int(params["resumed_from_step"]) >= 10  # from the killed run's checkpoint


def test_worker_processes_give_the_same_aucs_as_in_process(tracking_uri, tmp_path):
    args = ["run", "--methods", "padim", "--dataset", "tiny", "--seeds", "0,1", "--no-progress"]
    local = bench(*args, "--tracking-uri", tracking_uri)
    other = f"sqlite:///{tmp_path / 'jobs.db'}"
    jobs = bench(*args, "--jobs", "2", "--tracking-uri", other)
    assert jobs.exit_code == 0, jobs.output
    pattern = r"padim\s+(\d)\s+(\d\.\d{4})"
    assert re.findall(pattern, jobs.output) == re.findall(pattern, local.output)
    assert len(finished_runs(other, "tiny")) == 2


def test_ray_executor_runs_the_grid_into_one_store_under_the_plans_settings(tracking_uri):
    """One Ray runtime (its start is most of the cost) for both: Ray tasks give the local
    AUCs, and the plan's deterministic setting reaches the Ray worker."""
    pytest.importorskip("ray", reason="the ray extra is part of the dev install")
    args = ["run", "--methods", "padim", "--dataset", "tiny", "--seeds", "0,1", "--no-progress",
            "--deterministic", "--tracking-uri", tracking_uri]
    result = bench(*args, "--executor", "ray")
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri)
    for run_id in finished_runs(tracking_uri, "tiny").run_id:
        params = client.get_run(run_id).data.params
        # Logged from inside the Ray worker: its own torch mode and environment.
        assert params["deterministic"] == "true"
        assert params["cublas_workspace_config"] == ":4096:8"
    local = bench(*args, "--force")
    pattern = r"padim\s+(\d)\s+(\d\.\d{4})"
    assert re.findall(pattern, result.output) == re.findall(pattern, local.output)
    assert len(re.findall(pattern, result.output)) == 2
    assert len(finished_runs(tracking_uri, "tiny")) == 4


def test_runs_and_artifacts_go_to_a_real_mlflow_server(mlflow_server, isolated):
    uri, artifacts = mlflow_server
    result = bench("run", "--methods", "padim", "--dataset", "tiny", "--no-progress",
                   "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    runs = finished_runs(uri, "tiny")
    assert len(runs) == 1
    stored = {p.name for p in artifacts.rglob("*") if p.is_file()}
    assert {"scores.csv", "roc.csv", "config.json", "map_samples.npz"} <= stored
    assert not (isolated / "mlruns").exists()  # nothing was written locally instead
    report = bench("report", "--dataset", "tiny", "--tracking-uri", uri)
    assert report.exit_code == 0, report.output
    assert "roc.png" in {p.name for p in artifacts.rglob("*")}


def test_an_unreachable_server_fails_at_once(isolated):
    port = free_port()  # nothing listens there
    started = time.monotonic()
    result = bench("run", "--methods", "padim", "--dataset", "tiny", "--no-progress",
                   "--tracking-uri", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert time.monotonic() - started < 30
    assert f"cannot reach the MLflow server at http://127.0.0.1:{port}" in result.output
    assert "Nothing was trained" in result.output
    assert not (isolated / "results" / "runs").exists()


def test_report_has_cis_paired_tests_pixel_metrics_and_figures(tracking_uri, isolated):
    result = bench("run", "--methods", "padim,patchcore", "--dataset", "tiny", "--seeds", "0,1",
                   "--no-progress", "--tracking-uri", tracking_uri)
    assert result.exit_code == 0, result.output
    md = bench("report", "--dataset", "tiny", "--tracking-uri", tracking_uri)
    assert md.exit_code == 0, md.output
    text = (isolated / "results" / "reports" / "tiny.md").read_text()
    for needle in ("AUC 95% CI", "p vs best", "Pixel AUROC", "Dice", "bootstrap",
                   "tiny/roc.png", "tiny/paired_comparison.png", "tiny/maps_padim.png"):
        assert needle in text, needle
    assert re.search(r"\[0\.\d{3}, [01]\.\d{3}\]", text)
    for name in ("roc", "score_distributions", "paired_comparison", "cost", "maps_padim"):
        assert (isolated / "results" / "reports" / "tiny" / f"{name}.png").stat().st_size > 5000
    html = bench("report", "--dataset", "tiny", "--format", "html", "--tracking-uri",
                 tracking_uri)
    assert html.exit_code == 0, html.output
    page = (isolated / "results" / "reports" / "tiny.html").read_text()
    assert page.count("data:image/png;base64,") >= 5
    # Nothing fetched from outside; the embedded images' base64 text can spell "http" by chance.
    text_only = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http" not in text_only.lower().replace("http-equiv", "")
    # The report's own MLflow run holds the files and never counts as a method run.
    assert len(finished_runs(tracking_uri, "tiny")) == 4
    runs = finished_runs(tracking_uri, "tiny")
    assert np.all((runs["metric.pixel_auroc"] > 0.5) & (runs["metric.pixel_auroc"] <= 1))


# --- liveness by heartbeat -----------------------------------------------------------------------


def _padim(uri: str) -> object:
    return bench("run", "--methods", "padim", "--dataset", "tiny", "--no-progress",
                 "--weights", "padim=random", "--tracking-uri", uri)


def _foreign_running_run(uri: str) -> str:
    """A RUNNING run of padim seed 0 as a `bench run` on another machine would leave it: the
    key of the real run, another host's name, a pid meaningless here."""
    first = _padim(uri)
    assert first.exit_code == 0, first.output
    client = MlflowClient(uri)
    finished = client.get_run(finished_runs(uri, "tiny").run_id.iloc[0])
    client.set_terminated(finished.info.run_id, "FAILED")  # so only the foreign run counts
    tags = {key: finished.data.tags[key] for key in ("bench.run_key", "bench.method")}
    run = client.create_run(finished.info.experiment_id, run_name="padim-s0", tags={
        **tags, "bench.host": "gpu-node-7.elsewhere", "bench.pid": str(os.getpid()),
        "bench.heartbeat": f"{time.time():.3f}"})
    return run.info.run_id


def test_a_run_alive_on_another_host_is_left_alone_until_its_heartbeat_stops(
        mlflow_server, monkeypatch):
    uri, _ = mlflow_server
    foreign = _foreign_running_run(uri)
    client = MlflowClient(uri)

    fresh = _padim(uri)
    assert fresh.exit_code == 0, fresh.output
    assert re.search(r"padim seed=0: running on host gpu-node-7\.elsewhere, heartbeat \d+s ago; "
                     r"skipping", fresh.output), fresh.output
    assert not re.search(r"padim\s+0\s+\d\.\d{4}", fresh.output)  # not reported as done
    assert client.get_run(foreign).info.status == "RUNNING"
    assert len(finished_runs(uri, "tiny")) == 0

    # Its host went silent: 60 s without a beat is dead under a 30 s limit.
    monkeypatch.setenv("BENCH_HEARTBEAT_STALE_SECONDS", "30")
    client.set_tag(foreign, "bench.heartbeat", f"{time.time() - 60:.3f}")
    stale = _padim(uri)
    assert stale.exit_code == 0, stale.output
    assert re.search(rf"run {foreign} on host gpu-node-7\.elsewhere, heartbeat 6\ds ago: dead; "
                     r"marked failed, doing it again", stale.output), stale.output
    assert re.search(r"padim\s+0\s+\d\.\d{4}", stale.output)
    dead = client.get_run(foreign)
    assert dead.info.status == "FAILED" and dead.data.tags["bench.killed"] == "true"
    assert len(finished_runs(uri, "tiny")) == 1


def test_a_running_run_keeps_its_heartbeat_fresh_and_stops_when_it_ends(tracking_uri,
                                                                         monkeypatch):
    from medad_bench.tracking import HEARTBEAT_TAG, RunLogger, ensure_experiment

    monkeypatch.setenv("BENCH_HEARTBEAT_SECONDS", "0.2")
    client = MlflowClient(tracking_uri)
    logger = RunLogger(tracking_uri, ensure_experiment(tracking_uri, "tiny"), "beat", {})
    first = float(client.get_run(logger.run_id).data.tags[HEARTBEAT_TAG])
    time.sleep(1.5)
    later = float(client.get_run(logger.run_id).data.tags[HEARTBEAT_TAG])
    assert later - first >= 0.8
    logger.finish(ok=True)
    last = client.get_run(logger.run_id).data.tags[HEARTBEAT_TAG]
    time.sleep(0.8)
    assert client.get_run(logger.run_id).data.tags[HEARTBEAT_TAG] == last


def test_parallel_grids_start_the_slowest_methods_first_and_keep_seed_order():
    from medad_bench.api import available_methods, get_method
    from medad_bench.engine.executors import longest_first
    from medad_bench.engine.grid import RunSpec

    names = list(available_methods())
    specs = [RunSpec(name, seed, f"{name}-{seed}", name, None) for name in names
             for seed in (0, 1)]
    ordered = longest_first(specs)
    assert sorted(s.key for s in ordered) == sorted(s.key for s in specs)
    hints = [get_method(s.method).quick_cpu_seconds for s in ordered]
    assert hints == sorted(hints, reverse=True)
    for name in names:
        assert [s.seed for s in ordered if s.method == name] == [0, 1]
    # Every built-in states its own measured figure: the default would schedule it blindly.
    assert all("quick_cpu_seconds" in vars(get_method(name)) for name in names), \
        [name for name in names if "quick_cpu_seconds" not in vars(get_method(name))]


def test_quick_cpu_grids_default_to_one_single_thread_run_per_core(monkeypatch):
    import psutil

    from medad_bench.engine.grid import QUICK_RUN_BYTES, automatic_parallelism

    monkeypatch.delenv("BENCH_JOBS")
    cores = len(os.sched_getaffinity(0))
    by_memory = psutil.virtual_memory().available // QUICK_RUN_BYTES
    assert automatic_parallelism("cpu", "quick", runs=13) == (min(cores, 13, by_memory), 1)
    # One run still gets one thread: a seed's AUC must not depend on the grid's size.
    assert automatic_parallelism("cpu", "quick", runs=1) == (1, 1)
    assert automatic_parallelism("cuda", "quick", runs=13) == (1, None)
    assert automatic_parallelism("cpu", "full", runs=13) == (1, None)
    monkeypatch.setenv("BENCH_JOBS", "3")
    assert automatic_parallelism("cpu", "quick", runs=13) == (3, None)


def test_a_plain_grid_says_how_it_runs_and_logs_one_thread(tracking_uri, monkeypatch):
    monkeypatch.delenv("BENCH_JOBS")
    monkeypatch.delenv("BENCH_THREADS", raising=False)
    result = bench("run", "--methods", "padim", "--dataset", "tiny", "--seeds", "0,1",
                   "--no-progress", "--device", "cpu", "--tracking-uri", tracking_uri)
    assert result.exit_code == 0, result.output
    jobs = min(len(os.sched_getaffinity(0)), 2)
    assert f"{jobs} run(s) at a time, 1 torch thread each" in result.output
    client = MlflowClient(tracking_uri)
    runs = finished_runs(tracking_uri, "tiny")
    assert len(runs) == 2
    assert {client.get_run(r).data.params["torch_threads"] for r in runs.run_id} == {"1"}
