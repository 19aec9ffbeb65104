"""The MedMNIST reader (format "medmnist"), its cards and the shipped PneumoniaMNIST: real .npz
files written to a temp folder in MedMNIST's layout, read through `prepare` and `bench data`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from medad_bench.cli import cli
from medad_bench.data import load_card, prepare
from medad_bench.data.cards import parse_card
from medad_bench.data.images import quantize
from medad_bench.data.pixels import fit_to_square
from medad_bench.data.prepared import download_dataset
from medad_bench.data.protocol import assign_splits
from medad_bench.errors import BenchError

REPO = Path(__file__).resolve().parents[1]
COUNTS = {"train": 60, "val": 20, "test": 24}

CARD = """
name = "{name}"
description = "a MedMNIST-format file written by the test"
format = "medmnist"
channels = {channels}
image_size = 32
unit = "image"

[medmnist]
flag = "{flag}"
size = {size}
{healthy}
mixed_healthy_share = 0.3
mixed_diseased_share = 0.3
"""


def write_npz(folder: Path, name: str = "pneumoniamnist.npz", *, size: int = 28,
              rgb: bool = False, classes: int = 2, multi_label: int = 0,
              **replace: np.ndarray) -> Path:
    """MedMNIST's keys and layout with random pixels; `replace` swaps in a bad array."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in COUNTS.items():
        shape = (count, size, size, 3) if rgb else (count, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        if multi_label:
            labels = (rng.random((count, multi_label)) < 0.15).astype(np.uint8)
        else:
            labels = (np.arange(count) % classes).astype(np.uint8)[:, None]
        arrays[f"{split}_labels"] = labels
    arrays.update(replace)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    np.savez_compressed(path, **arrays)
    return path


def card(folder: Path, *, flag: str = "pneumoniamnist", size: int = 28, channels: int = 1,
         healthy: str = "healthy_labels = [0]", name: str = "mm") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(CARD.format(name=name, flag=flag, size=size, channels=channels,
                                healthy=healthy))
    return path


def prepared_from(tmp_path: Path, **card_args: object):
    return prepare(parse_card(card(tmp_path, **card_args)), data_root=tmp_path / "data",
                   show_progress=False)


def test_a_medmnist_file_becomes_the_official_splits_with_its_pixels(tmp_path):
    source = write_npz(tmp_path / "data")
    prepared = prepared_from(tmp_path)
    counts = prepared.counts()
    # The official test and validation splits, all of them; set A 30% diseased.
    assert counts.loc["test"].tolist() == [12, 12]
    assert counts.loc["val"].tolist() == [10, 10]
    mixed_healthy, mixed_diseased = counts.loc["train_mixed"].tolist()
    assert mixed_healthy == 9 and mixed_diseased == round(9 * 0.3 / 0.7)
    assert counts.loc["train_normal"].tolist() == [21, 0]
    # Each image is its own subject; the pixels are the file's, resized like any other image.
    manifest = prepared.manifest.set_index("image_id")
    assert (manifest.subject_id == manifest.index).all()
    with np.load(source) as arrays:
        original = arrays["test_images"][5]
        label = int(arrays["test_labels"][5, 0])
    row = int(manifest.loc["test-000005", "row"])
    expected = quantize(fit_to_square(original[None].astype(np.float32) / 255, 32), np.uint8)
    assert np.array_equal(prepared.images[row], expected)
    assert manifest.loc["test-000005", "label"] == label
    # Counts and bytes differ from MedMNIST's official file: notes, not errors.
    notes = " ".join(prepared.meta["notes"])
    assert "differ from MedMNIST's official" in notes and "is not the official file's" in notes


def test_multi_label_sets_are_healthy_when_no_finding_is_set_and_rgb_becomes_grey(tmp_path):
    source = write_npz(tmp_path / "data", "chestmnist.npz", multi_label=14)
    prepared = prepared_from(tmp_path, flag="chestmnist", healthy="")
    with np.load(source) as arrays:
        findings = arrays["test_labels"]
    test = prepared.manifest[prepared.manifest.split == "test"].sort_values("image_id")
    assert test.label.tolist() == findings.any(axis=1).astype(int).tolist()

    write_npz(tmp_path / "rgb", "dermamnist.npz", rgb=True, classes=7)
    rgb = prepare(parse_card(card(tmp_path, flag="dermamnist", healthy="healthy_labels = [5]",
                                  name="derm")),
                  data_root=tmp_path / "rgb", show_progress=False)
    assert rgb.images.shape[1:] == (1, 32, 32)


@pytest.mark.parametrize("fault, message", [
    ("missing_key", "lacks the key 'val_labels'"),
    ("float_pixels", "holds float32 pixels; MedMNIST stores uint8"),
    ("label_range", "row 3 holds the label [2], outside 0..1"),
    ("wrong_size", "holds 64 x 64 px images, but the card reads it as the 28 px file (that is "
                   "the 64 px file, published as 'pneumoniamnist_64.npz': save it under that "
                   "name and use --dataset pneumoniamnist_64"),
    ("truncated", "is not a readable .npz file"),
    ("label_rows", "'test_labels' has shape (23, 1), expected (24, 1)"),
])
def test_each_bad_file_is_one_clear_error(tmp_path, fault, message):
    folder = tmp_path / "data"
    if fault == "missing_key":
        path = write_npz(folder)
        with np.load(path) as arrays:
            kept = {k: arrays[k] for k in arrays.files if k != "val_labels"}
        np.savez_compressed(path, **kept)
    elif fault == "float_pixels":
        write_npz(folder, train_images=np.zeros((60, 28, 28), np.float32))
    elif fault == "label_range":
        labels = np.zeros((60, 1), np.uint8)
        labels[3] = 2
        write_npz(folder, train_labels=labels)
    elif fault == "wrong_size":
        write_npz(folder, size=64)  # the 64 px file saved under the 28 px name
    elif fault == "truncated":
        path = write_npz(folder)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif fault == "label_rows":
        write_npz(folder, test_labels=np.zeros((23, 1), np.uint8))
    with pytest.raises(BenchError) as caught:
        prepared_from(tmp_path)
    assert message in str(caught.value)
    assert not list((tmp_path / "cache").glob("mm-*")), "a bad file left a cache behind"


def test_card_mistakes_are_named(tmp_path):
    write_npz(tmp_path / "data")
    with pytest.raises(BenchError, match="healthy_labels must list the healthy class indices "
                                         "of pneumoniamnist \\(0 = normal, 1 = pneumonia\\)"):
        prepared_from(tmp_path, healthy="healthy_labels = [7]")
    with pytest.raises(BenchError, match="unknown MedMNIST set 'pneumonia'"):
        prepared_from(tmp_path, flag="pneumonia")
    with pytest.raises(BenchError, match="size must be one of 28, 64, 128, 224"):
        prepared_from(tmp_path, size=32)
    with pytest.raises(BenchError, match="holds no 'pneumoniamnist_64.npz'.*bench data download"):
        prepared_from(tmp_path, size=64)


def test_the_data_version_follows_the_contents_not_the_file_time(tmp_path):
    path = write_npz(tmp_path / "data")
    first = prepared_from(tmp_path).data_version
    os.utime(path, ns=(1, 1))  # a fresh clone or a copy: new times, same bytes
    assert prepared_from(tmp_path).data_version == first
    relabelled = (np.arange(24) % 2).astype(np.uint8)[:, None]
    relabelled[0] = 1  # one label changed: other contents, another version
    write_npz(tmp_path / "data", test_labels=relabelled)
    assert prepared_from(tmp_path).data_version != first


def test_the_shipped_pneumoniamnist_needs_no_download():
    result = CliRunner().invoke(cli, ["data", "info", "--dataset", "pneumoniamnist"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: [int(n) for n in line.split()[1:]]
            for line in result.output.splitlines()
            if line.split() and line.split()[0] in ("train_mixed", "train_normal", "val", "test")}
    # healthy, diseased, total: MedMNIST's official val and test splits, set A 30% pneumonia.
    assert rows == {"train_mixed": [325, 139, 464], "train_normal": [889, 0, 889],
                    "val": [135, 389, 524], "test": [234, 390, 624]}
    assert "is not the official file's" in result.output  # a reassembled copy, said so
    shipped = REPO / "datasets" / "medmnist" / "pneumoniamnist.npz"
    assert download_dataset(load_card("pneumoniamnist"), None) == (shipped, False)


def test_the_other_medmnist_cards_and_their_sizes():
    for name, flag in (("chestmnist", "chestmnist"), ("breastmnist", "breastmnist"),
                       ("octmnist", "octmnist")):
        base = load_card(name)
        assert base.format == "medmnist" and base.settings["flag"] == flag
        larger = load_card(f"{name}_128")
        assert larger.image_size == 128 and larger.settings["size"] == 128
        assert larger.text != base.text  # another cache and data version
    with pytest.raises(BenchError, match="unknown dataset 'synthetic_64'"):
        load_card("synthetic_64")
    with pytest.raises(BenchError, match="cannot be downloaded by the suite"):
        download_dataset(load_card("covidx"), None)


def test_set_a_takes_the_diseased_share_the_card_asks_for():
    table = pd.DataFrame({"image_id": [f"i{n}" for n in range(400)],
                          "label": [0] * 200 + [1] * 200, "pool": "train", "kind": "image"})
    table["subject_id"] = table.image_id
    test = table.assign(image_id="t" + table.image_id, pool="test")
    test["subject_id"] = test.image_id
    source = pd.concat([table, test], ignore_index=True)
    settings = {"mixed_healthy": 70, "mixed_diseased_share": 0.3, "val_healthy": 20,
                "val_positive": 20}
    split = assign_splits(source, settings).table
    mixed = split[split.split == "train_mixed"]
    assert (mixed.label == 0).sum() == 70 and (mixed.label == 1).sum() == 30
    with pytest.raises(BenchError, match="mixed_diseased_share must be a fraction"):
        assign_splits(source, {**settings, "mixed_diseased_share": 30})
