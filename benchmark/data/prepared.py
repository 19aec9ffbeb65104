"""A prepared dataset: the split manifest, its hash and the preprocessed image cache.

Preparation runs once per card version: the manifest and the preprocessed arrays are written to
a folder under the cache root (default `results/cache`), first into a temporary folder that is
renamed into place when complete, so a killed preparation never leaves a half-written cache.
Later runs memory-map the arrays: neither regenerated nor re-decoded.

A real dataset's cache is keyed by the card and the tree's file names, sizes and modification
times (ns): an edited file gets a new cache and data version. Contents are not read for the
key; `prepare(..., verify=True)` (`bench data prepare --verify`) hashes every source file,
compares the hashes with those recorded when the cache was built, and rebuilds the cache when
any file changed (or when none were recorded), under a data version that then names the
contents.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from medad_bench.api.contract import TrainSet
from tqdm.auto import tqdm

from medad_bench.data import build, integrity, protocol, readers, synthetic
from medad_bench.data.cards import DatasetCard
from medad_bench.data.images import ImageSet, quantize, storage_dtype
from medad_bench.data.sources import ALLOW_LINKS_ENV
from medad_bench.data.splits import (
    check_subject_disjoint,
    manifest_hash,
    read_manifest,
    write_manifest,
)
from medad_bench.disk import preallocated_npy, write_text_atomic, writing
from medad_bench.errors import BenchError

#: Bump when the cache layout changes. 2: pixels stored as uint8 / uint16 (the card's
#: bit_depth), not float32.
logger = logging.getLogger(__name__)

CACHE_VERSION = 2
DEFAULT_CACHE_ROOT = Path("results") / "cache"


@dataclass
class PreparedDataset:
    card: DatasetCard
    manifest: pd.DataFrame  # image_id, split, label, subject_id, row (index into the arrays)
    split_hash: str
    #: Identifies the image content (card text + generator/reader version): two runs with the
    #: same split hash but another data version saw other pixels.
    data_version: str
    #: (N, C, H, W) uint8 / uint16, memory-mapped; read through `image_set` / `images_of`.
    images: np.ndarray
    masks: np.ndarray | None  # (N, H, W) uint8 lesion masks where the dataset has them
    folder: Path
    #: The cache's meta.json: protocol notes and scale, native image sizes, dropped rows.
    meta: dict = dataclasses.field(default_factory=dict)
    #: True when this call built the cache, False when it was read from disk.
    built: bool = False
    #: With verify: files hashed, those whose contents changed since the cache was built,
    #: whether a cache existed and had a record to compare with (else it is rebuilt).
    verification: dict | None = None

    def rows(self, split: str) -> np.ndarray:
        return self.manifest.loc[self.manifest.split == split, "row"].to_numpy()

    def image_set(self, split: str) -> ImageSet:
        """The split's images as a view of the cache, read (as float32) only when indexed."""
        return ImageSet(self.images, np.sort(self.rows(split)))

    def images_of(self, split: str) -> np.ndarray:
        """The split's images, read into memory (N, C, H, W) float32: for the small splits
        (validation, test); training sets stay views (`image_set`)."""
        return self.image_set(split)[:]

    def labels_of(self, split: str) -> np.ndarray:
        return self.manifest.set_index("row").loc[np.sort(self.rows(split)), "label"].to_numpy()

    def ids_of(self, split: str) -> np.ndarray:
        return self.manifest.set_index("row").loc[np.sort(self.rows(split)), "image_id"].to_numpy()

    def masks_of(self, split: str) -> np.ndarray | None:
        """The split's lesion masks (N, H, W) uint8, where the dataset has them."""
        if self.masks is None:
            return None
        return np.ascontiguousarray(self.masks[np.sort(self.rows(split))])

    def subjects_of(self, split: str) -> np.ndarray:
        return self.manifest.set_index("row").loc[np.sort(self.rows(split)),
                                                  "subject_id"].to_numpy()

    def train_set(self, with_selection: bool = False,
                  with_validation: bool = False) -> TrainSet:
        """Training images; with_selection adds the unlabelled test images for AUCp,
        with_validation the labelled validation split."""
        from medad_bench.api.contract import (  # torch: not needed to prepare data
            LabelledSplit,
            TrainSet,
        )

        validation = None
        if with_validation:
            validation = LabelledSplit(self.images_of("val"), self.labels_of("val"),
                                       self.masks_of("val"))
        return TrainSet(normal=self.image_set("train_normal"),
                        unlabeled=self.image_set("train_mixed"),
                        selection=self.images_of("test") if with_selection else None,
                        selection_normal_share=self.test_normal_share if with_selection else None,
                        validation=validation)

    @property
    def test_normal_share(self) -> float:
        """The protocol's share of healthy test images (a design fact, not read from labels)."""
        if self.card.is_synthetic:
            return 1.0 - synthetic_config(self.card).diseased_share_eval
        settings = self.card.settings
        if "test_healthy" in settings and "test_positive" in settings:
            total = settings["test_healthy"] + settings["test_positive"]
            return settings["test_healthy"] / total
        return float(settings.get("test_normal_share", 0.5))

    def counts(self) -> pd.DataFrame:
        """Images per split and label (0 healthy, 1 diseased)."""
        table = pd.crosstab(self.manifest.split, self.manifest.label)
        return table.rename(columns={0: "healthy", 1: "diseased"})


def prepare(card: DatasetCard, *, data_root: Path | None = None,
            cache_root: Path | None = None, show_progress: bool = True,
            workers: int | None = None, allow_external_links: bool | None = None,
            verify: bool = False) -> PreparedDataset:
    """Return the card's prepared dataset, building its cache on first use.

    allow_external_links: read files reached through symbolic links that leave the data root;
    None: the card's `allow_links_outside_root`, or $BENCH_ALLOW_EXTERNAL_LINKS=1.
    verify: hash every source file and rebuild the cache if any changed since it was built
    (real datasets; the synthetic set has no source files)."""
    cache_root = Path(cache_root or os.environ.get("BENCH_CACHE_DIR") or DEFAULT_CACHE_ROOT)
    if not card.is_synthetic:
        if allow_external_links is None:
            allow_external_links = (card.allow_links_outside_root
                                    or os.environ.get(ALLOW_LINKS_ENV, "") not in ("", "0"))
        card = dataclasses.replace(card, allow_links_outside_root=allow_external_links)
        return _prepare_real(card, resolve_data_root(card, data_root), cache_root,
                             workers=workers, show_progress=show_progress, verify=verify)
    config = synthetic_config(card)
    key = _cache_key(card, extra=str(synthetic.GENERATOR_VERSION))
    folder = cache_root / f"{card.name}-{key[:16]}"
    damage = _damage(folder)
    if damage is None:
        return _open(card, folder, built=False)
    _build_synthetic_cache(card, config, folder, show_progress=show_progress)
    return _with_notes(_open(card, folder, built=True), damage)


def _damage(folder: Path) -> list[str] | None:
    """None when `folder` holds a complete cache whose arrays match their checksums (the whole
    files hashed: once per grid, in the process that prepares); else what is wrong with it
    ([] for no cache at all). A damaged cache is discarded, to be rebuilt from the source."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return []
    try:
        meta = json.loads(meta_path.read_text())
        if "arrays" not in meta:
            _record_checksums(folder, meta)
            return None
        problems = integrity.check(folder, meta, full=True)
    except (ValueError, OSError) as exc:  # unreadable meta.json or .npy header
        problems = [f"it cannot be read ({exc})"]
    if not problems:
        return None
    logger.warning("the cache %s is damaged: %s. Rebuilding it from the source.", folder,
                   "; ".join(problems))
    _discard(folder)
    return problems


def _record_checksums(folder: Path, meta: dict) -> None:
    """Add the arrays' checksums to a cache built before they existed (nothing to compare
    with: from now on a change is caught)."""
    meta["arrays"] = integrity.records(folder)
    write_text_atomic(folder / "meta.json", json.dumps(meta, indent=2) + "\n",
                      "the cache's checksums")
    logger.info("recorded the checksums of %s (built before caches had them)", folder)


def _with_notes(prepared: PreparedDataset, damage: list[str]) -> PreparedDataset:
    """The runner prints the meta's notes: say that a damaged cache was rebuilt, and why."""
    if damage:
        prepared.meta.setdefault("notes", []).append(
            f"the cache was rebuilt because it was damaged: {'; '.join(damage)}")
    return prepared


def synthetic_config(card: DatasetCard) -> synthetic.SyntheticConfig:
    """The generator config a synthetic card describes."""
    known = {f.name for f in dataclasses.fields(synthetic.SyntheticConfig)}
    settings = dict(card.settings)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise BenchError(
            f"dataset card {card.path}: unknown synthetic setting(s) {', '.join(unknown)}. "
            f"Known: {', '.join(sorted(known - {'image_size'}))}."
        )
    if card.channels != 1:
        raise BenchError(f"dataset card {card.path}: the synthetic generator draws grayscale "
                         f"images; set channels = 1.")
    if "lesion_kinds" in settings:
        settings["lesion_kinds"] = tuple(settings["lesion_kinds"])
    try:
        return synthetic.SyntheticConfig(image_size=card.image_size, **settings)
    except (TypeError, ValueError) as exc:
        raise BenchError(f"dataset card {card.path}: {exc}. Fix the card.") from exc


def root_env_name(card: DatasetCard) -> str:
    """$BENCH_<NAME>_ROOT: where a user points the suite at a dataset's folder."""
    return f"BENCH_{card.name.upper().replace('-', '_')}_ROOT"


def bundled_root(card: DatasetCard) -> Path | None:
    """The folder of the data shipped with the card (relative to the card's folder), if any."""
    return card.path.parent / card.bundled_data_root if card.bundled_data_root else None


def resolve_data_root(card: DatasetCard, data_root: Path | None) -> Path:
    """The folder holding a real dataset; a clear error saying where to get it if missing."""
    env_name = root_env_name(card)
    candidate = (data_root or os.environ.get(env_name) or bundled_root(card)
                 or card.default_data_root)
    if not candidate:
        raise BenchError(
            f"dataset '{card.name}' needs its data: pass --data-root PATH or set {env_name}."
        )
    root = Path(candidate).expanduser()
    if not root.is_dir():
        raise BenchError(
            f"dataset '{card.name}': data root {root} does not exist.\n"
            f"Get the data from: {card.download or '(see the card ' + str(card.path) + ')'}\n"
            f"Put it there laid out as:\n{card.layout.rstrip()}\n"
            f"or point the suite at it with --data-root PATH or {env_name}=PATH."
        )
    return root


def download_dataset(card: DatasetCard, data_root: Path | None) -> tuple[Path, bool]:
    """Fetch a dataset whose reader can download (MedMNIST): (path, fetched now). A shipped
    copy (the card's bundled data) counts as present unless --data-root names another folder."""
    if card.is_synthetic:
        raise BenchError(f"dataset '{card.name}' is generated by the suite: nothing to "
                         f"download. `bench data prepare --dataset {card.name}` builds it.")
    if card.format != "medmnist":
        raise BenchError(
            f"dataset '{card.name}' cannot be downloaded by the suite (it downloads the MedMNIST "
            f"sets only; most hosts of the others need a login or a licence agreement). Get it "
            f"from: {card.download or 'see ' + str(card.path)}\n"
            f"Put it there laid out as:\n{card.layout.rstrip()}")
    from medad_bench.data import medmnist

    given = data_root or os.environ.get(root_env_name(card))
    shipped = bundled_root(card)
    if not given and shipped is not None:
        path = shipped / medmnist.settings_of(card)[2]
        if path.is_file():
            return path, False
    return medmnist.download(card, Path(given or card.default_data_root or "~/.medmnist")
                             .expanduser())


def _cache_key(card: DatasetCard, extra: str = "") -> str:
    text = f"{CACHE_VERSION}\n{extra}\n{card.text}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _build_synthetic_cache(card: DatasetCard, config: synthetic.SyntheticConfig, folder: Path,
                           *, show_progress: bool) -> None:
    specs = synthetic.image_specs(config)
    size = config.image_size
    dtype = storage_dtype(card.bit_depth)
    needed = len(specs) * size * size * (card.channels * dtype.itemsize + 1)  # + masks
    with _temporary_folder(folder, needed) as tmp:
        images = preallocated_npy(tmp / "images.npy", dtype,
                                  (len(specs), card.channels, size, size))
        masks = preallocated_npy(tmp / "masks.npy", np.uint8, (len(specs), size, size))
        bar = tqdm(total=len(specs), desc=f"generating {card.name}", unit="img",
                   disable=None if show_progress else True, leave=False)
        for spec, image, mask in synthetic.iter_images(config, specs):
            images[spec.index] = quantize(image[None], dtype)
            masks[spec.index] = mask
            bar.update()
        bar.close()
        images.flush()
        masks.flush()
        del images, masks
        manifest = pd.DataFrame({
            "image_id": [s.image_id for s in specs],
            "split": [s.split for s in specs],
            "label": [s.label for s in specs],
            "subject_id": [s.image_id for s in specs],  # one image per synthetic patient
            "row": [s.index for s in specs],
        })
        check_subject_disjoint(manifest)
        write_manifest(manifest, tmp / "manifest.csv")
        meta = {
            "dataset": card.name,
            "split_hash": manifest_hash(manifest),
            "data_version": folder.name.rsplit("-", 1)[-1],
            "n_images": len(specs),
            "image_shape": [card.channels, size, size],
            "image_dtype": dtype.name,
            "cache_version": CACHE_VERSION,
            "generator_version": synthetic.GENERATOR_VERSION,
            "generator_config": dataclasses.asdict(config),
        }
        meta["arrays"] = integrity.records(tmp)
        # meta.json last: its presence marks a complete cache.
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def open_prepared(card: DatasetCard, folder: Path) -> PreparedDataset:
    """A dataset already prepared (and hashed whole) in `folder` by the parent of a worker
    process: here only the cheap checks (size, header, sampled blocks)."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    problems = integrity.check(folder, meta, full=False)
    if problems:
        raise BenchError(f"the cache {folder} changed after this grid prepared it: "
                         f"{'; '.join(problems)}. Something else is writing there; run the "
                         f"same command again (it rebuilds the cache and skips finished runs).")
    return _open(card, folder, built=False)


def _open(card: DatasetCard, folder: Path, *, built: bool) -> PreparedDataset:
    meta = json.loads((folder / "meta.json").read_text())
    manifest = read_manifest(folder / "manifest.csv")
    split_hash = manifest_hash(manifest)
    if split_hash != meta["split_hash"]:
        raise BenchError(
            f"the split manifest in {folder} does not match its recorded hash (edited or "
            f"corrupted). Delete {folder} and run again to rebuild it."
        )
    images = np.load(folder / "images.npy", mmap_mode="r")
    masks_path = folder / "masks.npy"
    masks = np.load(masks_path, mmap_mode="r") if masks_path.is_file() else None
    return PreparedDataset(card=card, manifest=manifest, split_hash=split_hash,
                           data_version=meta["data_version"], images=images, masks=masks,
                           folder=folder, meta=meta, built=built)


#: Bump when a reader or the preprocessing changes what pixels a tree gives.
READER_VERSION = 1


def _prepare_real(card: DatasetCard, root: Path, cache_root: Path, *, workers: int | None,
                  show_progress: bool, verify: bool = False) -> PreparedDataset:
    """Read and check the tree, assign the splits, and build (or reuse) the cache."""
    reader = readers.reader_for(card.format)
    source, dropped = reader.read(card, root)
    published = readers.published_split(card, root, source)
    assignment = protocol.assign_splits(source, card.settings, published=published)
    items = assignment.table.sort_values("image_id").reset_index(drop=True)
    key = _cache_key(card, extra=f"{READER_VERSION}\n{_tree_fingerprint(items)}")
    folder = cache_root / f"{card.name}-{key[:16]}"
    links = {"allow_links_outside_root": card.allow_links_outside_root,
             "links_outside_root": int((items.outside_link != "").sum())}
    hashes = verification = None
    if verify:
        hashes = _content_hashes(items, root, workers=workers, show_progress=show_progress)
        verification = {"files": len(hashes), **_compare_hashes(folder, hashes)}
        if verification["changed"] or not verification["recorded"]:
            _discard(folder)
    damage = _damage(folder)
    if damage is None:
        prepared = _open(card, folder, built=False)
        prepared.meta.update(links)  # this call's facts, whoever built the cache
        prepared.verification = verification
        return prepared
    data_version = key[:16]
    if hashes is not None:
        # Contents were read: the version names them, so a rebuild after a change that kept
        # names, sizes and times is told apart from the stale cache it replaces.
        digest = hashlib.sha256(hashes.to_csv(index=False).encode("utf-8")).hexdigest()
        data_version = hashlib.sha256(f"{key}\n{digest}".encode()).hexdigest()[:16]
    meta = {"dataset": card.name, "data_root": str(root.resolve()),
            "protocol_scale": assignment.scale, "notes": assignment.notes,
            "unused": assignment.unused, "dropped": dropped, **links,
            "contents_verified": hashes is not None}
    pixels = len(items) * card.image_size ** 2
    needed = pixels * card.channels * storage_dtype(card.bit_depth).itemsize
    needed += pixels if "mask" in items.columns else 0
    with _temporary_folder(folder, needed) as tmp:
        if hashes is not None:
            hashes.to_csv(tmp / SOURCE_HASHES, index=False, lineterminator="\n")
        with_masks = "mask" in items.columns
        result = _write_images(reader, card, items, root, tmp, workers=workers,
                               show_progress=show_progress, with_masks=with_masks)
        meta["notes"].extend(result.notes)
        if with_masks:
            meta["mask_files"] = int((items["mask"] != "").sum())
            meta["notes"].append(f"lesion masks: {meta['mask_files']} mask files (an image "
                                 f"without one has an empty mask), so pixel-level metrics "
                                 f"are computed")
        manifest = result.manifest
        check_subject_disjoint(manifest)
        write_manifest(manifest, tmp / "manifest.csv")
        meta.update({"split_hash": manifest_hash(manifest), "data_version": data_version,
                     "n_images": len(manifest), "image_sizes": result.image_sizes,
                     "image_shape": [card.channels, card.image_size, card.image_size],
                     "image_dtype": storage_dtype(card.bit_depth).name,
                     "cache_version": CACHE_VERSION, "reader_version": READER_VERSION,
                     "arrays": integrity.records(tmp)})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    prepared = _with_notes(_open(card, folder, built=True), damage)
    prepared.verification = verification
    return prepared


def _write_images(reader: object, card: DatasetCard, items: pd.DataFrame, root: Path,
                  tmp: Path, *, workers: int | None, show_progress: bool,
                  with_masks: bool) -> build.BuildResult:
    """The cache's arrays: from image files by the streaming builder, or by the reader itself
    where the source is arrays already (a MedMNIST .npz has `write_images`)."""
    label = f"preparing {card.name}"
    own_writer = getattr(reader, "write_images", None)
    if own_writer is not None:
        return own_writer(card, root, items, tmp / "images.npy", _decoding(card),
                          show_progress=show_progress, label=label)
    return build.build_images(items, root, tmp / "images.npy", _decoding(card), workers=workers,
                              show_progress=show_progress, label=label,
                              masks_target=tmp / "masks.npy" if with_masks else None)


#: In a cache built with verify: path and SHA-256 of every source file it was decoded from.
SOURCE_HASHES = "source-hashes.csv"


def _content_hashes(items: pd.DataFrame, root: Path, *, workers: int | None,
                    show_progress: bool) -> pd.DataFrame:
    """SHA-256 of every source file (threads: hashlib releases the GIL while it reads)."""
    from concurrent.futures import ThreadPoolExecutor

    paths = sorted(set(items.path))  # an array file (MedMNIST) holds every image: hash it once
    if "mask" in items.columns:  # a mask edited in place changes what the cache holds too
        paths = sorted([*paths, *(m for m in items["mask"] if m)])
    bar = tqdm(total=len(paths), desc="hashing source files", unit="file",
               disable=None if show_progress else True, leave=False)

    def digest(path: str) -> str:
        hasher = hashlib.sha256()
        with (root / path).open("rb") as handle:
            while chunk := handle.read(1 << 20):
                hasher.update(chunk)
        bar.update()
        return hasher.hexdigest()

    with ThreadPoolExecutor(workers or build.default_workers()) as pool:
        hashes = list(pool.map(digest, paths))
    bar.close()
    return pd.DataFrame({"path": paths, "sha256": hashes})


def _compare_hashes(folder: Path, hashes: pd.DataFrame) -> dict:
    """{'cached': whether the cache exists, 'recorded': whether it holds hashes, 'changed':
    paths whose contents differ from the record}."""
    record = folder / SOURCE_HASHES
    cached = (folder / "meta.json").is_file()
    if not cached or not record.is_file():
        return {"cached": cached, "recorded": False, "changed": []}
    before = pd.read_csv(record, dtype=str, keep_default_na=False).set_index("path").sha256
    now = hashes.set_index("path").sha256
    changed = sorted(path for path, value in now.items() if before.get(path) != value)
    return {"cached": True, "recorded": True, "changed": changed}


def _discard(folder: Path) -> None:
    """Remove a stale cache: renamed first, so no reader ever sees it half deleted."""
    if not folder.exists():
        return
    doomed = Path(tempfile.mkdtemp(prefix=f".{folder.name}-stale-", dir=folder.parent))
    folder.rename(doomed / folder.name)
    shutil.rmtree(doomed, ignore_errors=True)


def _decoding(card: DatasetCard) -> build.Decoding:
    settings = card.settings
    return build.Decoding(size=card.image_size, channels=card.channels,
                          bit_depth=card.bit_depth,
                          intensity=settings.get("intensity", "dtype"),
                          drop_top_fraction=float(settings.get("drop_top_fraction", 0.0)),
                          min_foreground=float(settings.get("min_foreground", 0.05)))


def _tree_fingerprint(items: pd.DataFrame) -> str:
    """Ids, labels, splits, file sizes, modification times and links out of the root (read by
    the reader's checks), and the masks' files, sizes and times: an edited tree gets a new
    cache; one moved with its times kept (mv, cp -p, rsync -t) not. A same-size file written
    with its old time restored is caught by verify only."""
    columns = ["image_id", "path", "label", "subject_id", "split", "size", "mtime_ns",
               "outside_link"]
    # Masks (pixel-level sets): their files are part of the tree the cache was built from.
    columns += [c for c in ("mask", "mask_size", "mask_mtime_ns") if c in items.columns]
    # Array files (MedMNIST) small enough to hash: their contents stand in for the time.
    columns += [c for c in ("content_sha256",) if c in items.columns]
    table = items.loc[:, columns]
    text = table.to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def _temporary_folder(folder: Path, needed: int | None = None) -> Iterator[Path]:
    """A sibling temp folder renamed to `folder` on success and deleted on any failure; a
    full or read-only disk ends in one message naming the cache folder (`needed`: about how
    many bytes the cache takes)."""
    with writing(folder, "the dataset cache", needed,
                 fix=f"Free space there, or set BENCH_CACHE_DIR to a folder on a disk with "
                     f"room (default {DEFAULT_CACHE_ROOT}); then run the same command again"):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            yield tmp
            if folder.exists():  # a concurrent preparation finished first; keep its copy
                shutil.rmtree(tmp)
            else:
                tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
