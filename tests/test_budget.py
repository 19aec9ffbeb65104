"""Equal training budgets: every trained method's quick profile draws the same number of
training images, whatever the image or data size, and the report's caption says so."""

import pytest
import torch
from click.testing import CliRunner

from benchmark.api import Progress, TrainSet, available_methods, make_config
from benchmark.cli import cli
from methods._anomalib import BackboneMethod
from methods._budget import QUICK_IMAGES_SEEN, steps_for
from methods.ganomaly import Ganomaly

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
