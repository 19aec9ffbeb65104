"""Format-faithful little trees of each real dataset, for tests, demos and the prepare benchmark.

The label files, folder layouts and file formats follow the public releases
(docs/design.md section 6); the pixels come from the synthetic chest generator (chest sets) or
drawn head phantoms (MRI), so a method has something to find. None of this is real patient data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from medad_bench.data import synthetic

FIXTURE_FORMATS = ("covidx", "chestxray14", "brain_mri", "bmad", "bmad-brats", "medianomaly")

#: The published COVIDx composition the paper uses: 15,464 training images of which 1,670
#: COVID-positive, and a balanced test set of 400 (15,864 files in all).
COVIDX_PUBLISHED_TRAIN, COVIDX_PUBLISHED_TEST, COVIDX_PUBLISHED_POSITIVE = 15_464, 400, 1_670


def covidx_composition(count: int) -> tuple[int, int, float]:
    """(training files, test files, training positive share) of a `count`-file COVIDx tree in
    the published proportions: 15,864 files give exactly the paper's 15,464 / 400 / 1,670."""
    n_test = max(4, round(count * COVIDX_PUBLISHED_TEST
                          / (COVIDX_PUBLISHED_TRAIN + COVIDX_PUBLISHED_TEST)))
    return count - n_test, n_test, COVIDX_PUBLISHED_POSITIVE / COVIDX_PUBLISHED_TRAIN


def chest_image(seed: int, index: int, label: int, size: int) -> np.ndarray:
    """An 8-bit chest radiograph at `size`, drawn at <= 128 px and enlarged (fast at 512 px)."""
    drawn = min(size, 128)
    config = synthetic.SyntheticConfig(seed=seed, image_size=drawn, lesion_contrast=0.3,
                                       lesion_size=1.5)
    spec = synthetic.ImageSpec(index=index, image_id=f"f{index}", split="test", label=label)
    image, _ = synthetic.generate_image(config, spec)
    picture = Image.fromarray(np.round(image * 255).astype(np.uint8))
    if drawn != size:
        picture = picture.resize((size, size), Image.BILINEAR)
    grain = np.random.default_rng([seed, index]).normal(0, 3, (size, size))
    return np.clip(np.asarray(picture, dtype=np.float64) + grain, 0, 255).astype(np.uint8)


def write_covidx(root: Path, *, n_train: int, n_test: int, size: int = 256,
                 train_positive_share: float = 0.11, labels: str = "recent", seed: int = 0,
                 exact_shares: bool = False,
                 progress: Callable[[], None] | None = None) -> None:
    """train.txt / test.txt (`patient filename label source`) and train/, test/ PNGs.

    Training is ~11% positive as in the paper's COVIDx (1,670 of 15,464); test is balanced.
    With `exact_shares` the positives are exactly round(share x count) at random places
    instead of a coin per image, so a tree of the published size gives the published counts.
    """
    names = {"recent": ("negative", "positive"), "old": ("normal", "COVID-19")}[labels]
    rng = np.random.default_rng(seed)
    index = 0
    for split, count in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        lines = []
        share = train_positive_share if split == "train" else 0.5
        if exact_shares:
            drawn = np.zeros(count, dtype=int)
            drawn[rng.permutation(count)[:round(share * count)]] = 1
        for i in range(count):
            label = int(drawn[i]) if exact_shares else int(rng.random() < share)
            patient = f"{split}-p{i // 2:05d}-{label}"  # two images per patient
            filename = f"{split}_{i:05d}.png"
            Image.fromarray(chest_image(seed, index, label, size)).save(root / split / filename)
            lines.append(f"{patient} {filename} {names[label]} fixture")
            index += 1
            if progress:
                progress()
        if labels == "old" and split == "train":
            # Older releases also label pneumonia, which the shipped card drops.
            name = f"{split}_pneumonia.png"
            Image.fromarray(chest_image(seed, index, 1, size)).save(root / split / name)
            lines.append(f"pn-{split} {name} pneumonia fixture")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


def write_chestxray14(root: Path, *, n_images: int, size: int = 256, ap_share: float = 0.2,
                      seed: int = 0, progress: Callable[[], None] | None = None) -> None:
    """Data_Entry_2017.csv, the official lists and images_001/images, images_002/images."""
    rng = np.random.default_rng(seed)
    findings = ["Atelectasis", "Effusion", "Nodule", "Mass|Nodule", "Pneumonia"]
    entries = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
               "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"]
    train, test = [], []
    for i in range(n_images):
        patient = i // 2 + 1
        name = f"{patient:08d}_{i % 2:03d}.png"
        label = int(rng.random() < 0.4)
        view = "AP" if rng.random() < ap_share else "PA"
        folder = root / f"images_{1 + i * 2 // n_images:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(chest_image(seed, i, label, size)).save(folder / name)
        finding = findings[i % len(findings)] if label else "No Finding"
        entries.append(f"{name},{finding},{i % 2},{patient},50,M,{view},{size},{size},"
                       f"0.143,0.143,")
        (test if patient % 5 == 0 else train).append(name)
        if progress:
            progress()
    (root / "Data_Entry_2017.csv").write_text("\n".join(entries) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")


def head_volume(seed: int, label: int, depth: int = 24, size: int = 64) -> np.ndarray:
    """An ellipsoid head phantom (x, y, z); migraine subjects get bright white-matter spots."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (size, size, depth)), indexing="ij")
    head = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.75) ** 2 < 1
    brain = (x / 0.7) ** 2 + (y / 0.8) ** 2 + (z / 0.65) ** 2 < 1
    volume = 300.0 * head + 500.0 * brain + rng.normal(0, 20, head.shape)
    if label:
        for _ in range(4):
            cx, cy, cz = rng.uniform(-0.4, 0.4, 3)
            spot = ((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) < 0.12 ** 2
            volume += 400.0 * spot
    return np.clip(volume * head, 0, None).astype(np.float32)


def write_brain_mri(root: Path, *, n_subjects: int, layout: str = "volumes", depth: int = 24,
                    size: int = 64, seed: int = 0,
                    progress: Callable[[], None] | None = None) -> None:
    """subjects.csv plus volumes/<s>.nii.gz (2 mm slices, flipped axes) or slices/<s>__NNN.png."""
    import nibabel

    rows = ["subject_id,label,split"]
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    for i in range(n_subjects):
        subject = f"sub{i:03d}"
        label = i % 2
        rows.append(f"{subject},{'migraine' if label else 'healthy'},{splits[i % 10]}")
        volume = head_volume(seed * 10_000 + i, label, depth, size)
        if layout == "volumes":
            (root / "volumes").mkdir(parents=True, exist_ok=True)
            # 2 mm slices, flipped x/y axes: the reader must reorient and resample.
            affine = np.diag([-1.0, -1.0, 2.0, 1.0])
            image = nibabel.Nifti1Image(volume, affine)
            nibabel.save(image, root / "volumes" / f"{subject}.nii.gz")
        else:
            (root / "slices").mkdir(parents=True, exist_ok=True)
            peak = float(volume.max()) or 1.0
            for k in range(depth):
                picture = np.round(volume[:, :, k] / peak * 255).astype(np.uint8)
                if picture.any():
                    Image.fromarray(picture).save(root / "slices" / f"{subject}__{k:03d}.png")
        if progress:
            progress()
    (root / "subjects.csv").write_text("\n".join(rows) + "\n")


# --- the peers' formats: BMAD (CVPRW 2024) and MedIAnomaly (MedIA 2025) ---------------------

#: BMAD's RSNA split (train / valid / test images): the fixture keeps these proportions.
BMAD_RSNA_SPLIT = (8_000, 1_490, 17_194)
#: matplotlib's "bone" colour map as its (position, value) knots per channel: BMAD wrote every
#: BraTS2021 slice and mask with plt.imsave(..., cmap="bone"), giving RGBA PNGs.
BONE_KNOTS = (((0.0, 0.746032, 1.0), (0.0, 0.652778, 1.0)),
              ((0.0, 0.365079, 0.746032, 1.0), (0.0, 0.319444, 0.777778, 1.0)),
              ((0.0, 0.365079, 1.0), (0.0, 0.444444, 1.0)))


def bone_rgba(values: np.ndarray) -> np.ndarray:
    """(H, W) values -> (H, W, 4) uint8 as plt.imsave(cmap="bone") writes them: scaled from
    the array's own min..max (a constant array is black), opaque."""
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values, dtype=float)
    channels = [np.interp(scaled, knots, levels) for knots, levels in BONE_KNOTS]
    rgba = np.stack([*channels, np.ones_like(scaled)], axis=-1)
    return np.round(rgba * 255).astype(np.uint8)


def brain_slice(seed: int, label: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A FLAIR-like axial slice (float) and its segmentation (0 background, 1/2/4 tumour
    parts as in BraTS): a bright blob in a diseased slice, none in a healthy one."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    radius_head = (x / 0.75) ** 2 + (y / 0.9) ** 2
    head = radius_head < 1
    image = 400.0 + 60.0 * np.cos(6 * x) * np.sin(5 * y) + rng.normal(0, 15, head.shape)
    # A bright rim (scalp fat) sets every slice's maximum, so plt.imsave's per-image scaling
    # does not make a slice with a tumour darker overall than a healthy one.
    image[radius_head > 0.85] = 900.0
    seg = np.zeros((size, size), dtype=np.uint8)
    if label:
        cx, cy = rng.uniform(-0.35, 0.35, 2)
        radius = rng.uniform(0.15, 0.25)
        distance = np.hypot(x - cx, y - cy)
        seg[distance < radius] = 2  # oedema
        seg[distance < radius * 0.6] = 4  # enhancing tumour
        seg[distance < radius * 0.3] = 1  # necrotic core
        image[distance < radius] += 300.0
    return np.clip(image * head, 0, 900.0), seg


def bmad_composition(count: int) -> tuple[int, int, int]:
    """(train, valid, test) images of a `count`-image BMAD tree in RSNA's proportions, with
    at least 4 per split so every class folder of valid and test holds two."""
    total = sum(BMAD_RSNA_SPLIT)
    n_train = max(4, round(count * BMAD_RSNA_SPLIT[0] / total))
    n_valid = max(4, round(count * BMAD_RSNA_SPLIT[1] / total))
    return n_train, n_valid, max(4, count - n_train - n_valid)


def write_bmad(root: Path, *, n_train: int, n_valid: int, n_test: int, size: int = 224,
               with_masks: bool = False, seed: int = 0,
               progress: Callable[[], None] | None = None) -> None:
    """BMAD's tree: train/good, valid/good|Ungood, test/good|Ungood, half of valid and test
    diseased.

    Without masks, an image-level set like BMAD's RSNA: 8-bit grey chest X-rays directly in the
    class folders, numbered per folder as in BMAD's README (so good/1000.png and
    Ungood/1000.png both exist). With masks, a pixel-level set like its BraTS2021 slices:
    `<subject>_<slice>.png` RGBA "bone" renderings in img/, the segmentation rendered the
    same way in label/ (black where healthy) for valid and test, train/good/img without masks.
    """
    subject = 0
    for split, count in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        n_diseased = 0 if split == "train" else count // 2
        for name, label, n in (("good", 0, count - n_diseased), ("Ungood", 1, n_diseased)):
            folder = root / split / name
            for i in range(n):
                index = 1000 + i
                if with_masks:
                    # Two slices per subject: subjects never straddle two folders.
                    if i % 2 == 0:
                        subject += 1
                    stem = f"{subject:05d}_{60 + i % 2 * 10}"
                    _write_bmad_slice(folder, stem, seed * 100_000 + index * 7 + subject, label,
                                      size, mask=split != "train")
                else:
                    folder.mkdir(parents=True, exist_ok=True)
                    picture = chest_image(seed, subject * 10_000 + index, label, size)
                    Image.fromarray(picture).save(folder / f"{index}.png")
                if progress:
                    progress()
            subject += 1


def _write_bmad_slice(folder: Path, stem: str, seed: int, label: int, size: int, *,
                      mask: bool) -> None:
    image, seg = brain_slice(seed, label, size)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    Image.fromarray(bone_rgba(image)).save(folder / "img" / f"{stem}.png")
    if mask:
        (folder / "label").mkdir(parents=True, exist_ok=True)
        Image.fromarray(bone_rgba(seg.astype(float))).save(folder / "label" / f"{stem}.png")


#: MedIAnomaly's RSNA data.json (as in the authors' DDAD-ASR): known normals, the unlabelled
#: pool's healthy and diseased images, test healthy and diseased.
MEDIANOMALY_RSNA_LISTS = (3_851, 4_000, 5_012, 1_000, 1_000)


def medianomaly_composition(count: int) -> tuple[int, int, int]:
    """(known normals, unlabelled pool, test) of a `count`-image tree in RSNA's proportions,
    at least 4 each."""
    total = sum(MEDIANOMALY_RSNA_LISTS)
    n_normal = max(4, round(count * MEDIANOMALY_RSNA_LISTS[0] / total))
    n_pool = max(4, round(count * sum(MEDIANOMALY_RSNA_LISTS[1:3]) / total))
    return n_normal, n_pool, max(4, count - n_normal - n_pool)


def write_medianomaly(root: Path, *, n_normal: int, n_unlabeled: int, n_test: int,
                      size: int = 64, unlabeled_diseased_share: float = 0.56, seed: int = 0,
                      progress: Callable[[], None] | None = None) -> None:
    """MedIAnomaly's tree: images/ of 8-bit grey PNGs named like RSNA's patient ids, and
    data.json splitting them into train.0, train.unlabeled.0/1 and test.0/1 (test balanced,
    the pool 56% diseased as in their RSNA)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    n_pool_diseased = round(n_unlabeled * unlabeled_diseased_share)
    plan = (("train", "0", 0, n_normal),
            ("unlabeled", "0", 0, n_unlabeled - n_pool_diseased),
            ("unlabeled", "1", 1, n_pool_diseased),
            ("test", "0", 0, n_test - n_test // 2), ("test", "1", 1, n_test // 2))
    lists: dict[tuple[str, str], list[str]] = {}
    index = 0
    for group, key, label, count in plan:
        names = lists.setdefault((group, key), [])
        for _ in range(count):
            name = f"{rng.bytes(4).hex()}-{rng.bytes(2).hex()}-{index:06d}.png"
            Image.fromarray(chest_image(seed, index, label, size)).save(root / "images" / name)
            names.append(name)
            index += 1
            if progress:
                progress()
    data = {"train": {"0": lists[("train", "0")],
                      "unlabeled": {"0": lists[("unlabeled", "0")],
                                    "1": lists[("unlabeled", "1")]}},
            "test": {"0": lists[("test", "0")], "1": lists[("test", "1")]}}
    (root / "data.json").write_text(json.dumps(data, indent=1) + "\n")


def write_fixture(fmt: str, root: Path, *, count: int, size: int, seed: int = 0,
                  progress: Callable[[], None] | None = None) -> None:
    """A `count`-image tree of a peer's format (`bench data make-fixture`): `bmad` (image-level,
    like BMAD's RSNA), `bmad-brats` (pixel-level with masks, like its BraTS2021) or
    `medianomaly` (like its RSNA)."""
    if fmt in ("bmad", "bmad-brats"):
        n_train, n_valid, n_test = bmad_composition(count)
        write_bmad(root, n_train=n_train, n_valid=n_valid, n_test=n_test, size=size,
                   with_masks=fmt == "bmad-brats", seed=seed, progress=progress)
    elif fmt == "medianomaly":
        n_normal, n_pool, n_test = medianomaly_composition(count)
        write_medianomaly(root, n_normal=n_normal, n_unlabeled=n_pool, n_test=n_test,
                          size=size, seed=seed, progress=progress)
    else:
        raise ValueError(f"no peer fixture format {fmt!r}")


def write_tree(fmt: str, out: Path, *, count: int, size: int, seed: int,
               progress: Callable[[], None] | None = None) -> None:
    """`bench data make-fixture`: a tree in format `fmt` (covidx, chestxray14, brain_mri or a
    write_fixture format) of `count` images (subjects for brain MRI) into `out`. COVIDx trees
    follow the published proportions (covidx_composition)."""
    if fmt == "covidx":
        n_train, n_test, positive_share = covidx_composition(count)
        write_covidx(out, n_train=n_train, n_test=n_test, size=size, seed=seed,
                     train_positive_share=positive_share, exact_shares=True, progress=progress)
    elif fmt == "chestxray14":
        write_chestxray14(out, n_images=count, size=size, seed=seed, progress=progress)
    elif fmt == "brain_mri":
        write_brain_mri(out, n_subjects=count, size=size, seed=seed, progress=progress)
    else:
        write_fixture(fmt, out, count=count, size=size, seed=seed, progress=progress)
