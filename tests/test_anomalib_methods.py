"""PaDiM and PatchCore through real anomalib models, on tiny synthetic images."""

import numpy as np
import pytest
import timm
import torch

import medad_bench.methods._anomalib as backbones
import medad_bench.weights as weights
from medad_bench.api import NotFittedError, Progress, get_method, make_config
from medad_bench.data import load_card, prepare
from medad_bench.errors import BenchError
from medad_bench.stats.image_metrics import roc_auc

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from conftest import TINY_CARD

    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny.toml").write_text(TINY_CARD.format(name="tiny", contrast=0.3))
    card = load_card(str(folder / "tiny.toml"))
    return prepare(card, cache_root=folder / "cache", show_progress=False)


def trained(name, data, seed=0, **overrides):
    cls = get_method(name)
    overrides.setdefault("weights", "random")
    method = cls(make_config(cls, "quick", image_size=32, channels=1, overrides=overrides))
    method.fit(data.train_set(), seed=seed, device=CPU)
    return method


@pytest.mark.parametrize("name", ["padim", "patchcore"])
def test_one_pass_gives_scores_and_maps_at_the_input_size(name, tiny_data):
    # The model runs at 48 px: the maps still come back at the images' 32 px.
    method = trained(name, tiny_data, image_size=48, batch_size=7)
    images = tiny_data.images_of("test")
    prediction = method.predict(images)
    assert prediction.scores.shape == (30,) and np.all(np.isfinite(prediction.scores))
    assert prediction.maps.shape == (30, 32, 32) and np.all(np.isfinite(prediction.maps))
    assert prediction.maps.std() > 0 and prediction.extras == {}
    # The maps are the ones of each image, whatever batch it was scored in (7 per batch).
    alone = method.predict(images[9:10])
    np.testing.assert_allclose(alone.maps[0], prediction.maps[9], rtol=1e-4, atol=1e-5)
    without = method.predict(images, maps=False)
    assert without.maps is None
    np.testing.assert_array_equal(without.scores, prediction.scores)
    np.testing.assert_array_equal(method.score(images), prediction.scores)
    assert method.run_info["backbone_weights"] == "random (requested)"


@pytest.mark.parametrize("name", ["padim", "patchcore"])
def test_predict_before_fit_is_refused(name):
    cls = get_method(name)
    method = cls(make_config(cls, "quick", image_size=32, channels=1))
    with pytest.raises(NotFittedError, match="before fit"):
        method.predict(np.zeros((2, 1, 32, 32), np.float32))


def test_padim_image_score_is_the_maximum_of_its_map(tiny_data):
    """PaDiM's score and map come from the same forward pass: at the model's own size the
    score is the map's maximum."""
    method = trained("padim", tiny_data)
    prediction = method.predict(tiny_data.images_of("test"))
    np.testing.assert_allclose(prediction.scores, prediction.maps.max(axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize("name", ["padim", "patchcore"])
def test_same_seed_same_scores(name, tiny_data):
    images = tiny_data.images_of("test")
    first = trained(name, tiny_data, seed=3).score(images)
    again = trained(name, tiny_data, seed=3).score(images)
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("name", ["padim", "patchcore"])
def test_obvious_lesions_score_above_healthy_images(name, tiny_data):
    # PatchCore's layer2 is 1/8 of the input: upsample the 32 px images so lesions span patches.
    method = trained(name, tiny_data, image_size=64 if name == "patchcore" else 32)
    auc = roc_auc(tiny_data.labels_of("test"), method.score(tiny_data.images_of("test")))
    # Random-init backbones (no ImageNet weights offline) make PatchCore the weaker of the two.
    assert auc > (0.6 if name == "patchcore" else 0.7), auc


def test_padim_streaming_gaussian_matches_anomalib(tiny_data):
    """Our streaming mean/covariance equals anomalib's MultiVariateGaussian on the same data."""
    from anomalib.models.components import MultiVariateGaussian

    method = trained("padim", tiny_data, seed=1)
    model = method.model
    with torch.no_grad():
        inputs = backbones.backbone_input(tiny_data.train_set().normal, 32, CPU)
        emb = model.generate_embedding(model.feature_extractor(inputs))
    reference = MultiVariateGaussian()
    mean, inv_cov = reference.fit(emb)
    torch.testing.assert_close(model.gaussian.mean, mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.gaussian.inv_covariance, inv_cov, rtol=2e-3, atol=2e-3)


def test_local_weights_file_is_loaded_and_recorded(tiny_data, tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    method = trained("padim", tiny_data, weights=str(path), backbone="resnet18",
                     layers=("layer1", "layer2", "layer3"))
    assert method.run_info["backbone_weights"].startswith(f"local file {path}")
    assert method.run_info["weights.identity"].startswith("file:resnet18.pth:sha256=")
    loaded = method.model.feature_extractor.feature_extractor.state_dict()
    torch.testing.assert_close(loaded["conv1.weight"], source.state_dict()["conv1.weight"])


def test_weights_of_another_backbone_are_refused(tiny_data, tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(BenchError, match="do not fit this backbone"):
        trained("patchcore", tiny_data, weights=str(path))


def test_missing_or_unreadable_weights_file(tiny_data, tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        trained("padim", tiny_data, weights=str(tmp_path / "none.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BenchError, match="cannot read backbone weights"):
        trained("padim", tiny_data, weights=str(junk))


def test_unavailable_imagenet_weights_fall_back_loudly(tiny_data, monkeypatch):
    def offline(backbone):
        raise RuntimeError("hub unreachable (test)")

    monkeypatch.setattr(weights, "_hub_file", offline)
    with pytest.warns(weights.BackboneWeightsWarning, match="RANDOMLY INITIALISED"):
        method = trained("padim", tiny_data, weights="imagenet", backbone="resnet18",
                         layers=("layer1", "layer2", "layer3"))
    assert method.run_info["backbone_weights"].startswith("random (FALLBACK")
    assert method.run_info["weights.identity"] == "random"
    assert method.run_info["weights.fallback"] == "hub unreachable (test)"


# ------------------------------------------------------------- STFPM and Reverse Distillation

DISTILLATION = ["stfpm", "reverse_distillation"]


def _teacher(method):
    model = method.model
    return (model.teacher_model if method.name == "stfpm" else model.encoder).feature_extractor


def _student(method):
    model = method.model
    if method.name == "stfpm":
        return model.student_model
    return torch.nn.ModuleDict({"bottleneck": model.bottleneck, "decoder": model.decoder})


def _state(module):
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


class _FirstStep(Progress):
    """Records the teacher's and the student's weights when training starts (the engine's
    first stage call comes after _setup, before the first step)."""

    def __init__(self, method):
        self.method, self.teacher, self.student = method, None, None

    def stage(self, name, total=None):
        if self.teacher is None:
            self.teacher = _state(_teacher(self.method))
            self.student = _state(_student(self.method))


@pytest.fixture(scope="module")
def distilled():
    """Each distillation method's quick profile (packaged Lite0 teacher) fitted for 4 steps
    at 32 px on the conformance images, with its weights at the start of training."""
    from medad_bench.api.conformance import conformance_data, conformance_train_set

    data = conformance_data(32, 1)
    fitted = {}
    for name in DISTILLATION:
        cls = get_method(name)
        config = make_config(cls, "quick", image_size=32, channels=1,
                             overrides={"iterations": 4})
        method = cls(config)
        start = _FirstStep(method)
        method.fit(conformance_train_set(cls, data), seed=0, device=CPU, progress=start)
        fitted[name] = (method, start, data)
    return fitted


@pytest.mark.parametrize("name", DISTILLATION)
def test_distillation_teacher_is_the_packaged_lite0_and_stays_frozen(name, distilled):
    method, start, _ = distilled[name]
    source = weights.resolve_weights(backbones.LITE0, "imagenet")
    assert source.kind == "packaged"
    packaged = weights.by_position(weights.read_state_dict(source.path), backbones.LITE0,
                                   source=source.path)
    teacher = _state(_teacher(method))
    assert set(teacher) <= set(packaged)
    for key, value in teacher.items():  # running statistics included: never updated
        torch.testing.assert_close(value, packaged[key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(value, start.teacher[key], rtol=0, atol=0, msg=key)
    assert method.run_info["weights.identity"] == source.identity
    assert method.provenance(method.config) == {"weights": source.identity}


@pytest.mark.parametrize("name", DISTILLATION)
def test_distillation_student_learns(name, distilled):
    method, start, _ = distilled[name]
    student = _state(_student(method))
    assert set(student) == set(start.student)
    changed = [key for key, value in student.items()
               if value.is_floating_point() and not torch.equal(value, start.student[key])]
    weights_only = [key for key in student if key.endswith("weight")]
    assert set(weights_only) <= set(changed), sorted(set(weights_only) - set(changed))[:3]
    assert method.selected_step is not None and method.selected_step >= 1


@pytest.mark.parametrize("name", DISTILLATION)
def test_distillation_score_is_the_maximum_of_its_map(name, distilled):
    method, _, data = distilled[name]
    prediction = method.predict(data.test_images)
    assert prediction.maps.shape == (80, 32, 32)
    np.testing.assert_allclose(prediction.scores, prediction.maps.max(axis=(1, 2)), rtol=1e-5)


def test_stfpm_full_profile_is_anomalibs():
    import inspect
    from types import SimpleNamespace

    from anomalib.data import Folder
    from anomalib.models import Stfpm as AnomalibStfpm
    from anomalib.models.components.base import AnomalibModule

    from medad_bench.methods.stfpm import Stfpm, stfpm_model

    config = Stfpm.profile_config("full", image_size=64, channels=1)
    defaults = inspect.signature(AnomalibStfpm.__init__).parameters
    assert config.backbone == defaults["backbone"].default == "resnet18"
    assert config.layers == tuple(defaults["layers"].default)
    assert config.batch_size == inspect.signature(Folder.__init__).parameters[
        "train_batch_size"].default
    assert (config.epochs, config.iterations) == (100, 0)  # examples/configs/model/stfpm.yaml
    _assert_anomalib_preprocessing(config, AnomalibModule)
    model = stfpm_model(config.backbone, config.layers)
    theirs = AnomalibStfpm.configure_optimizers(SimpleNamespace(model=model))
    ours = Stfpm(config)._optimizer(model)
    _assert_same_optimizer(ours, theirs)
    assert all(not p.requires_grad for p in model.teacher_model.parameters())


def test_reverse_distillation_full_profile_is_anomalibs():
    import inspect
    from types import SimpleNamespace

    from anomalib.models import ReverseDistillation as AnomalibRD
    from anomalib.models.components.base import AnomalibModule
    from anomalib.models.image.reverse_distillation.torch_model import (
        ReverseDistillationModel,
    )

    from medad_bench.methods.reverse_distillation import (
        ReverseDistillation,
        has_anomalib_decoder,
        rd_model,
    )

    config = ReverseDistillation.profile_config("full", image_size=64, channels=1)
    defaults = inspect.signature(AnomalibRD.__init__).parameters
    assert config.backbone == defaults["backbone"].default == "wide_resnet50_2"
    assert config.layers == tuple(defaults["layers"].default)
    assert config.anomaly_map_mode == defaults["anomaly_map_mode"].default.value == "add"
    # examples/configs/model/reverse_distillation.yaml; batch 16 as anomalib's README numbers
    assert (config.epochs, config.iterations, config.batch_size) == (200, 0, 16)
    _assert_anomalib_preprocessing(config, AnomalibModule)
    # The published backbone gets anomalib's own constructor (tried on resnet18: cheaper).
    assert has_anomalib_decoder(config.backbone) and not has_anomalib_decoder(backbones.LITE0)
    model = rd_model("resnet18", config.layers, 64, config.anomaly_map_mode)
    assert type(model) is ReverseDistillationModel
    theirs = AnomalibRD.configure_optimizers(SimpleNamespace(model=model))
    ours = ReverseDistillation(config)._optimizer(model)
    _assert_same_optimizer(ours, theirs)


def _assert_anomalib_preprocessing(config, module):
    """anomalib's default pre-processor: resize to the config's 256 px, ImageNet statistics
    (methods/_anomalib.py backbone_input does the same)."""
    resize, normalize = module.configure_pre_processor().transform.transforms
    assert tuple(resize.size) == (config.image_size, config.image_size) == (256, 256)
    assert tuple(normalize.mean) == backbones.IMAGENET_MEAN
    assert tuple(normalize.std) == backbones.IMAGENET_STD


def _assert_same_optimizer(ours, theirs):
    assert type(ours) is type(theirs)
    assert ours.defaults == theirs.defaults
    assert [id(p) for p in ours.param_groups[0]["params"]] == [
        id(p) for p in theirs.param_groups[0]["params"]]


def test_rd_style_lite0_decoder_mirrors_the_encoder():
    """The RD-style bottleneck and decoder give back the encoder's shapes at any multiple of
    32 px, in training (loss) and scoring (map) mode."""
    from medad_bench.methods.reverse_distillation import rd_model

    torch.manual_seed(0)
    for size in (32, 96):
        model = rd_model(backbones.LITE0, ("blocks.1", "blocks.2", "blocks.4"), size, "add")
        model.train()
        encoder, decoder = model(torch.randn(2, 3, size, size))
        assert [e.shape for e in encoder] == [d.shape for d in decoder]
        assert [e.shape[1] for e in encoder] == [24, 40, 112]
        model.eval()
        with torch.inference_mode():
            out = model(torch.randn(2, 3, size, size))
        assert out.anomaly_map.shape == (2, 1, size, size)


def test_rd_working_size_and_bad_sizes():
    from medad_bench.methods.reverse_distillation import working_size

    cls = get_method("reverse_distillation")
    # Quick works at the dataset's size capped at QUICK_WORKING_SIZE (32), rounded up to a
    # multiple of 32.
    assert make_config(cls, "quick", image_size=64, channels=1).image_size == 32
    assert make_config(cls, "quick", image_size=20, channels=1).image_size == 32
    assert working_size(50) == 64 and working_size(64) == 64 and working_size(65) == 96
    with pytest.raises(BenchError, match="multiple of 32"):
        make_config(cls, "quick", image_size=64, channels=1, overrides={"image_size": 48})
    with pytest.raises(BenchError, match="anomaly_map_mode"):
        make_config(cls, "full", image_size=64, channels=1,
                    overrides={"anomaly_map_mode": "max"})


@pytest.mark.parametrize("name", DISTILLATION)
def test_quick_profile_is_the_equal_budget(name):
    from medad_bench.methods._budget import QUICK_IMAGES_SEEN

    cls = get_method(name)
    config = make_config(cls, "quick", image_size=64, channels=1)
    assert config.backbone == backbones.LITE0 and config.weights == "imagenet"
    assert QUICK_IMAGES_SEEN - config.batch_size < cls.images_seen(config) <= QUICK_IMAGES_SEEN
    assert cls.images_seen(make_config(cls, "full", image_size=64, channels=1)) is None


def test_distillation_never_touches_the_network(monkeypatch, tiny_data):
    """Building every profile's model and fitting the quick ones makes no connection and no
    name lookup (the model hub is unreachable here: anything that tried would hang or fail)."""
    import socket

    from medad_bench.methods.reverse_distillation import rd_model
    from medad_bench.methods.stfpm import stfpm_model

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access attempted (test)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    stfpm_model("resnet18", ("layer1", "layer2", "layer3"))
    rd_model("resnet18", ("layer1", "layer2", "layer3"), 64, "add")
    for name in DISTILLATION:
        cls = get_method(name)
        config = make_config(cls, "quick", image_size=32, channels=1,
                             overrides={"iterations": 2})
        cls(config).fit(tiny_data.train_set(), seed=0, device=CPU)
    assert attempts == []


def test_dropping_unused_stages_keeps_the_features():
    from anomalib.models.components import TimmFeatureExtractor

    layers = ["blocks.1", "blocks.2", "blocks.4"]
    torch.manual_seed(0)
    whole = TimmFeatureExtractor(backbones.LITE0, layers=layers, pre_trained=False).eval()
    trimmed = TimmFeatureExtractor(backbones.LITE0, layers=layers, pre_trained=False).eval()
    trimmed.load_state_dict(whole.state_dict())
    backbones.drop_unused_stages(trimmed)
    assert len(trimmed.feature_extractor.blocks) == 5 < len(whole.feature_extractor.blocks)
    x = torch.randn(2, 3, 64, 64)
    for ours, theirs in zip(trimmed(x).values(), whole(x).values(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
