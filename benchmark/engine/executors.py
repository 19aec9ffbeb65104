"""Executors: where the runs of a grid execute. All of them log to the plan's one store.

- local, jobs=1: one after the other in this process.
- local, jobs=N: N worker processes on this machine (torch threads split between them).
- ray: one Ray task per run, asking for a GPU when the device is cuda; `ray_address` joins an
  existing cluster, otherwise a local Ray runtime starts. Workers must see the same files as
  this process (the cache, the tracking store or server): a shared filesystem on a cluster, or
  an `mlflow server` as the store.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from medad_bench.api.contract import get_method
from medad_bench.data import PreparedDataset, load_card
from medad_bench.data.prepared import open_prepared
from medad_bench.engine.grid import RunPlan, RunResult, RunSpec, threads_per_worker
from medad_bench.engine.run import execute_spec
from medad_bench.errors import BenchError

EXECUTORS = ("local", "ray")
#: Environment a worker needs to find the same cards, cache and store as the parent.
FORWARDED_ENV = ("BENCH_DATASETS_PATH", "BENCH_CACHE_DIR", "MLFLOW_TRACKING_URI",
                 "CUBLAS_WORKSPACE_CONFIG", "BENCH_HEARTBEAT_SECONDS")


@dataclass(frozen=True)
class WorkerContext:
    """What a worker process sets up before running a spec: cwd, environment, threads."""

    cwd: str
    env: dict[str, str]
    threads: int


def execute(plan: RunPlan, specs: list[RunSpec], data: PreparedDataset, *, device: str,
            experiment_id: str) -> list[RunResult]:
    """Run the specs on the prepared data; worker processes reopen its cache, never the tree."""
    if not specs:
        return []
    if plan.executor == "ray":
        return _execute_ray(plan, specs, data.folder, device=device,
                            experiment_id=experiment_id)
    if plan.jobs <= 1:
        return [execute_spec(plan, spec, data, device=device, experiment_id=experiment_id)
                for spec in specs]
    return _execute_processes(plan, specs, data.folder, device=device,
                              experiment_id=experiment_id)


def longest_first(specs: list[RunSpec]) -> list[RunSpec]:
    """The specs with the slowest methods first (`Method.quick_cpu_seconds`), seeds in order:
    when several run at a time, a long run started last would finish alone while the other
    workers idle. Only the start order changes: every run is seeded on its own."""
    return sorted(specs, key=lambda spec: -get_method(spec.method).quick_cpu_seconds)


def worker_context(parallel: int) -> WorkerContext:
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    return WorkerContext(cwd=os.getcwd(), env=env, threads=threads_per_worker(parallel))


def run_in_worker(context: WorkerContext, plan: RunPlan, spec: RunSpec, cache: Path,
                  device: str, experiment_id: str) -> RunResult:
    """The body of a worker task: same folder, environment and a share of the cores; the
    dataset's cache is memory-mapped again (the parent prepared it)."""
    if Path(context.cwd).is_dir():
        os.chdir(context.cwd)
    os.environ.update(context.env)
    # A spawned worker does not inherit the CLI's warning filters: without them every worker
    # prints timm's and anomalib's import-time FutureWarnings into the user's log.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(context.threads)
    data = open_prepared(load_card(plan.dataset), cache)
    return execute_spec(plan, spec, data, device=device, experiment_id=experiment_id)


def _execute_processes(plan: RunPlan, specs: list[RunSpec], cache: Path, *, device: str,
                       experiment_id: str) -> list[RunResult]:
    jobs = min(plan.jobs, len(specs))
    context = worker_context(plan.jobs)  # threads as planned_threads said, whatever is left
    # spawn: a forked child would inherit torch's thread pools and the MLflow client.
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_in_worker, context, plan, spec, cache, device,
                               experiment_id) for spec in longest_first(specs)]
        return [future.result() for future in futures]


def _execute_ray(plan: RunPlan, specs: list[RunSpec], cache: Path, *, device: str,
                 experiment_id: str) -> list[RunResult]:
    try:
        import ray
    except ImportError:
        raise BenchError("--executor ray needs Ray: pip install 'medad-bench[ray]' (or "
                         "pip install 'ray[default]'), or use --executor local.") from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=plan.ray_address, include_dashboard=False,
                     log_to_driver=True, logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BenchError(f"cannot start or join Ray at {plan.ray_address or 'local'}: "
                             f"{exc}. Check --ray-address (ray://host:10001 or host:6379), "
                             f"or leave it out to start a local runtime.") from None
    try:
        gpus = 1 if device.startswith("cuda") else 0
        cluster_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        cpus = max(1, cluster_cpus // min(len(specs), cluster_cpus))
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(run_in_worker)
        context = dataclasses.replace(worker_context(1), threads=cpus)
        futures = [task.remote(context, plan, spec, cache, device, experiment_id)
                   for spec in longest_first(specs)]
        return list(ray.get(futures))
    finally:
        if started_here:
            ray.shutdown()
