"""Kermany's ZhangLab chest X-rays in the Kaggle layout (`<split>/<class>/*.jpeg`): the folder
reader's `split_folders`, the shipped zhanglab card (its patient pattern and protocol counts)
and the published SQUID figures, on little trees of real JPEG files the tests write.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from medad_bench.check.published import read_published
from medad_bench.data import folder, load_card, prepare
from medad_bench.data.cards import parse_card
from medad_bench.data.protocol import assign_splits
from medad_bench.errors import BenchError

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "reference" / "published" / "zhanglab.json"

#: Per split folder: (class folder, file names). Patients IM-0115 and person1 have two images.
KAGGLE_FILES = {
    "train": {
        "NORMAL": ["IM-0115-0001.jpeg", "IM-0115-0002.jpeg", "IM-0117-0001.jpeg",
                   "IM-0119-0001.jpeg", "IM-0122-0001.jpeg", "IM-0125-0001.jpeg",
                   "NORMAL2-IM-0381-0001.jpeg", "NORMAL2-IM-0382-0001.jpeg",
                   "NORMAL2-IM-0383-0001.jpeg", "NORMAL2-IM-0384-0001.jpeg"],
        "PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_virus_6.jpeg",
                      "person3_bacteria_10.jpeg", "person5_virus_12.jpeg",
                      "person7_bacteria_20.jpeg", "person9_bacteria_25.jpeg",
                      "person11_virus_30.jpeg", "person13_bacteria_35.jpeg"],
    },
    "val": {
        "NORMAL": ["NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1430-0001.jpeg"],
        "PNEUMONIA": ["person1946_bacteria_4874.jpeg", "person1950_bacteria_4881.jpeg"],
    },
    "test": {
        "NORMAL": ["IM-0001-0001.jpeg", "IM-0003-0001.jpeg", "NORMAL2-IM-0012-0001.jpeg"],
        "PNEUMONIA": ["person100_bacteria_475.jpeg", "person101_bacteria_486.jpeg",
                      "person116_virus_221.jpeg"],
    },
}

#: The shipped card's [folder] keys with counts that fit KAGGLE_FILES: test and val are their
#: folders in full, set A takes 2 + 2 from train/, set B the other train normals.
TINY_CARD = """
name = "zhanglab-tiny"
description = "Kaggle-layout chest X-rays, a few files"
format = "folder"
channels = 1
image_size = 16
[folder]
split_folders = {splits}
healthy_folders = ["NORMAL"]
diseased_folders = ["PNEUMONIA"]
subject_pattern = '{pattern}'
test_healthy = 3
test_positive = 3
mixed_healthy = 2
mixed_positive = 2
split_seed = 0
"""


def shipped_pattern() -> str:
    return load_card("zhanglab").settings["subject_pattern"]


def kaggle_tree(root: Path) -> Path:
    for number, (split, classes) in enumerate(KAGGLE_FILES.items()):
        for name, files in classes.items():
            (root / split / name).mkdir(parents=True)
            for index, file_name in enumerate(files):
                value = 40 + 100 * (name == "PNEUMONIA") + 10 * number + index
                Image.new("L", (16, 16), value).save(root / split / name / file_name, "JPEG")
    return root


def tiny_card(tmp_path: Path, splits: str = '["train", "val", "test"]'):
    path = tmp_path / "zhanglab-tiny.toml"
    path.write_text(TINY_CARD.format(splits=splits, pattern=shipped_pattern()))
    return parse_card(path)


def test_split_folders_are_the_pools_and_kaggle_names_the_patients(tmp_path):
    root = kaggle_tree(tmp_path / "chest_xray")
    data = prepare(tiny_card(tmp_path), data_root=root, show_progress=False)
    manifest = data.manifest.set_index("image_id")
    folder_of = manifest.index.str.split("/").str[0]
    assert set(manifest.split[folder_of == "test"]) == {"test"}
    assert set(manifest.split[folder_of == "val"]) == {"val"}
    assert set(manifest.split[folder_of == "train"]) == {"train_mixed", "train_normal"}
    counts = data.counts()
    assert counts.loc["test"].tolist() == [3, 3]
    assert counts.loc["val"].tolist() == [2, 2]
    assert counts.loc["train_mixed"].tolist() == [2, 2]
    assert counts.loc["train_normal"].tolist() == [8, 0]  # the other train normals
    # Subjects come from Kaggle's names; two images of one patient share one.
    source, _ = folder.read(tiny_card(tmp_path), root)
    subjects = dict(zip(source.image_id, source.subject_id, strict=True))
    assert subjects["train/NORMAL/IM-0115-0001.jpeg"] == "train/IM-0115"
    assert subjects["train/NORMAL/IM-0115-0002.jpeg"] == "train/IM-0115"
    assert subjects["train/PNEUMONIA/person1_bacteria_1.jpeg"] == "train/person1"
    assert subjects["train/PNEUMONIA/person1_virus_6.jpeg"] == "train/person1"
    assert subjects["val/NORMAL/NORMAL2-IM-1427-0001.jpeg"] == "val/NORMAL2-IM-1427"
    assert len(set(subjects.values())) == len(subjects) - 2
    # ... and land in one split (set A takes 2 of the 8 pneumonia images; the rest are unused).
    split = manifest.split.to_dict()
    for pair in (("train/NORMAL/IM-0115-0001.jpeg", "train/NORMAL/IM-0115-0002.jpeg"),
                 ("train/PNEUMONIA/person1_bacteria_1.jpeg",
                  "train/PNEUMONIA/person1_virus_6.jpeg")):
        assert split.get(pair[0], "unused") == split.get(pair[1], "unused")
    assert data.manifest.groupby("subject_id").split.nunique().eq(1).all()


def test_a_patient_number_reused_by_another_split_folder_is_another_subject(tmp_path):
    """Kermany's test/ holds person1_virus_6.jpeg as train/ holds person1_bacteria_1.jpeg: the
    folders number patients on their own, so the published split must not be refused."""
    root = kaggle_tree(tmp_path / "chest_xray")
    Image.new("L", (16, 16), 200).save(root / "test" / "PNEUMONIA" / "person1_virus_6.jpeg")
    source, _ = folder.read(tiny_card(tmp_path), root)
    assert {"train/person1", "test/person1"} <= set(source.subject_id)
    data = prepare(tiny_card(tmp_path), data_root=root, show_progress=False)
    assert "test/PNEUMONIA/person1_virus_6.jpeg" in set(data.manifest.image_id)

def test_without_split_folders_the_class_folders_are_one_pool(tmp_path):
    root = tmp_path / "flat"
    for name, value in (("normal", 60), ("abnormal", 180)):
        (root / name).mkdir(parents=True)
        for index in range(3):
            Image.new("L", (16, 16), value + index).save(root / name / f"{index}.png")
    path = tmp_path / "flat.toml"
    path.write_text('description = "flat"\nformat = "folder"\nchannels = 1\n'
                    'image_size = 16\n[folder]\n')
    table, _ = folder.read(parse_card(path), root)
    assert set(table.pool) == {"any"}
    assert sorted(table.path) == [f"{n}/{i}.png" for n in ("abnormal", "normal")
                                  for i in range(3)]


def test_a_missing_split_folder_is_named(tmp_path):
    root = kaggle_tree(tmp_path / "chest_xray")
    shutil.rmtree(root / "val")
    with pytest.raises(BenchError, match=r"does not look like a 'zhanglab-tiny' tree: val not "
                                         r"found\.\nExpected layout"):
        folder.read(tiny_card(tmp_path), root)


def test_a_missing_class_folder_is_named(tmp_path):
    root = kaggle_tree(tmp_path / "chest_xray")
    shutil.rmtree(root / "test" / "PNEUMONIA")
    with pytest.raises(BenchError, match="tree: test/PNEUMONIA not found"):
        folder.read(tiny_card(tmp_path), root)


def test_an_empty_class_folder_is_an_error(tmp_path):
    root = kaggle_tree(tmp_path / "chest_xray")
    for path in (root / "val" / "NORMAL").iterdir():
        path.unlink()
    with pytest.raises(BenchError, match=r"class folder .*val/NORMAL holds no images"):
        folder.read(tiny_card(tmp_path), root)


def test_an_unknown_split_folder_name_is_an_error(tmp_path):
    root = kaggle_tree(tmp_path / "chest_xray")
    (root / "val").rename(root / "valid")
    card = tiny_card(tmp_path, splits='["train", "valid", "test"]')
    with pytest.raises(BenchError) as failure:
        folder.read(card, root)
    message = str(failure.value)
    assert str(card.path) in message
    assert "unknown split folder(s) valid" in message
    assert "each one of train, val, test" in message


def test_the_shipped_card_parses_and_names_kaggles_patients():
    card = load_card("zhanglab")
    assert (card.format, card.channels, card.image_size, card.unit) == ("folder", 1, 128,
                                                                       "image")
    assert card.default_data_root == "data/zhanglab"
    assert "kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia" in card.download
    assert "data.mendeley.com/datasets/rscbjbr9sj/2" in card.download
    settings = card.settings
    assert (settings["healthy_folders"], settings["diseased_folders"]) == (["NORMAL"],
                                                                           ["PNEUMONIA"])
    assert {k: settings[k] for k in ("test_healthy", "test_positive", "val_healthy",
                                     "val_positive", "mixed_healthy", "mixed_positive")} == {
        "test_healthy": 234, "test_positive": 390, "val_healthy": 135, "val_positive": 389,
        "mixed_healthy": 325, "mixed_positive": 139}
    rule = re.compile(settings["subject_pattern"])
    examples = {"IM-0115-0001.jpeg": "IM-0115", "NORMAL2-IM-1427-0001.jpeg": "NORMAL2-IM-1427",
                "person1_bacteria_1.jpeg": "person1", "person1_virus_6.jpeg": "person1",
                "person1946_bacteria_4874.jpeg": "person1946"}
    assert {name: rule.search(name).group(1) for name in examples} == examples
    assert rule.search("scan7.jpeg") is None


def test_the_shipped_protocol_on_kaggles_counts(tmp_path):
    """Kaggle's folder sizes (empty files: the reader checks names, not pixels): test in full,
    validation 135 + 389 and set A 325 + 139 from train/, set B the other train normals."""
    root = tmp_path / "chest_xray"
    sizes = {"train": (1341, 3875), "val": (8, 8), "test": (234, 390)}
    for number, (split, (normal, pneumonia)) in enumerate(sizes.items()):
        for name, count, stem in (("NORMAL", normal, "IM-{}-0001"),
                                  ("PNEUMONIA", pneumonia, "person{}_bacteria_1")):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                (root / split / name / f"{stem.format(10000 * number + index)}.jpeg").touch()
    card = load_card("zhanglab")
    table, _ = folder.read(card, root)
    assert set(table.pool) == set(card.settings["split_folders"])
    result = assign_splits(table, card.settings)
    counts = result.table.groupby(["split", "label"]).size().to_dict()
    assert counts == {("test", 0): 234, ("test", 1): 390, ("val", 0): 135, ("val", 1): 389,
                      ("train_mixed", 0): 325, ("train_mixed", 1): 139,
                      ("train_normal", 0): 1341 - 135 - 325}
    assert result.scale == 1.0


def test_read_published_accepts_the_squid_figures():
    reference = read_published(PUBLISHED)
    assert reference["dataset"] == "zhanglab"
    assert reference["protocol"]["image_size"] == 128
    assert reference["protocol"]["split"] == {"train": 1341, "validation": 16, "test": 624}
    auc = {method: entry["auc"] for method, entry in reference["methods"].items()}
    assert auc["squid"] == {"mean": 0.876, "sd": 0.015}
    assert auc["panda"] == {"mean": 0.657, "sd": 0.013}
    assert len(auc) == 7
    # Figures published without a spread are kept aside, not compared.
    assert set(reference["reported_without_sd"]) == {"fanogan", "reverse_distillation",
                                                     "simsid"}
