"""The one image decoder: what training, `predict`, `explain`, `evaluate` and the SavedModel's `serve_bytes`
signature all do to turn an image file into model pixels.

Two steps, each with one definition:

1. `read_pixels`: decode the file at FULL resolution to uint8 RGB with Pillow: EXIF orientation applied,
   palette and alpha composited on black (the MRI background) as round(rgb * alpha / 255), 16-bit and
   float images min-max stretched to 0-255, everything else converted to RGB. No JPEG draft mode.
   DICOM and NIfTI files, recognised by content, are decoded by `tumorclf.data.medical` (pydicom, nibabel:
   windowed to uint8, grey replicated to RGB); a volume or multi-frame file gives its MIDDLE slice, one
   image per file as training reads it. `read_slices` gives the middle, all (with enough brain) or the
   K-th slice with its index.
2. `resize`: ONE TensorFlow op for both paths, `tf.image.resize(float32, (S, S), "bilinear",
   antialias=True)`, rounded, clipped to 0-255, uint8 (`resize_graph`).

`decode_image(source, size)` is both steps. `decode_bytes_graph` is the same decoder inside a TensorFlow
graph, for encoded bytes sent to a served model (`decode_bytes_graph_with_shape` also returns each image's
size before the resize). Its pixels are identical to `decode_image`'s:

- JPEG: `tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")` is libjpeg's ISLOW IDCT, what Pillow uses
  (TensorFlow's default INTEGER_FAST is not), with fancy upsampling like Pillow.
- PNG: 1-8 bits per channel; with an alpha channel or a tRNS chunk decoded to RGBA (expanded by libpng)
  and composited on black with the same formula as `read_pixels`, otherwise decoded to RGB.
- GIF (first frame; transparent pixels black) and BMP (24/32-bit uncompressed, 8-bit grayscale).
- EXIF orientation is applied in the graph from a JPEG's APP1 Exif segment (else its APP1 XMP
  `tiff:Orientation`, as Pillow does) and from a PNG's eXIf chunk (else an uncompressed iTXt XMP chunk).

Known differences, not detected by the graph (so the graph ignores the orientation and answers for the
image as stored): orientation recorded only in a PNG's "Raw profile type exif" text chunk or in a
compressed (zTXt/compressed iTXt) XMP chunk. Pillow reads those; the graph cannot decompress them.

Formats the graph cannot decode exactly like Pillow make `decode_bytes_graph` fail with an
InvalidArgumentError whose message starts with `GRAPH_ERROR_PREFIX` and names the format: TIFF,
WebP and other formats, 16-bit PNG, CMYK/YCCK JPEG, compressed, paletted or 1/4/16-bit BMP, a GIF
whose first frame does not cover the whole image, images larger than `MAX_PIXELS`, and DICOM and NIfTI
("unrecognised format"). Decode such files with `tumorclf predict`. One refused image fails the whole
request (the signature has no per-image error output).

Change `DECODER_VERSION` whenever the pixels this module produces change: it keys the decoded-image cache.
(Adding DICOM and NIfTI left every other format's pixels as they were, so it stayed "2";
`tumorclf.data.dataset.CACHE_FORMATS` keys the cache on the formats instead.) Changing how `tumorclf.data.medical`
windows, scales or slices DICOM and NIfTI files changes their pixels too: bump `DECODER_VERSION` or
`tumorclf.data.dataset.CACHE_FORMATS` with it (CACHE_FORMATS when no Pillow-decoded format changed, so models
trained on PNG/JPEG data do not warn that their decoder differs).
"""

from __future__ import annotations

import io
import os
import threading

import numpy as np
from PIL import Image, ImageOps

from tumorclf.data import medical  # pydicom and nibabel load only when a DICOM or NIfTI file comes
from tumorclf.data.errors import MAX_PIXELS, DecodeError  # the decoder's own API too: callers import them from here

DECODER_VERSION = "2"  # 1: Pillow draft + Pillow bilinear; 2: full-resolution Pillow + shared TF antialiased resize

GRAPH_FORMATS = ("JPEG (grayscale or RGB/YCbCr; not CMYK), PNG (1-8 bits per channel, any colour type, "
                 "transparency composited on black), GIF (first frame), BMP (uncompressed 24/32-bit, or 8-bit "
                 "grayscale palette)")
GRAPH_ERROR_PREFIX = "serve_bytes cannot decode this image like tumorclf predict:"


# --- Python: Pillow at full resolution ----------------------------------------------------------------------

def read_pixels(source: str | os.PathLike | bytes) -> np.ndarray:
    """Decode one image by its content into uint8 RGB (H, W, 3) at full resolution: the file's only slice,
    or the MIDDLE slice of a volume or multi-frame file (`read_slices`). Raises `DecodeError`.

    One image per file is what training, evaluate, audit and (by default) explain read: a volume's class folder labels the
    file, and not every slice of a tumour volume shows the tumour, so its middle slice stands for it.
    """
    return read_slices(source)[0][1]


def read_slices(source: str | os.PathLike | bytes,
                slices: str | int = "middle") -> list[tuple[int | None, np.ndarray]]:
    """(slice index, uint8 RGB (H, W, 3)) of each chosen slice: `slices` is ``middle``, ``all`` (the slices with
    enough brain) or a 0-based index K (`tumorclf.data.medical.Slices`). DICOM and NIfTI go to `tumorclf.data.medical`;
    a 2-D image (anything Pillow reads, or a file with one slice) is ``[(None, pixels)]`` whatever `slices`
    says. Raises `DecodeError` (also for a K out of range, or `all` finding no slice)."""
    selection = medical.Slices.parse(slices)
    kind = medical.sniff(source)
    if kind is not None:
        try:
            return medical.read_slices(source, kind, selection)
        except medical.NotDicom as refused:  # only a .dcm name said DICOM: a lying extension, Pillow's turn
            return [(None, _pillow_pixels(source, unrecognised=str(refused)))]
    return [(None, _pillow_pixels(source))]


def _pillow_pixels(source: str | os.PathLike | bytes,
                   unrecognised: str = "not an image (unrecognised content)") -> np.ndarray:
    """Any Pillow-readable image to uint8 RGB at full resolution: lying extensions, grayscale, RGBA/LA, palette
    and tRNS transparency (composited on black), 16-bit and float images (min-max stretched), CMYK, and EXIF
    orientation. Content Pillow does not recognise is a `DecodeError` saying `unrecognised`."""
    try:
        stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
        with Image.open(stream) as image:
            if image.width * image.height > MAX_PIXELS:
                raise DecodeError(f"image too large ({image.width}x{image.height} px)")
            return _to_rgb(ImageOps.exif_transpose(image))
    except DecodeError:
        raise
    except Image.UnidentifiedImageError:
        raise DecodeError(unrecognised) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as exc:
        raise DecodeError(f"unreadable image: {exc}") from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any mode to uint8 RGB; transparency is composited onto black as round(rgb * alpha / 255)."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        image = Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("1", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")  # a tRNS colour, as libpng expands it
    if image.mode in ("LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        rgba = np.asarray(image)
        return composite_on_black(rgba[..., :3], rgba[..., 3:])
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def composite_on_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """round(rgb * alpha / 255) in float32: exact (never a tie), and the same formula as the graph's."""
    out = np.round(rgb.astype(np.float32) * alpha.astype(np.float32) / np.float32(255.0))
    return out.astype(np.uint8)


_RESIZE = None
_RESIZE_LOCK = threading.Lock()


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) to uint8 (size, size, 3) with the shared TensorFlow op (thread-safe)."""
    global _RESIZE
    if _RESIZE is None:
        with _RESIZE_LOCK:
            if _RESIZE is None:
                import tensorflow as tf

                _RESIZE = tf.function(resize_graph, input_signature=[
                    tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((), tf.int32)])
    return _RESIZE(np.ascontiguousarray(pixels, dtype=np.uint8), np.int32(size)).numpy()


def decode_image(source: str | os.PathLike | bytes, size: int) -> np.ndarray:
    """`read_pixels` then `resize`: uint8 RGB (size, size, 3). Raises `DecodeError`."""
    return resize(read_pixels(source), size)


def decode_slices(source: str | os.PathLike | bytes, size: int,
                  slices: str | int = "middle") -> list[tuple[int | None, np.ndarray, int]]:
    """`read_slices` then `resize`: (slice index, uint8 RGB (size, size, 3), the slice's short side) of each
    chosen slice; the quality gate's too_small needs the size before the resize. Raises `DecodeError`."""
    return [(index, resize(pixels, size), min(pixels.shape[:2])) for index, pixels in read_slices(source, slices)]


# --- TensorFlow: the shared resize and the serving graph ----------------------------------------------------

def resize_graph(pixels, size):
    """THE resize: uint8 [H, W, 3] (or [N, H, W, 3]) to uint8 [size, size, 3], antialiased bilinear."""
    import tensorflow as tf

    resized = tf.image.resize(tf.cast(pixels, tf.float32), tf.stack([size, size]), method="bilinear",
                              antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


# format codes of the graph decoder
_UNKNOWN, _JPEG, _PNG, _GIF, _BMP, _TIFF, _WEBP = range(7)
# reasons the graph refuses an image (index 0: accepted)
_REASONS = (
    "",
    "TIFF is not supported",
    "WebP is not supported",
    "unrecognised format (not JPEG, PNG, GIF or BMP)",
    "16-bit PNG is not supported (its min-max stretch needs the whole image)",
    "CMYK/YCCK JPEG (4 components) is not supported",
    "compressed BMP is not supported",
    "BMP with this bit depth is not supported (only 24/32-bit, or 8-bit with a grayscale palette)",
    "BMP with a colour palette is not supported (only an 8-bit grayscale palette)",
    f"image too large (more than {MAX_PIXELS} pixels)",
    "OS/2 BMP header is not supported",
    "GIF whose first frame does not cover the whole image is not supported",
)
(_OK, _R_TIFF, _R_WEBP, _R_UNKNOWN, _R_PNG16, _R_CMYK, _R_BMP_COMPRESSED, _R_BMP_DEPTH, _R_BMP_PALETTE,
 _R_TOO_LARGE, _R_BMP_OS2, _R_GIF_FRAME) = range(len(_REASONS))
_ORIENTATION_TAG = 0x0112
_MAX_IFD_ENTRIES = 1024


def decode_bytes_graph(encoded, size: int):
    """Encoded images (tf.string [N]) to float32 0-255 RGB [N, size, size, 3], pixel-identical to
    `decode_image` for the formats of `GRAPH_FORMATS`; others fail with an InvalidArgumentError whose
    message starts with `GRAPH_ERROR_PREFIX` and names the format."""
    import tensorflow as tf

    size = int(size)
    return tf.map_fn(lambda data: tf.cast(_decode_one(data, size), tf.float32), encoded,
                     fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32))


def decode_bytes_graph_with_shape(encoded, size: int):
    """`decode_bytes_graph`'s pixels, and each image's int32 (height, width) before the resize (after EXIF
    orientation, as `read_pixels` returns it): the quality gate's `too_small` needs the file's own size,
    which the resized pixels no longer tell."""
    import tensorflow as tf

    size = int(size)

    def one(data):
        pixels = _decode_full(data)
        return tf.cast(_resized(pixels, size), tf.float32), tf.shape(pixels, out_type=tf.int32)[:2]

    return tf.map_fn(one, encoded, fn_output_signature=(tf.TensorSpec((size, size, 3), tf.float32),
                                                        tf.TensorSpec((2,), tf.int32)))


def _decode_one(data, size: int):
    return _resized(_decode_full(data), size)


def _resized(pixels, size: int):
    import tensorflow as tf

    return tf.ensure_shape(resize_graph(pixels, tf.constant(size, tf.int32)), (size, size, 3))


def _decode_full(data):
    """One encoded image to uint8 [H, W, 3] at full resolution, EXIF orientation applied (what `read_pixels`
    gives), or an InvalidArgumentError naming a format the graph cannot decode like Pillow."""
    import tensorflow as tf

    b = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32)
    n = tf.size(b)
    b = tf.concat([b, [0]], 0)  # out-of-range reads give this 0
    fmt = _sniff(b, n)
    # per format: (reason to refuse or _OK, EXIF orientation, whether a PNG has alpha or tRNS transparency)
    no, one = tf.constant(False), tf.constant(1)
    reason, orientation, alpha = tf.switch_case(fmt, [
        lambda: (tf.constant(_R_UNKNOWN), one, no),
        lambda: (*_jpeg_facts(data, b, n), no),
        lambda: _png_facts(b, n),
        lambda: (_gif_reason(b, n), one, no),
        lambda: (_bmp_reason(b, n), one, no),
        lambda: (tf.constant(_R_TIFF), one, no),
        lambda: (tf.constant(_R_WEBP), one, no),
    ])
    message = tf.strings.join([f"{GRAPH_ERROR_PREFIX} ", tf.gather(tf.constant(_REASONS), reason),
                               f"; it accepts {GRAPH_FORMATS}; use tumorclf predict for other files"])
    check = tf.debugging.Assert(tf.equal(reason, _OK), [message])
    with tf.control_dependencies([check]):
        data = tf.identity(data)
        fmt = tf.identity(fmt)
    pixels = tf.switch_case(tf.clip_by_value(fmt - 1, 0, 3), [
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        # RGBA only when there is transparency: TensorFlow's added alpha is wrong (1, 3, 15) below 8 bits
        lambda: tf.cond(alpha, lambda: _composite_graph(tf.io.decode_png(data, channels=4)),
                        lambda: tf.io.decode_png(data, channels=3)),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    ])
    return _orient(tf.ensure_shape(pixels, (None, None, 3)), orientation)


def _composite_graph(rgba):
    import tensorflow as tf

    rgb, alpha = tf.cast(rgba[..., :3], tf.float32), tf.cast(rgba[..., 3:], tf.float32)
    return tf.cast(tf.round(rgb * alpha / 255.0), tf.uint8)


# byte readers on the int32 array of a file's bytes (plus one padding 0); out-of-range reads give 0
def _gather_bytes(b, n, idx):
    import tensorflow as tf

    ok = tf.logical_and(idx >= 0, idx < n)
    return tf.gather(b, tf.where(ok, idx, n))  # b ends with one padding 0 at index n


def _u16le(b, n, i):
    return _gather_bytes_sum(b, n, i, (0, 8))


def _u16be(b, n, i):
    return _gather_bytes_sum(b, n, i, (8, 0))


def _u32le(b, n, i):
    return _gather_bytes_sum(b, n, i, (0, 8, 16, 24))


def _u32be(b, n, i):
    return _gather_bytes_sum(b, n, i, (24, 16, 8, 0))


def _gather_bytes_sum(b, n, i, shifts):
    import tensorflow as tf

    i = tf.convert_to_tensor(i, tf.int32)
    total = tf.zeros_like(i)
    for k, shift in enumerate(shifts):
        total = total + tf.bitwise.left_shift(_gather_bytes(b, n, i + k), shift)
    return total


def _starts_with(b, n, i, prefix: bytes):
    import tensorflow as tf

    idx = tf.convert_to_tensor(i, tf.int32) + tf.range(len(prefix), dtype=tf.int32)
    return tf.reduce_all(tf.equal(_gather_bytes(b, n, idx), tf.constant(list(prefix), tf.int32)))


def _sniff(b, n):
    """Format code from the magic bytes (as Pillow and tf.io.decode_image recognise them)."""
    import tensorflow as tf

    checks = [
        (_JPEG, _starts_with(b, n, 0, b"\xff\xd8\xff")),
        (_PNG, _starts_with(b, n, 0, b"\x89PNG\r\n\x1a\n")),
        (_GIF, tf.logical_or(_starts_with(b, n, 0, b"GIF87a"), _starts_with(b, n, 0, b"GIF89a"))),
        (_BMP, _starts_with(b, n, 0, b"BM")),
        (_TIFF, tf.logical_or(_starts_with(b, n, 0, b"II*\x00"), _starts_with(b, n, 0, b"MM\x00*"))),
        (_WEBP, tf.logical_and(_starts_with(b, n, 0, b"RIFF"), _starts_with(b, n, 8, b"WEBP"))),
    ]
    fmt = tf.constant(_UNKNOWN)
    for code, matched in reversed(checks):
        fmt = tf.where(matched, code, fmt)
    return fmt


def _pixels(height, width):
    import tensorflow as tf

    return tf.cast(tf.abs(height), tf.int64) * tf.cast(tf.abs(width), tf.int64)


def _jpeg_facts(data, b, n):
    """(refusal reason, EXIF orientation) of a JPEG: walk the markers up to the first scan."""
    import tensorflow as tf

    shape = tf.io.extract_jpeg_shape(data)
    reason = tf.where(tf.equal(shape[2], 4), _R_CMYK,
                      tf.where(_pixels(shape[0], shape[1]) > MAX_PIXELS, _R_TOO_LARGE, _OK))

    def cond(pos, done, exif, xmp_off, xmp_len):
        return tf.logical_and(tf.logical_not(done), pos + 4 <= n)

    def body(pos, done, exif, xmp_off, xmp_len):
        lead, marker = _gather_bytes(b, n, pos), _gather_bytes(b, n, pos + 1)
        length = _u16be(b, n, pos + 2)
        standalone = tf.logical_or(tf.equal(marker, 0x01), tf.logical_and(marker >= 0xD0, marker <= 0xD8))
        end = tf.logical_or(tf.not_equal(lead, 0xFF), tf.logical_or(tf.equal(marker, 0xDA), tf.equal(marker, 0xD9)))
        app1 = tf.equal(marker, 0xE1)
        is_exif = tf.logical_and(tf.logical_and(app1, exif < 0), _starts_with(b, n, pos + 4, b"Exif\x00\x00"))
        xmp_prefix = b"http://ns.adobe.com/xap/1.0/\x00"
        is_xmp = tf.logical_and(app1, _starts_with(b, n, pos + 4, xmp_prefix))
        exif = tf.where(is_exif, pos + 10, exif)
        xmp_off = tf.where(is_xmp, pos + 4 + len(xmp_prefix), xmp_off)
        xmp_len = tf.where(is_xmp, length - 2 - len(xmp_prefix), xmp_len)
        step = tf.where(tf.equal(marker, 0xFF), 1, tf.where(standalone, 2, 2 + tf.maximum(length, 2)))
        return pos + step, end, exif, xmp_off, xmp_len

    _, _, exif, xmp_off, xmp_len = tf.while_loop(
        cond, body, (tf.constant(2), tf.constant(False), tf.constant(-1), tf.constant(-1), tf.constant(0)))
    return reason, _orientation(b, n, exif, xmp_off, xmp_len)


def _png_facts(b, n):
    """(refusal reason, EXIF orientation, transparency) of a PNG: IHDR bit depth, colour type and size, and
    a walk over the chunks (eXIf, iTXt XMP, tRNS)."""
    import tensorflow as tf

    width, height, depth, colour = _u32be(b, n, 16), _u32be(b, n, 20), _gather_bytes(b, n, 24), _gather_bytes(b, n, 25)
    reason = tf.where(tf.equal(depth, 16), _R_PNG16, tf.where(_pixels(height, width) > MAX_PIXELS, _R_TOO_LARGE, _OK))
    xmp_key = b"XML:com.adobe.xmp\x00"

    def cond(pos, done, exif, xmp_off, xmp_len, trns):
        return tf.logical_and(tf.logical_not(done), pos + 8 <= n)

    def body(pos, done, exif, xmp_off, xmp_len, trns):
        length = _u32be(b, n, pos)
        trns = tf.logical_or(trns, _starts_with(b, n, pos + 4, b"tRNS"))
        is_exif = tf.logical_and(exif < 0, _starts_with(b, n, pos + 4, b"eXIf"))
        # iTXt: keyword NUL, compression flag, method, language NUL, translated keyword NUL, text
        is_xmp = tf.logical_and(_starts_with(b, n, pos + 4, b"iTXt"),
                                tf.logical_and(_starts_with(b, n, pos + 8, xmp_key),
                                               tf.equal(_gather_bytes(b, n, pos + 8 + len(xmp_key)), 0)))
        # Pillow also reads an eXIf chunk that wrongly starts with JPEG's "Exif\0\0"
        exif = tf.where(is_exif, pos + 8 + tf.where(_starts_with(b, n, pos + 8, b"Exif\x00\x00"), 6, 0), exif)
        xmp_off = tf.where(is_xmp, pos + 8, xmp_off)
        xmp_len = tf.where(is_xmp, length, xmp_len)
        done = tf.logical_or(_starts_with(b, n, pos + 4, b"IEND"), length < 0)
        return pos + 12 + tf.maximum(length, 0), done, exif, xmp_off, xmp_len, trns

    _, _, exif, xmp_off, xmp_len, trns = tf.while_loop(cond, body, (
        tf.constant(8), tf.constant(False), tf.constant(-1), tf.constant(-1), tf.constant(0), tf.constant(False)))
    alpha = tf.logical_or(trns, tf.logical_or(tf.equal(colour, 4), tf.equal(colour, 6)))
    return reason, _orientation(b, n, exif, xmp_off, xmp_len), alpha


def _orientation(b, n, exif, xmp_off, xmp_len):
    """EXIF orientation (1-8; 1 when absent or not a valid value), as Pillow's `exif_transpose` reads it:
    IFD0 tag 0x0112 of the TIFF block at `exif` (-1: none), else the first `tiff:Orientation="D"` or
    `tiff:Orientation>D` in the XMP bytes at `xmp_off` (-1: none)."""
    import tensorflow as tf

    little = _starts_with(b, n, exif, b"II*\x00")
    big = _starts_with(b, n, exif, b"MM\x00*")
    valid = tf.logical_and(exif >= 0, tf.logical_or(little, big))

    def u16(i):
        return tf.where(little, _u16le(b, n, i), _u16be(b, n, i))

    def u32(i):
        return tf.where(little, _u32le(b, n, i), _u32be(b, n, i))

    ifd = exif + u32(exif + 4)
    count = tf.where(valid, tf.clip_by_value(u16(ifd), 0, _MAX_IFD_ENTRIES), 0)
    entries = ifd + 2 + 12 * tf.range(count, dtype=tf.int32)
    hit = tf.equal(u16(entries), _ORIENTATION_TAG)
    found = tf.reduce_any(hit)
    entry = tf.gather(tf.concat([tf.boolean_mask(entries, hit), [0]], 0), 0)
    kind, number = u16(entry + 2), u32(entry + 4)
    value = tf.where(tf.equal(kind, 3), u16(entry + 8),
                     tf.where(tf.equal(kind, 4), u32(entry + 8),
                              tf.where(tf.equal(kind, 1), _gather_bytes(b, n, entry + 8), -1)))
    value = tf.where(tf.equal(number, 1), value, -1)
    from_exif = tf.logical_and(valid, found)
    orientation = tf.where(from_exif, value, _xmp_orientation(b, n, xmp_off, xmp_len))
    return tf.where(tf.logical_and(orientation >= 1, orientation <= 8), orientation, 1)


def _xmp_orientation(b, n, off, length):
    """The digit after the first `tiff:Orientation="` or `tiff:Orientation>` in b[off:off+length] (-1: none)."""
    import tensorflow as tf

    key = b"tiff:Orientation"
    length = tf.where(off >= 0, tf.clip_by_value(length, 0, n - tf.maximum(off, 0)), 0)
    starts = off + tf.range(tf.maximum(length - len(key) - 1, 0), dtype=tf.int32)
    hit = tf.ones_like(starts, tf.bool)
    for k, char in enumerate(key):
        hit = tf.logical_and(hit, tf.equal(_gather_bytes(b, n, starts + k), char))
    after = _gather_bytes(b, n, starts + len(key))
    quoted = tf.logical_and(tf.equal(after, ord("=")), tf.equal(_gather_bytes(b, n, starts + len(key) + 1), ord('"')))
    digit_at = tf.where(quoted, starts + len(key) + 2, starts + len(key) + 1)
    digit = _gather_bytes(b, n, digit_at) - ord("0")
    hit = tf.logical_and(hit, tf.logical_or(quoted, tf.equal(after, ord(">"))))
    hit = tf.logical_and(hit, tf.logical_and(digit >= 0, digit <= 9))
    hit = tf.logical_and(hit, digit_at < off + length)
    return tf.gather(tf.concat([tf.boolean_mask(digit, hit), [-1]], 0), 0)


def _orient(pixels, orientation):
    """Apply EXIF orientation 1-8 like Pillow's `exif_transpose`."""
    import tensorflow as tf

    return tf.switch_case(orientation - 1, [
        lambda: pixels,
        lambda: tf.reverse(pixels, [1]),  # 2 FLIP_LEFT_RIGHT
        lambda: tf.reverse(pixels, [0, 1]),  # 3 ROTATE_180
        lambda: tf.reverse(pixels, [0]),  # 4 FLIP_TOP_BOTTOM
        lambda: tf.transpose(pixels, [1, 0, 2]),  # 5 TRANSPOSE
        lambda: tf.reverse(tf.transpose(pixels, [1, 0, 2]), [1]),  # 6 ROTATE_270 (90 degrees clockwise)
        lambda: tf.reverse(tf.transpose(pixels, [1, 0, 2]), [0, 1]),  # 7 TRANSVERSE
        lambda: tf.reverse(tf.transpose(pixels, [1, 0, 2]), [0]),  # 8 ROTATE_90 (counter-clockwise)
    ])


def _gif_reason(b, n):
    """Why a GIF cannot be decoded like Pillow (0: it can): its first frame must cover the logical screen,
    whose uncovered part Pillow and TensorFlow fill differently."""
    import tensorflow as tf

    width, height, flags = _u16le(b, n, 6), _u16le(b, n, 8), _gather_bytes(b, n, 10)
    table = tf.where(tf.bitwise.bitwise_and(flags, 0x80) > 0,
                     3 * tf.bitwise.left_shift(2, tf.bitwise.bitwise_and(flags, 7)), 0)

    def cond(pos, in_extension, descriptor):
        return tf.logical_and(descriptor < 0, pos < n)

    def body(pos, in_extension, descriptor):
        byte = _gather_bytes(b, n, pos)
        # inside an extension: data sub-blocks (size byte, data) up to a 0 size; else 0x21 starts an
        # extension (introducer, label), 0x2C is the first image descriptor, anything else ends the walk
        step = tf.where(in_extension, 1 + byte, tf.where(tf.equal(byte, 0x21), 2, 1))
        descriptor = tf.where(tf.logical_and(tf.logical_not(in_extension), tf.not_equal(byte, 0x21)),
                              tf.where(tf.equal(byte, 0x2C), pos, n), descriptor)
        in_extension = tf.where(in_extension, tf.not_equal(byte, 0), tf.equal(byte, 0x21))
        return pos + step, in_extension, descriptor

    _, _, at = tf.while_loop(cond, body, (13 + table, tf.constant(False), tf.constant(-1)))
    covers = tf.reduce_all(tf.stack([
        tf.equal(_u16le(b, n, at + 1), 0), tf.equal(_u16le(b, n, at + 3), 0),
        tf.equal(_u16le(b, n, at + 5), width), tf.equal(_u16le(b, n, at + 7), height)]))
    reason = tf.where(tf.logical_and(at < n, tf.logical_not(covers)), _R_GIF_FRAME, _OK)
    return tf.where(tf.logical_and(tf.equal(reason, _OK), _pixels(height, width) > MAX_PIXELS), _R_TOO_LARGE, reason)


def _bmp_reason(b, n):
    """Why a BMP cannot be decoded like Pillow (0: it can)."""
    import tensorflow as tf

    header = _u32le(b, n, 14)
    width, height = _u32le(b, n, 18), _u32le(b, n, 22)  # int32 (height < 0: top-down)
    bits, compression, colours = _u16le(b, n, 28), _u32le(b, n, 30), _u32le(b, n, 46)
    palette = 14 + header + 4 * tf.range(256, dtype=tf.int32)
    gray = tf.range(256, dtype=tf.int32)
    gray_palette = tf.logical_and(
        tf.logical_or(tf.equal(colours, 0), tf.equal(colours, 256)),
        tf.reduce_all(tf.stack([tf.equal(_gather_bytes(b, n, palette + k), gray) for k in range(3)])))
    reason = tf.constant(_OK)
    reason = tf.where(tf.logical_and(tf.equal(bits, 8), tf.logical_not(gray_palette)), _R_BMP_PALETTE, reason)
    reason = tf.where(tf.logical_not(tf.reduce_any(tf.equal(bits, [8, 24, 32]))), _R_BMP_DEPTH, reason)
    reason = tf.where(tf.not_equal(compression, 0), _R_BMP_COMPRESSED, reason)
    reason = tf.where(header < 40, _R_BMP_OS2, reason)
    return tf.where(tf.logical_and(tf.equal(reason, _OK), _pixels(height, width) > MAX_PIXELS), _R_TOO_LARGE, reason)
