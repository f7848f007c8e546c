"""Medical image formats to uint8 RGB slices: DICOM with pydicom, NIfTI-1/2 with nibabel.

`tumorclf.data.decoder.read_slices` (and so `read_pixels`) sends here every file `sniff` recognises BY CONTENT,
from a path or from bytes: DICOM by ``DICM`` at byte 128 (a path ending in ``.dcm`` also counts, for files
written without the preamble; when pydicom cannot read such a file, `NotDicom` sends it back to Pillow, so a
PNG or JPEG named ``.dcm`` still decodes), NIfTI by its header size (348 or 540, either byte order) and magic
(``n+1``/``ni1`` at byte 344, ``n+2``/``ni2`` at byte 4), gzipped or not. A file holds a stack of slices
(a volume's, a multi-frame DICOM's frames); a stack of one is a 2-D image (slice index None).

Slice indices (``--slices K``, the ``slice`` column of predict): for a NIfTI volume, K is the axial index
counted from inferior to superior AFTER reorientation to the closest canonical RAS+ axes, not the index
stored in the file (a volume stored superior-first, or sagittal-first, is reordered); for a multi-frame
DICOM, K is the frame in storage order (frame K + 1 of Number of Frames), never resliced or sorted by
position. The middle slice is index n // 2 of those n.

DICOM (pydicom): the modality LUT or rescale slope/intercept, then the VOI LUT (`_voi_lut`, applied INSTEAD
of a window), else the window centre/width (its output range mapped onto 0-255), else the robust percentile
window (`WINDOW_PERCENTILES`) over all frames; MONOCHROME1 is inverted after windowing. An unsigned
grey image of at most 8 bits stored, with neither rescale nor modality LUT nor VOI LUT nor window, keeps its
values (its range 0 to 2^BitsStored - 1 onto 0-255: the identity for 8 bits), so a training JPEG wrapped as a
Secondary Capture DICOM gives the JPEG's own pixels. RGB, YBR (converted to RGB by pydicom) and palette
colour images are scaled to 8 bits per channel. Windows inside enhanced multi-frame functional groups are
not read (such files get the percentile window). Exactly the header's Number of Frames is decoded (pixel
data beyond them is ignored, not turned into extra frames). Deflated Explicit VR Little Endian is inflated
here with a cap (`MAX_DICOM_BYTES`), not by pydicom (which has none). A compressed transfer syntax without
an installed decoder, a dataset without pixel data (a report, a presentation state) or anything pydicom
raises for a corrupt file is a one-line `DecodeError`; pydicom's warnings become one log line per file.

NIfTI (nibabel, scale slope/intercept applied, in float32): reoriented to the closest canonical RAS+ axes
(what `nibabel.as_closest_canonical` does), so the third axis runs inferior to superior and its slices are
axial. Each slice is shown in the radiological convention in which DICOM axial slices are stored and the
training JPEGs were exported: anterior at the top, the patient's right on the viewer's left (a file with
a single slice in another plane is that slice, superior at the top). Intensities go through the robust
percentile window computed over the WHOLE volume, so the slices of one volume stay comparable.
Non-finite voxels count as 0. A 4-D file with more than one volume is refused. The header's shape is
checked (`MAX_VOXELS`, `MAX_NIFTI_BYTES`) before any voxel is read or inflated.

Changing how this module windows or slices changes the pixels of the decoded-image cache: bump
`tumorclf.data.dataset.CACHE_FORMATS` (or `tumorclf.data.decoder.DECODER_VERSION`) with it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumorclf.data.errors import MAX_PIXELS, DecodeError
from tumorclf.errors import one_line

log = logging.getLogger(__name__)

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
# 512 x 512 x 256 voxels (or frames x rows x columns x samples). Measured peaks (tracemalloc) while decoding:
# a 16-bit NIfTI 9-12 bytes a voxel (the float32 volume, the percentile's float32 copy of it, the stored voxels,
# nibabel's scaling temporaries, the uint8 result; the float64 windowing works one slice at a time), so at most
# ~0.75 GiB; a 16-bit DICOM stack 6 bytes a voxel, 20 once rescaled (its pixel data as read and as decoded,
# pydicom's float64 rescaled values and the percentile's copy of them), so at most ~1.25 GiB.
MAX_VOXELS = 1 << 26
MAX_NIFTI_BYTES = 8 * MAX_VOXELS + (1 << 20)  # header, extensions and voxels a NIfTI may need (read or inflated)
MAX_DICOM_BYTES = 8 * MAX_VOXELS + (1 << 20)  # a DICOM file, or its deflated dataset once inflated

_DICM_AT, _DICM = 128, b"DICM"
_GZIP = b"\x1f\x8b"
_GZIP_WBITS, _DEFLATE_WBITS = 16 + zlib.MAX_WBITS, -zlib.MAX_WBITS
_PEEK = 1 << 16  # bytes read to sniff a file; a gzipped NIfTI header deflates to far fewer
_NIFTI_HEADERS = {348: (344, (b"n+1\x00", b"ni1\x00")), 540: (4, (b"n+2\x00", b"ni2\x00"))}  # size: magic at, magics
_PAIR_MAGICS = (b"ni1\x00", b"ni2\x00")  # a header whose voxels lie in a separate .img file
_PIXEL_DATA = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
_BIG_ENDIAN = "1.2.840.10008.1.2.2"  # Explicit VR Big Endian (retired)


class NotDicom(DecodeError):
    """Only the ``.dcm`` name said DICOM and pydicom cannot read the file: `decoder.read_slices` tries Pillow."""


@dataclass(frozen=True)
class Slices:
    """Which slices of a stack to decode: `MIDDLE` (index n // 2, what `read_pixels` gives), `ALL` (each
    slice with enough brain, `has_brain`) or one 0-based index (see the module docstring for what the index
    counts in a NIfTI volume and a multi-frame DICOM). A 2-D image is itself whatever is asked."""

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


def slices_argument(text: str) -> str:
    """``--slices`` of `tumorclf predict` and `tumorclf explain` as `Slices.parse` reads it; anything else is
    refused with the reason (argparse prints an ArgumentTypeError's message, not a ValueError's)."""
    try:
        return str(Slices.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def has_brain(pixels: np.ndarray) -> bool:
    """Whether a uint8 slice (H, W, C) shows enough brain for `ALL`: see `BRAIN_LEVEL`, `BRAIN_FRACTION`."""
    return float(np.mean(pixels.mean(axis=-1) > BRAIN_LEVEL)) >= BRAIN_FRACTION


def sniff(source: str | os.PathLike | bytes) -> str | None:
    """`DICOM` or `NIFTI` when the content says so (or, for DICOM without the preamble, a ``.dcm`` path), else
    None: Pillow's turn. An unreadable path is a `DecodeError`."""
    head = _head(source)
    if head[_DICM_AT:_DICM_AT + len(_DICM)] == _DICM:
        return DICOM
    if _nifti_magic(_sniffed_gunzip(head) if head[:2] == _GZIP else head):
        return NIFTI
    if not _is_bytes(source) and Path(source).suffix.lower() == ".dcm":
        return DICOM
    return None


def read_slices(source: str | os.PathLike | bytes, kind: str, slices: Slices) -> list[tuple[int | None, np.ndarray]]:
    """(slice index, uint8 RGB (H, W, 3)) of the chosen slices of a file `sniff` called `kind`; a file with one
    slice gives [(None, pixels)]. Raises `DecodeError` (`NotDicom` for a ``.dcm`` path pydicom cannot read)."""
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
    16-bit images; a window of zero width gives 0. Computed in float64 one slice (first axis) at a time."""
    values = np.asarray(values)
    if high == low:
        return np.zeros(values.shape, np.uint8)
    if values.ndim < 3:
        return _stretch(values, low, high)
    out = np.empty(values.shape, np.uint8)
    for index in range(len(values)):
        out[index] = _stretch(values[index], low, high)
    return out


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = values.astype(np.float64)
    scaled -= low
    scaled *= 255.0 / (high - low)
    scaled += 0.5
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 1) grey or (H, W, 3) to contiguous uint8 RGB."""
    return np.ascontiguousarray(np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels)


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


def _size(source: str | os.PathLike | bytes) -> int:
    if _is_bytes(source):
        return memoryview(source).nbytes
    try:
        return os.path.getsize(source)
    except OSError as exc:
        raise DecodeError(f"unreadable image: {exc}") from None


@contextlib.contextmanager
def _reading(what: str):
    """Whatever a third-party parser or decoder raises inside becomes ``DecodeError("{what}: {one line}")``: a
    corrupt file is a one-line skip, never a traceback, whichever exception pydicom, nibabel, numpy or zlib
    chose for it (pydicom's BytesLengthException is a bare Exception, nibabel's WrapStructError too)."""
    try:
        yield
    except DecodeError:
        raise
    except Exception as exc:  # the file's boundary: any failure to parse or decode it is that file's error
        raise DecodeError(f"{what}: {one_line(exc)}") from None


def _inflate(data: bytes, limit: int, wbits: int) -> bytes:
    """The first bytes `data` inflates to, at most `limit` + 1 (more than `limit`: the data inflates past it,
    without inflating the rest: decompression bombs). `wbits` is zlib's: gzip (each member of a
    multi-member file in turn) or raw deflate. Fewer bytes when the stream ends; corrupt data is zlib.error."""
    parts, size = [], 0
    while size <= limit:
        inflater = zlib.decompressobj(wbits)
        part = inflater.decompress(data, limit + 1 - size)
        parts.append(part)
        size += len(part)
        data = inflater.unused_data
        if not (inflater.eof and wbits == _GZIP_WBITS and data[:2] == _GZIP):
            break
    return b"".join(parts)


def _sniffed_gunzip(head: bytes) -> bytes:
    """The start of a gzipped file's content, enough for a NIfTI header; b"" when it is not gzip after all."""
    try:
        return _inflate(head, max(_NIFTI_HEADERS) + 4, _GZIP_WBITS)
    except zlib.error:
        return b""


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

_PYDICOM_LOCK = threading.Lock()
_collecting = threading.local()


class _CollectPydicomLog(logging.Filter):
    """Holds back the 'pydicom' log records of a thread inside `_pydicom_warnings` (each pydicom warning is
    also logged there), so the file's warnings come out as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        messages = getattr(_collecting, "messages", None)
        if messages is None:
            return True
        messages.append(record.getMessage())
        return False


_COLLECT_PYDICOM_LOG = _CollectPydicomLog()


@contextlib.contextmanager
def _pydicom_warnings(name: str):
    """pydicom's warnings while reading one file (each a multi-line `warnings.warn` on stderr plus a log record)
    as ONE warning log line naming the file. `warnings.catch_warnings` is process-wide, so DICOM files are
    read one at a time (the lock); any other thread's warning meanwhile lands in the same line."""
    logging.getLogger("pydicom").addFilter(_COLLECT_PYDICOM_LOG)  # once: a filter is added only once
    with _PYDICOM_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _collecting.messages = messages = []
        try:
            yield
        finally:
            _collecting.messages = None
            said = dict.fromkeys([*messages, *(str(warning.message) for warning in caught)])
            if said:
                log.warning("%s: pydicom: %s", name, one_line("; ".join(said))[:1000])


def _dicom_stack(source: str | os.PathLike | bytes) -> np.ndarray:
    """All frames of a DICOM file, windowed: uint8 (frames, H, W, 1 or 3)."""
    by_content = _head(source)[_DICM_AT:_DICM_AT + len(_DICM)] == _DICM
    with _pydicom_warnings("DICOM bytes" if _is_bytes(source) else os.fspath(source)):
        ds = _read_dicom(source, by_content)
        with _reading("unreadable DICOM"):
            if not any(name in ds for name in _PIXEL_DATA):
                if not by_content and "SOPClassUID" not in ds:  # only its .dcm name said DICOM
                    raise NotDicom("not an image (a .dcm file without DICOM content)")
                raise DecodeError(f"DICOM without pixel data (not an image: {_what(ds)})")
            syntax = _syntax_name(ds)
        with _reading(f"unreadable DICOM pixel data ({syntax})"):
            _check_decodable(ds)
            frames = _frames(ds)
            if int(ds.get("SamplesPerPixel", 1) or 1) > 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR":
                return _colour(frames, ds)
            return _monochrome(frames, ds)[..., None]


def _read_dicom(source: str | os.PathLike | bytes, by_content: bool):
    """The dataset of a DICOM file, at most `MAX_DICOM_BYTES` of it. Deflated Explicit VR Little Endian is
    inflated here with that cap: its file meta is read first, then the rest inflated, then parsed."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

    size = _size(source)
    if size > MAX_DICOM_BYTES:
        raise DecodeError(f"DICOM too large ({size} bytes, more than {MAX_DICOM_BYTES})")
    try:
        with io.BytesIO(bytes(source)) if _is_bytes(source) else open(source, "rb") as stream:
            preamble = read_preamble(stream, True)
            meta = _read_file_meta_info(stream)
            if meta.get("TransferSyntaxUID") != _DEFLATED:
                stream.seek(0)
                return pydicom.dcmread(stream, force=True)
            inflated = _inflate(stream.read(), MAX_DICOM_BYTES, _DEFLATE_WBITS)
        if len(inflated) > MAX_DICOM_BYTES:
            raise DecodeError(f"DICOM too large once inflated (more than {MAX_DICOM_BYTES} bytes)")
        buffer = DicomBytesIO(inflated)  # parsed as pydicom.filereader.read_partial does once it has inflated
        dataset = read_dataset(buffer, is_implicit_VR=False, is_little_endian=True)
        return pydicom.dataset.FileDataset(buffer, dataset, preamble, meta, is_implicit_VR=False,
                                           is_little_endian=True)
    except DecodeError:
        raise
    except OSError as exc:
        raise DecodeError(f"unreadable image: {exc}") from None
    except Exception as exc:  # the file's boundary: whatever pydicom raises for it (see `_reading`)
        if not by_content:
            raise NotDicom(f"not an image (a .dcm file that pydicom cannot read: {one_line(exc)})") from None
        raise DecodeError(f"unreadable DICOM: {one_line(exc)}") from None


def _what(ds) -> str:
    """What a dataset is, for the message refusing one without pixels: its SOP class and modality."""
    uid = ds.get("SOPClassUID") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", None)
    text = " / ".join([getattr(uid, "name", str(uid)) if uid else "unknown SOP class",
                       str(ds.get("Modality") or "no modality")])
    return "".join(char if char.isprintable() else "?" for char in text)  # a corrupt value may hold NULs


def _frame_count(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _syntax_name(ds) -> str:
    uid = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
    return getattr(uid, "name", None) or "unknown transfer syntax"


def _geometry(ds) -> tuple[int, int, int, int]:
    """(frames, rows, columns, samples per pixel) as the header gives them."""
    return (_frame_count(ds), int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0),
            int(ds.get("SamplesPerPixel", 1) or 1))


def _check_decodable(ds) -> None:
    """`DecodeError` when the transfer syntax is compressed and no installed plugin decodes it, or when the
    frames are too large (`MAX_PIXELS` a frame, `MAX_VOXELS` in all)."""
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
    frames, rows, columns, samples = _geometry(ds)
    if rows * columns > MAX_PIXELS or frames * rows * columns * samples > MAX_VOXELS:
        raise DecodeError(f"image too large ({columns}x{rows} px, {frames} frames)")


def _frames(ds) -> np.ndarray:
    """The header's frames, (frames, rows, columns[, samples]): pydicom's `pixel_array` by default turns
    pixel data longer than the header says into extra frames (a single-frame file would come back 3-D)."""
    from pydicom.pixels import pixel_array

    frames = pixel_array(ds, allow_excess_frames=False)
    count, rows, columns, samples = _geometry(ds)
    if count == 1:
        frames = frames[None]
    expected = (count, rows, columns) + ((samples,) if samples > 1 else ())
    if frames.shape != expected:
        raise DecodeError(f"DICOM pixel data of shape {frames.shape}, not the {count} frame(s) of "
                          f"{columns}x{rows} px its header gives")
    return frames


def _monochrome(frames: np.ndarray, ds) -> np.ndarray:
    """Stored values to uint8: kept as they are (`_plain`), else modality LUT / rescale, then the VOI LUT or
    window (else `robust_window` over all frames); MONOCHROME1 inverted last."""
    from pydicom.pixels import apply_modality_lut

    bits = _plain(frames, ds)
    if bits:
        pixels = to_uint8(frames, 0, 2**bits - 1)  # the identity for 8 bits
    else:
        values = apply_modality_lut(frames, ds)
        if values.dtype.kind == "f":
            values = np.nan_to_num(values, copy=not values.flags.writeable, nan=0.0, posinf=0.0, neginf=0.0)
        shown = _voi(values, ds)
        pixels = to_uint8(*shown) if shown is not None else to_uint8(values, *robust_window(values))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        np.subtract(255, pixels, out=pixels)
    return pixels


def _plain(frames: np.ndarray, ds) -> int:
    """BitsStored (1-8) when the image's stored values are its grey levels, else 0: unsigned, at most 8 bits
    stored, no modality LUT, no rescale (or slope 1 and intercept 0), no VOI LUT and no window. Such a file
    (a JPEG or PNG wrapped as Secondary Capture) decodes like the image it wraps, not percentile-stretched."""
    try:
        bits = int(ds.get("BitsStored", 0) or 0)
        rescaled = ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None and (
            float(ds.RescaleSlope) != 1.0 or float(ds.RescaleIntercept) != 0.0)
    except (TypeError, ValueError):
        return 0
    plain = (frames.dtype.kind == "u" and 1 <= bits <= 8 and int(ds.get("PixelRepresentation", 0) or 0) == 0
             and not rescaled and not ds.get("ModalityLUTSequence") and not ds.get("VOILUTSequence")
             and not (ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None))
    return bits if plain else 0


def _voi(values: np.ndarray, ds) -> tuple[np.ndarray, float, float] | None:
    """(values through the file's VOI LUT or window, the output's black, its white), or None when the file
    has neither (or an invalid one). The VOI LUT is `_voi_lut`'s; the window's output range is pydicom's,
    read off by windowing -inf and +inf."""
    from pydicom.pixels import apply_windowing

    try:
        luts = ds.get("VOILUTSequence")
        if luts and "LUTDescriptor" in luts[0] and "LUTData" in luts[0]:
            return _voi_lut(values, luts[0], ds)
        if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            black, white = apply_windowing(np.array([-np.inf, np.inf]), ds)
            return apply_windowing(values, ds), float(black), float(white)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, NotImplementedError, OverflowError):
        return None
    return None


def _voi_lut(values: np.ndarray, item, ds) -> tuple[np.ndarray, float, float] | None:
    """The first VOI LUT (`item`) looked up here, not by pydicom (whose index has the LUT's dtype: an 8-bit LUT
    of more than 256 entries wraps). LUT Descriptor: n entries (0 means 65536), the first value mapped (signed
    when the pixels are), the bits of each entry. A value below the first maps to entry 0, one past the last
    entry to the last.

    The output's white: 2^bits - 1 with the descriptor's bits, as the standard says (PS3.3 C.11.2.1.1), except
    when a LUT of more than 8 bits has no entry reaching 2^(bits - 4): some writers put 16 in the descriptor
    with 12-bit data, which would come out almost black, so the white is then 2^b - 1 for b the bit length of
    the largest entry (4095 for 12-bit data). None for an unusable LUT (no entries, bits outside 1-16)."""
    entries, first, bits = (int(value) for value in item.LUTDescriptor)
    count = entries % (1 << 16) or 1 << 16  # read as SS, 65535 entries would be -1
    if first >= 1 << 15 and int(ds.get("PixelRepresentation", 0) or 0) == 1:
        first -= 1 << 16
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):  # OW: 16-bit words in the dataset's byte order
        if bits <= 8 and len(data) == count:  # 8-bit entries packed one a byte
            lut = np.frombuffer(data, np.uint8)
        else:
            order = ">" if str(getattr(ds.get("file_meta"), "TransferSyntaxUID", "")) == _BIG_ENDIAN else "<"
            lut = np.frombuffer(data, order + "u2", len(data) // 2)
    else:
        lut = np.atleast_1d(np.asarray(data, np.int32))
    lut = lut[:count]
    if not lut.size or not 1 <= bits <= 16:
        return None
    index = np.rint(values)
    index -= first
    np.clip(index, 0, lut.size - 1, out=index)
    top = int(lut.max())
    white = (1 << max(top.bit_length(), 1)) - 1 if bits > 8 and top < 1 << (bits - 4) else (1 << bits) - 1
    return lut[index.astype(np.intp)], 0.0, float(white)


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
    volume = _nifti_volume(source)
    stack = _display_slices(volume)
    if stack.shape[1] * stack.shape[2] > MAX_PIXELS:
        raise DecodeError(f"image too large ({stack.shape[2]}x{stack.shape[1]} px)")
    return to_uint8(stack, *robust_window(volume))[..., None]


def _display_slices(volume: np.ndarray) -> np.ndarray:
    """Slices (n, H, W) of a canonical RAS+ volume: along the axis of length one when there is one (a single
    slice, whatever its plane), else axial; rows from anterior (or superior) down, columns from the patient's
    right to left (radiological convention)."""
    axis = next((a for a in (2, 1, 0) if volume.shape[a] == 1), 2)
    stack = np.moveaxis(volume, axis, 0)
    return stack[:, ::-1, ::-1].transpose(0, 2, 1)


def _nifti_volume(source: str | os.PathLike | bytes) -> np.ndarray:
    """The float32 volume (3-D, canonical RAS+, non-finite voxels 0) of a NIfTI file. Its header is read and
    its shape checked (`_nifti_header`) before any voxel is read: an uncompressed file from a path is read
    lazily by nibabel (memory-mapped), a gzipped one inflated only as far as the header says it needs."""
    import nibabel
    from nibabel.fileholders import FileHolder
    from nibabel.orientations import apply_orientation, io_orientation

    head = _head(source)
    gzipped = head[:2] == _GZIP
    with _reading("unreadable NIfTI"):
        start = _inflate(head, max(_NIFTI_HEADERS) + 4, _GZIP_WBITS) if gzipped else head
        header, magic = _nifti_header(start), _nifti_magic(start)
        shape = tuple(int(n) for n in header.get_data_shape())
        item = header.get_data_dtype().itemsize
        offset = int(header.get_data_offset())
    _check_shape(shape)
    if magic not in _PAIR_MAGICS:  # nibabel reads a single file's voxels after the header at least
        offset = max(offset, len(header.binaryblock) + 4)
    needed = max(offset, 0) + math.prod(shape) * item
    if needed > MAX_NIFTI_BYTES:
        raise DecodeError(f"NIfTI too large ({needed} bytes of header and voxels, more than {MAX_NIFTI_BYTES})")
    if magic in _PAIR_MAGICS and _is_bytes(source):
        raise DecodeError("NIfTI header without its voxels (a .hdr/.img pair): decode the pair's .hdr file")
    image_class = nibabel.Nifti1Image if magic == b"n+1\x00" else nibabel.Nifti2Image
    with _reading("unreadable NIfTI"), contextlib.ExitStack() as files:
        if magic in _PAIR_MAGICS:
            image = nibabel.load(os.fspath(source))  # lazy: the .img is read by get_fdata
        elif gzipped:
            if _size(source) > MAX_NIFTI_BYTES:  # more compressed bytes than any volume allowed inflates to
                raise DecodeError(f"NIfTI too large ({_size(source)} bytes gzipped, more than {MAX_NIFTI_BYTES})")
            data = bytes(source) if _is_bytes(source) else Path(source).read_bytes()
            image = image_class.from_bytes(_inflate(data, needed, _GZIP_WBITS)[:needed])
            del data
        elif _is_bytes(source):
            image = image_class.from_bytes(bytes(source))
        else:
            handle = files.enter_context(open(source, "rb"))
            image = image_class.from_file_map({"header": FileHolder(fileobj=handle),
                                               "image": FileHolder(fileobj=handle)})
        volume = image.get_fdata(dtype=np.float32).reshape((shape + (1, 1))[:3])
        volume = apply_orientation(volume, io_orientation(image.affine))  # as nibabel.as_closest_canonical
    if not volume.flags.writeable:
        volume = volume.copy()
    return np.nan_to_num(volume, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def _nifti_header(head: bytes):
    """The nibabel header (NIfTI-1 or -2, its byte order from its size field) at the start of `head`, unchecked
    and without extensions: enough for the shape, data type and offset."""
    import nibabel

    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
        if size in _NIFTI_HEADERS:
            if len(head) < size:
                raise DecodeError(f"unreadable NIfTI: header cut short ({len(head)} of {size} bytes)")
            header_class = nibabel.Nifti1Header if size == 348 else nibabel.Nifti2Header
            return header_class(head[:size], endianness=order, check=False)
    raise DecodeError("unreadable NIfTI: no NIfTI header")


def _check_shape(shape: tuple[int, ...]) -> None:
    """`DecodeError` unless `shape` is one volume of at most `MAX_VOXELS` voxels, each dimension positive
    (`math.prod`: NIfTI-2 dimensions are int64, their product can overflow numpy's)."""
    text = "x".join(map(str, shape))
    if not shape or min(shape) <= 0:
        raise DecodeError(f"unreadable NIfTI: invalid dimensions ({text or 'none'})")
    if len(shape) > 3 and any(n > 1 for n in shape[3:]):
        raise DecodeError(f"4-D volume ({shape[3]} volumes): give one 3-D volume" if len(shape) == 4 else
                          f"{len(shape)}-D NIfTI (shape {text}): give one 3-D volume")
    if math.prod(shape) > MAX_VOXELS:
        raise DecodeError(f"volume too large ({text} voxels)")
