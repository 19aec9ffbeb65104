"""Decoding one image file or one MRI volume into float32 arrays in [0, 1].

Every reader returns channel-first arrays (C, H, W) so the rest of the pipeline never cares
about the file format. Any decoder failure becomes an `ImageReadError` that names the file, says
what is wrong and what to do: a bad file must stop the run with a clear message, never with a
bare traceback and never by being silently skipped (docs/design.md section 6).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from medad_bench.errors import BenchError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
VOLUME_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")

#: ITU-R BT.601 luma weights, the same ones Pillow's convert("L") uses, but applied in float so
#: no precision is lost to Pillow's integer rounding.
LUMA_601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)

#: Pixel value that counts as foreground when deciding whether a volume slice is empty.
FOREGROUND_LEVEL = 0.05

_FIX_HINT = "re-download the file or remove it from the label file / manifest"


class ImageReadError(BenchError):
    """An image or volume file that cannot be decoded; the message names the file and the fix."""


def _error(path: Path, problem: str, fix: str = _FIX_HINT) -> ImageReadError:
    return ImageReadError(f"cannot read '{path}': {problem}. Fix: {fix}.")


@contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """Turn whatever a third-party decoder raises into an ImageReadError naming `path`.

    Pillow, pydicom and nibabel raise a zoo of types on damaged input (OSError, SyntaxError,
    ValueError, EOFError, struct.error, KeyError, NotImplementedError for an unsupported
    compression, ...), so a narrow except would let some of them escape as bare tracebacks.
    Our own errors and MemoryError pass through unchanged.
    """
    try:
        yield
    except (BenchError, MemoryError):
        raise
    except UnidentifiedImageError as exc:
        raise _error(
            path, "the content is not a PNG or JPEG image (Pillow cannot identify it)"
        ) from exc
    except Exception as exc:  # broad on purpose, see the docstring
        detail = " ".join(str(exc).split()).rstrip(".")  # one line, even for nibabel's
        raise _error(path, f"{type(exc).__name__}: {detail}") from exc


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")


def _check_file(path: Path, suffixes: tuple[str, ...]) -> None:
    if _suffix(path) not in suffixes:
        raise _error(
            path,
            f"unknown suffix (supported: {', '.join(suffixes)})",
            "convert the file to a supported format or remove it from the label file",
        )
    if not path.is_file():
        raise _error(path, "the file does not exist")
    if path.stat().st_size == 0:
        raise _error(path, "the file is empty (0 bytes)")


# --------------------------------------------------------------------------------------------
# 2-D images
# --------------------------------------------------------------------------------------------


def read_image(path: Path, *, channels: int, intensity: str = "dtype") -> np.ndarray:
    """Decode a PNG, JPEG or DICOM file to float32 (channels, H, W) in [0, 1], native size.

    `intensity="dtype"` divides by the storage range (255 or 65535); `"minmax"` stretches each
    image to [0, 1]. DICOM is always min-max scaled (see `_read_dicom`).
    """
    path = Path(path)
    _check_channels(channels)
    if intensity not in ("dtype", "minmax"):
        raise ValueError(f"intensity must be 'dtype' or 'minmax', got {intensity!r}")
    _check_file(path, IMAGE_SUFFIXES)
    with _decoding(path):
        if _suffix(path) in DICOM_SUFFIXES:
            pixels = _read_dicom(path)
        else:
            pixels = _read_pillow(path, intensity)
    return to_channels(pixels, channels)


def _read_pillow(path: Path, intensity: str) -> np.ndarray:
    """(H, W) or (H, W, 3) float32 in [0, 1] from a PNG / JPEG."""
    with Image.open(path) as im:
        # open() only parses the header: load() decodes everything, so a truncated file fails
        # here instead of coming out as a half-grey image (LOAD_TRUNCATED_IMAGES stays False).
        im.load()
        array, full_scale = _pillow_array(im)
    if intensity == "minmax":
        return _minmax(array)
    return np.clip(array / full_scale, 0.0, 1.0).astype(np.float32)


def _pillow_array(im: Image.Image) -> tuple[np.ndarray, float]:
    """The pixels as float32 (H, W) gray or (H, W, 3) RGB, and their storage full scale."""
    mode = im.mode
    if mode.startswith("I;16"):
        # 16-bit gray PNG: Pillow keeps all 16 bits only in the I;16 modes, as uint16.
        return np.asarray(im).astype(np.float32), 65535.0
    if mode == "I":
        # 32-bit int container; older Pillow decoded 16-bit gray PNGs into it.
        return np.asarray(im).astype(np.float32), 65535.0
    if mode in ("L", "LA", "1"):
        return np.asarray(im.convert("L")).astype(np.float32), 255.0
    # RGB, RGBA, P, PA, CMYK, YCbCr...: 8-bit colour, alpha dropped, palette expanded.
    return np.asarray(im.convert("RGB")).astype(np.float32), 255.0


def _read_dicom(path: Path) -> np.ndarray:
    """(H, W) or (H, W, 3) float32 in [0, 1] from a single-frame DICOM file.

    DICOM is min-max scaled whatever `intensity` says: stored values have no fixed meaning
    (12-bit data in 16-bit words, Hounsfield units after rescale, ...), so dividing by the
    storage range would give arbitrarily dark images.
    """
    from pydicom.pixels import apply_modality_lut

    ds = _dcmread(path, stop_before_pixels=False)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise _error(
            path,
            f"multi-frame DICOM ({frames} frames); only single-frame images are supported",
            "export each frame as its own file, or remove it from the label file",
        )
    array = ds.pixel_array
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        # Colour DICOM: pydicom already converted YBR to RGB; no modality LUT applies.
        return _minmax(array.astype(np.float32))
    # Slope/intercept (or a modality LUT) so values are in physical units before scaling.
    array = np.asarray(apply_modality_lut(array, ds), dtype=np.float32)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        # MONOCHROME1 stores the minimum as white: negate so higher = brighter everywhere.
        array = -array
    return _minmax(array)


def _dcmread(path: Path, *, stop_before_pixels: bool) -> Dataset:
    """Read a DICOM file, accepting files without the 128-byte preamble if they have pixels."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        # Some archives strip the preamble/'DICM' prefix; force=True reads any bytes, so only
        # trust the result if it really describes an image.
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    if "Rows" not in ds or "Columns" not in ds:
        raise _error(path, "not a DICOM file (no DICM header and no Rows/Columns)")
    _set_transfer_syntax(ds)
    return ds


def _set_transfer_syntax(ds: Dataset) -> None:
    """Record the encoding pydicom detected: pydicom 3 refuses to decode pixels without it."""
    from pydicom import uid

    if "TransferSyntaxUID" in ds.file_meta or ds.original_encoding[0] is None:
        return
    implicit_vr, little_endian = ds.original_encoding
    if implicit_vr:
        ds.file_meta.TransferSyntaxUID = uid.ImplicitVRLittleEndian
    elif little_endian:
        ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = uid.ExplicitVRBigEndian


def _minmax(array: np.ndarray) -> np.ndarray:
    """Per-image (x - min) / (max - min) as float32; a constant image becomes zeros."""
    array = array.astype(np.float32, copy=False)
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros_like(array, dtype=np.float32)
    return ((array - low) / (high - low)).astype(np.float32)


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) gray or (H, W, 3) RGB -> (channels, H, W) float32."""
    if pixels.ndim == 3:
        if channels == 1:
            gray = pixels @ LUMA_601
            return np.clip(gray, 0.0, 1.0)[None].astype(np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
    return np.repeat(pixels[None].astype(np.float32), channels, axis=0)


def image_shape(path: Path) -> tuple[int, int]:
    """(height, width) of an image, from its header without decoding the pixels."""
    path = Path(path)
    _check_file(path, IMAGE_SUFFIXES)
    with _decoding(path):
        if _suffix(path) in DICOM_SUFFIXES:
            ds = _dcmread(path, stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns)
        with Image.open(path) as im:
            width, height = im.size
    if width <= 0 or height <= 0:
        raise _error(path, f"the header gives a zero size ({width} x {height})")
    return height, width


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def fit_to_square(image: np.ndarray, size: int, *, drop_top_fraction: float = 0.0) -> np.ndarray:
    """(C, H, W) -> (C, size, size) float32: drop top rows, centre square crop, resize.

    Shrinking uses area averaging (no aliasing of fine texture); enlarging uses bilinear.
    """
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) array, got shape {image.shape}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if not 0.0 <= drop_top_fraction < 1.0:
        raise ValueError(f"drop_top_fraction must be in [0, 1), got {drop_top_fraction}")
    # int() truncation as in the COVID-Net preprocessing (img[int(h * 0.08):]).
    image = image[:, int(image.shape[1] * drop_top_fraction) :, :]
    _, height, width = image.shape
    if height == 0 or width == 0:
        raise ValueError(f"nothing left to crop from an image of shape {image.shape}")
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = np.ascontiguousarray(image[:, top : top + side, left : left + side], dtype=np.float32)
    return _resize(square, size, size)


def _resize(stack: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H, W) float32 -> (C, height, width), area when shrinking, bilinear when enlarging.

    Pillow, not torch: decoding workers then need no torch import (~300 MB each) and no
    thread pool of their own.
    """
    if stack.shape[1:] == (height, width):
        return stack.astype(np.float32, copy=True)
    shrinking = height <= stack.shape[1] and width <= stack.shape[2]
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
                           .resize((width, height), resample)) for plane in stack]
    # Both filters are convex combinations; the clip only removes float rounding.
    return np.clip(np.stack(channels), 0.0, 1.0).astype(np.float32)


def read_square_8bit(path: Path, *, size: int, channels: int,
                     drop_top_fraction: float = 0.0) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The fast path for 8-bit PNG / JPEG files: `read_image` + `fit_to_square` done by Pillow
    on the 8-bit pixels, giving the uint8 (channels, size, size) rows the cache stores, and the
    native (H, W). None when the file is not an 8-bit gray (channels 1) or RGB (channels 3)
    image being shrunk: the float path handles those.

    The same crop and BOX filter as the float path; Pillow rounds the box averages to 8 bits,
    which is what the cache would keep of the float result anyway (at most one level apart
    where Pillow's fixed-point sums round the other way).
    """
    path = Path(path)
    _check_file(path, IMAGE_SUFFIXES)
    if _suffix(path) in DICOM_SUFFIXES:
        return None
    with _decoding(path), Image.open(path) as im:
        wanted = "L" if channels == 1 else "RGB"
        if im.mode != wanted:
            return None
        im.load()  # decode everything: a truncated file fails here (see _read_pillow)
        width, height = im.size
        top = int(height * drop_top_fraction)
        side = min(height - top, width)
        if side < size or side <= 0:
            return None  # enlarging: the float path's bilinear filter
        y0, x0 = top + (height - top - side) // 2, (width - side) // 2
        square = im.crop((x0, y0, x0 + side, y0 + side))
        if side != size:
            square = square.resize((size, size), Image.Resampling.BOX)
        array = np.asarray(square)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array), (height, width)


# --------------------------------------------------------------------------------------------
# MRI volumes
# --------------------------------------------------------------------------------------------


def read_volume_slices(
    path: Path, *, size: int, channels: int, min_foreground: float = 0.05
) -> list[tuple[int, np.ndarray]]:
    """Axial slices of a NIfTI volume as [(slice index, (channels, size, size) float32)].

    The volume is turned to the closest RAS+ orientation, so the index counts from inferior to
    superior whatever the scanner's voxel order, and each slice is resampled to square pixels
    before `fit_to_square`. Slices with less than `min_foreground` of their pixels above 0.05
    are dropped; a volume with no slice left is an error, not a silently smaller dataset.
    """
    path = Path(path)
    _check_channels(channels)
    _check_file(path, VOLUME_SUFFIXES)
    with _decoding(path):
        volume, (zoom_x, zoom_y) = _load_canonical(path)
    stack = _axial_stack(_robust_scale(volume), zoom_x, zoom_y)
    fitted = fit_to_square(stack, size)
    kept = [
        (index, np.repeat(fitted[index][None], channels, axis=0))
        for index in range(fitted.shape[0])
        if float((fitted[index] > FOREGROUND_LEVEL).mean()) >= min_foreground
    ]
    if not kept:
        raise _error(
            path,
            f"no axial slice has at least {min_foreground:.0%} of its pixels "
            "above background (is the volume empty?)",
            "check the volume, lower min_foreground, or remove it from the label file",
        )
    return kept


def _load_canonical(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """The volume as float32 (X, Y, Z) in RAS+ voxel order, and its in-plane voxel size (mm)."""
    import nibabel as nib

    image = nib.load(path)
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        image = image.slicer[..., 0]
    elif len(shape) != 3:
        raise _error(
            path,
            f"expected a 3-D volume, got shape {shape} (4-D is only accepted "
            "with size 1 in the 4th dimension)",
            "split the 4-D series into 3-D volumes, or remove it from the label file",
        )
    canonical = nib.as_closest_canonical(image)
    # get_fdata reads the whole file, so a truncated volume fails here, inside _decoding.
    volume = canonical.get_fdata(dtype=np.float32)
    zooms = canonical.header.get_zooms()  # already permuted to the canonical axis order
    return volume, (float(zooms[0]), float(zooms[1]))


def _robust_scale(volume: np.ndarray) -> np.ndarray:
    """Per-volume min-max between the 1st and 99th percentile of nonzero voxels, in [0, 1].

    Percentiles rather than min/max so a few hot voxels do not darken the whole brain; only
    nonzero voxels so the (often huge) zero background does not pull the low end down.
    """
    volume = np.nan_to_num(volume, nan=0.0, posinf=0.0, neginf=0.0)
    foreground = volume[volume != 0]
    if foreground.size == 0:
        return np.zeros_like(volume, dtype=np.float32)
    low, high = np.percentile(foreground, [1.0, 99.0])
    if high <= low:  # constant foreground: show it as 1 on a 0 background
        return (volume != 0).astype(np.float32)
    return np.clip((volume - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _axial_stack(volume: np.ndarray, zoom_x: float, zoom_y: float) -> np.ndarray:
    """(X, Y, Z) RAS+ -> (Z, H, W) axial images with square pixels.

    rot90 puts anterior at the top and the subject's right on the image right; rows then step
    in y and columns in x. The coarser in-plane axis is upsampled to the finer spacing, so a
    0.5 x 1.0 mm grid is not drawn squashed.
    """
    stack = np.rot90(volume, k=1, axes=(0, 1)).transpose(2, 0, 1)
    spacing = min(zoom_x, zoom_y)
    height = max(1, round(stack.shape[1] * zoom_y / spacing))
    width = max(1, round(stack.shape[2] * zoom_x / spacing))
    return _resize(np.ascontiguousarray(stack, dtype=np.float32), height, width)
