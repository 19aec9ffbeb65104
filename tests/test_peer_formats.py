"""The peers' dataset formats: BMAD's folder tree (with masks where pixel-level) and
MedIAnomaly's images/ + data.json, read from little format-faithful trees the tests write.

Each test points the shipped card (shrunk to 32 px) at a tree and checks what `prepare` /
`bench data` / `bench run` make of it: the published splits, labels and masks, and every kind
of bad input ending in one clear message, a non-zero exit and no half-written cache.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medad_bench.cli import cli
from medad_bench.data import fixtures, load_card, prepare
from medad_bench.tracking import experiment_name

BUILTIN = Path(__file__).resolve().parents[1] / "datasets"
SIZE = 32
PEER_CARDS = ("bmad-rsna", "bmad-brats2021", "medianomaly-rsna", "medianomaly-braintumor")


@pytest.fixture
def cards(isolated: Path) -> Path:
    """The shipped peer cards with a 32 px cache, found first."""
    folder = isolated / "cards"
    for name in PEER_CARDS:
        text = (BUILTIN / f"{name}.toml").read_text()
        text = re.sub(r"(?m)^image_size = \d+", f"image_size = {SIZE}", text)
        (folder / f"{name}.toml").write_text(text)
    return folder


def bench(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def bmad_tree(root: Path, *, with_masks: bool = False) -> Path:
    fixtures.write_bmad(root, n_train=12, n_valid=8, n_test=12, size=40, with_masks=with_masks)
    return root


def medianomaly_tree(root: Path) -> Path:
    fixtures.write_medianomaly(root, n_normal=12, n_unlabeled=40, n_test=12, size=40)
    return root


def assert_no_cache_left(isolated: Path) -> None:
    cache = isolated / "cache"
    leftovers = list(cache.iterdir()) if cache.exists() else []
    assert leftovers == [], f"a failed preparation left {leftovers}"


def split_of(data, image_id: str) -> str:
    return data.manifest.set_index("image_id").split[image_id]


# --- BMAD ----------------------------------------------------------------------------------------


def test_bmad_image_level_tree_keeps_its_published_split(cards, tmp_path):
    data = prepare(load_card("bmad-rsna"), data_root=bmad_tree(tmp_path / "rsna"),
                   show_progress=False)
    counts = data.counts()
    assert counts.loc["train_normal"].tolist() == [12, 0]
    assert counts.loc["val"].tolist() == [4, 4]
    assert counts.loc["test"].tolist() == [6, 6]
    assert "train_mixed" not in counts.index  # BMAD has no unlabelled pool
    # Folders restart their numbering: ids keep the folder, so both 1000.png are there.
    assert split_of(data, "valid/good/1000.png") == "val"
    assert split_of(data, "valid/Ungood/1000.png") == "val"
    assert data.manifest.set_index("image_id").label["test/Ungood/1000.png"] == 1
    assert data.images.shape[1:] == (3, SIZE, SIZE)  # BMAD reads RGB
    assert data.masks is None  # image-level only: no pixel metrics
    notes = " ".join(data.meta["notes"])
    assert "published split used" in notes and "no unlabelled pool" in notes


def test_bmad_accepts_the_authors_val_folder_name(cards, tmp_path):
    root = bmad_tree(tmp_path / "rsna")
    (root / "valid").rename(root / "val")
    data = prepare(load_card("bmad-rsna"), data_root=root, show_progress=False)
    assert data.counts().loc["val"].tolist() == [4, 4]


def test_bmad_pixel_level_tree_gives_masks_in_register_with_the_images(cards, tmp_path):
    data = prepare(load_card("bmad-brats2021"), data_root=bmad_tree(tmp_path / "brats",
                                                                       with_masks=True),
                   show_progress=False)
    assert data.masks is not None and data.masks.shape == (len(data.manifest), SIZE, SIZE)
    assert set(np.unique(data.masks)) <= {0, 1}
    for split in ("val", "test"):
        masks, labels = data.masks_of(split), data.labels_of(split)
        assert not masks[labels == 0].any()  # healthy: empty masks (files or none)
        assert masks[labels == 1].any(axis=(1, 2)).all()  # every fixture tumour is marked
        # The tumour is the bright blob: brighter under its mask than around it.
        images = data.images_of(split)[labels == 1].mean(axis=1)
        inside = images[masks[labels == 1] == 1].mean()
        outside = images[(masks[labels == 1] == 0) & (images > 0.05)].mean()
        assert inside > outside + 0.1
    assert not data.masks_of("train_normal").any()  # train has no label/ folder
    # Slices are <subject>_<slice>.png: a subject's two slices share one split.
    assert data.manifest.subject_id.str.fullmatch(r"\d{5}").all()
    assert (data.manifest.groupby("subject_id").split.nunique() == 1).all()
    assert "lesion masks" in " ".join(data.meta["notes"])


def test_bmad_train_folder_without_img_is_read_as_the_authors_wrote_it(cards, tmp_path):
    root = bmad_tree(tmp_path / "brats", with_masks=True)
    for path in (root / "train" / "good" / "img").iterdir():
        path.rename(root / "train" / "good" / path.name)
    (root / "train" / "good" / "img").rmdir()
    data = prepare(load_card("bmad-brats2021"), data_root=root, show_progress=False)
    assert data.counts().loc["train_normal"].tolist() == [12, 0]


def test_an_edited_mask_gets_a_new_cache(cards, tmp_path):
    root = bmad_tree(tmp_path / "brats", with_masks=True)
    card = load_card("bmad-brats2021")
    before = prepare(card, data_root=root, show_progress=False)
    mask = sorted((root / "test" / "Ungood" / "label").iterdir())[0]
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(mask)
    after = prepare(card, data_root=root, show_progress=False)
    assert after.built and after.data_version != before.data_version


# --- MedIAnomaly ---------------------------------------------------------------------------------


def test_medianomaly_tree_follows_its_data_json(cards, tmp_path):
    root = medianomaly_tree(tmp_path / "mia")
    lists = json.loads((root / "data.json").read_text())
    data = prepare(load_card("medianomaly-rsna"), data_root=root, show_progress=False)
    table = data.manifest.set_index("image_id")
    # Known normals are set B, exactly; the test split is data.json's, exactly.
    assert sorted(table.index[table.split == "train_normal"]) == sorted(
        f"images/{n}" for n in lists["train"]["0"])
    assert sorted(table.index[table.split == "test"]) == sorted(
        f"images/{n}" for n in lists["test"]["0"] + lists["test"]["1"])
    # The pool is set A but for a labelled validation tenth of each class, labels as listed.
    pool = {f"images/{n}": int(k) for k in "01" for n in lists["train"]["unlabeled"][k]}
    carved = table.loc[list(pool)]
    assert set(carved.split) == {"train_mixed", "val"}
    assert (carved.label == carved.index.map(pool)).all()
    assert data.counts().loc["val"].tolist() == [2, 2]
    assert data.images.shape[1:] == (1, SIZE, SIZE)  # MedIAnomaly reads grey
    assert data.masks is None


def test_medianomaly_card_must_keep_the_pool_out_of_set_b(cards, tmp_path):
    card = cards / "medianomaly-rsna.toml"
    card.write_text(card.read_text().replace("mixed_healthy_share = 1.0\n", ""))
    result = bench("data", "prepare", "--dataset", "medianomaly-rsna", "--data-root",
                   str(medianomaly_tree(tmp_path / "mia")))
    assert result.exit_code == 1
    assert "set mixed_healthy_share = 1.0" in result.output


# --- bench data ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, card", [("bmad", "bmad-rsna"), ("bmad-brats", "bmad-brats2021"),
                                       ("medianomaly", "medianomaly-rsna")])
def test_make_fixture_then_data_info_shows_the_splits(cards, tmp_path, fmt, card):
    root = tmp_path / fmt
    made = bench("data", "make-fixture", "--format", fmt, "--out", str(root), "--count", "40",
                 "--size", "32")
    assert made.exit_code == 0, made.output
    result = bench("data", "info", "--dataset", card, "--data-root", str(root))
    assert result.exit_code == 0, result.output
    for word in ("train_mixed", "train_normal", "val", "test", "32x32", f"format {card[:4]}"):
        assert word in result.output
    if fmt.startswith("bmad"):
        assert re.search(r"train_mixed\s+0\s+0\s+0", result.output)
        assert "no unlabelled pool" in result.output
    if fmt == "bmad-brats":
        assert "lesion masks" in result.output


# --- bad input -----------------------------------------------------------------------------------


def _first(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if p.is_file())[0]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


BAD_BMAD = {
    "missing class folder": (
        False, lambda root: shutil.rmtree(root / "test" / "Ungood"),
        r"does not look like a BMAD tree: test/Ungood/ not found"),
    "missing split folder": (
        False, lambda root: shutil.rmtree(root / "valid"),
        r"does not look like a BMAD tree: valid/ or val/ not found"),
    "empty class folder": (
        False, lambda root: [p.unlink() for p in (root / "valid" / "Ungood").iterdir()],
        r"class folder .*valid/Ungood holds no images: the class is empty"),
    "unreadable image": (
        False, lambda root: _truncate(_first(root / "test" / "good")),
        r"cannot read .*test/good/1000\.png"),
    "both valid and val": (
        False, lambda root: shutil.copytree(root / "valid", root / "val"),
        r"has both valid/ and val/"),
    "diseased image without mask": (
        True, lambda root: _first(root / "test" / "Ungood" / "label").unlink(),
        r"the diseased image .*test/Ungood/img/\d+_\d+\.png has no mask: "
        r"test/Ungood/label/\d+_\d+\.png is missing"),
    "no label folder in a pixel-level set": (
        True, lambda root: shutil.rmtree(root / "valid" / "Ungood" / "label"),
        r"valid/Ungood has no label/ folder, but the card .* says the set is pixel-level"),
    "mask of the wrong size": (
        True, lambda root: Image.fromarray(np.zeros((30, 40), np.uint8)).save(
            _first(root / "test" / "Ungood" / "label")),
        r"the mask .*label/\d+_\d+\.png' is 30 x 40 pixels but its image .* is 40 x 40"),
    "unreadable mask": (
        True, lambda root: _truncate(_first(root / "valid" / "Ungood" / "label")),
        r"cannot read the mask .*valid/Ungood/label/\d+_\d+\.png"),
    "healthy image whose mask marks a lesion": (
        True, lambda root: Image.fromarray(np.full((40, 40), 255, np.uint8)).save(
            _first(root / "test" / "good" / "label")),
        r"marks 1600 lesion pixels, but its image .* is labelled healthy"),
}


@pytest.mark.parametrize("problem", list(BAD_BMAD))
def test_bad_bmad_trees_end_in_one_clear_message(cards, tmp_path, isolated, problem):
    with_masks, damage, message = BAD_BMAD[problem]
    root = bmad_tree(tmp_path / "bmad", with_masks=with_masks)
    damage(root)
    card = "bmad-brats2021" if with_masks else "bmad-rsna"
    result = bench("data", "prepare", "--dataset", card, "--data-root", str(root))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert re.search(message, result.output.replace("\n", " ")), result.output
    assert_no_cache_left(isolated)


def _edit_json(root: Path, change) -> None:
    data = json.loads((root / "data.json").read_text())
    change(data)
    (root / "data.json").write_text(json.dumps(data))


BAD_MEDIANOMALY = {
    "data.json names a missing image": (
        lambda root: (root / "images" / json.loads(
            (root / "data.json").read_text())["test"]["1"][0]).unlink(),
        r"names 1 image\(s\) that are not in .*first: 'images/"),
    "data.json is not JSON": (
        lambda root: (root / "data.json").write_text('{"train": {"0": ["a.png"],'),
        r"data\.json is not valid JSON"),
    "data.json lacks a key": (
        lambda root: _edit_json(root, lambda d: d["train"].pop("unlabeled")),
        r"data\.json lacks the key 'train\.unlabeled'"),
    "unknown label": (
        lambda root: _edit_json(root, lambda d: d["test"].update({"2": d["test"].pop("1")})),
        r"unknown label '2' in 'test'"),
    "a list that is not file names": (
        lambda root: _edit_json(root, lambda d: d["test"].update({"0": {"a": 1}})),
        r"'test\.0' must be a list of file names"),
    "an image in two lists": (
        lambda root: _edit_json(root, lambda d: d["test"]["0"].append(d["train"]["0"][0])),
        r"test\.0\[\d+\]: '.*\.png' is also in train\.0"),
    "a name escaping images/": (
        lambda root: _edit_json(root, lambda d: d["train"]["0"].append("../data.json")),
        r"'\.\./data\.json' points outside the folder it must be in"),
    "unreadable image": (
        lambda root: _truncate(root / "images" / json.loads(
            (root / "data.json").read_text())["train"]["0"][0]),
        r"cannot read .*images/.*\.png"),
    "no images folder": (
        lambda root: shutil.rmtree(root / "images"),
        r"does not look like a MedIAnomaly tree: images not found"),
}


@pytest.mark.parametrize("problem", list(BAD_MEDIANOMALY))
def test_bad_medianomaly_trees_end_in_one_clear_message(cards, tmp_path, isolated, problem):
    damage, message = BAD_MEDIANOMALY[problem]
    root = medianomaly_tree(tmp_path / "mia")
    damage(root)
    result = bench("data", "prepare", "--dataset", "medianomaly-rsna", "--data-root", str(root))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert re.search(message, result.output.replace("\n", " ")), result.output
    assert_no_cache_left(isolated)


# --- bench run on a set without set A ------------------------------------------------------------


def test_padim_on_bmad_with_masks_logs_pixel_metrics_and_set_a_methods_are_skipped(
        cards, tmp_path, tracking_uri):
    root = bmad_tree(tmp_path / "brats", with_masks=True)
    result = bench("run", "--methods", "padim,anomalypro", "--dataset", "bmad-brats2021",
                   "--data-root", str(root), "--no-progress", "--tracking-uri", tracking_uri)
    assert result.exit_code == 0, result.output
    assert re.search(r"padim\s+0\s+\d\.\d{4}", result.stdout)
    assert "anomalypro" not in result.stdout  # not run, not a row of the results
    assert ("anomalypro: skipped: it trains on unlabelled images (set A, train_mixed) and "
            "bmad-brats2021 has none") in result.stderr
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name("bmad-brats2021"))
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["mlflow.runName"].startswith("padim")
    assert 0.0 <= run.data.metrics["pixel_auroc"] <= 1.0


def test_without_set_a_the_contaminated_setting_and_set_a_only_grids_are_refused(
        cards, tmp_path, tracking_uri):
    root = bmad_tree(tmp_path / "rsna")
    common = ("--dataset", "bmad-rsna", "--data-root", str(root), "--no-progress",
              "--tracking-uri", tracking_uri)
    result = bench("run", "--methods", "padim", "--contaminated", *common)
    assert result.exit_code == 1
    assert "--contaminated trains every method on set A" in result.output
    result = bench("run", "--methods", "anomalypro,brainomaly", *common)
    assert result.exit_code == 1
    assert "none of --methods anomalypro,brainomaly can run on bmad-rsna" in result.output
