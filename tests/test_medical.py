"""DICOM and NIfTI through the one decoder: synthetic files with known values, windowing, inversion, slices."""

from __future__ import annotations

import gzip
import json
import io
import logging
import warnings
import zlib
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (BasicTextSRStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless,
                         JPEGLSLossless, MRImageStorage, SecondaryCaptureImageStorage, generate_uid)

from tumorclf.data import dataset as data

from tumorclf.data import decoder

from tumorclf.data import medical

from tumorclf.serving import predictors as predict_module
from tumorclf.cli.main import main
from tumorclf.data.decoder import DecodeError, decode_image, read_pixels, read_slices, resize
from tumorclf.data.medical import BRAIN_FRACTION, BRAIN_LEVEL, WINDOW_PERCENTILES, Slices
from conftest import blob_image, nifti_bytes, one_error_line, read_csv

RAS, LAS = np.eye(4), np.diag([-1.0, 1.0, 1.0, 1.0])


def dicom_bytes(pixels: np.ndarray | None, preamble: bool = True, syntax=ExplicitVRLittleEndian,
                sop_class=MRImageStorage, modality: str = "MR", **elements) -> bytes:
    """A DICOM file of `pixels` (uint16/int16 (rows, columns) or (frames, rows, columns); None: no pixel data)
    with the given elements (RescaleSlope=..., WindowCenter=..., PhotometricInterpretation=...)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, meta.MediaStorageSOPInstanceUID, modality
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        if pixels.ndim == 3:
            ds.NumberOfFrames = pixels.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = int(pixels.dtype.kind == "i")
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    for name, value in elements.items():
        setattr(ds, name, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=preamble)
    return buffer.getvalue()


def by_hand(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`low` to 0, `high` to 255, rounded half up and clipped: the expected grey levels."""
    return np.clip(np.floor((values - low) * (255.0 / (high - low)) + 0.5), 0, 255).astype(np.uint8)


def grey(pixels: np.ndarray) -> np.ndarray:
    """The one channel of a grey RGB image (asserting the three are equal)."""
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert (pixels == pixels[..., :1]).all()
    return pixels[..., 0]


def one_line_error(source, slices="middle") -> str:
    with pytest.raises(DecodeError) as caught:
        read_slices(source, slices)
    message = str(caught.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


# --- DICOM ------------------------------------------------------------------------------------------------------

STORED = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 37 + 11)  # 11 ... 714


def test_dicom_rescale_then_window_centre_width():
    slope, intercept, centre, width = 2.0, -100.0, 600.0, 801.0
    pixels = grey(read_pixels(dicom_bytes(STORED, RescaleSlope=slope, RescaleIntercept=intercept,
                                          WindowCenter=centre, WindowWidth=width)))
    # DICOM's LINEAR window (PS3.3 C.11.2.1.2.1) on the rescaled values, onto 0-255
    values = STORED * slope + intercept
    c, w = centre - 0.5, width - 1
    expected = np.clip(np.floor(((values - c) / w + 0.5) * 255 + 0.5), 0, 255)
    expected[values <= c - w / 2], expected[values > c + w / 2] = 0, 255
    np.testing.assert_array_equal(pixels, expected)
    assert pixels.min() == 0 and pixels.max() == 255 and len(np.unique(pixels)) > 10  # clipped at both ends


def test_dicom_without_window_gets_the_robust_percentile_window():
    stored = (np.arange(1000, dtype=np.int16) - 300).reshape(20, 50)  # -300 ... 699, evenly spaced
    pixels = grey(read_pixels(dicom_bytes(stored, RescaleSlope=1.0, RescaleIntercept=0.0)))
    # the 0.5th and 99.5th percentiles of 1000 evenly spaced values, linearly interpolated
    low, high = -300 + 0.005 * 999, -300 + 0.995 * 999
    assert WINDOW_PERCENTILES == (0.5, 99.5)
    assert medical.robust_window(stored.astype(float)) == pytest.approx((low, high))
    np.testing.assert_array_equal(pixels, by_hand(stored.astype(float), low, high))
    assert (pixels[0, :5] == 0).all() and (pixels[-1, -5:] == 255).all()


def test_monochrome1_is_inverted_after_windowing():
    plain = dicom_bytes(STORED, WindowCenter=400.0, WindowWidth=300.0)
    inverted = dicom_bytes(STORED, WindowCenter=400.0, WindowWidth=300.0, PhotometricInterpretation="MONOCHROME1")
    np.testing.assert_array_equal(grey(read_pixels(inverted)), 255 - grey(read_pixels(plain)))
    assert grey(read_pixels(inverted))[0, 0] == 255  # the lowest value is white in MONOCHROME1


def voi_lut(descriptor: list[int], entries) -> Dataset:
    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", descriptor)
    lut.add_new("LUTData", "US", [int(v) for v in entries])
    return lut


def test_dicom_voi_lut_is_applied_instead_of_the_window():
    lut = voi_lut([8, 0, 8], [0, 10, 20, 40, 80, 160, 200, 255])  # 8 entries from stored value 0, 8 bits each
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4)  # 8 and above take the last entry
    source = dicom_bytes(stored, VOILUTSequence=[lut], WindowCenter=2.0, WindowWidth=2.0)
    expected = np.array([0, 10, 20, 40, 80, 160, 200, 255, 255, 255, 255, 255]).reshape(3, 4)
    np.testing.assert_array_equal(grey(read_pixels(source)), expected)


def test_dicom_voi_lut_longer_than_its_entry_type_and_its_output_range():
    # 512 entries of 8 bits from stored value 100: an index in the LUT's uint8 dtype would wrap past 255
    stored = np.arange(0, 700, 7, dtype=np.uint16).reshape(10, 10)  # 0 ... 693
    source = dicom_bytes(stored, VOILUTSequence=[voi_lut([512, 100, 8], np.arange(512) // 2)])
    expected = np.clip(stored.astype(int) - 100, 0, 511) // 2
    np.testing.assert_array_equal(grey(read_pixels(source)), expected)
    # a 16-bit descriptor over 12-bit data (entries 0 ... 4095): white is 4095, not 65535
    stored = np.arange(0, 4096, 41, dtype=np.uint16)[:100].reshape(10, 10)
    twelve = grey(read_pixels(dicom_bytes(stored, VOILUTSequence=[voi_lut([4096, 0, 16], np.arange(4096))])))
    np.testing.assert_array_equal(twelve, by_hand(stored.astype(float), 0, 4095))
    # entries that do reach the descriptor's 16 bits keep its range, as the standard says
    full = grey(read_pixels(dicom_bytes(stored, VOILUTSequence=[voi_lut([4096, 0, 16], np.arange(4096) * 16)])))
    np.testing.assert_array_equal(full, by_hand(stored.astype(float) * 16, 0, 65535))


def test_plain_8_bit_dicom_decodes_like_the_image_it_wraps(tmp_path: Path):
    """A training JPEG/PNG wrapped as Secondary Capture: 8 bits, no rescale, no window: the same pixels."""
    image = np.random.default_rng(2).integers(40, 200, (9, 11), dtype=np.uint8)  # far from 0-255: a stretch shows
    Image.fromarray(image).save(tmp_path / "slice.png")
    eight_bit = dict(sop_class=SecondaryCaptureImageStorage, modality="OT", BitsAllocated=8, BitsStored=8, HighBit=7,
                     PixelData=image.tobytes())
    expected = read_pixels(tmp_path / "slice.png")
    for extra in ({}, {"RescaleSlope": 1.0, "RescaleIntercept": 0.0}):
        np.testing.assert_array_equal(read_pixels(dicom_bytes(image.astype(np.uint16), **eight_bit, **extra)),
                                      expected)
    # with a rescale, or more bits, the values are not grey levels: the percentile window applies
    rescaled = grey(read_pixels(dicom_bytes(image.astype(np.uint16), **eight_bit, RescaleSlope=2.0,
                                            RescaleIntercept=0.0)))
    assert rescaled.min() == 0 and rescaled.max() == 255


def test_dicom_colour_rgb_and_ybr():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    elements = dict(SamplesPerPixel=3, PlanarConfiguration=0, BitsAllocated=8, BitsStored=8, HighBit=7,
                    PixelRepresentation=0)
    source = dicom_bytes(np.zeros((5, 6), np.uint16), PhotometricInterpretation="RGB", PixelData=rgb.tobytes(),
                         **elements)
    np.testing.assert_array_equal(read_pixels(source), rgb)
    # YBR_FULL with neutral chroma is grey: pydicom converts it to RGB
    ybr = np.stack([rgb[..., 0], np.full((5, 6), 128, np.uint8), np.full((5, 6), 128, np.uint8)], axis=-1)
    pixels = read_pixels(dicom_bytes(np.zeros((5, 6), np.uint16), PhotometricInterpretation="YBR_FULL",
                                     PixelData=ybr.tobytes(), **elements))
    assert np.abs(pixels.astype(int) - rgb[..., :1]).max() <= 1


def test_pixel_data_beyond_the_header_is_not_extra_frames():
    # pydicom's pixel_array turns such data into extra frames: a one-frame file came back 4-D
    doubled = dicom_bytes(STORED, PixelData=np.concatenate([STORED, STORED * 2]).astype("<u2").tobytes())
    pixels = read_pixels(doubled)
    assert pixels.shape == (4, 5, 3)
    np.testing.assert_array_equal(pixels, read_pixels(dicom_bytes(STORED)))
    assert decoder.decode_image(doubled, 8).shape == (8, 8, 3)
    frames = np.stack([STORED * k for k in range(1, 4)])
    extra = dicom_bytes(frames, PixelData=np.concatenate([frames, frames]).astype("<u2").tobytes())
    assert [index for index, _ in read_slices(extra, "all")] == [0, 1, 2]
    assert one_line_error(extra, 3) == "slice 3 out of range: the file has 3 slices (0-2)"
    short = dicom_bytes(frames, PixelData=frames[:2].astype("<u2").tobytes())
    assert one_line_error(short).startswith("unreadable DICOM pixel data (Explicit VR Little Endian): ")


def test_pydicom_warnings_are_one_log_line(caplog):
    padded = dicom_bytes(STORED, PixelData=STORED.astype("<u2").tobytes() + bytes(40))  # pydicom warns
    with warnings.catch_warnings(record=True) as escaped, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        np.testing.assert_array_equal(read_pixels(padded), read_pixels(dicom_bytes(STORED)))
    assert escaped == []
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0] and lines[0].startswith("DICOM bytes: pydicom: ")
    assert "excess padding" in lines[0] and caplog.records[0].name == "tumorclf.data.medical"


def test_multi_frame_dicom_expands_to_slices():
    frames = np.zeros((3, 10, 10), np.uint16)
    frames[1, 2:8, 2:8], frames[2] = 500, 1000  # frame 0 is empty
    source = dicom_bytes(frames)
    assert [index for index, _ in read_slices(source, "all")] == [1, 2]  # the empty frame has no brain
    (index, middle), = read_slices(source)
    assert index == 1
    np.testing.assert_array_equal(read_pixels(source), middle)
    low, high = np.percentile(frames, WINDOW_PERCENTILES)  # one window over all frames: 0 and 1000
    assert (low, high) == (0, 1000)
    np.testing.assert_array_equal(grey(middle), by_hand(frames[1].astype(float), low, high))
    np.testing.assert_array_equal(grey(read_slices(source, 2)[0][1]), 255)
    assert one_line_error(source, 3) == "slice 3 out of range: the file has 3 slices (0-2)"
    # a single-frame file is a 2-D image, whatever the selection
    assert [index for index, _ in read_slices(dicom_bytes(STORED), "all")] == [None]
    assert [index for index, _ in read_slices(dicom_bytes(STORED), 7)] == [None]


def test_non_image_and_compressed_dicom_are_one_line_errors():
    report = dicom_bytes(None, sop_class=BasicTextSRStorage, modality="SR")
    assert one_line_error(report) == "DICOM without pixel data (not an image: Basic Text SR Storage / SR)"
    for syntax in (JPEG2000Lossless, JPEGLSLossless):
        message = one_line_error(_encapsulated(syntax))
        if get_decoder(syntax).is_available:  # JPEG 2000 through Pillow: the bogus data cannot be decoded
            assert message.startswith(f"unreadable DICOM pixel data ({syntax.name}): ")
        else:
            assert message.startswith(f"DICOM compressed with {syntax.name}: no decoder installed (install ")


def _encapsulated(syntax) -> bytes:
    """A 4x4 dataset in a compressed transfer syntax whose one fragment is bogus."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.Modality = meta, MRImageStorage, "MR"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = encapsulate([b"\x00\x01 not a codestream " * 2])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_dicom_by_content_from_a_path_or_bytes(tmp_path: Path):
    source = dicom_bytes(STORED, WindowCenter=400.0, WindowWidth=300.0)
    extensionless = tmp_path / "IM0001"
    extensionless.write_bytes(source)
    assert medical.sniff(extensionless) == medical.sniff(source) == medical.DICOM
    np.testing.assert_array_equal(read_pixels(extensionless), read_pixels(source))
    # no preamble, no DICM: the .dcm suffix says DICOM
    bare = dicom_bytes(STORED, preamble=False, WindowCenter=400.0, WindowWidth=300.0)
    assert bare[128:132] != b"DICM" and medical.sniff(bare) is None
    (tmp_path / "bare.dcm").write_bytes(bare)
    np.testing.assert_array_equal(read_pixels(tmp_path / "bare.dcm"), read_pixels(source))
    # a PNG is still Pillow's, even named .dcm (a lying extension), and unreadable paths stay one-line errors
    Image.fromarray(STORED.astype(np.uint8)).save(tmp_path / "slice.png")
    assert medical.sniff(tmp_path / "slice.png") is None
    (tmp_path / "slice.dcm").write_bytes((tmp_path / "slice.png").read_bytes())
    assert medical.sniff(tmp_path / "slice.dcm") == medical.DICOM
    np.testing.assert_array_equal(read_pixels(tmp_path / "slice.dcm"), read_pixels(tmp_path / "slice.png"))
    assert one_line_error(tmp_path / "missing.dcm").startswith("unreadable image: ")
    (tmp_path / "junk.dcm").write_bytes(np.random.default_rng(0).bytes(500))
    assert one_line_error(tmp_path / "junk.dcm").startswith("not an image (a .dcm file ")


# --- NIfTI ------------------------------------------------------------------------------------------------------

VOLUME = (np.arange(24, dtype=np.int16).reshape(4, 3, 2) * 10)  # 0 ... 230: x 4, y 3, z 2 (RAS)


def test_nifti_values_window_and_orientation(tmp_path: Path):
    # the window over the whole volume: 24 evenly spaced values 0 ... 230
    low, high = 0.005 * 230, 0.995 * 230
    for name, gz in (("volume.nii", False), ("volume.nii.gz", True)):
        path = tmp_path / name
        path.write_bytes(nifti_bytes(VOLUME, gz=gz))
        slices = read_slices(path, "all")
        assert [index for index, _ in slices] == [0, 1]
        for index, pixels in slices:
            # axial slice z = index shown anterior (high y) up, the patient's right (high x) on the left
            expected = by_hand(VOLUME[::-1, ::-1, index].T.astype(float), low, high)
            np.testing.assert_array_equal(grey(pixels), expected)
        np.testing.assert_array_equal(read_pixels(path), slices[1][1])  # the middle of 2 is slice 1
        np.testing.assert_array_equal(read_pixels(path.read_bytes()), read_pixels(path))


def test_nifti_is_reoriented_to_canonical_before_slicing():
    marked = np.zeros((4, 3, 2), np.int16)
    marked[0, 2, 1] = 100  # voxel i = 0 (the leftmost column, x), j = 2 (the most anterior row), the upper slice
    ras = grey(read_pixels(nifti_bytes(marked, RAS)))
    las = grey(read_pixels(nifti_bytes(marked, LAS)))  # i = 0 is now the patient's rightmost voxel
    assert ras.shape == las.shape == (3, 4)
    assert np.argwhere(ras).tolist() == [[0, 3]]  # leftmost voxel: on the viewer's right
    assert np.argwhere(las).tolist() == [[0, 0]]  # rightmost voxel: on the viewer's left
    # sagittal-first storage (axes y, z, x) is reordered so the slices are still axial
    stored = np.transpose(marked, (1, 2, 0))
    permuted = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_array_equal(grey(read_pixels(nifti_bytes(stored, permuted))), ras)


def test_nifti_versions_and_byte_orders_are_sniffed():
    expected = read_pixels(nifti_bytes(VOLUME))
    variants = {
        "nifti-2": nifti_bytes(VOLUME, image_class=nib.Nifti2Image),
        "big-endian": nifti_bytes(VOLUME, header=nib.Nifti1Header(endianness=">")),
        "gzipped nifti-2": nifti_bytes(VOLUME, gz=True, image_class=nib.Nifti2Image),
    }
    for name, source in variants.items():
        assert medical.sniff(source) == medical.NIFTI, name
        np.testing.assert_array_equal(read_pixels(source), expected, err_msg=name)
    assert medical.sniff(gzip.compress(b"just text" * 100)) is None


def test_nifti_dimensions():
    assert one_line_error(nifti_bytes(np.zeros((4, 3, 2, 2), np.int16))) == \
        "4-D volume (2 volumes): give one 3-D volume"
    np.testing.assert_array_equal(read_pixels(nifti_bytes(VOLUME[..., None])), read_pixels(nifti_bytes(VOLUME)))
    (index, pixels), = read_slices(nifti_bytes(VOLUME[:, :, 0]), "all")  # 2-D: one slice, no index
    assert index is None and pixels.shape == (3, 4, 3)


def nifti2_with(volume: np.ndarray, dims=None, vox_offset=None) -> bytes:
    """A NIfTI-2 file of `volume` whose header's dim (int64 [8]) or vox_offset (int64) is then overwritten."""
    header = bytearray(nifti_bytes(volume, image_class=nib.Nifti2Image))
    if dims is not None:
        header[16:80] = np.array(list(dims) + [1] * (8 - len(dims)), "<i8").tobytes()
    if vox_offset is not None:
        header[168:176] = np.array([vox_offset], "<i8").tobytes()
    return bytes(header)


def test_nifti_headers_that_overflow_or_lie_are_one_line_errors():
    # NIfTI-2 dims are int64: their product overflows numpy's int64 (np.prod wrapped to a small number)
    assert one_line_error(nifti2_with(VOLUME, dims=[3, 2**40, 2**40, 2**40])).startswith("volume too large (")
    assert one_line_error(nifti2_with(VOLUME, dims=[3, 4, -3, 2])) == "unreadable NIfTI: invalid dimensions (4x-3x2)"
    assert one_line_error(nifti2_with(VOLUME, dims=[3, 4, 0, 2])) == "unreadable NIfTI: invalid dimensions (4x0x2)"
    assert one_line_error(nifti2_with(VOLUME, vox_offset=2**62)).startswith("NIfTI too large (")
    assert one_line_error(nifti_bytes(VOLUME, image_class=nib.Nifti2Image)[:300]) == \
        "unreadable NIfTI: header cut short (300 of 540 bytes)"


def test_size_limits_are_one_line_refusals_before_reading(tmp_path: Path, monkeypatch):
    big = np.zeros((64, 64, 16), np.int16)
    nifti, dicom = nifti_bytes(big), dicom_bytes(np.zeros((4, 64, 64), np.uint16))
    monkeypatch.setattr(medical, "MAX_VOXELS", 64 * 64 * 16 - 1)
    assert one_line_error(nifti) == "volume too large (64x64x16 voxels)"
    assert one_line_error(dicom_bytes(np.zeros((16, 64, 64), np.uint16))) == "image too large (64x64 px, 16 frames)"
    assert read_pixels(dicom).shape == (64, 64, 3)
    monkeypatch.setattr(medical, "MAX_VOXELS", 1 << 26)
    monkeypatch.setattr(medical, "MAX_NIFTI_BYTES", 64 * 64 * 16 * 2)  # the voxels fit, the header does not
    assert one_line_error(nifti) == f"NIfTI too large ({352 + 64 * 64 * 16 * 2} bytes of header and voxels, more " \
                                    f"than {64 * 64 * 16 * 2})"
    monkeypatch.setattr(medical, "MAX_DICOM_BYTES", len(dicom) - 1)
    assert one_line_error(dicom) == f"DICOM too large ({len(dicom)} bytes, more than {len(dicom) - 1})"
    # a 2 GB 4-D volume (and a 1 GiB 3-D one) of which only the header exists: refused from the header alone
    monkeypatch.undo()
    monkeypatch.setattr(nib.Nifti1Image, "from_file_map", lambda *a, **k: pytest.fail("voxels read"))
    monkeypatch.setattr(nib.Nifti1Image, "from_bytes", lambda *a, **k: pytest.fail("voxels read"))
    for shape, message in (((512, 512, 256, 16), "4-D volume (16 volumes): give one 3-D volume"),
                           ((1024, 1024, 512), "volume too large (1024x1024x512 voxels)")):
        header = nib.Nifti1Header()
        header.set_data_shape(shape)
        header.set_data_dtype(np.int16)
        (tmp_path / "huge.nii").write_bytes(header.binaryblock + bytes(4))
        assert one_line_error(tmp_path / "huge.nii") == message
        assert one_line_error(gzip.compress(header.binaryblock + bytes(4))) == message


def test_gzipped_nifti_is_inflated_only_as_far_as_its_header_needs(monkeypatch):
    monkeypatch.setattr(medical, "MAX_NIFTI_BYTES", 1 << 20)
    padded = gzip.compress(nifti_bytes(VOLUME) + bytes(50 << 20))  # 50 MiB of zeros after the voxels: 50 KiB gzipped
    np.testing.assert_array_equal(read_pixels(padded), read_pixels(nifti_bytes(VOLUME)))
    members = gzip.compress(nifti_bytes(VOLUME)[:200]) + gzip.compress(nifti_bytes(VOLUME)[200:])  # as bgzip writes
    np.testing.assert_array_equal(read_pixels(members), read_pixels(nifti_bytes(VOLUME)))


def test_deflated_dicom_is_inflated_with_a_cap(monkeypatch):
    source = dicom_bytes(STORED, syntax=DeflatedExplicitVRLittleEndian, WindowCenter=400.0, WindowWidth=300.0)
    np.testing.assert_array_equal(read_pixels(source), read_pixels(dicom_bytes(STORED, WindowCenter=400.0,
                                                                                 WindowWidth=300.0)))
    bomb = dicom_bytes(np.zeros((512, 512), np.uint16), syntax=DeflatedExplicitVRLittleEndian)  # 512 KiB inflated
    assert len(bomb) < 4096 and read_pixels(bomb).shape == (512, 512, 3)
    monkeypatch.setattr(medical, "MAX_DICOM_BYTES", 100_000)
    monkeypatch.setattr(zlib, "decompress", lambda *a, **k: pytest.fail("pydicom inflated without a cap"))
    assert one_line_error(bomb) == "DICOM too large once inflated (more than 100000 bytes)"


def mutations(seed: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    """`count` corrupt copies of `seed`: cut at a random length, or 1-8 random bytes overwritten."""
    out = []
    for _ in range(count):
        if rng.random() < 0.4:
            out.append(seed[:int(rng.integers(1, len(seed)))])
        else:
            mutated = bytearray(seed)
            for at in rng.integers(0, len(seed), int(rng.integers(1, 9))):
                mutated[at] = int(rng.integers(0, 256))
            out.append(bytes(mutated))
    return out


def test_corrupt_dicom_and_nifti_files_decode_or_are_one_line_errors():
    """Every corrupt file either decodes to uint8 (H, W, 3) or is a one-line DecodeError: no other exception
    (pydicom's BytesLengthException, nibabel's WrapStructError, OverflowError, ...) escapes."""
    rows = dicom_bytes(STORED)
    at = rows.index(b"\x28\x00\x10\x00US")  # Rows, with a value of 3 bytes: pydicom's BytesLengthException
    seeds = {
        "dicom": dicom_bytes(STORED, WindowCenter=400.0, WindowWidth=300.0, RescaleSlope=2.0, RescaleIntercept=-5.0),
        "multi-frame dicom": dicom_bytes(np.stack([STORED, STORED * 2, STORED * 3])),
        "deflated dicom": dicom_bytes(STORED, syntax=DeflatedExplicitVRLittleEndian),
        "nifti-1": nifti_bytes(VOLUME),
        "nifti-2": nifti_bytes(VOLUME, image_class=nib.Nifti2Image),
        "gzipped nifti": nifti_bytes(VOLUME, gz=True),
    }
    rng = np.random.default_rng(17)
    corrupt = [rows[:at + 6] + b"\x03\x00" + rows[at + 8:at + 10] + b"\x00" + rows[at + 10:],
               seeds["nifti-2"][:300], nifti2_with(VOLUME, dims=[3, 2**40, 2**40, 2**40])]
    for name, seed in seeds.items():
        corrupt += mutations(seed, rng, 10)
    assert len(corrupt) == 63
    outcomes = set()
    for source in corrupt:
        try:
            pixels = read_pixels(source)
        except DecodeError as exc:
            assert str(exc) and "\n" not in str(exc)
            outcomes.add("error")
        else:
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
            outcomes.add("decoded")
    assert outcomes == {"error", "decoded"}


def brain_volume() -> np.ndarray:
    """10 x 10 x 5: slices 0 and 4 empty, slice 1 with 5 % of its pixels bright, slices 2 and 3 with 36 %."""
    volume = np.zeros((10, 10, 5), np.int16)
    volume[0, :5, 1] = 400
    volume[2:8, 2:8, 2] = 300
    volume[2:8, 2:8, 3] = 400
    return volume


def test_slice_selection_middle_all_and_k():
    source = nifti_bytes(brain_volume())
    assert BRAIN_LEVEL == 25 and BRAIN_FRACTION == 0.10
    assert [index for index, _ in read_slices(source, "all")] == [2, 3]  # 5 % of slice 1 is too little
    assert [index for index, _ in read_slices(source)] == [2]  # middle: 5 // 2
    assert [index for index, _ in read_slices(source, "4")] == [4]  # asked for: even an empty slice
    assert grey(read_slices(source, 4)[0][1]).max() == 0
    assert one_line_error(source, 5) == "slice 5 out of range: the file has 5 slices (0-4)"
    empty = nifti_bytes(np.zeros((10, 10, 3), np.int16))
    assert one_line_error(empty, "all").startswith("no slice of 3 has enough brain")
    assert medical.has_brain(np.full((10, 10, 3), BRAIN_LEVEL + 1, np.uint8))
    assert not medical.has_brain(np.full((10, 10, 3), BRAIN_LEVEL, np.uint8))


def test_slices_parse():
    assert [str(Slices.parse(text)) for text in ("middle", " ALL ", "0", "12", 3)] == ["middle", "all", "0", "12", "3"]
    for bad in ("-1", "first", "1.5", "", "²"):
        with pytest.raises(ValueError, match="middle, all or a 0-based slice index K"):
            Slices.parse(bad)


def test_pillow_images_are_unchanged_and_have_no_slice_index(tmp_path: Path):
    image = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "slice.png")
    assert [(index, pixels.tolist()) for index, pixels in read_slices(tmp_path / "slice.png", "all")] == \
        [(None, image.tolist())]
    with pytest.raises(DecodeError, match="not an image"):
        read_slices(b"not an image at all")


# --- the rest of the package: datasets, header facts, predict --------------------------------------------------

def write_medical_dataset(root: Path) -> Path:
    """Class folders of tiny DICOM and NIfTI files (and one report DICOM that is no image)."""
    rng = np.random.default_rng(3)
    for label, folder in enumerate(("healthy", "tumor")):
        (root / folder).mkdir(parents=True)
        for i in range(2):
            slice_ = blob_image(rng, 24, bool(label))[..., 0].astype(np.uint16) * 4
            (root / folder / f"scan{i}.dcm").write_bytes(dicom_bytes(slice_))
            volume = np.stack([blob_image(rng, 24, bool(label))[..., 0] for _ in range(3)], axis=-1).astype(np.int16)
            (root / folder / f"volume{i}.nii{'.gz' if i else ''}").write_bytes(nifti_bytes(volume, gz=bool(i)))
    (root / "tumor" / "IM0007").write_bytes(dicom_bytes(blob_image(rng, 24, True)[..., 0].astype(np.uint16)))
    (root / "healthy" / "report.dcm").write_bytes(dicom_bytes(None, sop_class=BasicTextSRStorage, modality="SR"))
    return root


def test_load_dataset_and_header_facts_read_dicom_and_nifti(tmp_path: Path):
    root = write_medical_dataset(tmp_path / "data")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "healthy" / "photo.png")
    Image.fromarray(np.zeros((12, 14, 3), np.uint8)).save(root / "healthy" / "png.dcm", format="PNG")  # lying name
    dataset = data.load_dataset(root, 16, cache_dir=tmp_path / "cache")
    assert dataset.paths == ["healthy/photo.png", "healthy/png.dcm", "healthy/scan0.dcm", "healthy/scan1.dcm", "healthy/volume0.nii",
                             "healthy/volume1.nii.gz", "tumor/IM0007", "tumor/scan0.dcm", "tumor/scan1.dcm",
                             "tumor/volume0.nii", "tumor/volume1.nii.gz"]
    assert dataset.skipped == [("healthy/report.dcm", "DICOM without pixel data (not an image: Basic Text SR Storage "
                                                      "/ SR)")]
    for row, path in enumerate(dataset.paths):  # the middle slice of each volume, as decode_image gives it
        np.testing.assert_array_equal(dataset.images(np.array([row]))[0], decode_image(root / path, 16))
    sizes, formats = data.header_facts(root, dataset.paths)
    assert formats == ["png"] * 2 + ["dicom"] * 2 + ["nifti"] * 2 + ["dicom"] * 3 + ["nifti"] * 2
    assert sizes == [(30, 20), (14, 12)] + [(24, 24)] * 9


def test_cache_key_names_the_formats(blob_dataset: Path, tmp_path: Path, monkeypatch):
    data.load_dataset(blob_dataset, 16, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(data, "CACHE_FORMATS", "dicom")  # as before NIfTI: its failures would be cached
    data.load_dataset(blob_dataset, 16, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert data.DECODER_VERSION == decoder.DECODER_VERSION == "2"


def test_predict_slices_all_gives_one_row_per_brain_slice(trained_run: Path, tmp_path: Path, capsys):
    rng = np.random.default_rng(5)
    inputs = tmp_path / "incoming"
    inputs.mkdir()
    volume = np.zeros((48, 48, 6), np.int16)  # slices 0 and 5 empty
    for k in range(1, 5):
        volume[:, :, k] = blob_image(rng, 48, k % 2 == 1)[..., 0]
    (inputs / "a_volume.nii.gz").write_bytes(nifti_bytes(volume, gz=True))
    Image.fromarray(blob_image(rng, 48, True)).save(inputs / "b_slice.png")
    (inputs / "c_report.dcm").write_bytes(dicom_bytes(None, sop_class=BasicTextSRStorage, modality="SR"))
    model_path = trained_run / "best.keras"

    # the command line once (it loads the model each time); the other selections through predict_files
    out = tmp_path / "preds_all"
    assert main(["predict", "--model-file", str(model_path), "--inputs", str(inputs), "--out", str(out),
                 "--slices", "all"]) == 0
    rows = read_csv(out / "predictions.csv")
    assert list(rows[0]) == ["path", "prob_tumor", "predicted", "error", "prob_tumor_raw", "quality", "ood_score",
                             "slice"]
    assert [(Path(r["path"]).name, r["slice"]) for r in rows] == [
        ("a_volume.nii.gz", "1"), ("a_volume.nii.gz", "2"), ("a_volume.nii.gz", "3"), ("a_volume.nii.gz", "4"),
        ("b_slice.png", ""), ("c_report.dcm", "")]
    assert rows[-1]["error"] == "DICOM without pixel data (not an image: Basic Text SR Storage / SR)"
    assert all(not r["error"] and r["prob_tumor_raw"] for r in rows[:5])
    model = keras.saving.load_model(model_path)
    images = np.stack([resize(pixels, 48) for _, pixels in read_slices(inputs / "a_volume.nii.gz", "all")])
    np.testing.assert_allclose([float(r["prob_tumor_raw"]) for r in rows[:4]],
                               model.predict(images.astype("float32"), verbose=0)[:, 1], atol=1e-5, rtol=0)

    opened = predict_module.open_model(model_path)
    files = data.expand_inputs([inputs])

    def predict(slices: str) -> list[dict]:
        return list(predict_module.predict_files(opened.predictor, opened.size, files, opened.threshold,
                                                 temperature=opened.temperature, min_side=opened.min_side,
                                                 slices=slices))

    assert [(Path(r["path"]).name, r["slice"]) for r in predict("2")][:2] == [("a_volume.nii.gz", 2),
                                                                             ("b_slice.png", None)]
    middle = predict("middle")
    assert middle[0]["slice"] == 3 and middle[0]["prob_tumor_raw"] == float(rows[2]["prob_tumor_raw"])
    assert predict("9")[0]["error"] == "slice 9 out of range: the file has 6 slices (0-5)"
    capsys.readouterr()
    assert main(["predict", "--model-file", str(model_path), "--inputs", str(inputs), "--slices", "first"]) == 2
    assert "--slices: slices must be middle, all or a 0-based slice index K, got 'first'" in one_error_line(capsys)


def test_evaluate_and_explain_read_dicom_and_nifti(trained_run: Path, tmp_path: Path):
    root = write_medical_dataset(tmp_path / "data")
    out = tmp_path / "eval"
    assert main(["evaluate", "--run", str(trained_run), "--data", str(root), "--out", str(out),
                 "--bootstrap", "20"]) == 0
    entry = json.loads((out / "evaluation.json").read_text())["datasets"]["data"]
    assert (entry["n"], entry["skipped"]) == (9, 1)
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 9 and all(row["quality"] for row in rows)  # the gate saw each file's slice size
    images = [root / "tumor" / "volume1.nii.gz", root / "tumor" / "IM0007", root / "healthy" / "report.dcm"]
    assert main(["explain", "--run", str(trained_run), "--inputs", *map(str, images),
                 "--out", str(tmp_path / "cam")]) == 0
    assert sorted(path.name for path in (tmp_path / "cam").glob("*.png")) == ["tumor_IM0007_gradcam.png",
                                                                               "tumor_volume1.nii_gradcam.png"]
