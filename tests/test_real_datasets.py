"""Readers of the real datasets, on little format-faithful trees the tests write.

Each test writes a tree in the published layout (label files, folders, CSVs, PNG/NIfTI files),
points a card at it and checks what `prepare` / `bench data` make of it, including every kind of
bad input a user can hand over: one clear message naming the file, a non-zero exit and no
half-written cache.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from medad_bench.cli import cli
from medad_bench.data import fixtures, load_card, prepare
from medad_bench.data.covidx import read_name_list
from medad_bench.engine.evaluation import evaluation_units
from medad_bench.errors import BenchError

BUILTIN = Path(__file__).resolve().parents[1] / "datasets"
SIZE = 32  # cache size of the test cards: the real cards' text with a smaller image_size


@pytest.fixture
def cards(isolated: Path) -> Path:
    """The shipped covidx / chestxray14 / migraine cards, shrunk to 32 px, found first."""
    folder = isolated / "cards"
    for name in ("covidx", "chestxray14", "migraine"):
        text = (BUILTIN / f"{name}.toml").read_text()
        text = re.sub(r"(?m)^image_size = \d+", f"image_size = {SIZE}", text)
        (folder / f"{name}.toml").write_text(text)
    return folder


def bench(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def covidx_tree(root: Path, *, labels: str = "recent", n_train: int = 90) -> Path:
    fixtures.write_covidx(root, n_train=n_train, n_test=30, size=48, labels=labels)
    return root


def assert_no_cache_left(isolated: Path) -> None:
    cache = isolated / "cache"
    leftovers = list(cache.iterdir()) if cache.exists() else []
    assert leftovers == [], f"a failed preparation left {leftovers}"


# --- COVIDx ------------------------------------------------------------------------------------


def test_covidx_tree_keeps_the_published_proportions_and_says_so(cards, tmp_path):
    data = prepare(load_card("covidx"), data_root=covidx_tree(tmp_path / "covidx"),
                   show_progress=False)
    counts = data.counts()
    mixed = counts.loc["train_mixed"]
    # Published set A: 1,570 positive / 3,663 healthy = 0.43; scaled, the ratio stays.
    assert 0.25 < mixed["diseased"] / mixed["healthy"] < 0.6
    assert counts.loc["train_normal", "diseased"] == 0 if "diseased" in counts else True
    assert counts.loc["test", "healthy"] == counts.loc["test", "diseased"]
    assert data.meta["protocol_scale"] < 1
    assert any("scaled" in note for note in data.meta["notes"])
    # Patients never straddle two splits (the fixture gives each patient two images).
    assert data.manifest.groupby("subject_id").split.nunique().max() == 1
    assert data.images.shape[1:] == (1, SIZE, SIZE)
    assert data.images.dtype == np.uint8  # 8-bit PNGs: kept at their precision
    pixels = data.image_set("train_normal")[:]
    assert 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0


def test_covidx_second_prepare_reuses_the_cache_with_the_same_hash(cards, tmp_path):
    root = covidx_tree(tmp_path / "covidx")
    first = prepare(load_card("covidx"), data_root=root, show_progress=False)
    second = prepare(load_card("covidx"), data_root=root, show_progress=False)
    assert first.built and not second.built
    assert first.split_hash == second.split_hash
    np.testing.assert_array_equal(first.images, second.images)


def test_covidx_old_labels_read_and_pneumonia_dropped_and_counted(cards, tmp_path):
    data = prepare(load_card("covidx"), data_root=covidx_tree(tmp_path / "old", labels="old"),
                   show_progress=False)
    assert data.meta["dropped"]["dropped_labels"] == {"pneumonia": 1}
    assert not data.manifest.image_id.str.contains("pneumonia").any()


def test_covidx_published_lists_give_exactly_that_split(cards, tmp_path):
    root = covidx_tree(tmp_path / "covidx")
    train = pd.read_csv(root / "train.txt", sep=" ", header=None,
                        names=["patient", "file", "label", "source"])
    test = pd.read_csv(root / "test.txt", sep=" ", header=None,
                       names=["patient", "file", "label", "source"])
    # The last two patients of each class stay out of the lists: the validation split.
    patients = {label: list(dict.fromkeys(train.patient[train.label == label]))
                for label in ("positive", "negative")}
    spare = set(patients["positive"][-2:] + patients["negative"][-2:])
    listed = train[~train.patient.isin(spare)]
    pos = listed[listed.label == "positive"].file
    neg = listed[listed.label == "negative"].file
    lists = {"train_pos": list(pos), "train_neg_mixed": list(neg[:20]),
             "train_neg": list(neg[20:]), "test_pos": list(test[test.label == "positive"].file),
             "test_neg": list(test[test.label == "negative"].file)}
    (root / "split_lists").mkdir()
    for name, names in lists.items():
        (root / "split_lists" / f"{name}.pkl").write_bytes(pickle.dumps(names))
    data = prepare(load_card("covidx"), data_root=root, show_progress=False)
    split_of = dict(zip(data.manifest.image_id, data.manifest.split, strict=True))
    assert all(split_of[f"train/{n}"] == "train_mixed" for n in lists["train_pos"])
    assert all(split_of[f"train/{n}"] == "train_normal" for n in lists["train_neg"])
    assert sum(s == "test" for s in split_of.values()) == len(test)
    validation = {i for i, s in split_of.items() if s == "val"}
    assert validation and validation <= {f"train/{n}" for n in
                                         train.file[train.patient.isin(spare)]}
    assert any("published split" in note for note in data.meta["notes"])


def test_pickled_lists_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "train_pos.pkl"
    path.write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(BenchError, match="not a pickled list of file names"):
        read_name_list(path)
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(BenchError, match="must hold a list"):
        read_name_list(path)


# --- ChestX-ray14 and brain MRI ------------------------------------------------------------------


def test_chestxray14_keeps_pa_views_and_the_official_test_list(cards, tmp_path):
    root = tmp_path / "cxr14"
    fixtures.write_chestxray14(root, n_images=400, size=48)
    data = prepare(load_card("chestxray14"), data_root=root, show_progress=False)
    entries = pd.read_csv(root / "Data_Entry_2017.csv")
    views = dict(zip(entries["Image Index"], entries["View Position"], strict=True))
    assert {views[i] for i in data.manifest.image_id} == {"PA"}
    official_test = set((root / "test_list.txt").read_text().split())
    tested = set(data.manifest.image_id[data.manifest.split == "test"])
    assert tested and tested <= official_test
    assert not set(data.manifest.image_id[data.manifest.split != "test"]) & official_test
    assert data.meta["dropped"]["dropped_views"] > 0
    # images_001 and images_002 both feed the dataset
    folders = {p.split("/")[0] for p in data.manifest.image_id.map(
        lambda i: next((root).glob(f"images_*/images/{i}")).relative_to(root).as_posix())}
    assert folders == {"images_001", "images_002"}


@pytest.mark.parametrize("layout", ["volumes", "slices"])
def test_brain_mri_subjects_stay_whole_and_are_evaluated_per_subject(cards, tmp_path, layout):
    root = tmp_path / layout
    fixtures.write_brain_mri(root, n_subjects=20, layout=layout, depth=12, size=40)
    data = prepare(load_card("migraine"), data_root=root, show_progress=False)
    manifest = data.manifest
    assert manifest.groupby("subject_id").split.nunique().max() == 1
    subjects = pd.read_csv(root / "subjects.csv")
    assert set(manifest.subject_id[manifest.split == "test"]) == \
        set(subjects.subject_id[subjects.split == "test"])
    # Empty slices (outside the head) are dropped: fewer than 12 per subject.
    per_subject = manifest.groupby("subject_id").size()
    assert per_subject.max() < 12 and per_subject.min() >= 3
    # Evaluation is per subject: slice scores averaged, one label per subject.
    scores = np.arange(len(data.rows("test")), dtype=float)
    labels, units = evaluation_units(data, "test", scores)
    assert len(units) == manifest[manifest.split == "test"].subject_id.nunique()
    table = pd.DataFrame({"s": data.subjects_of("test"), "x": scores})
    np.testing.assert_allclose(units, table.groupby("s").x.mean().sort_index().to_numpy())
    assert set(labels) == {0, 1}


def test_generic_folder_per_class_and_csv_manifest(isolated, tmp_path):
    root = tmp_path / "generic"
    for name, value in (("normal", 40), ("abnormal", 200)):
        (root / name).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(np.full((20, 24), value + i, np.uint8)).save(root / name / f"{i}.png")
    card = isolated / "cards" / "generic.toml"
    card.write_text('description = "generic"\nformat = "folder"\nchannels = 3\n'
                    'image_size = 16\n')
    data = prepare(load_card("generic"), data_root=root, show_progress=False)
    assert data.images.shape[1:] == (3, 16, 16)
    assert set(data.manifest.split) == {"train_mixed", "train_normal", "val", "test"}
    assert len(data.manifest) == 60
    rows = ["path,label,split"] + [f"normal/{i}.png,normal,{'test' if i < 5 else 'train'}"
                                   for i in range(30)]
    rows += [f"abnormal/{i}.png,abnormal,{'test' if i < 5 else 'train'}" for i in range(30)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    card.write_text(card.read_text() + '\n[folder]\nmanifest = "labels.csv"\n')
    data = prepare(load_card("generic"), data_root=root, show_progress=False)
    assert (data.manifest.split == "test").sum() == 10


# --- bench data ----------------------------------------------------------------------------------


def test_bench_data_info_prints_counts_sizes_and_hash(cards, tmp_path):
    root = covidx_tree(tmp_path / "covidx")
    result = bench("data", "info", "--dataset", "covidx", "--data-root", str(root))
    assert result.exit_code == 0, result.output
    data = prepare(load_card("covidx"), data_root=root, show_progress=False)
    for word in ("train_mixed", "train_normal", "val", "test", "48x48", data.split_hash,
                 "scaled"):
        assert word in result.output


@pytest.mark.parametrize("card, writer", [
    ("covidx", lambda root: covidx_tree(root)),
    ("chestxray14", lambda root: fixtures.write_chestxray14(root, n_images=300, size=48)),
    ("migraine", lambda root: fixtures.write_brain_mri(root, n_subjects=20, depth=12, size=40)),
])
def test_bench_run_padim_completes_on_each_card(cards, tmp_path, tracking_uri, card, writer):
    root = tmp_path / card
    writer(root)
    result = bench("run", "--methods", "padim", "--dataset", card, "--data-root", str(root),
                   "--no-progress", "--tracking-uri", tracking_uri)
    assert result.exit_code == 0, result.output
    assert re.search(r"padim\s+0\s+\d\.\d{4}", result.output)


# --- bad input -----------------------------------------------------------------------------------


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


def _first_train_image(root: Path) -> str:
    return (root / "train.txt").read_text().split()[1]


BAD_COVIDX = {
    "truncated image": (
        lambda root: (root / "train" / _first_train_image(root)).write_bytes(
            (root / "train" / _first_train_image(root)).read_bytes()[:200]),
        r"cannot read .*train_00000\.png.*truncated"),
    "label file names a missing image": (
        lambda root: (root / "train" / _first_train_image(root)).unlink(),
        r"names 1 image\(s\) that are not in .*first: 'train/train_00000\.png'"),
    "unknown label": (
        lambda root: _edit(root / "train.txt", " negative ", " maybe "),
        r"train\.txt, line \d+: unknown label 'maybe'"),
    "duplicate image ids": (
        lambda root: (root / "train.txt").write_text(
            (root / "train.txt").read_text() + (root / "train.txt").read_text().splitlines()[0]
            + "\n"),
        r"image id 'train/train_00000\.png' appears more than once"),
    "non-image file among the images": (
        lambda root: (_ := (root / "train" / "notes.txt").write_text("x"),
                      (root / "train.txt").write_text((root / "train.txt").read_text()
                                                      + "p9 notes.txt negative x\n")),
        r"'train/notes\.txt' is not an image file"),
    "file name escapes the root": (
        lambda root: _edit(root / "train.txt", "train_00001.png", "../../etc/passwd.png"),
        r"'\.\./\.\./etc/passwd\.png' points outside the folder it must be in"),
    "empty class": (
        lambda root: [(root / f"{s}.txt").write_text(
            "".join(line + "\n" for line in (root / f"{s}.txt").read_text().splitlines()
                    if " positive " not in line)) for s in ("train", "test")],
        r"no diseased images found, so the class is empty"),
    "wrong root": (
        lambda root: (root / "train.txt").rename(root / "labels.txt"),
        r"does not look like a COVIDx tree: train\.txt not found"),
}


@pytest.mark.parametrize("problem", list(BAD_COVIDX))
def test_bad_covidx_trees_end_in_one_clear_message(cards, tmp_path, isolated, problem):
    root = covidx_tree(tmp_path / "covidx", n_train=70)
    damage, message = BAD_COVIDX[problem]
    damage(root)
    result = bench("data", "prepare", "--dataset", "covidx", "--data-root", str(root))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert re.search(message, result.output.replace("\n", " ")), result.output
    assert_no_cache_left(isolated)


def test_a_subject_in_two_splits_is_refused(cards, tmp_path, isolated):
    root = tmp_path / "mri"
    fixtures.write_brain_mri(root, n_subjects=10, layout="slices", depth=8, size=24)
    with (root / "subjects.csv").open("a") as handle:
        handle.write("sub000,healthy,test\n")
    result = bench("data", "prepare", "--dataset", "migraine", "--data-root", str(root))
    assert result.exit_code == 1
    assert "subject 'sub000' is in two splits (test, train)" in result.output
    assert_no_cache_left(isolated)


def test_a_subject_in_two_official_lists_is_refused(cards, tmp_path, isolated):
    root = tmp_path / "cxr14"
    fixtures.write_chestxray14(root, n_images=60, size=24)
    first_test = (root / "test_list.txt").read_text().split()[0]
    with (root / "train_val_list.txt").open("a") as handle:
        handle.write(first_test + "\n")
    result = bench("data", "prepare", "--dataset", "chestxray14", "--data-root", str(root))
    assert result.exit_code == 1
    assert f"'{first_test}' is also in the other split list" in result.output
    assert_no_cache_left(isolated)


def test_missing_data_root_says_where_to_get_the_data(cards, tmp_path):
    result = bench("data", "info", "--dataset", "covidx", "--data-root", str(tmp_path / "nope"))
    assert result.exit_code == 1
    assert "does not exist" in result.output and "kaggle.com" in result.output
