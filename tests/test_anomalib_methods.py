"""PaDiM and PatchCore through real anomalib models, on tiny synthetic images."""

import numpy as np
import pytest
import timm
import torch

import methods._anomalib as backbones
import methods._weights as weights
from benchmark.api import NotFittedError, get_method, make_config
from benchmark.data import load_card, prepare
from benchmark.errors import BenchError
from benchmark.metrics import roc_auc

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
