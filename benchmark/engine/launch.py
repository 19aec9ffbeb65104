"""`bench run`'s engine: the command's one call (`bench_run`: the plan from its options, one
grid per budget scale) and `run_plan`: prepare the dataset once, plan the grid, skip what is
done, and execute the rest with the plan's executor.

grid.py decides what to run (specs, keys, triage), executors.py where, run.py runs one
(open it, compute its result, log it) and evaluation.py turns predictions into metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medad_bench.api.contract import available_methods, get_method
from medad_bench.api.seeding import prepare_determinism
from medad_bench.api.training import IterativeMethod
from medad_bench.data import load_card, prepare
from medad_bench.data.prepared import resolve_data_root
from medad_bench.engine.executors import execute
from medad_bench.engine.grid import (
    THREADS_ENV,
    RunPlan,
    RunResult,
    automatic_parallelism,
    make_specs,
    plan_configs,
    planned_threads,
    triage,
    with_budget,
)
from medad_bench.engine.resources import resolve_device
from medad_bench.errors import UsageError
from medad_bench.tracking import (
    code_version,
    ensure_experiment,
    environment_identity,
    resolve_tracking_uri,
)

logger = logging.getLogger(__name__)

__all__ = ["GridRun", "RunPlan", "RunResult", "bench_run", "run_plan"]


@dataclass
class GridRun:
    """What `bench run` did: its plan and one result per run, with the budget (`1x`) of each."""

    plan: RunPlan
    scales: int = 1  # budget scales asked for
    results: list[RunResult] = field(default_factory=list)
    budgets: list[str] = field(default_factory=list)

    @property
    def several(self) -> bool:
        """Several budget scales: the results table gets a budget column."""
        return self.scales > 1


def tuned_fields(settings: tuple[str, ...]) -> dict[str, list[str]]:
    """--set METHOD.FIELD=VALUE items -> {method: [METHOD.FIELD, ...]}. Only --set counts as
    tuning: --weights and --select pick among documented choices."""
    tuned: dict[str, list[str]] = {}
    for item in settings:
        name = item.partition("=")[0]
        tuned.setdefault(name.partition(".")[0], []).append(name)
    return tuned


def bench_run(names: list[str], seeds: list[int], scales: list[float],
              overrides: dict[str, dict], settings: tuple[str, ...], *, dataset: str,
              profile: str, device: str, tracking_uri: str | None, data_root: Path | None,
              allow_external_links: bool, select: str | None, contaminated: bool,
              show_progress: bool, executor: str, jobs: int | None, threads: int | None,
              ray_address: str | None, force: bool, deterministic: bool,
              before_start: Callable[[], None] = lambda: None,
              announce: Callable[[str], None] = lambda line: None) -> GridRun:
    """`bench run`: check the options against each other, pin the threads, then run the grid
    once per budget scale (`announce` gets a line before each when there are several, and one
    saying how many runs go at a time when --jobs was not given; `before_start` is called once
    the options are checked, before the first run). `jobs` None: `automatic_parallelism`."""
    if jobs is None:
        jobs = 1
        if executor == "local":
            jobs, auto_threads = automatic_parallelism(
                resolve_device(device).type, profile, runs=len(names) * len(seeds))
            if threads is None and auto_threads is not None:
                threads = auto_threads
                announce(f"{jobs} run(s) at a time, {threads} torch thread each (the default "
                         f"for quick runs on a CPU; --jobs and --threads choose)")
    if threads is not None:
        import torch

        if executor == "ray":
            raise UsageError("--threads applies to --executor local; Ray sets each task's "
                             "threads from its CPUs.")
        os.environ[THREADS_ENV] = str(threads)  # worker processes get it through the plan
        torch.set_num_threads(threads)
    if select and not any(issubclass(get_method(n), IterativeMethod) for n in names):
        iterative = [n for n in available_methods() if issubclass(get_method(n), IterativeMethod)]
        raise UsageError(f"--select applies to methods that select checkpoints (the iterative "
                         f"ones: {', '.join(iterative)}); none among --methods "
                         f"{','.join(names)}.")
    plan = RunPlan(methods=names, dataset=dataset, seeds=seeds, profile=profile,
                   device=device, tracking_uri=resolve_tracking_uri(tracking_uri),
                   data_root=data_root, overrides=overrides,
                   contaminated=contaminated, show_progress=show_progress,
                   executor=executor, jobs=jobs, ray_address=ray_address, force=force,
                   tuned=tuned_fields(settings), deterministic=deterministic,
                   select=select or "aucp", allow_external_links=allow_external_links)
    if ray_address and executor != "ray":
        raise UsageError("--ray-address needs --executor ray.")
    if jobs > 1 and executor != "local":
        raise UsageError("--jobs applies to --executor local; Ray schedules by resources.")
    before_start()
    grid = GridRun(plan=plan, scales=len(scales))
    for scale in scales:
        chosen = names if scale == 1 else with_budget(names)
        scaled = dataclasses.replace(
            plan, budget_scale=scale, methods=chosen,
            overrides={m: v for m, v in plan.overrides.items() if m in chosen},
            tuned={m: v for m, v in plan.tuned.items() if m in chosen})
        if len(scales) > 1:
            announce(f"\n== budget {scale:g}x: {', '.join(scaled.methods)}")
        done = run_plan(scaled)
        grid.results += done
        grid.budgets += [f"{scale:g}x"] * len(done)
    return grid


def run_plan(plan: RunPlan) -> list[RunResult]:
    """Prepare the dataset once, skip runs already finished with the same key, and execute the
    rest with the plan's executor; returns one result per (method, seed), skipped ones too."""
    if plan.deterministic:
        prepare_determinism()  # before anything touches CUDA, in this process and its workers
    card = load_card(plan.dataset)
    for name in plan.methods:
        get_method(name)  # an unknown name fails here, before any work
    unknown = set(plan.overrides) - set(plan.methods)
    if unknown:
        raise UsageError(f"settings given for {', '.join(sorted(unknown))}, which is not among "
                         f"--methods {','.join(plan.methods)}.")
    device = resolve_device(plan.device)
    if not card.is_synthetic:
        resolve_data_root(card, plan.data_root)  # a missing data root is reported first
    # Fail before any training if the tracking store is unusable.
    experiment_id = ensure_experiment(plan.tracking_uri, card.name)
    # Workers reopen the cache, never the tree: only this call reads through links.
    data = prepare(card, data_root=plan.data_root, show_progress=plan.show_progress,
                   allow_external_links=plan.allow_external_links or None)
    for note in data.meta.get("notes", []):
        logger.info("note (%s): %s", card.name, note)
    configs = plan_configs(plan, card)
    environment = environment_identity(device.type, planned_threads(plan))
    specs = make_specs(plan, configs, data, environment, code_version())
    skipped, todo = triage(plan, experiment_id, specs)
    done = execute(plan, todo, data, device=str(device), experiment_id=experiment_id)
    order = {(s.method, s.seed): i for i, s in enumerate(specs)}
    return sorted(skipped + done, key=lambda r: order[(r.method, r.seed)])
