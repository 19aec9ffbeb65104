"""`bench run`'s engine: prepare the dataset once, plan the grid, skip what is done, and
execute the rest with the plan's executor.

planning.py decides what to run (specs, keys, triage), executors.py where, running.py runs
one (train, predict once, evaluate, log) and evaluation.py turns predictions into metrics.
"""

from __future__ import annotations

import logging

from medad_bench.api.contract import get_method
from medad_bench.api.seeding import prepare_determinism
from medad_bench.data import load_card, prepare
from medad_bench.data.prepared import resolve_data_root
from medad_bench.engine.executors import execute
from medad_bench.engine.grid import (
    RunPlan,
    RunResult,
    make_specs,
    plan_configs,
    planned_threads,
    triage,
)
from medad_bench.engine.resources import resolve_device
from medad_bench.errors import UsageError
from medad_bench.tracking import code_version, ensure_experiment, environment_identity

logger = logging.getLogger(__name__)

__all__ = ["RunPlan", "RunResult", "run_plan"]


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
