"""Hostile or careless dataset trees: paths and links out of the root, files edited in place,
a split fed by two pools, patients spread over many files, blank CSV cells.

Every tree is written for real (PNG files, NIfTI volumes, symbolic links) into tmp_path and read
through `prepare` or `bench data prepare`, as a user would.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from medad_bench.cli import cli
from medad_bench.data import fixtures, load_card, prepare
from medad_bench.data.protocol import assign_splits
from medad_bench.data.sources import ALLOW_LINKS_ENV
from medad_bench.errors import BenchError

BUILTIN = Path(__file__).resolve().parents[1] / "datasets"


@pytest.fixture
def cards(isolated: Path) -> Path:
    """The shipped covidx / chestxray14 / migraine cards at 32 px, found first."""
    folder = isolated / "cards"
    for name in ("covidx", "chestxray14", "migraine"):
        text = (BUILTIN / f"{name}.toml").read_text()
        (folder / f"{name}.toml").write_text(re.sub(r"(?m)^image_size = \d+",
                                                    "image_size = 32", text))
    return folder


def bench(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def flat(output: str) -> str:
    return " ".join(output.split())


def no_cache_left(isolated: Path) -> bool:
    cache = isolated / "cache"
    return not cache.exists() or not any(cache.iterdir())


def mri_tree(root: Path, *, n_subjects: int = 10, uncompressed: bool = False) -> Path:
    fixtures.write_brain_mri(root, n_subjects=n_subjects, depth=10, size=32)
    if uncompressed:  # .nii: a volume's file size is fixed by its header and shape
        for packed in sorted((root / "volumes").glob("*.nii.gz")):
            nibabel.save(nibabel.load(packed), str(packed)[:-3])
            packed.unlink()
    return root


def rewrite_volume(path: Path, seed: int) -> None:
    """Another phantom in the same file, same size (an in-place edit of an uncompressed .nii)."""
    size = path.stat().st_size
    image = nibabel.load(path)
    depth = image.shape[2]
    nibabel.save(nibabel.Nifti1Image(fixtures.head_volume(seed, 1, depth, image.shape[0]),
                                     image.affine), path)
    assert path.stat().st_size == size


def write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 20), value, np.uint8)).save(path)


# --- 6: paths and links out of the data root ------------------------------------------------


def test_a_subject_id_that_climbs_out_of_the_root_is_refused(cards, tmp_path, isolated):
    root = mri_tree(tmp_path / "site" / "mri")
    # The volume the row would reach exists, so only the name check can stop it.
    (root / "volumes" / "sub001.nii.gz").rename(tmp_path / "site" / "x.nii.gz")
    subjects = root / "subjects.csv"
    subjects.write_text(subjects.read_text().replace("sub001,", "../../x,"))
    result = bench("data", "prepare", "--dataset", "migraine", "--data-root", str(root))
    assert result.exit_code == 1
    assert (f"{subjects}, data row 2: subject_id '../../x' is a path, not a name (its volume "
            f"would be volumes/../../x.nii.gz, outside the data root)") in flat(result.output)
    assert no_cache_left(isolated)
    # Even allowing links does not allow this.
    result = bench("data", "prepare", "--dataset", "migraine", "--data-root", str(root),
                   "--allow-external-links")
    assert result.exit_code == 1 and "'../../x' is a path" in result.output


def test_an_image_linked_from_outside_the_root_is_refused_naming_the_link(cards, tmp_path,
                                                                           isolated):
    root = tmp_path / "covidx"
    fixtures.write_covidx(root, n_train=70, n_test=30, size=48)
    name = (root / "train.txt").read_text().split()[1]
    shared = tmp_path / "shared"
    shared.mkdir()
    (root / "train" / name).rename(shared / name)
    (root / "train" / name).symlink_to(shared / name)
    result = bench("data", "prepare", "--dataset", "covidx", "--data-root", str(root))
    assert result.exit_code == 1
    assert (f"'train/{name}' is reached through the symbolic link train/{name} -> "
            f"{shared / name}, outside the data root {root}") in flat(result.output)
    assert "--allow-external-links" in result.output
    assert no_cache_left(isolated)

    result = bench("data", "prepare", "--dataset", "covidx", "--data-root", str(root),
                   "--allow-external-links")
    assert result.exit_code == 0, result.output
    data = prepare(load_card("covidx"), data_root=root, allow_external_links=True,
                   show_progress=False)
    assert data.meta["allow_links_outside_root"] is True
    assert data.meta["links_outside_root"] == 1
    on_disk = json.loads((data.folder / "meta.json").read_text())
    assert on_disk["links_outside_root"] == 1


def test_a_card_allows_a_linked_folder_and_a_link_inside_the_tree_is_fine(cards, tmp_path,
                                                                         isolated):
    root = mri_tree(tmp_path / "mri")
    storage = tmp_path / "storage"
    storage.mkdir()
    (root / "volumes").rename(storage / "volumes")
    (root / "volumes").symlink_to(storage / "volumes", target_is_directory=True)
    with pytest.raises(BenchError, match=r"symbolic link volumes -> .*storage/volumes, outside "
                                         r"the data root .* \(10 files in all\)"):
        prepare(load_card("migraine"), data_root=root, show_progress=False)

    card = cards / "shared-mri.toml"
    card.write_text((cards / "migraine.toml").read_text().replace(
        'name = "migraine"', 'name = "shared-mri"').replace(
        "[brain_mri]", "[brain_mri]\nallow_links_outside_root = true"))
    data = prepare(load_card("shared-mri"), data_root=root, show_progress=False)
    assert data.card.allow_links_outside_root
    assert data.meta["links_outside_root"] == 10

    # A link that stays inside the root needs no permission.
    (root / "volumes").unlink()
    (storage / "volumes").rename(root / "volumes")
    (root / "kept").mkdir()
    (root / "volumes" / "sub002.nii.gz").rename(root / "kept" / "sub002.nii.gz")
    (root / "volumes" / "sub002.nii.gz").symlink_to(Path("..") / "kept" / "sub002.nii.gz")
    data = prepare(load_card("migraine"), data_root=root, show_progress=False)
    assert data.meta["links_outside_root"] == 0
    assert "sub002" in set(data.manifest.subject_id)


def test_bench_run_passes_allow_external_links_to_the_preparation(cards, tmp_path,
                                                                  tracking_uri):
    root = tmp_path / "covidx"
    fixtures.write_covidx(root, n_train=70, n_test=30, size=48)
    shared = tmp_path / "shared"
    (root / "test").rename(shared)
    (root / "test").symlink_to(shared, target_is_directory=True)
    args = ("run", "--methods", "padim", "--dataset", "covidx", "--data-root", str(root),
            "--no-progress", "--tracking-uri", tracking_uri)
    refused = bench(*args)
    assert refused.exit_code == 1
    assert "symbolic link test -> " in refused.output
    result = bench(*args, "--allow-external-links")
    assert result.exit_code == 0, result.output
    assert re.search(r"padim\s+0\s+\d\.\d{4}", result.output)
    assert ALLOW_LINKS_ENV not in os.environ  # the flag does not outlive the command
    from mlflow.tracking import MlflowClient

    from medad_bench.tracking import finished_runs

    run_id = finished_runs(tracking_uri, "covidx").run_id.iloc[0]
    params = MlflowClient(tracking_uri).get_run(run_id).data.params
    assert params["allow_links_outside_root"] == "true"  # recorded with the run
    # The images the protocol took from the linked folder (some of its 30 files).
    assert 0 < int(params["links_outside_root"]) <= 30


# --- 7: files edited in place -----------------------------------------------------------------


def test_a_same_size_replacement_gets_a_new_cache_and_data_version(cards, tmp_path):
    root = mri_tree(tmp_path / "mri", uncompressed=True)
    before = prepare(load_card("migraine"), data_root=root, show_progress=False)
    pixels_before = np.asarray(before.images).copy()
    rewrite_volume(root / "volumes" / "sub003.nii", seed=999)
    after = prepare(load_card("migraine"), data_root=root, show_progress=False)
    assert after.built
    assert after.data_version != before.data_version
    assert after.split_hash == before.split_hash
    assert not np.array_equal(np.asarray(after.images), pixels_before)


def test_verify_finds_an_edit_whose_modification_time_was_restored(cards, tmp_path):
    root = mri_tree(tmp_path / "mri", uncompressed=True)
    args = ("data", "prepare", "--dataset", "migraine", "--data-root", str(root),
            "--no-progress")
    first = bench(*args, "--verify")
    assert first.exit_code == 0, first.output
    assert "verify: 10 source files hashed" in first.output
    again = bench(*args, "--verify")
    assert "verify: all 10 source files are unchanged" in again.output
    assert "already prepared" in again.output
    version = prepare(load_card("migraine"), data_root=root, show_progress=False).data_version

    volume = root / "volumes" / "sub005.nii"
    times = volume.stat()
    rewrite_volume(volume, seed=1234)
    os.utime(volume, ns=(times.st_atime_ns, times.st_mtime_ns))
    # Names, sizes and times all match: only the contents tell.
    plain = prepare(load_card("migraine"), data_root=root, show_progress=False)
    assert not plain.built and plain.data_version == version
    stale = np.asarray(plain.images).copy()

    result = bench(*args, "--verify")
    assert result.exit_code == 0, result.output
    assert ("verify: 1 of 10 source files changed since the cache was built: "
            "volumes/sub005.nii. The stale cache was replaced.") in flat(result.output)
    rebuilt = prepare(load_card("migraine"), data_root=root, show_progress=False)
    assert rebuilt.data_version != version
    assert f"data version: {rebuilt.data_version}" in result.output
    assert not np.array_equal(np.asarray(rebuilt.images), stale)


# --- 8: a split fed by more than one pool ------------------------------------------------------


def test_a_count_is_a_total_over_the_pools_that_feed_the_split(isolated, tmp_path):
    root = tmp_path / "tree"
    rows = ["path,label,split"]
    for name, label in (("normal", 0), ("abnormal", 1)):
        for i in range(60):
            write_png(root / name / f"{i}.png", 40 + 100 * label + i)
            rows.append(f"{name}/{i}.png,{name},{'test' if i < 15 else 'any'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (isolated / "cards" / "pools.toml").write_text(
        'description = "official test pool plus unsplit images"\nformat = "folder"\n'
        'channels = 1\nimage_size = 16\n[folder]\nmanifest = "labels.csv"\n'
        'test_positive = 10\ntest_healthy = 10\n')
    data = prepare(load_card("pools"), data_root=root, show_progress=False)
    test = data.manifest[data.manifest.split == "test"]
    assert (test.label == 1).sum() == 10 and (test.label == 0).sum() == 10
    # The official test images come first: the unsplit ones give nothing more.
    official = {f"{n}/{i}.png" for n in ("normal", "abnormal") for i in range(15)}
    assert set(test.image_id) <= official


def test_a_split_topped_up_from_a_second_pool_says_so():
    # The val pool's one diseased subject has 3 slices; 2 are asked for, so it cannot give
    # them whole and the train pool must: 2 in all, not 2 from each pool.
    rows = [("v0", "v0", 1, "val")] * 3 + [(f"vh{i}", f"vh{i}", 0, "val") for i in range(4)]
    rows += [(f"t{i}", f"t{i}", i % 2, "train") for i in range(40)]
    rows += [(f"s{i}", f"s{i}", i % 2, "test") for i in range(10)]
    source = pd.DataFrame([{"image_id": f"{s}-{k}", "subject_id": s, "label": label,
                            "pool": pool, "path": f"{s}-{k}.png", "kind": "image"}
                           for k, (_, s, label, pool) in enumerate(rows)])
    result = assign_splits(source, {"val_positive": 2, "val_healthy": 2})
    val = result.table[result.table.split == "val"]
    assert (val.label == 1).sum() == 2 and (val.label == 0).sum() == 2
    assert set(val.pool[val.label == 1]) == {"train"}
    assert any(note.startswith("split val drew from more than one of the tree's pools: ")
               and "2 diseased + 0 healthy from its train images" in note
               and "0 diseased + 2 healthy from its val images" in note
               for note in result.notes), result.notes


# --- 9: patients over many files, blank cells -------------------------------------------------


def patient_tree(root: Path) -> Path:
    for name, label in (("normal", 0), ("abnormal", 1)):
        for patient in range(12):
            for view in range(3):
                write_png(root / name / f"patient{label}{patient:02d}_{view}.png",
                          40 + 100 * label + patient + view)
    return root


def test_subject_pattern_keeps_a_patients_files_in_one_split(isolated, tmp_path):
    root = patient_tree(tmp_path / "tree")
    card = isolated / "cards" / "patients.toml"
    card.write_text('description = "three views per patient"\nformat = "folder"\n'
                    'channels = 1\nimage_size = 16\n[folder]\n'
                    'subject_pattern = "^(patient\\\\d+)_"\n')
    data = prepare(load_card("patients"), data_root=root, show_progress=False)
    assert data.manifest.subject_id.nunique() == 24
    assert data.manifest.groupby("subject_id").size().eq(3).all()
    assert data.manifest.groupby("subject_id").split.nunique().eq(1).all()
    assert set(data.manifest.subject_id) == {f"patient{la}{p:02d}" for la in (0, 1)
                                             for p in range(12)}

    write_png(root / "normal" / "scan7.png", 50)
    result = bench("data", "prepare", "--dataset", "patients", "--data-root", str(root))
    assert result.exit_code == 1
    assert ("the file name 'scan7.png' does not match the card's subject_pattern "
            "'^(patient\\d+)_'") in flat(result.output)


def test_blank_cells_of_a_folder_csv_are_missing_values(isolated, tmp_path):
    root = patient_tree(tmp_path / "tree")
    rows = ["path,label,split,subject_id"]
    for name in ("normal", "abnormal"):
        for path in sorted((root / name).glob("*.png")):
            patient = path.stem.split("_")[0]
            # Blank split: the protocol chooses. Blank subject: the pattern decides.
            rows.append(f"{name}/{path.name},{name},,{patient if path.stem[-1] != '2' else ''}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (isolated / "cards" / "blanks.toml").write_text(
        'description = "blank cells"\nformat = "folder"\nchannels = 1\nimage_size = 16\n'
        '[folder]\nmanifest = "labels.csv"\nsubject_pattern = "^(patient\\\\d+)_"\n')
    data = prepare(load_card("blanks"), data_root=root, show_progress=False)
    assert "nan" not in set(data.manifest.subject_id)
    assert data.manifest.subject_id.nunique() == 24
    assert data.manifest.groupby("subject_id").split.nunique().eq(1).all()

    (root / "labels.csv").write_text("path,label\nnormal/patient000_0.png,\n")
    result = bench("data", "prepare", "--dataset", "blanks", "--data-root", str(root))
    assert result.exit_code == 1
    assert "labels.csv, data row 1: the label is blank" in flat(result.output)


def test_blank_cells_of_subjects_csv(cards, tmp_path, isolated):
    root = mri_tree(tmp_path / "mri", n_subjects=20)
    subjects = root / "subjects.csv"
    text = subjects.read_text()
    # A blank split is left to the protocol.
    subjects.write_text(text.replace("sub010,healthy,train", "sub010,healthy,"))
    data = prepare(load_card("migraine"), data_root=root, show_progress=False)
    assert "sub010" in set(data.manifest.subject_id)
    assert "nan" not in set(data.manifest.split)

    for row, message in (("sub010,,train", "data row 11: subject 'sub010' has no label"),
                         (",healthy,train", "data row 11: the subject_id is blank")):
        subjects.write_text(text.replace("sub010,healthy,train", row))
        result = bench("data", "prepare", "--dataset", "migraine", "--data-root", str(root))
        assert result.exit_code == 1
        assert message in result.output, result.output
        assert "nan" not in result.output


def test_a_chestxray14_cell_of_spaces_is_blank(cards, tmp_path):
    root = tmp_path / "cxr14"
    fixtures.write_chestxray14(root, n_images=300, size=24)
    entries = root / "Data_Entry_2017.csv"
    table = pd.read_csv(entries, dtype=str)
    table.loc[3, "Patient ID"] = "   "
    table.to_csv(entries, index=False)
    result = bench("data", "prepare", "--dataset", "chestxray14", "--data-root", str(root))
    assert result.exit_code == 1
    assert "Data_Entry_2017.csv, data row 4: the 'Patient ID' cell is blank" in result.output


# --- linked subfolders: followed, never silently skipped -------------------------------------


def test_a_linked_subfolder_of_a_class_folder_is_read_not_skipped(isolated, tmp_path):
    """rglob before Python 3.13 does not enter a linked folder: its images used to drop out of
    the dataset without a word. Now they count, and a link out of the root is refused unless
    allowed, like any other."""
    root = patient_tree(tmp_path / "tree")
    (isolated / "cards" / "linked.toml").write_text(
        'description = "a class folder with a linked batch"\nformat = "folder"\n'
        'channels = 1\nimage_size = 16\n')
    elsewhere = tmp_path / "shared" / "batch2"
    for i in range(6):
        write_png(elsewhere / f"late{i}.png", 200 + i)
    (root / "abnormal" / "batch2").symlink_to(elsewhere, target_is_directory=True)
    refused = bench("data", "prepare", "--dataset", "linked", "--data-root", str(root))
    assert refused.exit_code == 1
    assert "symbolic link abnormal/batch2 -> " in flat(refused.output)
    data = prepare(load_card("linked"), data_root=root, show_progress=False,
                   allow_external_links=True)
    assert len(data.manifest) == 72 + 6
    assert data.manifest.image_id.str.contains("late").sum() == 6
    # A second link to a folder already read, and a loop, add nothing and do not hang.
    (root / "abnormal" / "zz-again").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(root / "abnormal", target_is_directory=True)
    again = prepare(load_card("linked"), data_root=root, show_progress=False,
                    allow_external_links=True)
    assert len(again.manifest) == 78
