"""Medical image formats to uint8 RGB slices: DICOM with pydicom, NIfTI-1/2 with nibabel.

`tumorclf.decoder.read_slices` (and so `read_pixels`) sends here every file `sniff` recognises BY CONTENT,
from a path or from bytes: DICOM by ``DICM`` at byte 128 (a path ending in ``.dcm`` also counts, for files
written without the preamble), NIfTI by its header size (348 or 540, either byte order) and magic
(``n+1``/``ni1`` at byte 344, ``n+2``/``ni2`` at byte 4), gzipped or not. A file holds a stack of slices
(a volume's, a multi-frame DICOM's frames); a stack of one is a 2-D image (slice index None).

DICOM (`pydicom.pixels`): the modality LUT or rescale slope/intercept, then the VOI LUT, else the window
centre/width (its output range mapped onto 0-255), else the robust percentile window
(`WINDOW_PERCENTILES`) over all frames; MONOCHROME1 is inverted after windowing; RGB, YBR (converted to
RGB by pydicom) and palette colour images are scaled to 8 bits per channel. Windows inside enhanced
multi-frame functional groups are not read (such files get the percentile window). A compressed transfer
syntax without an installed decoder, or a dataset without pixel data (a report, a presentation state), is a
one-line `DecodeError`.

NIfTI (nibabel, scale slope/intercept applied): reoriented to the closest canonical RAS+ axes (what
`nibabel.as_closest_canonical` does), so the third axis runs inferior to superior and its slices are
axial. Each slice is shown in the radiological convention in which DICOM axial slices are stored and the
training JPEGs were exported: anterior at the top, the patient's right on the viewer's left (a file with
a single slice in another plane is that slice, superior at the top). Intensities go through the robust
percentile window computed over the WHOLE volume, so the slices of one volume stay comparable.
Non-finite voxels count as 0. A 4-D file with more than one volume is refused.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumorclf import decoder
from tumorclf.decoder import DecodeError

DICOM, NIFTI = "dicom", "nifti"
MIDDLE, ALL = "middle", "all"
# Robust window without a VOI LUT or window in the file: the 0.5th to 99.5th percentile of the file's values.
# A min-max stretch would let a few hot voxels (vessels, fat, artefacts) squeeze the brain into a narrow grey
# range; 0.5 % at each end drops them and keeps the rest of the range. MRI background (often half the
# voxels) stays at the low end, so it stays black.
WINDOW_PERCENTILES = (0.5, 99.5)
# `--slices all` keeps a slice when at least BRAIN_FRACTION of its pixels are brighter than BRAIN_LEVEL (of 255,
# after the window, about a tenth of it: above background noise). The slices above the vertex and below the
# skull base are air or a sliver of tissue, unlike the slices through the brain the model was trained on, so
# their scores would be noise. A mid-brain axial slice covers 30-50 % of a typical field of view.
BRAIN_LEVEL = 25
BRAIN_FRACTION = 0.10
MAX_VOXELS = 1 << 26  # 512 x 512 x 256; the float64 working copy of a volume stays under 512 MiB
MAX_NIFTI_BYTES = 8 * MAX_VOXELS + (1 << 20)  # a gzipped NIfTI is never inflated beyond this (decompression bombs)

_DICM_AT, _DICM = 128, b"DICM"
_GZIP = b"\x1f\x8b"
_PEEK = 1 << 16  # bytes read to sniff a file; a gzipped NIfTI header deflates to far fewer
_NIFTI_HEADERS = {348: (344, (b"n+1\x00", b"ni1\x00")), 540: (4, (b"n+2\x00", b"ni2\x00"))}  # size: magic at, magics
_PAIR_MAGICS = (b"ni1\x00", b"ni2\x00")  # a header whose voxels lie in a separate .img file
_PIXEL_DATA = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class Slices:
    """Which slices of a stack to decode: `MIDDLE` (index n // 2, what `read_pixels` gives), `ALL` (each
    slice with enough brain, `has_brain`) or one 0-based index. A 2-D image is itself whatever is asked."""

    which: str | int

    @classmethod
    def parse(cls, value: "str | int | Slices") -> "Slices":
        """``middle``, ``all`` or a slice index K >= 0; anything else is a ValueError saying so."""
        if isinstance(value, Slices):
            return value
        text = str(value).strip().lower()
        if text in (MIDDLE, ALL):
            return cls(text)
        if text.isascii() and text.isdigit():
            return cls(int(text))
        raise ValueError(f"slices must be middle, all or a 0-based slice index K, got {value!r}")

    def pick(self, stack: np.ndarray) -> list[int]:
        """The indices of the chosen slices of `stack` (uint8, slices first); `DecodeError` when there are none."""
        count = len(stack)
        if self.which == MIDDLE:
            return [count // 2]
        if self.which == ALL:
            chosen = [index for index in range(count) if has_brain(stack[index])]
            if not chosen:
                raise DecodeError(f"no slice of {count} has enough brain (at least {BRAIN_FRACTION:.0%} of the "
                                  f"pixels above {BRAIN_LEVEL}/255): choose middle or a slice index K")
            return chosen
        if self.which >= count:
            raise DecodeError(f"slice {self.which} out of range: the file has {count} slices (0-{count - 1})")
        return [self.which]

    def __str__(self) -> str:
        return str(self.which)


def has_brain(pixels: np.ndarray) -> bool:
    """Whether a uint8 slice (H, W, C) shows enough brain for `ALL`: see `BRAIN_LEVEL`, `BRAIN_FRACTION`."""
    return float(np.mean(pixels.mean(axis=-1) > BRAIN_LEVEL)) >= BRAIN_FRACTION


def sniff(source: str | os.PathLike | bytes) -> str | None:
    """`DICOM` or `NIFTI` when the content says so (or, for DICOM without the preamble, a ``.dcm`` path), else
    None: Pillow's turn. An unreadable path is a `DecodeError`."""
    head = _head(source)
    if head[_DICM_AT:_DICM_AT + len(_DICM)] == _DICM:
        return DICOM
    if _nifti_magic(_gunzip(head, max(_NIFTI_HEADERS), strict=False) if head[:2] == _GZIP else head):
        return NIFTI
    if not _is_bytes(source) and Path(source).suffix.lower() == ".dcm":
        return DICOM
    return None


def read_slices(source: str | os.PathLike | bytes, kind: str, slices: Slices) -> list[tuple[int | None, np.ndarray]]:
    """(slice index, uint8 RGB (H, W, 3)) of the chosen slices of a file `sniff` called `kind`; a file with one
    slice gives [(None, pixels)]. Raises `DecodeError`."""
    stack = _dicom_stack(source) if kind == DICOM else _nifti_stack(source)
    if len(stack) == 1:
        return [(None, _rgb(stack[0]))]
    return [(index, _rgb(stack[index])) for index in slices.pick(stack)]


def robust_window(values: np.ndarray) -> tuple[float, float]:
    """(low, high) at `WINDOW_PERCENTILES`; the full range where those coincide (a mostly flat image)."""
    low, high = np.percentile(values, WINDOW_PERCENTILES)
    if high <= low:
        low, high = np.min(values), np.max(values)
    return float(low), float(high)


def to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`low` to 0 and `high` to 255 linearly (high < low inverts), clipped and rounded as `decoder` stretches
    16-bit images; a window of zero width gives 0."""
    if high == low:
        return np.zeros(np.shape(values), np.uint8)
    scaled = (np.asarray(values, np.float64) - low) * (255.0 / (high - low))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 1) grey or (H, W, 3) to contiguous uint8 RGB."""
    return np.ascontiguousarray(np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels)


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_bytes(source) -> bool:
    return isinstance(source, (bytes, bytearray, memoryview))


def _head(source: str | os.PathLike | bytes) -> bytes:
    if _is_bytes(source):
        return bytes(memoryview(source)[:_PEEK])
    try:
        with open(source, "rb") as handle:
            return handle.read(_PEEK)
    except OSError as exc:
        raise DecodeError(f"unreadable image: {exc}") from None


def _gunzip(data: bytes, limit: int, strict: bool = True) -> bytes:
    """At most `limit` bytes of gzip `data`; with `strict`, more (a bomb) or corrupt data is a `DecodeError`,
    without it (sniffing a file's first bytes) whatever inflates."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    try:
        out = inflater.decompress(data, limit)
    except zlib.error as exc:
        if strict:
            raise DecodeError(f"unreadable gzip data: {exc}") from None
        return b""
    if strict and inflater.unconsumed_tail:
        raise DecodeError(f"NIfTI too large once decompressed (more than {limit} bytes)")
    return out


def _nifti_magic(head: bytes) -> bytes | None:
    """The magic of a NIfTI-1 or NIfTI-2 header at the start of `head` (either byte order), else None."""
    for order in "<>":
        if len(head) < 4:
            return None
        at, magics = _NIFTI_HEADERS.get(struct.unpack(order + "i", head[:4])[0], (0, ()))
        magic = head[at:at + 4]
        if magic in magics:
            return magic
    return None


# --- DICOM ----------------------------------------------------------------------------------------------------

def _dicom_stack(source: str | os.PathLike | bytes) -> np.ndarray:
    """All frames of a DICOM file, windowed: uint8 (frames, H, W, 1 or 3)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(bytes(source)) if _is_bytes(source) else source, force=True)
    except (InvalidDicomError, OSError, ValueError, TypeError, KeyError, AttributeError, IndexError,
            NotImplementedError, EOFError, struct.error) as exc:
        raise DecodeError(f"unreadable DICOM: {_line(exc)}") from None
    if not any(name in ds for name in _PIXEL_DATA):
        if getattr(ds, "preamble", None) is None and "SOPClassUID" not in ds:  # only its .dcm name said DICOM
            raise DecodeError("not an image (a .dcm file without DICOM content)")
        raise DecodeError(f"DICOM without pixel data (not an image: {_what(ds)})")
    try:
        _check_decodable(ds)
        frames = ds.pixel_array
        frames = frames if _frame_count(ds) > 1 else frames[None]
        if int(ds.get("SamplesPerPixel", 1) or 1) > 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR":
            return _colour(frames, ds)
        return _monochrome(frames, ds)[..., None]
    except DecodeError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, NotImplementedError, RuntimeError,
            OSError, EOFError, struct.error) as exc:
        raise DecodeError(f"unreadable DICOM pixel data ({_syntax_name(ds)}): {_line(exc)}") from None


def _what(ds) -> str:
    """What a dataset is, for the message refusing one without pixels: its SOP class and modality."""
    uid = ds.get("SOPClassUID") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", None)
    return " / ".join([getattr(uid, "name", str(uid)) if uid else "unknown SOP class",
                       str(ds.get("Modality") or "no modality")])


def _frame_count(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _syntax_name(ds) -> str:
    uid = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
    return getattr(uid, "name", None) or "unknown transfer syntax"


def _check_decodable(ds) -> None:
    """`DecodeError` when the transfer syntax is compressed and no installed plugin decodes it, or when the
    frames are too large."""
    from pydicom.pixels import get_decoder

    uid = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
    name = _syntax_name(ds)
    if uid is not None and uid.is_compressed:
        try:
            plugin = get_decoder(uid)
        except NotImplementedError:
            raise DecodeError(f"DICOM compressed with {name}: pydicom has no decoder for it") from None
        if not plugin.is_available:
            needs = ", or ".join(need.split(" - requires ", 1)[-1] for need in plugin.missing_dependencies)
            raise DecodeError(f"DICOM compressed with {name}: no decoder installed (install {needs})")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * columns > decoder.MAX_PIXELS or rows * columns * _frame_count(ds) > MAX_VOXELS:
        raise DecodeError(f"image too large ({columns}x{rows} px, {_frame_count(ds)} frames)")


def _monochrome(frames: np.ndarray, ds) -> np.ndarray:
    """Stored values to uint8: modality LUT / rescale, VOI LUT or window (else `robust_window` over all
    frames), MONOCHROME1 inverted last."""
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(frames, ds)
    shown = _voi(values, ds)
    pixels = to_uint8(*shown) if shown is not None else to_uint8(values, *robust_window(values))
    return 255 - pixels if ds.get("PhotometricInterpretation") == "MONOCHROME1" else pixels


def _voi(values: np.ndarray, ds) -> tuple[np.ndarray, float, float] | None:
    """(values through the file's VOI LUT or window, the output's black, its white), or None when the file
    has neither (or an invalid one). The VOI LUT's output range is 0 to 2^bits - 1 (its descriptor's bits);
    the window's is pydicom's, read off by windowing -inf and +inf."""
    from pydicom.pixels import apply_voi, apply_windowing

    try:
        lut = ds.get("VOILUTSequence")
        if lut and "LUTDescriptor" in lut[0] and "LUTData" in lut[0]:
            entries, first, bits = (int(v) for v in lut[0].LUTDescriptor)
            # integer inputs inside the LUT's domain (pydicom's uint16 index would wrap outside it)
            inputs = np.clip(np.rint(values), first, first + (entries or 1 << 16) - 1).astype(np.int64)
            return apply_voi(inputs, ds), 0.0, float(2**bits - 1)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            black, white = apply_windowing(np.array([-np.inf, np.inf]), ds)
            return apply_windowing(values, ds), float(black), float(white)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, NotImplementedError):
        return None
    return None


def _colour(frames: np.ndarray, ds) -> np.ndarray:
    """RGB frames (YBR already converted by pydicom, palette colour through its LUT) at 8 bits per channel."""
    from pydicom.pixels import apply_color_lut

    bits = int(ds.get("BitsStored", 8) or 8)
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        frames = apply_color_lut(frames, ds)
        bits = 8 * frames.dtype.itemsize
    return frames if frames.dtype == np.uint8 else to_uint8(frames, 0, 2**bits - 1)


# --- NIfTI ----------------------------------------------------------------------------------------------------

def _nifti_stack(source: str | os.PathLike | bytes) -> np.ndarray:
    """The axial slices of a NIfTI volume, windowed over the whole volume: uint8 (slices, H, W, 1)."""
    import nibabel
    from nibabel.filebasedimages import ImageFileError
    from nibabel.orientations import apply_orientation, io_orientation
    from nibabel.spatialimages import HeaderDataError

    image = _nifti_image(source)
    shape = tuple(int(n) for n in image.shape)
    if len(shape) > 3 and any(n > 1 for n in shape[3:]):
        raise DecodeError(f"4-D volume ({shape[3]} volumes): give one 3-D volume" if len(shape) == 4 else
                          f"{len(shape)}-D NIfTI (shape {'x'.join(map(str, shape))}): give one 3-D volume")
    if int(np.prod(shape)) > MAX_VOXELS:
        raise DecodeError(f"volume too large ({'x'.join(map(str, shape))} voxels)")
    try:
        volume = image.get_fdata().reshape((shape + (1, 1))[:3])
        volume = apply_orientation(volume, io_orientation(image.affine))  # as nibabel.as_closest_canonical
    except (ImageFileError, HeaderDataError, ValueError, TypeError, IndexError, OSError, EOFError,
            nibabel.orientations.OrientationError) as exc:
        raise DecodeError(f"unreadable NIfTI: {_line(exc)}") from None
    volume = np.where(np.isfinite(volume), volume, 0.0)
    stack = _display_slices(volume)
    if stack.shape[1] * stack.shape[2] > decoder.MAX_PIXELS:
        raise DecodeError(f"image too large ({stack.shape[2]}x{stack.shape[1]} px)")
    return to_uint8(stack, *robust_window(volume))[..., None]


def _display_slices(volume: np.ndarray) -> np.ndarray:
    """Slices (n, H, W) of a canonical RAS+ volume: along the axis of length one when there is one (a single
    slice, whatever its plane), else axial; rows from anterior (or superior) down, columns from the patient's
    right to left (radiological convention)."""
    axis = next((a for a in (2, 1, 0) if volume.shape[a] == 1), 2)
    stack = np.moveaxis(volume, axis, 0)
    return stack[:, ::-1, ::-1].transpose(0, 2, 1)


def _nifti_image(source: str | os.PathLike | bytes):
    """A nibabel image from a path or bytes (gunzipped when needed), its voxels not yet read."""
    import nibabel
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    try:
        data = bytes(source) if _is_bytes(source) else Path(source).read_bytes()
    except OSError as exc:
        raise DecodeError(f"unreadable image: {exc}") from None
    if data[:2] == _GZIP:
        data = _gunzip(data, MAX_NIFTI_BYTES)
    magic = _nifti_magic(data)
    if magic in _PAIR_MAGICS and _is_bytes(source):
        raise DecodeError("NIfTI header without its voxels (a .hdr/.img pair): decode the pair's .hdr file")
    try:
        if magic in _PAIR_MAGICS:
            return nibabel.load(os.fspath(source))
        image_class = nibabel.Nifti1Image if magic == b"n+1\x00" else nibabel.Nifti2Image
        return image_class.from_bytes(data)
    except (ImageFileError, HeaderDataError, ValueError, TypeError, OSError, EOFError, struct.error) as exc:
        raise DecodeError(f"unreadable NIfTI: {_line(exc)}") from None
