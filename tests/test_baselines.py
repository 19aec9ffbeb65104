"""The GAN baselines: f-AnoGAN, ALAD, ALOCC (own PyTorch) and GANomaly (anomalib), on the
training engine (benchmark/api/training.py): scores, seeding, checkpoints, selection and resume."""

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from medad_bench.api import Progress, TrainSet, config_from_params, get_method, make_config
from medad_bench.api.training import hold_out_normals
from medad_bench.cli import cli
from medad_bench.data import load_card, prepare

CPU = torch.device("cpu")
BASELINES = ["fanogan", "alad", "alocc", "ganomaly"]
#: A few steps: enough to exercise every code path.
FEW = {"fanogan": {"gan_iterations": 3, "encoder_iterations": 3}, "alad": {"iterations": 3},
       "alocc": {"iterations": 3}, "ganomaly": {"iterations": 2}}
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import TINY_CARD

    folder = tmp_path_factory.mktemp("baselines")
    card = TINY_CARD.format(name="tiny", contrast=0.4).replace("lesion_size = 1.5",
                                                                 "lesion_size = 2.0")
    card = card.replace("n_normal = 40", "n_normal = 64")
    (folder / "tiny.toml").write_text(card)
    return prepare(load_card(str(folder / "tiny.toml")), cache_root=folder / "cache",
                   show_progress=False)


def fitted(name, data, seed=0, **overrides):
    cls = get_method(name)
    method = cls(make_config(cls, "quick", image_size=32, channels=1, overrides=overrides))
    method.fit(data.train_set(), seed=seed, device=CPU)
    return method


def selecting(data):
    """The training set as the runner hands it over: held-out normals and the unlabelled test
    images for AUCp."""
    train = data.train_set(with_selection=True)
    normal, held = hold_out_normals(train.normal)
    return dataclasses.replace(train, normal=normal, selection_normals=held)


def tiny_config(name, **overrides):
    """Narrow networks and a few steps: the engine's paths at the cost of seconds."""
    cls = get_method(name)
    narrow = {"ganomaly": {"n_features": 8}}.get(name, {"base_channels": 8})
    return make_config(cls, "quick", image_size=32, channels=1,
                       overrides={**FEW[name], "batch_size": 8, **narrow, **overrides})


@pytest.mark.parametrize("name", BASELINES)
def test_one_finite_score_per_image(name, data):
    method = fitted(name, data, **FEW[name])
    images = data.images_of("test")
    prediction = method.predict(images)
    assert prediction.scores.shape == (30,) and np.all(np.isfinite(prediction.scores))
    assert prediction.maps is None and prediction.extras == {}  # these methods have no maps
    np.testing.assert_array_equal(method.score(images), prediction.scores)
    # Scored in batches: a batch size that splits the images gives the same scores.
    method.config = dataclasses.replace(method.config, score_batch_size=7)
    np.testing.assert_allclose(method.score(images), prediction.scores, rtol=1e-5, atol=1e-7)
    assert all(not network.training for network in method.networks.values())


@pytest.mark.parametrize("name", BASELINES)
def test_same_seed_same_scores_other_seed_other_scores(name, data):
    images = data.images_of("test")
    first = fitted(name, data, seed=1, **FEW[name]).score(images)
    np.testing.assert_array_equal(first, fitted(name, data, seed=1, **FEW[name]).score(images))
    assert not np.array_equal(first, fitted(name, data, seed=2, **FEW[name]).score(images))


class Killer(Progress):
    """Interrupts a fit (as Ctrl-C would) at the first step after a checkpoint was written."""

    def __init__(self, workdir):
        self.checkpoint = workdir / "last.pt"

    def advance(self, n=1):
        if self.checkpoint.exists():
            raise KeyboardInterrupt("killed for the test")


@pytest.mark.parametrize("name", BASELINES)
def test_a_killed_run_resumes_and_ends_where_an_uninterrupted_one_ends(name, data, tmp_path):
    cls = get_method(name)
    config = tiny_config(name)
    train = selecting(data)
    images = data.images_of("test")
    straight = cls(config, selection="last").fit(train, seed=4, device=CPU)
    workdir = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        cls(config, workdir=workdir, selection="last").fit(train, seed=4, device=CPU,
                                                            progress=Killer(workdir))
    resumed = cls(config, workdir=workdir, selection="last").fit(train, seed=4, device=CPU)
    first = straight.selection_history[0].step
    assert resumed.run_info["resumed_from_step"] == first < straight.last_step
    # Training went on after the interruption: the last checkpoint scores differently.
    assert not np.allclose(straight.selection_history[0].test_scores,
                           straight.selection_history[-1].test_scores, rtol=1e-5, atol=0)
    # Exactly equal on a CPU: every state (networks, optimisers, batch order, noise, torch's
    # generator) comes back bit for bit. (ALAD's averages not restored differ by ~1e-6.)
    np.testing.assert_array_equal(resumed.score(images), straight.score(images))
    assert [c.step for c in resumed.selection_history] == [
        c.step for c in straight.selection_history]
    for mine, theirs in zip(resumed.selection_history, straight.selection_history, strict=True):
        np.testing.assert_array_equal(mine.test_scores, theirs.test_scores)


class Stages(Progress):
    """Records stages and, when f-AnoGAN's encoder phase starts, its generator's state."""

    def __init__(self, method):
        self.method, self.stages, self.generator_at_phase_2 = method, [], None

    def stage(self, name, total=None):
        self.stages.append((name, total))
        if name == "izi_f encoder":
            self.generator_at_phase_2 = {key: value.clone() for key, value
                                         in self.method.generator.state_dict().items()}


def test_fanogan_selects_among_encoder_checkpoints_with_the_gan_frozen(data):
    cls = get_method("fanogan")
    config = tiny_config("fanogan", gan_iterations=4, encoder_iterations=6)
    method = cls(config, selection="last")
    progress = Stages(method)
    method.fit(selecting(data), seed=0, device=CPU, progress=progress)
    assert progress.stages == [("wgan-gp", 10), ("izi_f encoder", 10)]
    # No checkpoint before the encoder trains: six over the encoder's six steps.
    assert [c.step for c in method.selection_history] == [5, 6, 7, 8, 9, 10]
    # Phase 2 moved neither G's weights nor its BatchNorm statistics (scoring at every
    # checkpoint puts the networks back in train mode; the encoder step must not let G's
    # BatchNorm update its running statistics).
    for key, value in method.generator.state_dict().items():
        torch.testing.assert_close(value, progress.generator_at_phase_2[key], rtol=0, atol=0,
                                   msg=key)
    assert not any(p.requires_grad for net in (method.generator, method.critic)
                   for p in net.parameters())


def test_alad_scores_with_the_moving_averages(data):
    method = get_method("alad")(tiny_config("alad"), selection="last")
    method.fit(selecting(data), seed=0, device=CPU)
    images = data.images_of("test")
    before = method.score(images)
    assert {"ema_encoder", "ema_generator", "ema_d_xx"} <= set(method.networks)
    live = dict(method.encoder.named_parameters())
    assert any(not torch.equal(value, live[key])
               for key, value in method.ema_encoder.named_parameters())
    with torch.no_grad():  # the live networks do not score ...
        for net in (method.encoder, method.generator, method.d_xx):
            for p in net.parameters():
                p.zero_()
    np.testing.assert_array_equal(method.score(images), before)
    with torch.no_grad():  # ... the averaged ones do
        for p in method.ema_encoder.parameters():
            p.add_(0.1)
    assert not np.allclose(method.score(images), before)


class Counter(Progress):
    def __init__(self):
        self.steps = 0

    def advance(self, n=1):
        self.steps += n


def test_ganomaly_trains_epochs_of_whole_batches_without_iterations():
    images = torch.rand(20, 1, 32, 32).numpy()
    cls = get_method("ganomaly")
    config = tiny_config("ganomaly", iterations=0, epochs=3)  # 20 // 8 = 2 batches an epoch
    counter = Counter()
    method = cls(config).fit(TrainSet(normal=images, unlabeled=images[:0]), seed=0,
                             device=CPU, progress=counter)
    assert counter.steps == method.total_steps(TrainSet(images, images[:0])) == 6
    with pytest.raises(ValueError, match="at least two"):
        cls(config).fit(TrainSet(normal=images[:1], unlabeled=images[:0]), seed=0)


@pytest.mark.parametrize("name", BASELINES)
def test_profiles_and_published_defaults(name):
    cls = get_method(name)
    assert cls.uses == ("normal",)
    full = make_config(cls, "full", image_size=64, channels=1)
    assert full == cls.Config(), "the full profile is the published configuration"
    quick = make_config(cls, "quick", image_size=64, channels=1)
    assert quick.image_size <= 32


def test_published_values():
    assert get_method("fanogan").Config().critic_steps == 5
    assert get_method("fanogan").Config().lambda_gp == 10
    assert get_method("alad").Config().ema_decay == 0.999
    assert get_method("alocc").Config().noise_sigma == 0.155
    assert get_method("alocc").Config().lambda_reconstruction == 0.2
    ganomaly = get_method("ganomaly").Config()
    assert (ganomaly.w_adversarial, ganomaly.w_contextual, ganomaly.w_encoder) == (1, 50, 1)


def test_configs_round_trip_through_mlflow_params(tracking_uri):
    settings = [f"--set={n}.{k}={v}" for n in BASELINES for k, v in FEW[n].items()]
    result = CliRunner().invoke(cli, ["run", "--methods", ",".join(BASELINES), "--dataset",
                                      "tiny", "--no-progress", *settings,
                                      "--tracking-uri", tracking_uri], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("bench/tiny").experiment_id])
    assert sorted(r.data.params["method"] for r in runs) == sorted(BASELINES)
    for run in runs:
        cls = get_method(run.data.params["method"])
        expected = dataclasses.replace(make_config(cls, "quick", image_size=32, channels=1),
                                       **FEW[cls.name])
        assert config_from_params(cls, run.data.params) == expected


def test_contaminated_setting_trains_baselines_on_all_training_images(tracking_uri):
    result = CliRunner().invoke(cli, ["run", "--methods", "alocc", "--dataset", "tiny",
                                      "--no-progress", "--set", "alocc.iterations=2",
                                      "--contaminated", "--tracking-uri", tracking_uri],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("bench/tiny").experiment_id])[0]
    assert run.data.params["contaminated"] == "true"
    # 40 healthy - 4 held out for AUCp (a tenth; known normals only) + 20 mixed.
    assert run.data.params["n_selection_normals"] == "4"
    assert run.data.params["n_train_normal"] == "56"
    report = CliRunner().invoke(cli, ["report", "--dataset", "tiny", "--contaminated",
                                      "--out", "-", "--tracking-uri", tracking_uri])
    assert report.exit_code == 0 and "alocc" in report.output
    clean = CliRunner().invoke(cli, ["report", "--dataset", "tiny", "--out", "-",
                                     "--tracking-uri", tracking_uri])
    assert clean.exit_code == 1 and "no finished" in clean.output
