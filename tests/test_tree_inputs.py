"""Hostile or careless dataset trees: paths and links out of the root, files edited in place,
a split fed by two pools, patients spread over many files, blank CSV cells.

Every tree is written for real (PNG files, NIfTI volumes, symbolic links) into tmp_path and read
through `prepare` or `bench data prepare`, as a user would.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from benchmark.cli import cli
from benchmark.data import fixtures, load_card, prepare
from benchmark.data.protocol import assign_splits

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


