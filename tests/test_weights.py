"""The offline ImageNet backbone: real weights, loaded by position only when every shape fits,
and an identity that names exactly what was loaded."""

import hashlib
from collections import OrderedDict

import pytest
import timm
import torch

from medad_bench import weights
from medad_bench.api import get_method, make_config
from medad_bench.errors import BenchError


def test_packaged_lite0_weights_are_real_imagenet_weights():
    """A cat photo lands in ImageNet's cat classes, an espresso in 'espresso' (top 1), with
    the probabilities a correctly loaded and normalised network gives."""
    ranking = weights.classify_samples()
    cat_classes, cat_probability = zip(*ranking["chelsea.png"], strict=True)
    assert cat_classes[0] in weights.SAMPLE_PHOTOS["chelsea.png"]
    assert set(cat_classes[:3]) <= set(weights.SAMPLE_PHOTOS["chelsea.png"])
    assert sum(cat_probability[:3]) > 0.8
    coffee_class, coffee_probability = ranking["coffee.png"][0]
    assert coffee_class == 967 and coffee_probability > 0.7


def test_packaged_weights_identity_names_file_and_hash():
    source = weights.resolve_weights("efficientnet_lite0", "imagenet")
    assert source.kind == "packaged" and source.path.name == "efficientnet-lite0-57934424.pth"
    digest = hashlib.sha256(source.path.read_bytes()).hexdigest()
    assert source.identity == f"packaged:efficientnet-lite0-57934424.pth:sha256={digest}"
    # The file's name carries the first digits of its hash (EfficientNet-PyTorch's convention).
    assert digest.startswith("57934424")
    assert weights.resolve_weights("efficientnet_lite0", "random").identity == "random"


def test_quick_profiles_use_the_offline_backbone_and_full_the_published_ones():
    for name, full_backbone in (("padim", "resnet18"), ("patchcore", "wide_resnet50_2")):
        cls = get_method(name)
        quick = make_config(cls, "quick", image_size=64, channels=1)
        full = make_config(cls, "full", image_size=64, channels=1)
        assert (quick.backbone, quick.weights) == ("efficientnet_lite0", "imagenet")
        assert (full.backbone, full.weights) == (full_backbone, "imagenet")
        assert cls.provenance(quick)["weights"].startswith("packaged:")


def _efficientnet_pytorch_style(state):
    """The packaged file's layout: the same tensors in the same order under other names."""
    return OrderedDict((f"_blocks.{i}.w", tensor) for i, tensor in enumerate(state.values()))


def test_a_user_file_in_efficientnet_pytorch_naming_loads_by_position(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    path = tmp_path / "lite0.pth"
    torch.save(_efficientnet_pytorch_style(source), path)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    weights.load_weights(model, weights.resolve_weights("efficientnet_lite0", str(path)))
    torch.testing.assert_close(model.state_dict()["blocks.3.0.conv_pw.weight"],
                               source["blocks.3.0.conv_pw.weight"])


@pytest.mark.parametrize("damage, message", [
    ("drop", "hold 295 tensors, timm's efficientnet_lite0 has 296"),
    ("reshape", "does not fit timm's"),
])
def test_position_mapping_refuses_a_file_that_does_not_line_up(tmp_path, damage, message):
    state = _efficientnet_pytorch_style(
        timm.create_model("efficientnet_lite0", pretrained=False).state_dict())
    keys = list(state)
    if damage == "drop":
        del state[keys[10]]
    else:
        state[keys[10]] = torch.zeros(3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    with pytest.raises(BenchError, match=message):
        weights.load_weights(model, weights.resolve_weights("efficientnet_lite0", str(path)))


def test_check_weights_command_prints_classes_and_probabilities():
    from click.testing import CliRunner

    from medad_bench.cli import cli

    result = CliRunner().invoke(cli, ["check-weights"])
    assert result.exit_code == 0, result.output
    assert "chelsea.png" in result.output and "967 (0.8" in result.output
