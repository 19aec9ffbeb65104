"""Equal training budgets: every trained method's quick profile draws the same number of
training images, whatever the image or data size, and the report's caption says so."""

import dataclasses

import pytest
import torch
from click.testing import CliRunner

from medad_bench.api import Progress, TrainSet, available_methods, make_config
from medad_bench.cli import cli
from medad_bench.methods._anomalib import BackboneMethod
from medad_bench.methods._budget import QUICK_IMAGES_SEEN, steps_for
from medad_bench.methods.ganomaly import Ganomaly

ALL = sorted(available_methods())


@pytest.mark.parametrize("name", ALL)
def test_every_trained_method_gets_the_same_quick_budget_at_any_size(name):
    """A new method (or an installed plug-in) is checked here without editing this test: it
    either declares the shared quick budget or is a frozen-feature method without training."""
    cls = available_methods()[name]
    budgets = {cls.images_seen(make_config(cls, "quick", image_size=size, channels=channels))
               for size in (32, 64, 256) for channels in (1, 3)}
    if issubclass(cls, BackboneMethod):
        assert budgets == {None}
    else:
        # One value whatever the size, within one training step (<= 256 images) of the budget.
        assert len(budgets) == 1, f"{name}: quick budgets {budgets}"
        (budget,) = budgets
        assert QUICK_IMAGES_SEEN - 256 < budget <= QUICK_IMAGES_SEEN, f"{name}: {budget}"


def test_steps_for_divides_the_budget():
    assert steps_for(32) == QUICK_IMAGES_SEEN // 32
    assert steps_for(7, budget=20) == 2 and steps_for(64, budget=10) == 1
    with pytest.raises(ValueError):
        steps_for(0)


class Counter(Progress):
    def __init__(self):
        self.steps = 0

    def advance(self, n=1):
        self.steps += n


def test_ganomaly_trains_a_fixed_number_of_batches_whatever_the_set_size():
    """The quick budget is batches, not epochs: 5 batches of 8 over 20 or 200 images."""
    for n_images in (20, 200):
        images = torch.rand(n_images, 1, 32, 32).numpy()
        config = make_config(Ganomaly, "quick", image_size=32, channels=1,
                             overrides={"iterations": 5, "batch_size": 8, "n_features": 8})
        counter = Counter()
        Ganomaly(config).fit(TrainSet(normal=images, unlabeled=images[:0]), seed=0,
                             device=torch.device("cpu"), progress=counter)
        assert counter.steps == 5
        assert Ganomaly.images_seen(config) == 40
    epochs = make_config(Ganomaly, "full", image_size=32, channels=1)
    assert epochs.iterations == 0 and Ganomaly.images_seen(epochs) is None


def test_the_report_caption_states_the_budget(tracking_uri, isolated):
    args = ["--dataset", "tiny", "--no-progress", "--weights", "padim=random",
            "--tracking-uri", tracking_uri]
    run = CliRunner().invoke(cli, ["run", "--methods", "alocc,padim", "--seeds", "0",
                                   "--set", "alocc.iterations=3", *args[:-2], "--tracking-uri",
                                   tracking_uri], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    report = CliRunner().invoke(cli, ["report", "--dataset", "tiny", "--tracking-uri",
                                      tracking_uri], catch_exceptions=False)
    assert report.exit_code == 0, report.output
    assert ("Training budget: 96 training images drawn into batches for every trained "
            "method (alocc); padim sees each training image once") in report.output


# -- budget scales (`bench run --budget-scale`, `bench report --budget-curve`) ------------------

@pytest.mark.parametrize("name", ALL)
def test_a_budget_scale_multiplies_every_trained_methods_images_seen(name):
    """4x the budget draws 4x the images (within a step's rounding), the schedules measured in
    steps keep their share of the run, and a frozen-feature method has no budget to scale."""
    cls = available_methods()[name]
    config = make_config(cls, "quick", image_size=32, channels=1)
    scaled = cls.budget_overrides(config, 4)
    if cls.images_seen(config) is None:
        assert scaled == {} and not cls.budget_fields
        return
    bigger = dataclasses.replace(config, **scaled)
    assert cls.images_seen(bigger) == 4 * cls.images_seen(config)
    for field in ("decay_iterations", "adversarial_warmup_iterations"):
        if getattr(config, field, 0):
            assert getattr(bigger, field) == 4 * getattr(config, field)
    assert cls.budget_overrides(config, 1) == {}
    tiny = dataclasses.replace(config, **cls.budget_overrides(config, 1e-6))
    assert cls.images_seen(tiny) > 0  # at least one step of each stage


def test_budget_scales_run_as_separate_identities_and_draw_a_curve(tracking_uri, tmp_path):
    """Two scales give two identities of one method; Table 1 keeps the 1x runs only; the
    budget curve has a row per scale with twice the images at 2x, written with its figure."""
    from medad_bench.report.budget_curve import budget_curve
    from medad_bench.report.table import select_runs
    from medad_bench.tracking import finished_runs

    runner = CliRunner()
    setting = ["--set", "autoencoder.iterations=4", "--set", "autoencoder.batch_size=8"]
    result = runner.invoke(cli, ["run", "--methods", "autoencoder,padim", "--dataset", "tiny",
                                 "--budget-scale", "1,2", "--no-progress", "--weights",
                                 "padim=random", *setting, "--tracking-uri", tracking_uri])
    assert result.exit_code == 0, result.output
    runs = finished_runs(tracking_uri, "tiny")
    assert sorted(zip(runs.method, runs.budget_scale, strict=True)) == [
        ("autoencoder", "1"), ("autoencoder", "2"), ("padim", "1")]
    assert runs[runs.method == "autoencoder"].run_identity.nunique() == 2
    table1 = select_runs(tracking_uri, "tiny", statistics=False).runs
    assert sorted(table1.budget_scale) == ["1", "1"]

    curve = budget_curve(tracking_uri, "tiny").table
    assert list(curve.scale) == [1.0, 2.0] and set(curve.method) == {"autoencoder"}
    assert list(curve.images_seen) == [32, 64]
    out = tmp_path / "curve.md"
    result = runner.invoke(cli, ["report", "--dataset", "tiny", "--budget-curve", "--out",
                                 str(out), "--tracking-uri", tracking_uri])
    assert result.exit_code == 0, result.output
    assert "| autoencoder | 2x" in out.read_text() and out.with_suffix(".png").stat().st_size


@pytest.mark.parametrize("given, message", [("0,1", "positive"), ("x", "numbers"),
                                            ("2", "train none")])
def test_bad_budget_scales_name_the_fix(given, message):
    methods = "padim" if given == "2" else "autoencoder"
    result = CliRunner().invoke(cli, ["run", "--methods", methods, "--dataset", "tiny",
                                      "--budget-scale", given])
    assert result.exit_code != 0 and message in result.output


def test_table_1_names_the_budget_at_which_a_failed_method_learns():
    """A method that failed the checks at 1x gets, beside its mark, the smallest larger budget
    at which every seed passed (or that none did), from the store's budget-scale runs."""
    import pandas as pd

    from medad_bench.report.table import competence_notes

    failed = pd.DataFrame({"method": ["anomalypro"], "seed": [0], "competent": ["false"],
                           "competence_failed": ["val_auc"]})
    longer = pd.DataFrame({"method": ["anomalypro"] * 4, "seed": [0, 1, 0, 1],
                           "budget_scale": ["4", "4", "16", "16"], "start_time": [1, 2, 3, 4],
                           "competent": ["true", "false", "true", "true"],
                           "metric.auc": [0.7, 0.6, 0.8, 0.9]})
    (note,) = competence_notes(failed, longer)
    assert "At 16x the training budget it passes every check (test AUC 0.850" in note
    assert "budgets tried: 4x, 16x" in note
    (never,) = competence_notes(failed, longer.assign(competent="false"))
    assert "did not learn either (budgets tried: 4x, 16x" in never
    (plain,) = competence_notes(failed, None)
    assert plain.endswith("never bold or ranked.")
