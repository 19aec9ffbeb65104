"""Published figures as a reference (benchmark.check.published, `bench check --against` a file of
results/reference/published/): real runs made by `bench run` in a private SQLite MLflow
store, compared with published figures written for them and with BMAD's committed ones."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from medad_bench.check.published import (
    K_SD,
    check_against_published,
    is_published_reference,
    read_published,
    tolerance,
)
from medad_bench.cli import cli
from medad_bench.errors import BenchError, UsageError
from medad_bench.tracking import finished_runs

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "reference" / "published"
RSNA = PUBLISHED / "bmad-rsna.json"
BRATS = PUBLISHED / "bmad-brats2021.json"


def bench(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run(method: str, dataset: str, seeds: str, uri: str, *extra: str) -> None:
    """`bench run` of one method, random backbone weights (no download, fast)."""
    result = bench("run", "--methods", method, "--dataset", dataset, "--seeds", seeds,
                   "--no-progress", "--weights", f"{method}=random", "--tracking-uri", uri,
                   *extra)
    assert result.exit_code == 0, result.output


def test_the_committed_bmad_references_hold_its_table_as_fractions():
    rsna, brats = read_published(RSNA), read_published(BRATS)
    assert rsna["kind"] == brats["kind"] == "published" and rsna["scale"] == "fraction"
    assert {m: (e["auc"]["mean"], e["auc"]["sd"]) for m, e in rsna["methods"].items()} == {
        "fanogan": (0.5515, 0.0009), "ganomaly": (0.629, 0.0065),
        "padim": (0.7749, 0.0187), "patchcore": (0.7614, 0.0067)}
    assert rsna["protocol"]["split"] == {"train": 8000, "validation": 1490, "test": 17194}
    assert rsna["protocol"]["image_size"] == brats["protocol"]["image_size"] == 224
    assert rsna["methods"]["padim"]["settings"]["layers"] == ["layer1", "layer2", "layer3"]
    patchcore = rsna["methods"]["patchcore"]["settings"]
    assert (patchcore["backbone"], patchcore["coreset_sampling_ratio"],
            patchcore["num_neighbors"]) == ("wide_resnet50_2", 0.1, 9)
    assert brats["methods"]["patchcore"]["auc"] == {"mean": 0.9165, "sd": 0.0036}
    assert brats["methods"]["padim"]["pixel_auroc"]["mean"] == 0.9437
    assert brats["methods"]["patchcore"]["aupro"]["mean"] == 0.8568
    assert brats["protocol"]["split"] == {"train": 7500, "validation": 83, "test": 3715}
    assert "github.com/DorisBao/BMAD" in rsna["source"]["repository"]
    assert is_published_reference(RSNA)
    assert not is_published_reference(REPO / "results" / "reference" / "synthetic.json")


def test_the_tolerance_adds_both_spreads_in_quadrature():
    assert K_SD == 2.0
    assert tolerance(0.03, 0.04) == pytest.approx(0.1)
    assert tolerance(0.0187, 0.0) == pytest.approx(0.0374)


@pytest.mark.parametrize(("edit", "key"), [
    (lambda r: r.update(kind="regression"), "'kind'"),
    (lambda r: r.update(scale="percent"), "'scale'"),
    (lambda r: r["methods"]["padim"]["auc"].update(mean=77.49), "'methods.padim.auc.mean'"),
    (lambda r: r["methods"]["padim"]["auc"].pop("sd"), "'methods.padim.auc.sd'"),
    (lambda r: r["methods"]["padim"].pop("auc"), "'methods.padim.auc'"),
    (lambda r: r["protocol"]["split"].pop("test"), "'protocol.split.test'"),
    (lambda r: r.update(methods={}), "'methods'"),
])
def test_a_malformed_published_file_is_an_error_naming_the_key(isolated, edit, key):
    reference = json.loads(RSNA.read_text())
    edit(reference)
    path = isolated / "broken.json"
    path.write_text(json.dumps(reference))
    with pytest.raises(BenchError, match=key):
        read_published(path)
    result = bench("check", "--dataset", "tiny", "--against", str(path))
    assert result.exit_code == 1 and key in result.output, result.output


def test_published_figures_of_another_dataset_or_with_regression_flags_are_usage_errors(
        isolated):
    with pytest.raises(UsageError, match="holds published figures of 'bmad-rsna', not 'tiny'"):
        check_against_published(None, "tiny", RSNA)
    for extra in ((), ("--update",), ("--tolerance", "0.1")):
        result = bench("check", "--dataset", "tiny", "--against", str(RSNA), *extra)
        assert result.exit_code == 2, result.output
    assert "--update would overwrite them" in bench(
        "check", "--dataset", "bmad-rsna", "--against", str(RSNA), "--update").output


def _published_for(uri: str, dataset: str, path: Path, methods: dict) -> Path:
    """BMAD's RSNA file re-labelled for `dataset`, with `methods` as its figures."""
    reference = copy.deepcopy(json.loads(RSNA.read_text()))
    reference["dataset"] = dataset
    reference["methods"] = methods
    path.write_text(json.dumps(reference))
    return path


def test_runs_beside_published_figures(tracking_uri, isolated):
    run("padim", "tiny", "0,1", tracking_uri)
    run("patchcore", "tiny", "0", tracking_uri)
    runs = finished_runs(tracking_uri, "tiny")
    padim = runs[runs.method == "padim"]["metric.auc"]
    padim_pixel = runs[runs.method == "padim"]["metric.pixel_auroc"]
    patchcore = float(runs[runs.method == "patchcore"]["metric.auc"].iloc[0])
    # padim 0.01 from ours (within); patchcore far beyond its 0.001 spread; f-AnoGAN not run.
    path = _published_for(tracking_uri, "tiny", isolated / "published.json", {
        "padim": {"published_name": "PaDiM", "auc": {"mean": padim.mean() + 0.01, "sd": 0.01},
                  "pixel_auroc": {"mean": padim_pixel.mean(), "sd": 0.0},
                  "aupro": {"mean": 0.5, "sd": 0.01},
                  "settings": {"backbone": "resnet18", "layers": ["layer1", "layer2", "layer3"]},
                  "weights": "ImageNet-pretrained"},
        "patchcore": {"auc": {"mean": min(patchcore + 0.2, 1.0) if patchcore < 0.8
                              else patchcore - 0.2, "sd": 0.001}},
        "fanogan": {"published_name": "f-AnoGAN", "auc": {"mean": 0.55, "sd": 0.001}}})

    result = check_against_published(tracking_uri, "tiny", path)
    table = result.table.set_index(["method", "metric"])
    row = table.loc[("padim", "image AUROC")]
    assert row.seeds == 2 and row.ours == pytest.approx(padim.mean())
    assert row.sd_ours == pytest.approx(padim.std(ddof=1))
    assert row.tolerance == pytest.approx(2 * math.sqrt(0.01 ** 2 + padim.std(ddof=1) ** 2))
    assert row.difference == pytest.approx(-0.01) and row.within
    assert table.loc[("padim", "pixel AUROC")].within  # equal to ours, sd 0: still within
    one_seed = table.loc[("patchcore", "image AUROC")]
    assert one_seed.sd_ours == 0 and one_seed.tolerance == pytest.approx(0.002)
    assert not one_seed.within and not result.ok
    assert len(result.problems) == 1 and result.problems[0].startswith("patchcore image AUROC")
    # AUPRO joins where the runs log it (metric `aupro`), else it is named as not compared.
    assert (("padim", "AUPRO") in table.index) != any("AUPRO" in n for n in result.not_compared)
    assert result.not_run == ["fanogan (f-AnoGAN)"] and result.unpublished == []
    differences = "\n".join(result.differences)
    for expected in ("--profile quick", "seed(s) 0, 1",
                     "train 40 / validation 20 / test 30 images; published train 8,000 / "
                     "validation 1,490 / test 17,194",
                     "padim image_size: runs 32, published 224",
                     "padim backbone: runs efficientnet_lite0, published resnet18",
                     "padim weights: runs random initialisation (requested); published "
                     "ImageNet-pretrained"):
        assert expected in differences, differences

    failed = bench("check", "--dataset", "tiny", "--against", str(path),
                   "--tracking-uri", tracking_uri)
    assert failed.exit_code == 1
    assert re.search(r"\| padim +\| image AUROC \|", failed.output)
    assert re.search(r"\| patchcore +\| image AUROC \|.*\| NO +\|", failed.output)
    assert "Rule: within when |ours - published| <= 2 * sqrt(" in failed.output
    assert "Published, not run here: fanogan (f-AnoGAN)." in failed.output
    assert "Protocol differences that remain" in failed.output
    assert "FAIL patchcore image AUROC" in failed.output
    assert "1 figure(s) outside the published tolerance." in failed.output

    only_padim = _published_for(tracking_uri, "tiny", isolated / "padim.json", {
        "padim": {"auc": {"mean": float(padim.mean()), "sd": 0.02}}})
    passed = bench("check", "--dataset", "tiny", "--against", str(only_padim),
                   "--tracking-uri", tracking_uri)
    assert passed.exit_code == 0, passed.output
    assert "Run here, no published figure: patchcore." in passed.output
    assert "All 1 figure of 1 method within the published tolerance" in passed.output

    nobody = _published_for(tracking_uri, "tiny", isolated / "nobody.json", {
        "ganomaly": {"auc": {"mean": 0.6, "sd": 0.01}}})
    with pytest.raises(BenchError, match="none of the methods .* has finished runs"):
        check_against_published(tracking_uri, "tiny", nobody)


def test_bmad_fixture_run_against_the_published_bmad_figures(tracking_uri, isolated):
    """End to end on a BMAD tree (benchmark.data.fixtures.write_bmad) read by the bmad-rsna
    card, at 32 px so it takes seconds (the card's 224 px then shows as a difference)."""
    from medad_bench.data.fixtures import write_bmad

    card = (REPO / "datasets" / "bmad-rsna.toml").read_text()
    assert "image_size = 224" in card
    (isolated / "cards" / "bmad-rsna.toml").write_text(
        card.replace("image_size = 224", "image_size = 32"))
    root = isolated / "bmad-tree"
    write_bmad(root, n_train=16, n_valid=8, n_test=16, size=32)
    run("padim", "bmad-rsna", "0", tracking_uri, "--data-root", str(root))
    result = bench("check", "--dataset", "bmad-rsna", "--against", str(RSNA),
                   "--tracking-uri", tracking_uri)
    within = "| yes " in result.output
    assert result.exit_code == (0 if within else 1), result.output
    assert re.search(r"\| padim +\| image AUROC \|", result.output)
    assert ("Published, not run here: fanogan (f-AnoGAN), ganomaly (GANomaly), patchcore "
            "(PatchCore).") in result.output
    assert ("train 16 / validation 8 / test 16 images; published train 8,000 / validation "
            "1,490 / test 17,194") in result.output
    assert "padim image_size: runs 32, published 224" in result.output
    assert "padim backbone: runs efficientnet_lite0, published resnet18" in result.output
