"""Format-faithful little trees of each real dataset, for tests, demos and the prepare benchmark.

The label files, folder layouts and file formats follow the public releases
(docs/design.md section 6); the pixels come from the synthetic chest generator (chest sets) or
drawn head phantoms (MRI), so a method has something to find. None of this is real patient data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data import synthetic

FIXTURE_FORMATS = ("covidx", "chestxray14", "brain_mri")

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
