"""Image and volume decoding on real files written to a temp folder (no mocks)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medad_bench.data.pixels import (
    IMAGE_SUFFIXES,
    VOLUME_SUFFIXES,
    ImageReadError,
    fit_to_square,
    image_shape,
    read_image,
    read_volume_slices,
)
from medad_bench.errors import BenchError

# --------------------------------------------------------------------------------------------
# PNG / JPEG
# --------------------------------------------------------------------------------------------


def _save(tmp_path: Path, name: str, array: np.ndarray, mode: str | None = None) -> Path:
    path = tmp_path / name
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path)
    return path


def test_suffix_tables():
    assert set(IMAGE_SUFFIXES) == {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}
    assert set(VOLUME_SUFFIXES) == {".nii", ".nii.gz"}
    assert issubclass(ImageReadError, BenchError)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_png_8bit_gray_exact_values(tmp_path):
    array = np.array([[0, 51, 255], [102, 204, 255]], dtype=np.uint8)
    out = read_image(_save(tmp_path, "g.png", array), channels=1)
    assert out.dtype == np.float32
    assert out.shape == (1, 2, 3)
    np.testing.assert_allclose(out[0], array / 255.0, atol=1e-7)
    assert out[0, 0, 2] == 1.0
    assert out[0, 0, 1] == pytest.approx(0.2)


def test_png_16bit_keeps_precision(tmp_path):
    array = np.array([[0, 1000, 1001], [30000, 65534, 65535]], dtype=np.uint16)
    path = _save(tmp_path, "g16.png", array)
    with Image.open(path) as im:
        assert im.mode == "I;16"  # what Pillow gives back for a 16-bit gray PNG
    out = read_image(path, channels=1)
    assert out[0, 1, 2] == 1.0
    assert out[0, 0, 0] == 0.0
    assert out[0, 0, 2] > out[0, 0, 1]  # 1 apart in 16 bits: not collapsed to 8 bits
    np.testing.assert_allclose(out[0], array / 65535.0, rtol=1e-6)


def test_minmax_intensity(tmp_path):
    array = np.array([[50, 100], [150, 150]], dtype=np.uint8)
    path = _save(tmp_path, "m.png", array)
    out = read_image(path, channels=1, intensity="minmax")
    np.testing.assert_allclose(out[0], [[0.0, 0.5], [1.0, 1.0]], atol=1e-6)
    constant = _save(tmp_path, "c.png", np.full((4, 4), 77, np.uint8))
    assert not read_image(constant, channels=1, intensity="minmax").any()


def test_rgb_and_rgba_to_gray_luma(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [100, 150, 200]]], np.uint8)
    expected = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    out = read_image(_save(tmp_path, "c.png", rgb), channels=1)
    assert out.shape == (1, 2, 2)
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    assert out[0, 0, 0] == pytest.approx(0.299, abs=1e-6)

    alpha = np.array([[[0], [255]], [[10], [128]]], np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=2)
    out_rgba = read_image(_save(tmp_path, "c4.png", rgba), channels=1)
    np.testing.assert_allclose(out_rgba[0], expected, atol=1e-6)  # alpha ignored

    out3 = read_image(_save(tmp_path, "c3.png", rgb), channels=3)
    np.testing.assert_allclose(out3, rgb.transpose(2, 0, 1) / 255.0, atol=1e-7)


def test_palette_and_gray_alpha_png(tmp_path):
    gray = np.array([[0, 51], [204, 255]], np.uint8)
    palette = read_image(_save(tmp_path, "p.png", gray, mode="P"), channels=1)
    np.testing.assert_allclose(palette[0], gray / 255.0, atol=1e-6)
    la = read_image(_save(tmp_path, "la.png", gray, mode="LA"), channels=1)
    np.testing.assert_allclose(la[0], gray / 255.0, atol=1e-7)


def test_gray_to_three_channels(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = read_image(_save(tmp_path, "g.png", array), channels=3)
    assert out.shape == (3, 3, 4)
    for channel in out:
        np.testing.assert_allclose(channel, array / 255.0, atol=1e-7)


def test_jpeg_round_trip(tmp_path):
    array = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))
    for name in ("a.jpg", "a.jpeg"):
        out = read_image(_save(tmp_path, name, array), channels=1)
        assert out.shape == (1, 32, 32)
        assert np.abs(out[0] - array / 255.0).mean() < 0.02


def test_truncated_png_is_an_error_naming_the_file(tmp_path):
    rng = np.random.default_rng(0)
    path = _save(tmp_path, "broken_scan.png", rng.integers(0, 256, (64, 64), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="broken_scan.png") as info:
        read_image(path, channels=1)
    assert "remove it from the label file" in str(info.value)


def test_truncated_jpeg_is_an_error(tmp_path):
    rng = np.random.default_rng(1)
    path = _save(tmp_path, "cut.jpg", rng.integers(0, 256, (64, 64), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(path, channels=1)


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("x.png", b"this is not an image\n", "not a PNG or JPEG"),
        ("empty.png", b"", "empty"),
        ("scan.tif", b"II*\x00", "unknown suffix"),
        ("noext", b"\x89PNG", "unknown suffix"),
        ("fake.dcm", b"not dicom at all" * 20, "fake.dcm"),
    ],
)
def test_bad_files_are_errors(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=problem) as info:
        read_image(path, channels=1)
    assert name in str(info.value)
    with pytest.raises(ImageReadError, match=name):
        image_shape(path)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "gone.png", channels=1)


def test_image_shape(tmp_path):
    path = _save(tmp_path, "s.png", np.zeros((7, 13), np.uint8))
    assert image_shape(path) == (7, 13)
    path16 = _save(tmp_path, "s16.png", np.zeros((5, 9), np.uint16))
    assert image_shape(path16) == (5, 9)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str,
    *,
    slope: float = 2.0,
    intercept: float = -100.0,
    frames: int = 1,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_rescale_and_monochrome1_inversion(tmp_path):
    pixels = np.array([[0, 100, 200], [300, 400, 1000]], np.uint16)
    mono2 = read_image(_write_dicom(tmp_path / "a.dcm", pixels, "MONOCHROME2"), channels=1)
    mono1 = read_image(_write_dicom(tmp_path / "b.dicom", pixels, "MONOCHROME1"), channels=1)
    assert mono2.shape == mono1.shape == (1, 2, 3)
    # Always min-max scaled (slope 2 / intercept -100 is linear, so it cancels out here).
    np.testing.assert_allclose(mono2[0], pixels / 1000.0, atol=1e-6)
    assert mono2.min() == 0.0 and mono2.max() == 1.0
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)  # higher = brighter
    assert mono1[0, 0, 0] == 1.0 and mono1[0, 1, 2] == 0.0


def test_dicom_rescale_is_applied(tmp_path):
    # A negative slope reverses the order of the stored values: only visible if applied.
    pixels = np.array([[0, 10], [20, 40]], np.uint16)
    path = _write_dicom(tmp_path / "neg.dcm", pixels, "MONOCHROME2", slope=-1.0, intercept=0.0)
    out = read_image(path, channels=1, intensity="dtype")
    np.testing.assert_allclose(out[0], 1.0 - pixels / 40.0, atol=1e-6)
    assert pydicom.dcmread(path).RescaleSlope == -1


def test_dicom_shape_and_three_channels(tmp_path):
    pixels = np.arange(20, dtype=np.uint16).reshape(4, 5)
    path = _write_dicom(tmp_path / "s.dcm", pixels, "MONOCHROME2")
    assert image_shape(path) == (4, 5)
    out = read_image(path, channels=3)
    assert out.shape == (3, 4, 5)
    np.testing.assert_allclose(out[0], out[2])


def test_dicom_without_preamble(tmp_path):
    # Raw dataset, no 128-byte preamble, no 'DICM', no file meta: as some archives store them.
    ds = pydicom.Dataset()
    ds.Rows, ds.Columns = 2, 3
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.array([[0, 1, 2], [3, 4, 4095]], "<u2").tobytes()
    path = tmp_path / "raw.dcm"
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(path)
    assert image_shape(path) == (2, 3)
    out = read_image(path, channels=1)
    np.testing.assert_allclose(out[0], [[0, 1 / 4095, 2 / 4095], [3 / 4095, 4 / 4095, 1]])


def test_dicom_multi_frame_is_rejected(tmp_path):
    pixels = np.zeros((3, 4, 4), np.uint16)
    path = _write_dicom(tmp_path / "cine.dcm", pixels, "MONOCHROME2", frames=3)
    with pytest.raises(ImageReadError, match="single-frame") as info:
        read_image(path, channels=1)
    assert "cine.dcm" in str(info.value)


# --------------------------------------------------------------------------------------------
# fit_to_square
# --------------------------------------------------------------------------------------------


def test_fit_to_square_drops_top_rows():
    image = np.zeros((1, 100, 100), np.float32)
    image[:, :8] = 1.0  # the top 8% rows, as in the COVIDx preprocessing
    out = fit_to_square(image, 32, drop_top_fraction=0.08)
    assert out.shape == (1, 32, 32)
    assert out.max() == 0.0
    assert fit_to_square(image, 32).max() > 0.0  # without the drop the band survives


def test_fit_to_square_centre_crop_of_wide_image():
    image = np.zeros((2, 40, 100), np.float32)
    image[:, :, 30:70] = 1.0  # exactly the central 40 columns
    out = fit_to_square(image, 20)
    assert out.shape == (2, 20, 20)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 1.0)
    tall = np.zeros((1, 90, 30), np.float32)
    tall[:, 30:60] = 1.0
    np.testing.assert_allclose(fit_to_square(tall, 10), 1.0)


def test_fit_to_square_shrinks_by_area_and_enlarges():
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)[None]
    small = fit_to_square(checker, 8)
    np.testing.assert_allclose(small, 0.5, atol=1e-6)  # area average, no aliasing
    rng = np.random.default_rng(0)
    image = rng.random((3, 10, 14)).astype(np.float32)
    big = fit_to_square(image, 50)
    assert big.shape == (3, 50, 50)
    assert big.dtype == np.float32
    assert 0.0 <= big.min() and big.max() <= 1.0


# --------------------------------------------------------------------------------------------
# NIfTI volumes
# --------------------------------------------------------------------------------------------

#: Volume in RAS+ voxel order, 2 mm in x and 1 mm in y and z.
SHAPE = (20, 40, 12)
ZOOMS = (2.0, 1.0, 1.0)
CUBE_SLICES = range(4, 9)


def _ras_volume() -> np.ndarray:
    volume = np.zeros(SHAPE, np.float32)
    # 16 mm x 16 mm in-plane (8 voxels of 2 mm by 16 voxels of 1 mm), graded intensities.
    ramp = np.linspace(100.0, 200.0, 8 * 16, dtype=np.float32).reshape(8, 16)
    for z in CUBE_SLICES:
        volume[6:14, 12:28, z] = ramp
    return volume


def _ras_affine() -> np.ndarray:
    affine = np.diag([*ZOOMS, 1.0])
    affine[:3, 3] = [-20.0, -20.0, -6.0]
    return affine


def _permuted_flipped(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same anatomy stored as voxel axes (-z, x, y): D2[a, b, c] = D[b, c, Z - 1 - a]."""
    data = volume.transpose(2, 0, 1)[::-1].copy()
    new = np.zeros((4, 4))
    new[:3, 0] = -affine[:3, 2]
    new[:3, 1] = affine[:3, 0]
    new[:3, 2] = affine[:3, 1]
    new[:3, 3] = affine[:3, 3] + affine[:3, 2] * (volume.shape[2] - 1)
    new[3, 3] = 1.0
    return data, new


def test_permuted_affine_is_the_same_anatomy():
    volume, affine = _ras_volume(), _ras_affine()
    data, new = _permuted_flipped(volume, affine)
    assert nib.aff2axcodes(new) == ("I", "R", "A")
    # Voxel (a, b, c) of the copy and voxel (b, c, Z-1-a) of the original: same world point.
    a, b, c = 3, 7, 15
    np.testing.assert_allclose(new @ [a, b, c, 1], affine @ [b, c, SHAPE[2] - 1 - a, 1])
    assert data[a, b, c] == volume[b, c, SHAPE[2] - 1 - a]


def test_volume_slices_drop_empty_and_keep_cube(tmp_path):
    path = tmp_path / "sub01.nii.gz"
    nib.save(nib.Nifti1Image(_ras_volume(), _ras_affine()), path)
    slices = read_volume_slices(path, size=32, channels=1)
    assert [index for index, _ in slices] == list(CUBE_SLICES)
    for _, image in slices:
        assert image.shape == (1, 32, 32)
        assert image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
    # The 16 x 16 mm square stays square although x voxels are twice as wide as y voxels.
    mask = slices[0][1][0] > 0.05
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    assert abs(len(rows) - len(cols)) <= 1
    three = read_volume_slices(path, size=16, channels=3)
    assert three[0][1].shape == (3, 16, 16)


def test_volume_orientation_does_not_matter(tmp_path):
    volume, affine = _ras_volume(), _ras_affine()
    ras_path = tmp_path / "ras.nii"
    nib.save(nib.Nifti1Image(volume, affine), ras_path)
    data, new = _permuted_flipped(volume, affine)
    other_path = tmp_path / "ira.nii.gz"
    image = nib.Nifti1Image(data, new)
    assert image.header.get_zooms() == (1.0, 2.0, 1.0)
    nib.save(image, other_path)
    ras = read_volume_slices(ras_path, size=24, channels=1)
    other = read_volume_slices(other_path, size=24, channels=1)
    assert [i for i, _ in ras] == [i for i, _ in other] == list(CUBE_SLICES)
    for (_, a), (_, b) in zip(ras, other, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_volume_4d_and_bad_files(tmp_path):
    single = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(_ras_volume()[..., None], _ras_affine()), single)
    assert len(read_volume_slices(single, size=16, channels=1)) == len(CUBE_SLICES)

    series = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), series)
    with pytest.raises(ImageReadError, match="fmri.nii.gz"):
        read_volume_slices(series, size=16, channels=1)

    empty = tmp_path / "blank.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), empty)
    with pytest.raises(ImageReadError, match="blank.nii"):
        read_volume_slices(empty, size=16, channels=1)

    truncated = tmp_path / "cut.nii.gz"
    nib.save(nib.Nifti1Image(_ras_volume(), _ras_affine()), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="cut.nii.gz"):
        read_volume_slices(truncated, size=16, channels=1)

    plain = tmp_path / "short.nii"
    nib.save(nib.Nifti1Image(_ras_volume(), _ras_affine()), plain)
    plain.write_bytes(plain.read_bytes()[:1000])
    with pytest.raises(ImageReadError, match="short.nii"):
        read_volume_slices(plain, size=16, channels=1)

    text = tmp_path / "notes.nii"
    text.write_text("not a volume")
    with pytest.raises(ImageReadError, match="notes.nii"):
        read_volume_slices(text, size=16, channels=1)
