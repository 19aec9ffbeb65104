"""Planning a grid: what a `bench run` will do, and which of it is done already.

A `RunPlan` is the grid (methods x seeds on one dataset, with the profile and settings);
`make_specs` turns it into one `RunSpec` per run, each with the key that names its result;
`triage` sorts the specs into runs finished before (skipped), runs alive elsewhere (left
alone) and runs to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medad_bench.api.contract import get_method, make_config
from medad_bench.api.training import IterativeMethod
from medad_bench.data import PreparedDataset
from medad_bench.errors import BenchError
from medad_bench.tracking import (
    KeyedRun,
    heartbeat_age,
    heartbeat_stale_seconds,
    is_alive,
    mark_killed,
    runs_by_key,
)

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    method: str
    seed: int
    run_id: str
    ok: bool
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    #: Finished earlier with the same run key, so not run again.
    skipped: bool = False


@dataclass
class RunPlan:
    """Everything that defines a grid of runs on one dataset."""

    methods: list[str]
    dataset: str
    seeds: list[int]
    profile: str = "quick"
    device: str = "auto"
    tracking_uri: str = ""
    data_root: Path | None = None
    #: Read files reached through links out of the data root (--allow-external-links);
    #: False: the card's setting (or $BENCH_ALLOW_EXTERNAL_LINKS) decides.
    allow_external_links: bool = False
    #: method -> {config field -> value}, applied on top of the profile's config.
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Train every method on normal + unlabeled (the contaminated setting).
    contaminated: bool = False
    show_progress: bool = True
    #: local (in process, or `jobs` worker processes) or ray.
    executor: str = "local"
    jobs: int = 1
    ray_address: str | None = None
    #: Rerun even runs already finished with the same key.
    force: bool = False
    #: method -> the METHOD.FIELD names `--set` gave it. Such a run is `tuned`: its
    #: hyper-parameters were picked by someone, who may have looked at test results.
    tuned: dict[str, list[str]] = field(default_factory=dict)
    #: torch.use_deterministic_algorithms (and cuBLAS's fixed workspace) in every run.
    deterministic: bool = False
    #: Which checkpoint an iterative method keeps: "aucp" (label-free selection) or "last".
    select: str = "aucp"
    #: Train every iterative method this many times its profile's budget (its
    #: `budget_fields` scaled: `bench run --budget-scale`); part of the run identity.
    budget_scale: float = 1.0


@dataclass(frozen=True)
class RunSpec:
    """One (method, seed) of a plan, with its run key; small and picklable for workers."""

    method: str
    seed: int
    key: str
    label: str
    config: Any  # the method's resolved config (a dataclass)
    #: Everything but the seed that decides the number (hashed): runs of one method with the
    #: same identity are seeds of one experiment, and a report averages only those.
    identity: str = ""
    #: The facts behind the key that are not in the config: weights, device, threads, versions.
    provenance: dict[str, str] = field(default_factory=dict)


def plan_configs(plan: RunPlan, card: Any) -> dict[str, Any]:
    """Each method's resolved config: its profile's, the --set overrides, then the budget
    scale (which multiplies the overridden step counts too)."""
    configs = {}
    for name in plan.methods:
        method = get_method(name)
        config = make_config(method, plan.profile, image_size=card.image_size,
                             channels=card.channels, overrides=plan.overrides.get(name))
        scaled = method.budget_overrides(config, plan.budget_scale)
        configs[name] = dataclasses.replace(config, **scaled) if scaled else config
    return configs


def with_budget(methods: list[str]) -> list[str]:
    """The methods a budget scale applies to (iterative training), in their order."""
    return [name for name in methods if get_method(name).budget_fields]


def run_identity(method: str, config: Any, data: PreparedDataset, plan: RunPlan,
                 provenance: dict[str, str]) -> str:
    """Hash of everything but the seed that defines a run's result: the method, its resolved
    config, the split and data, the profile and setting, deterministic algorithms or not, and
    the provenance (weights actually loaded, device type, torch threads, package versions,
    code version).

    Whether the run is tuned is part of it too: `--set` to a value the profile already has
    leaves the resolved config unchanged, and the untuned run must not be taken for the tuned
    one nor the other way round.
    """
    identity = json.dumps({"method": method, "config": dataclasses.asdict(config),
                           "split": data.split_hash, "data": data.data_version,
                           "profile": plan.profile, "contaminated": plan.contaminated,
                           "tuned": bool(plan.tuned.get(method)),
                           "deterministic": plan.deterministic,
                           "select": selection_rule(method, plan),
                           "budget_scale": plan.budget_scale,
                           "provenance": provenance}, sort_keys=True, default=str)
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def run_key(identity: str, seed: int) -> str:
    """Same key, same result: the run's identity and its seed."""
    return hashlib.sha256(f"{identity}:{seed}".encode()).hexdigest()[:24]


def triage(plan: RunPlan, experiment_id: str,
           specs: list[RunSpec]) -> tuple[list[RunResult], list[RunSpec]]:
    """Split the grid into runs already finished with their key (skipped) and runs to do.

    A RUNNING run whose heartbeat went stale (or whose process is gone from this host) was
    killed: it is marked FAILED and done again. One with a fresh heartbeat belongs to another
    `bench run`, here or on another machine sharing the store: left alone, and not counted as
    done.
    """
    existing = runs_by_key(plan.tracking_uri, experiment_id)
    now = time.time()
    stale = heartbeat_stale_seconds()
    skipped: list[RunResult] = []
    todo: list[RunSpec] = []
    for spec in specs:
        runs = existing.get(spec.key, [])
        finished = [r for r in runs if r.status == "FINISHED"]
        running = [r for r in runs if r.status == "RUNNING"]
        alive = [r for r in running if is_alive(r, now, stale)]
        for run in running:
            if run not in alive:
                mark_killed(plan.tracking_uri, run.run_id)
                logger.warning("%s: run %s %s: dead; marked failed, doing it again",
                               spec.label, run.run_id, _whereabouts(run, now))
        if finished and not plan.force:
            skipped.append(RunResult(spec.method, spec.seed, finished[0].run_id, ok=True,
                                     metrics=finished[0].metrics, skipped=True))
        elif alive and not plan.force:
            logger.warning("%s: running %s; skipping", spec.label, _whereabouts(alive[0], now))
        else:
            todo.append(spec)
    return skipped, todo


def _whereabouts(run: KeyedRun, now: float) -> str:
    """'on host X, heartbeat 12s ago' (or the pid, for runs without heartbeats)."""
    age = heartbeat_age(run, now)
    beat = f"heartbeat {age:.0f}s ago" if age is not None else f"pid {run.pid}, no heartbeat"
    return f"on host {run.host or '?'}, {beat}"




def selection_rule(method: str, plan: RunPlan) -> str:
    """The checkpoint rule a run of `method` follows: the plan's for an iterative method,
    "none" for a method without checkpoints."""
    return plan.select if issubclass(get_method(method), IterativeMethod) else "none"


def make_specs(plan: RunPlan, configs: dict[str, Any], data: PreparedDataset,
               environment: dict[str, str], version: str) -> list[RunSpec]:
    """One spec per (method, seed), in the plan's order, each with its identity and key."""
    specs = []
    methods = methods_with_their_data(plan, data)
    total = len(methods) * len(plan.seeds)
    pairs = ((m, s) for m in methods for s in plan.seeds)
    for number, (name, seed) in enumerate(pairs, start=1):
        provenance = {**get_method(name).provenance(configs[name]), **environment,
                      "code_version": version}
        identity = run_identity(name, configs[name], data, plan, provenance)
        scale = f" budget={plan.budget_scale:g}x" if plan.budget_scale != 1 else ""
        specs.append(RunSpec(name, seed, run_key(identity, seed),
                             f"[{number}/{total}] {name} seed={seed}{scale}", configs[name],
                             identity=identity, provenance=provenance))
    return specs


def methods_with_their_data(plan: RunPlan, data: PreparedDataset) -> list[str]:
    """The plan's methods whose training sets the dataset has. A dataset without set A (BMAD
    publishes no unlabelled pool) cannot train a method that learns from unlabelled images:
    each such method is skipped with one line saying why, never trained on something else;
    --contaminated, which adds set A to every method's training set, is refused."""
    if len(data.rows("train_mixed")):
        return list(plan.methods)
    if plan.contaminated:
        raise BenchError(f"--contaminated trains every method on set A (unlabelled images) as "
                         f"well, and {data.card.name} has none (its tree has no unlabelled "
                         f"pool). Run without --contaminated.")
    kept = []
    for name in plan.methods:
        if "unlabeled" in get_method(name).uses:
            logger.warning("%s: skipped: it trains on unlabelled images (set A, train_mixed) "
                           "and %s has none (no unlabelled pool in its tree)", name,
                           data.card.name)
        else:
            kept.append(name)
    if not kept:
        raise BenchError(f"none of --methods {','.join(plan.methods)} can run on "
                         f"{data.card.name}: each trains on unlabelled images (set A), which "
                         f"this dataset does not have. Pick methods that train on healthy "
                         f"images only (bench list).")
    return kept


#: `bench run --threads N` pins every run's torch threads to N, whatever the machine: a
#: reference recorded with N threads is reproduced on any core count (the CI gate pins 1).
THREADS_ENV = "BENCH_THREADS"


def threads_per_worker(parallel: int) -> int:
    """Torch threads each of `parallel` concurrent runs gets: $BENCH_THREADS where pinned,
    else the cores shared evenly."""
    if os.environ.get(THREADS_ENV):
        return int(os.environ[THREADS_ENV])
    return max(1, usable_cores() // max(1, parallel))


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


#: The default of `bench run --jobs` where set (the test suite sets 1: its pytest workers
#: already share the cores).
JOBS_ENV = "BENCH_JOBS"
#: What one quick CPU run may hold (torch, anomalib, its networks and data; a quick run peaks
#: near 1 GiB): automatic jobs never exceed the available memory over this.
QUICK_RUN_BYTES = 2 * 2**30


def automatic_parallelism(device_type: str, profile: str, runs: int) -> tuple[int, int | None]:
    """(jobs, threads) of a grid given no --jobs: $BENCH_JOBS where set; else, for quick runs on
    a CPU, one run per core (at most `runs`, and what memory allows), each on ONE torch thread;
    else one run at a time on every core (threads None: the cores shared).

    Why one thread: the quick networks are small (32 px), so two single-thread runs side by
    side train more images per second than one run on two threads (the gate: 13 PneumoniaMNIST
    runs as 2 x 1 thread in less time than 1 x 2 threads); and a run's AUC depends on its
    thread count, so pinning 1 gives the same AUC for a seed whatever the machine's cores and
    however many runs the grid has, the thread count the committed references record."""
    if os.environ.get(JOBS_ENV):
        return int(os.environ[JOBS_ENV]), None
    if device_type != "cpu" or profile != "quick":
        return 1, None
    import psutil

    by_memory = int(psutil.virtual_memory().available // QUICK_RUN_BYTES)
    return max(1, min(usable_cores(), runs, by_memory)), 1


def planned_threads(plan: RunPlan) -> str:
    """The torch thread count the plan's runs will use (part of their identity): fixed by the
    plan, not by how many runs are left, so a resumed grid keeps its keys. Under Ray the
    cluster decides; each run logs the count it got as `torch_threads`."""
    if plan.executor == "ray":
        return "ray"
    if plan.jobs <= 1:
        return str(torch.get_num_threads())
    return str(threads_per_worker(plan.jobs))
