"""Running one planned run: open it, compute its result (train, predict once, evaluate), log
the result to MLflow in one place (run_one).

The test labels are read only after the method has predicted both splits; the decision
threshold comes from the labelled validation split (Youden's J), never from the test split.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from medad_bench.api.contract import Method, Progress, TrainSet, get_method
from medad_bench.api.seeding import deterministic_algorithms
from medad_bench.api.training import IterativeMethod, hold_out_normals
from medad_bench.data import PreparedDataset
from medad_bench.data.images import empty_like, join
from medad_bench.disk import WriteError
from medad_bench.engine import evaluation
from medad_bench.engine.grid import RunPlan, RunResult, RunSpec, selection_rule
from medad_bench.engine.resources import MemoryWatch, megabytes
from medad_bench.errors import BenchError
from medad_bench.stats import image_metrics as metrics
from medad_bench.stats.competence import OutputFollowing, failed_text
from medad_bench.tracking import RunLogger, environment_params, store_failure

logger = logging.getLogger(__name__)

#: Per-run working folders (checkpoints for resume); removed when a run finishes.
WORK_ROOT = Path("results") / "runs"


class BarProgress(Progress):
    """Turns a method's stage/advance calls into one tqdm bar per run, and its training
    curves into MLflow metrics (buffered: one call per few hundred points)."""

    def __init__(self, label: str, enabled: bool = True, logger: RunLogger | None = None) -> None:
        self.label = label
        self.logger = logger
        self.points: list[tuple[str, float, int]] = []
        # disable=None: a bar on a terminal, none when output goes to a file or CI log.
        self.bar = tqdm(total=None, desc=label, unit="step", leave=False,
                        disable=None if enabled else True,
                        dynamic_ncols=True)

    def metric(self, name: str, value: float, step: int) -> None:
        self.points.append((name, value, step))
        if len(self.points) >= 500:
            self.flush()

    def flush(self) -> None:
        if self.logger is not None and self.points:
            self.logger.series(self.points)
        self.points = []

    def stage(self, name: str, total: int | None = None) -> None:
        self.bar.reset(total=total)
        self.bar.set_description(f"{self.label} | {name}")

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.flush()
        self.bar.close()


def execute_spec(plan: RunPlan, spec: RunSpec, data: PreparedDataset, *, device: str,
                 experiment_id: str) -> RunResult:
    """Run one spec in this process (the body every executor calls)."""
    with deterministic_algorithms(plan.deterministic):
        return run_one(get_method(spec.method), spec.config, data, seed=spec.seed,
                       device=torch.device(device), plan=plan, experiment_id=experiment_id,
                       label=spec.label, key=spec.key, identity=spec.identity,
                       provenance=spec.provenance)


def training_set(method: type[Method], data: PreparedDataset,
                 contaminated: bool = False) -> TrainSet:
    """The images the method may see: its declared sets, or normal + unlabeled if contaminated.

    A set the method does not use is handed over empty, so it cannot see it by accident. An
    iterative method gets the unlabelled test images for AUCp and a tenth of the known normals
    (at most 256) held out of its training set as AUCp's pseudo-label 0.
    """
    full = data.train_set(with_selection=method.uses_selection,
                          with_validation=method.uses_validation)
    if len(full.unlabeled) == 0 and ("unlabeled" in method.uses or contaminated):
        # planning skips such runs; never let one train on less than it declared
        raise BenchError(f"{method.name} would train on set A (unlabelled images), and "
                         f"{data.card.name} has none. Pick a method that trains on healthy "
                         f"images only.")
    normal, held = full.normal, None
    if method.uses_selection:
        normal, held = hold_out_normals(full.normal)
    empty = empty_like(full.normal)
    if contaminated and "unlabeled" not in method.uses:
        return dataclasses.replace(full, normal=join(normal, full.unlabeled), unlabeled=empty,
                                   selection_normals=held)
    return dataclasses.replace(
        full, normal=normal if "normal" in method.uses else empty,
        unlabeled=full.unlabeled if "unlabeled" in method.uses else empty,
        selection_normals=held)


def make_method(method_cls: type[Method], config: Any, workdir: Path | None,
                select: str = "aucp") -> Method:
    """The method, constructed with its work folder (and, if iterative, its selection rule)."""
    if issubclass(method_cls, IterativeMethod):
        return method_cls(config, workdir=workdir, selection=select)
    return method_cls(config, workdir=workdir)


def run_one(method_cls: type[Method], config: Any, data: PreparedDataset, *, seed: int,
            device: torch.device, plan: RunPlan, experiment_id: str, label: str,
            key: str, identity: str = "", provenance: dict[str, str] | None = None
            ) -> RunResult:
    """One run in three steps: open it (the MLflow run, its tags and params), compute its
    result (fit, predict, evaluate into a RunOutcome; nothing logged), then log the outcome
    in one place. A failure inside the method marks the MLflow run FAILED and is returned (the
    grid goes on); a write error of the run's own files fails the run alone; a BenchError
    stops everything. A run that fails half-way logs what it computed before failing."""
    workdir = WORK_ROOT.resolve() / data.card.name / f"{method_cls.name}-s{seed}-{key}"
    rule = selection_rule(method_cls.name, plan)
    method = make_method(method_cls, config, workdir, rule if rule != "none" else "aucp")
    run = open_run(method_cls.name, data, seed=seed, plan=plan, experiment_id=experiment_id,
                   key=key)
    progress = BarProgress(label, enabled=plan.show_progress, logger=run)
    train = training_set(method_cls, data, plan.contaminated)
    try:
        run.params(run_params(method_cls, config, data, train, seed=seed, device=device,
                              plan=plan, rule=rule, key=key, identity=identity,
                              provenance=provenance))
        run.json(method.config_dict(), "config.json")
        outcome = RunOutcome()
        try:
            compute_result(method, config, data, train, seed=seed, device=device,
                           progress=progress, outcome=outcome)
        finally:
            log_outcome(run, label, method, outcome)
        progress.flush()
        run.finish(ok=True)
        shutil.rmtree(workdir, ignore_errors=True)  # finished: nothing to resume
        return RunResult(method_cls.name, seed, run.run_id, ok=True, metrics=outcome.values)
    except WriteError as exc:  # the run's own files: this run fails, the grid goes on
        _log_failure(run, exc)
        return RunResult(method_cls.name, seed, run.run_id, ok=False, error=str(exc))
    except BenchError:
        run.finish(ok=False)
        raise
    except BaseException as exc:
        failure = store_failure(exc, plan.tracking_uri)
        if failure is not None:  # the store, not the run: no other run could be logged
            run.heartbeat.stop()
            raise failure from exc
        _log_failure(run, exc)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return RunResult(method_cls.name, seed, run.run_id, ok=False,
                         error=f"{type(exc).__name__}: {exc}")
    finally:
        run.heartbeat.stop()  # also when logging the failure itself failed
        try:
            progress.close()
        except Exception as close_error:  # noqa: BLE001 - the store may be what failed
            logger.warning("could not log the last training points of run %s: %s",
                           run.run_id, str(close_error).splitlines()[0][:200])


# -- step 1: open the run --------------------------------------------------------------------


def open_run(method: str, data: PreparedDataset, *, seed: int, plan: RunPlan,
             experiment_id: str, key: str) -> RunLogger:
    """The MLflow run, RUNNING with its heartbeat, tagged with what finds it again (run_key:
    resume). A store that cannot take it ends the grid (store_failure's BenchError)."""
    try:
        return RunLogger(plan.tracking_uri, experiment_id,
                         run_name=f"{method}-s{seed}",
                         tags={"method": method, "dataset": data.card.name,
                               "seed": str(seed), "profile": plan.profile,
                               "split_hash": data.split_hash, "run_key": key,
                               "host": socket.gethostname(), "pid": str(os.getpid())})
    except Exception as exc:
        failure = store_failure(exc, plan.tracking_uri)
        if failure is None:
            raise
        raise failure from exc


def run_params(method_cls: type[Method], config: Any, data: PreparedDataset,
               train: TrainSet, *, seed: int, device: torch.device, plan: RunPlan,
               rule: str, key: str, identity: str,
               provenance: dict[str, str] | None) -> dict[str, Any]:
    """What the run is, logged as params when it opens (a run that dies still says it)."""
    return {
        "method": method_cls.name, "dataset": data.card.name, "seed": seed,
        "profile": plan.profile, "device": str(device), "split_hash": data.split_hash,
        "data_version": data.data_version, "contaminated": str(plan.contaminated).lower(),
        "run_key": key, "run_identity": identity,
        **{f"identity.{k}": v for k, v in (provenance or {}).items()},
        **_tuning_params(plan.tuned.get(method_cls.name, [])),
        # What this process really runs under, so a worker that missed the setting shows.
        "deterministic": str(torch.are_deterministic_algorithms_enabled()).lower(),
        **({"cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG", "unset")}
           if plan.deterministic else {}),
        "trained_on": ",".join(s for s in ("normal", "unlabeled")
                               if len(getattr(train, s))),
        # aucp: the checkpoint with the highest label-free AUCp (held-out normals vs the
        # unlabelled test images); last: the last checkpoint; none: no checkpoints.
        "model_selection": rule,
        "n_train_normal": len(train.normal), "n_train_unlabeled": len(train.unlabeled),
        "n_selection_normals": (len(train.selection_normals)
                                if train.selection_normals is not None else 0),
        "threshold_rule": "youden_j_on_val",
        # The training budget (Method.images_seen): equal for every trainable method's
        # quick profile, stated in the report's caption.
        "budget_images_seen": method_cls.images_seen(config) or "none",
        # The multiple of the profile's budget (`bench run --budget-scale`).
        "budget_scale": f"{plan.budget_scale:g}",
        "evaluation_unit": data.card.unit,
        **_data_params(data),
        **{f"config.{k}": v for k, v in dataclasses.asdict(config).items()},
        **environment_params(),
    }


# -- step 2: compute the result --------------------------------------------------------------


@dataclass
class RunOutcome:
    """What one run computed, nothing logged yet. Filled step by step (None: not reached), so
    that a run failing half-way logs what it had, as it always has."""

    fitted: bool = False
    run_info: dict[str, Any] = field(default_factory=dict)  # Method.run_info: params
    run_metrics: dict[str, float] = field(default_factory=dict)  # Method.run_metrics
    warnings: list[str] = field(default_factory=list)  # Method.warnings
    #: The competence checks on the validation split (`competent`, `competence_failed`, ...).
    competence: dict[str, float | str | bool] | None = None
    #: Checkpoint selection rows (iterative methods): logged as a series and selection.csv.
    selection: pd.DataFrame | None = None
    #: Every metric of the run (image, pixel, competence, cost, selection).
    values: dict[str, float] | None = None
    scores: pd.DataFrame | None = None  # scores.csv
    subject_scores: pd.DataFrame | None = None  # subject_scores.csv (subject-level cards)
    roc: pd.DataFrame | None = None  # roc.csv
    #: The sample test images and their predictions (the method's figure, map_samples.npz).
    sample_images: np.ndarray | None = None
    sample_prediction: Any = None
    map_samples: dict[str, np.ndarray] | None = None


def compute_result(method: Method, config: Any, data: PreparedDataset, train: TrainSet, *,
                   seed: int, device: torch.device, progress: Progress,
                   outcome: RunOutcome) -> RunOutcome:
    """Fit, predict each split once, evaluate: into `outcome` (returned), logging nothing.
    The test labels are read only after both splits are predicted."""
    watch = MemoryWatch(device).start()
    started = time.perf_counter()
    method.fit(train, seed=seed, device=device, progress=progress)
    fit_seconds = time.perf_counter() - started
    fit_peak_host, fit_peak_gpu = watch.peak_host_bytes(), watch.peak_gpu_bytes()
    outcome.fitted = True
    outcome.run_info = dict(method.run_info)
    outcome.run_metrics = dict(method.run_metrics)
    outcome.warnings = list(method.warnings)

    # One pass per split; labels are read only afterwards, by evaluation.evaluate.
    progress.stage("predict")
    started = time.perf_counter()
    has_masks = data.masks_of("val") is not None
    follow = OutputFollowing() if method.output_extra else None
    val_images = data.images_of("val")
    val = evaluation.predict_split(method, val_images, keep_maps=has_masks, follow=follow)
    test_images = data.images_of("test")
    samples = evaluation.sample_rows(data.labels_of("test"))
    test = evaluation.predict_split(method, test_images, keep_maps=has_masks, samples=samples)
    score_seconds = time.perf_counter() - started

    values = evaluation.evaluate(method, data, val, test)
    outcome.competence = evaluation.competence_values(method, data, val, val_images, follow)
    values.update(competence_metrics(outcome.competence))
    values.update({
        "fit_seconds": fit_seconds,
        "score_seconds": score_seconds,
        "score_images_per_second": (len(val.scores) + len(test.scores)) / score_seconds,
        **cost_metrics(type(method), config, train, fit_seconds, watch,
                       fit_peak_host, fit_peak_gpu),
    })
    outcome.selection = evaluation.selection_table(method, data)
    if outcome.selection is not None:
        values.update(evaluation.selection_metrics(outcome.selection))
    outcome.values = values
    outcome.scores = evaluation.scores_table(data, val.scores, test.scores)
    if data.card.unit == "subject":
        outcome.subject_scores = evaluation.subject_table(data, val.scores, test.scores)
    test_labels, test_units = evaluation.evaluation_units(data, "test", test.scores)
    outcome.roc = pd.DataFrame(metrics.roc_points(test_labels, test_units))
    if test.samples is not None:
        outcome.sample_images = test_images[samples]
        outcome.sample_prediction = test.samples
        outcome.map_samples = evaluation.map_samples(data, test_images, samples, test.samples)
    return outcome


def competence_metrics(checks: dict[str, float | str | bool]) -> dict[str, float]:
    """The competence checks' values, as metrics."""
    return {f"competence_{name}": float(value) for name, value in checks.items()
            if name not in ("competent", "competence_failed")}


# -- step 3: log the outcome -----------------------------------------------------------------


def log_outcome(run: RunLogger, label: str, method: Method, outcome: RunOutcome) -> None:
    """Everything the run computed, to MLflow, in one place (and its warnings to the console):
    what a failed run reached is logged too, in the order it was computed."""
    if not outcome.fitted:
        return
    run.params(outcome.run_info)
    if outcome.run_metrics:
        run.metrics(outcome.run_metrics)
    if outcome.warnings:
        for warning in outcome.warnings:
            logger.warning("WARNING %s: %s", label, warning)
        run.params({"warnings": " | ".join(outcome.warnings)})
    if outcome.competence is not None:
        _log_competence(run, label, outcome.competence)
    if outcome.values is None:
        return
    if outcome.selection is not None:
        run.series([("checkpoint_test_auc", row.test_auc, row.step)
                    for row in outcome.selection.itertuples()])
        run.table(outcome.selection, "selection.csv")
    run.metrics(outcome.values)
    if outcome.scores is not None:
        run.table(outcome.scores, "scores.csv")
    if outcome.subject_scores is not None:
        run.table(outcome.subject_scores, "subject_scores.csv")
    if outcome.roc is not None:
        run.table(outcome.roc, "roc.csv")
    if outcome.sample_images is not None:
        _log_figure(run, method, outcome.sample_images, outcome.sample_prediction)
    if outcome.map_samples is not None:
        run.arrays(outcome.map_samples, "map_samples.npz")


def _log_failure(run: RunLogger, exc: BaseException) -> None:
    """Record the error with the run and mark it FAILED. Where that cannot be written either
    (the disk that failed the run is full), say so and go on: the run stays unfinished in the
    store, and a later `bench run` marks it dead and does it again."""
    try:
        run.json({"error": repr(exc), "traceback": traceback.format_exc()}, "error.json")
    except Exception as logging_error:  # noqa: BLE001 - the run's own failure matters more
        logger.warning("could not log the failure of run %s: %s", run.run_id, logging_error)
    try:
        run.finish(ok=False)
    except Exception as logging_error:  # noqa: BLE001
        logger.warning("could not mark run %s failed: %s", run.run_id, logging_error)


def _log_competence(run: RunLogger, label: str,
                    checks: dict[str, float | str | bool]) -> None:
    """`competent` and the failed checks as params (reports read them); a warning where a
    check failed. Their values are metrics (competence_metrics), logged with the others."""
    run.params({"competent": str(checks["competent"]).lower(),
                "competence_failed": checks["competence_failed"] or "none"})
    if not checks["competent"]:
        logger.warning("WARNING %s did not learn (validation): %s. Its numbers are reported "
                       "as a failed training run.", label,
                       failed_text(str(checks["competence_failed"])))


def _tuning_params(fields: list[str]) -> dict[str, str]:
    if not fields:
        return {"tuned": "false"}
    return {"tuned": "true", "tuned_fields": ",".join(sorted(fields))}


def cost_metrics(method_cls: type[Method], config: Any, train: TrainSet, fit_seconds: float,
                 watch: MemoryWatch, fit_peak_host: int, fit_peak_gpu: int | None
                 ) -> dict[str, float]:
    """Throughput and memory of a run: training images/s (images drawn into batches for an
    iterative method, training images embedded for a feature method), and peak memory while
    training and over the whole run (training, scoring, evaluation), host and GPU."""
    trained = method_cls.images_seen(config) or (len(train.normal) + len(train.unlabeled))
    values = {"train_images_per_second": trained / fit_seconds if fit_seconds > 0 else 0.0,
              "peak_host_mb_fit": megabytes(fit_peak_host),
              "peak_host_mb": megabytes(max(fit_peak_host, watch.peak_host_bytes()))}
    if fit_peak_gpu is not None:
        values["peak_gpu_mb_fit"] = megabytes(fit_peak_gpu)
        values["peak_gpu_mb"] = megabytes(max(fit_peak_gpu, watch.peak_gpu_bytes() or 0))
    return values


def _data_params(data: PreparedDataset) -> dict[str, Any]:
    """What the run should say about the data: protocol scale, notes, image sizes seen."""
    if data.card.is_synthetic:
        return {}
    return {"data_root": data.meta.get("data_root", ""),
            "protocol_scale": data.meta.get("protocol_scale", 1.0),
            "protocol_notes": "; ".join(data.meta.get("notes", [])) or "none",
            # A tree that reads files through links out of its root says so in every run.
            "allow_links_outside_root": bool(data.meta.get("allow_links_outside_root", False)),
            "links_outside_root": int(data.meta.get("links_outside_root", 0))}


def _log_figure(run: RunLogger, method: Method, images: np.ndarray,
                samples: Any) -> None:
    """The method's own figure on the sample test images, where it has one."""
    figure = method.figure(images, samples)
    if figure is not None:
        run.figure(figure, "figure_grid.png")
