import dataclasses

import numpy as np
import pandas as pd
import pytest

from medad_bench.data import load_card, prepare
from medad_bench.data.splits import check_subject_disjoint, manifest_hash
from medad_bench.data.synthetic import SyntheticConfig, generate_image, image_specs
from medad_bench.errors import BenchError, UsageError


def test_generation_is_deterministic_and_seed_dependent():
    config = SyntheticConfig(image_size=32, n_mixed=4, n_normal=4, n_val=4, n_test=4)
    spec = image_specs(config)[0]
    image_a, mask_a = generate_image(config, spec)
    image_b, mask_b = generate_image(config, spec)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(mask_a, mask_b)
    other, _ = generate_image(dataclasses.replace(config, seed=config.seed + 1), spec)
    assert not np.array_equal(image_a, other)


def test_images_in_range_and_lesion_masks_only_on_diseased_images():
    config = SyntheticConfig(image_size=48, n_mixed=20, n_normal=10, n_val=10, n_test=20,
                             lesion_contrast=0.2)
    for spec in image_specs(config):
        image, mask = generate_image(config, spec)
        assert image.shape == (48, 48) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert (mask.sum() > 0) == bool(spec.label), spec


def test_lesions_brighten_the_image_where_the_mask_is():
    config = SyntheticConfig(image_size=64, lesion_contrast=0.3)
    diseased = [s for s in image_specs(config) if s.label][:10]
    healthy_twin = dataclasses.replace
    gains = []
    for spec in diseased:
        image, mask = generate_image(config, spec)
        clean, _ = generate_image(config, healthy_twin(spec, label=0))
        gains.append(float((image - clean)[mask.astype(bool)].mean()))
    assert min(gains) > 0.05


def test_split_sizes_and_disease_shares_follow_the_config():
    config = SyntheticConfig(n_mixed=100, n_normal=50, n_val=40, n_test=60,
                             diseased_share_mixed=0.3, diseased_share_eval=0.5)
    table = pd.DataFrame([vars(s) for s in image_specs(config)])
    counts = table.groupby("split").label.agg(["count", "sum"])
    assert counts.loc["train_mixed"].tolist() == [100, 30]
    assert counts.loc["train_normal"].tolist() == [50, 0]
    assert counts.loc["val"].tolist() == [40, 20]
    assert counts.loc["test"].tolist() == [60, 30]


@pytest.mark.parametrize("bad", [{"image_size": 8}, {"n_test": -1},
                                 {"diseased_share_mixed": 1.5}, {"lesion_kinds": ("tumour",)}])
def test_bad_generator_settings_are_refused(bad):
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)


def test_prepare_builds_the_cache_once_then_reuses_it(isolated):
    card = load_card("tiny")
    first = prepare(card, show_progress=False)
    assert first.built
    second = prepare(card, show_progress=False)
    assert not second.built
    assert second.folder == first.folder
    assert second.split_hash == first.split_hash
    np.testing.assert_array_equal(np.asarray(first.images), np.asarray(second.images))
    assert first.images_of("test").shape == (30, 1, 32, 32)
    assert first.train_set().normal.shape == (40, 1, 32, 32)
    assert first.counts().loc["test"].tolist() == [15, 15]
    assert not list(first.folder.parent.glob(".tiny-*")), "temporary folder left behind"


def test_card_change_gives_a_new_cache_and_hash(isolated):
    first = prepare(load_card("tiny"), show_progress=False)
    card_path = isolated / "cards" / "tiny.toml"
    card_path.write_text(card_path.read_text().replace("seed = 11", "seed = 12"))
    second = prepare(load_card("tiny"), show_progress=False)
    assert second.built and second.folder != first.folder
    assert second.split_hash != first.split_hash


def test_manifest_hash_ignores_row_order_but_not_content():
    manifest = pd.DataFrame({"image_id": ["a", "b", "c"], "split": ["train", "test", "test"],
                             "label": [0, 1, 0], "subject_id": ["p1", "p2", "p3"]})
    shuffled = manifest.iloc[[2, 0, 1]]
    assert manifest_hash(manifest) == manifest_hash(shuffled)
    relabelled = manifest.assign(label=[0, 0, 0])
    assert manifest_hash(manifest) != manifest_hash(relabelled)
    assert len(manifest_hash(manifest)) == 64


def test_subject_in_two_splits_is_refused():
    manifest = pd.DataFrame({"image_id": ["a", "b"], "split": ["train", "test"],
                             "label": [0, 1], "subject_id": ["p1", "p1"]})
    with pytest.raises(ValueError, match="p1"):
        check_subject_disjoint(manifest)


def test_an_edited_manifest_is_detected(isolated):
    data = prepare(load_card("tiny"), show_progress=False)
    path = data.folder / "manifest.csv"
    path.write_text(path.read_text().replace(",test,0,", ",test,1,", 1))
    with pytest.raises(BenchError, match="does not match its recorded hash"):
        prepare(load_card("tiny"), show_progress=False)


def test_unknown_dataset_names_the_valid_ones():
    with pytest.raises(UsageError) as info:
        load_card("nope")
    assert "tiny" in str(info.value) and "synthetic" in str(info.value)


def test_bad_cards_say_what_is_wrong(isolated):
    cards = isolated / "cards"
    (cards / "broken.toml").write_text("name = 'broken'\nformat = \n")
    with pytest.raises(BenchError, match="not valid TOML"):
        load_card("broken")
    (cards / "nofmt.toml").write_text("description = 'x'\nchannels = 1\nimage_size = 32\n")
    with pytest.raises(BenchError, match="lacks the key 'format'"):
        load_card("nofmt")
    (cards / "knob.toml").write_text(
        "description = 'x'\nformat = 'synthetic'\nchannels = 1\nimage_size = 32\n"
        "[synthetic]\nlesion_colour = 3\n")
    with pytest.raises(BenchError, match="lesion_colour"):
        prepare(load_card("knob"), show_progress=False)


def test_missing_data_root_says_where_to_get_and_put_the_data(isolated):
    with pytest.raises(BenchError) as info:
        prepare(load_card("covidx"), data_root=isolated / "nowhere", show_progress=False)
    message = str(info.value)
    assert "does not exist" in message and "kaggle" in message.lower()
    assert "train.txt" in message and "--data-root" in message
