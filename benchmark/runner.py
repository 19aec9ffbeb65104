"""Runs: one (method, dataset, seed) trained, scored, evaluated and logged to MLflow.

The test labels are read only after the method has produced its test scores; the decision
threshold comes from the labelled validation split (Youden's J), never from the test split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from benchmark import metrics, stats
from benchmark.api import Method, Progress, TrainSet, get_method, make_config
from benchmark.data import PreparedDataset, load_card, prepare
from benchmark.data.images import empty_like, join
from benchmark.data.prepared import resolve_data_root
from benchmark.errors import BenchError, UsageError
from benchmark.resources import MemoryWatch, megabytes, resolve_device
from benchmark.seeding import deterministic_algorithms, prepare_determinism
from benchmark.tracking import (
    KeyedRun,
    RunLogger,
    code_version,
    ensure_experiment,
    environment_identity,
    environment_params,
    heartbeat_age,
    heartbeat_stale_seconds,
    is_alive,
    mark_killed,
    runs_by_key,
)

#: Per-run working folders (checkpoints for resume); removed when a run finishes.
WORK_ROOT = Path("results") / "runs"


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
        print(f"note ({card.name}): {note}", file=sys.stderr)
    configs = plan_configs(plan, card)
    from benchmark.executors import planned_threads

    environment = environment_identity(device.type, planned_threads(plan))
    version = code_version()
    specs = []
    total = len(plan.methods) * len(plan.seeds)
    for number, (name, seed) in enumerate(
            ((m, s) for m in plan.methods for s in plan.seeds), start=1):
        provenance = {**get_method(name).provenance(configs[name]), **environment,
                      "code_version": version}
        identity = run_identity(name, configs[name], data, plan, provenance)
        specs.append(RunSpec(name, seed, run_key(identity, seed),
                             f"[{number}/{total}] {name} seed={seed}", configs[name],
                             identity=identity, provenance=provenance))
    skipped, todo = triage(plan, experiment_id, specs)
    from benchmark.executors import execute

    done = execute(plan, todo, data, device=str(device), experiment_id=experiment_id)
    order = {(s.method, s.seed): i for i, s in enumerate(specs)}
    return sorted(skipped + done, key=lambda r: order[(r.method, r.seed)])


def plan_configs(plan: RunPlan, card: Any) -> dict[str, Any]:
    return {name: make_config(get_method(name), plan.profile, image_size=card.image_size,
                              channels=card.channels, overrides=plan.overrides.get(name))
            for name in plan.methods}


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
                print(f"{spec.label}: run {run.run_id} {_whereabouts(run, now)}: dead; "
                      f"marked failed, doing it again", file=sys.stderr)
        if finished and not plan.force:
            skipped.append(RunResult(spec.method, spec.seed, finished[0].run_id, ok=True,
                                     metrics=finished[0].metrics, skipped=True))
        elif alive and not plan.force:
            print(f"{spec.label}: running {_whereabouts(alive[0], now)}; skipping",
                  file=sys.stderr)
        else:
            todo.append(spec)
    return skipped, todo


def _whereabouts(run: KeyedRun, now: float) -> str:
    """'on host X, heartbeat 12s ago' (or the pid, for runs without heartbeats)."""
    age = heartbeat_age(run, now)
    beat = f"heartbeat {age:.0f}s ago" if age is not None else f"pid {run.pid}, no heartbeat"
    return f"on host {run.host or '?'}, {beat}"


def execute_spec(plan: RunPlan, spec: RunSpec, data: PreparedDataset, *, device: str,
                 experiment_id: str) -> RunResult:
    """Run one spec in this process (the body every executor calls)."""
    with deterministic_algorithms(plan.deterministic):
        return run_one(get_method(spec.method), spec.config, data, seed=spec.seed,
                       device=torch.device(device), plan=plan, experiment_id=experiment_id,
                       label=spec.label, key=spec.key, identity=spec.identity,
                       provenance=spec.provenance)


def training_set(method: type[Method], data: PreparedDataset, contaminated: bool) -> TrainSet:
    """The images the method may see: its declared sets, or normal + unlabeled if contaminated.

    A set the method does not use is handed over empty, so it cannot see it by accident.
    """
    full = data.train_set(with_selection=method.uses_selection,
                          with_validation=method.uses_validation)
    empty = empty_like(full.normal)
    if contaminated and "unlabeled" not in method.uses:
        return dataclasses.replace(full, normal=join(full.normal, full.unlabeled),
                                   unlabeled=empty)
    return dataclasses.replace(
        full, normal=full.normal if "normal" in method.uses else empty,
        unlabeled=full.unlabeled if "unlabeled" in method.uses else empty)


def run_one(method_cls: type[Method], config: Any, data: PreparedDataset, *, seed: int,
            device: torch.device, plan: RunPlan, experiment_id: str, label: str,
            key: str, identity: str = "", provenance: dict[str, str] | None = None
            ) -> RunResult:
    """Train, score, evaluate and log one run. A failure inside the method marks the MLflow
    run FAILED and is returned (the grid goes on); a BenchError stops everything."""
    method = method_cls(config)
    logger = RunLogger(plan.tracking_uri, experiment_id, run_name=f"{method_cls.name}-s{seed}",
                       tags={"method": method_cls.name, "dataset": data.card.name,
                             "seed": str(seed), "profile": plan.profile,
                             "split_hash": data.split_hash, "run_key": key,
                             "host": socket.gethostname(), "pid": str(os.getpid())})
    progress = BarProgress(label, enabled=plan.show_progress, logger=logger)
    train = training_set(method_cls, data, plan.contaminated)
    method.workdir = WORK_ROOT.resolve() / data.card.name / f"{method_cls.name}-s{seed}-{key}"
    try:
        logger.params({
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
            "model_selection": ("aucp_on_unlabelled_test" if method_cls.uses_selection
                                else "none"),
            "n_train_normal": len(train.normal), "n_train_unlabeled": len(train.unlabeled),
            "threshold_rule": "youden_j_on_val",
            # The training budget (Method.images_seen): equal for every trainable method's
            # quick profile, stated in the report's caption.
            "budget_images_seen": method_cls.images_seen(config) or "none",
            "evaluation_unit": data.card.unit,
            **_data_params(data),
            **{f"config.{k}": v for k, v in dataclasses.asdict(config).items()},
            **environment_params(),
        })
        logger.json(method.config_dict(), "config.json")

        watch = MemoryWatch(device).start()
        started = time.perf_counter()
        method.fit(train, seed=seed, device=device, progress=progress)
        fit_seconds = time.perf_counter() - started
        fit_peak_host, fit_peak_gpu = watch.peak_host_bytes(), watch.peak_gpu_bytes()
        logger.params({k: v for k, v in method.run_info.items()})
        if method.run_metrics:
            logger.metrics(method.run_metrics)
        if method.warnings:
            for warning in method.warnings:
                print(f"WARNING {label}: {warning}", file=sys.stderr)
            logger.params({"warnings": " | ".join(method.warnings)})

        progress.stage("score")
        started = time.perf_counter()
        val_images = data.images_of("val")
        val_scores = _checked_scores(method, val_images, "val")
        test_images = data.images_of("test")
        test_scores = _checked_scores(method, test_images, "test")
        score_seconds = time.perf_counter() - started

        # Labels are read only now, after scoring.
        val_labels, val_units = evaluation_units(data, "val", val_scores)
        test_labels, test_units = evaluation_units(data, "test", test_scores)
        threshold = metrics.youden_threshold(val_labels, val_units)
        values = metrics.evaluate(test_labels, test_units, threshold)
        values.update(_localisation(method, data, val_images, test_images))
        values.update({f"test_{key}": value for key, value in method.diagnostics(
            test_images, data.labels_of("test"), data.masks_of("test")).items()})
        values.update({
            "threshold": threshold,
            "val_auc": metrics.roc_auc(val_labels, val_units),
            "fit_seconds": fit_seconds,
            "score_images_per_second": (len(val_scores) + len(test_scores)) / score_seconds,
            **cost_metrics(method_cls, config, train, fit_seconds, watch,
                           fit_peak_host, fit_peak_gpu),
        })
        logger.metrics(values)
        logger.table(_scores_table(data, val_scores, test_scores), "scores.csv")
        if data.card.unit == "subject":
            logger.table(_subject_table(data, val_scores, test_scores), "subject_scores.csv")
        logger.table(pd.DataFrame(metrics.roc_points(test_labels, test_units)), "roc.csv")
        _log_selection_quality(logger, method, data)
        _log_figure(logger, method, test_images, data.labels_of("test"))
        _log_map_samples(logger, method, data, test_images)
        progress.flush()
        logger.finish(ok=True)
        shutil.rmtree(method.workdir, ignore_errors=True)  # finished: nothing to resume
        return RunResult(method_cls.name, seed, logger.run_id, ok=True, metrics=values)
    except BenchError:
        logger.finish(ok=False)
        raise
    except BaseException as exc:
        logger.json({"error": repr(exc), "traceback": traceback.format_exc()}, "error.json")
        logger.finish(ok=False)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return RunResult(method_cls.name, seed, logger.run_id, ok=False,
                         error=f"{type(exc).__name__}: {exc}")
    finally:
        logger.heartbeat.stop()  # also when logging the failure itself failed
        progress.close()


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


def evaluation_units(data: PreparedDataset, split: str,
                     scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) per evaluation unit: per image, or slice scores averaged per subject."""
    labels = data.labels_of(split)
    if data.card.unit != "subject":
        return labels, scores
    table = pd.DataFrame({"subject": data.subjects_of(split), "label": labels, "score": scores})
    grouped = table.groupby("subject", sort=True).agg(label=("label", "first"),
                                                      score=("score", "mean"))
    return grouped.label.to_numpy(), grouped.score.to_numpy()


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


def _subject_table(data: PreparedDataset, val_scores: np.ndarray,
                   test_scores: np.ndarray) -> pd.DataFrame:
    parts = []
    for split, scores in (("val", val_scores), ("test", test_scores)):
        labels, units = evaluation_units(data, split, scores)
        subjects = np.unique(data.subjects_of(split))
        parts.append(pd.DataFrame({"subject_id": subjects, "split": split, "label": labels,
                                   "score": units}))
    return pd.concat(parts, ignore_index=True)


def _log_selection_quality(logger: RunLogger, method: Method, data: PreparedDataset) -> None:
    """After final scoring only: the true test AUC of every checkpoint the method weighed,
    beside its label-free AUCp, to show whether AUCp picked a good one."""
    if not method.selection_history:
        return
    rows = []
    for step, values, scores in method.selection_history:
        labels, units = evaluation_units(data, "test", scores)
        rows.append({"iteration": step, **values, "true_auc": metrics.roc_auc(labels, units)})
    logger.series([("checkpoint_true_auc", row["true_auc"], row["iteration"]) for row in rows])
    logger.table(pd.DataFrame(rows), "selection.csv")


def _localisation(method: Method, data: PreparedDataset, val_images: np.ndarray,
                  test_images: np.ndarray) -> dict[str, float]:
    """Pixel AUROC and Dice on the test split where the dataset has lesion masks and the
    method gives maps; the Dice threshold comes from the validation split's pixels."""
    val_masks = data.masks_of("val")
    if val_masks is None:
        return {}
    val_maps = method.anomaly_maps(val_images)
    if val_maps is None:
        return {}
    test_maps = method.anomaly_maps(test_images)
    test_masks = data.masks_of("test")
    threshold = stats.youden_pixel_threshold(val_masks, val_maps)
    return {"pixel_auroc": stats.pixel_auroc(test_masks, test_maps),
            "pixel_dice": stats.dice_at_threshold(test_masks, test_maps, threshold),
            "pixel_threshold": threshold}


def sample_rows(labels: np.ndarray, per_class: int = 4) -> np.ndarray:
    """The first `per_class` healthy then diseased test images: the same ones for every method."""
    return np.r_[np.flatnonzero(labels == 0)[:per_class], np.flatnonzero(labels == 1)[:per_class]]


def _log_map_samples(logger: RunLogger, method: Method, data: PreparedDataset,
                     test_images: np.ndarray) -> None:
    """Inputs, anomaly maps, ground-truth masks and the method's extras for 4 + 4 test images,
    for the report's map grids."""
    rows = sample_rows(data.labels_of("test"))
    images = test_images[rows]
    arrays: dict[str, np.ndarray] = {"input": images.mean(axis=1),
                                     "label": data.labels_of("test")[rows]}
    maps = method.anomaly_maps(images)
    if maps is not None:
        arrays["anomaly map"] = maps
    masks = data.masks_of("test")
    if masks is not None:
        arrays["ground truth"] = masks[rows]
    arrays.update(method.explain(images))
    logger.arrays(arrays, "map_samples.npz")


def _log_figure(logger: RunLogger, method: Method, images: np.ndarray,
                labels: np.ndarray) -> None:
    """The method's own figure on 4 healthy and 4 diseased test images, where it has one."""
    sample = np.r_[np.flatnonzero(labels == 0)[:4], np.flatnonzero(labels == 1)[:4]]
    figure = method.figure(images[sample])
    if figure is not None:
        logger.figure(figure, "figure_grid.png")


def _checked_scores(method: Method, images: np.ndarray, split: str) -> np.ndarray:
    scores = np.asarray(method.score(images), dtype=float).ravel()
    if scores.shape != (len(images),):
        raise RuntimeError(f"{method.name}.score returned {scores.shape[0]} scores for "
                           f"{len(images)} {split} images")
    if not np.all(np.isfinite(scores)):
        raise RuntimeError(f"{method.name} produced NaN/infinite scores on the {split} split")
    return scores


def _scores_table(data: PreparedDataset, val_scores: np.ndarray,
                  test_scores: np.ndarray) -> pd.DataFrame:
    parts = []
    for split, scores in (("val", val_scores), ("test", test_scores)):
        # The subject lets the report resample patients, not images, for its intervals.
        parts.append(pd.DataFrame({"image_id": data.ids_of(split), "split": split,
                                   "subject_id": data.subjects_of(split),
                                   "label": data.labels_of(split), "score": scores}))
    return pd.concat(parts, ignore_index=True)
