"""The one decoder: Python (Pillow + the shared resize) and the serving graph give the same pixels."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, PngImagePlugin

from tumorclf.data import dataset as data

from tumorclf.data import decoder
from tumorclf.data.decoder import DecodeError, decode_bytes_graph, decode_image, read_pixels, resize


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def scan(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise, like a slice: resizing and JPEG both have something to do."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    base = 120 + 90 * np.sin(xx / 6.0)[..., None] * np.cos(yy / 4.0)[..., None] + rng.normal(0, 12, (height, width, 3))
    base[..., 1] *= 0.8
    return base.clip(0, 255).astype(np.uint8)


_GRAPHS: dict[int, tf.types.experimental.ConcreteFunction] = {}


def graph_decode(blobs: list[bytes], size: int) -> np.ndarray:
    if size not in _GRAPHS:
        _GRAPHS[size] = tf.function(lambda b: decode_bytes_graph(b, size), autograph=False,  # graph ops already
                                    input_signature=[tf.TensorSpec([None], tf.string)]).get_concrete_function()
    return _GRAPHS[size](tf.constant(blobs)).numpy()


def with_exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def lossless_cases(height: int, width: int) -> dict[str, bytes]:
    rgb = scan(height, width)
    alpha = np.random.default_rng(1).integers(0, 256, (height, width), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(60)
    palette_alpha = bytes(range(0, 240, 4))  # a partial alpha per palette entry (tRNS)
    return {
        "png-rgb": encoded(Image.fromarray(rgb), "PNG"),
        "png-gray": encoded(Image.fromarray(rgb[..., 0]), "PNG"),
        "png-rgba": encoded(Image.fromarray(np.dstack([rgb, alpha])), "PNG"),
        "png-gray-alpha": encoded(Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA"), "PNG"),
        "png-palette": encoded(palette, "PNG"),
        "png-palette-alpha": encoded(palette, "PNG", transparency=palette_alpha),
        "png-rgb-trns": encoded(Image.fromarray(rgb), "PNG", transparency=tuple(int(v) for v in rgb[0, 0])),
        "png-1bit": encoded(Image.fromarray(rgb[..., 0] > 120), "PNG"),
        "png-4bit-palette": encoded(Image.fromarray(rgb).quantize(16), "PNG", bits=4),
        "gif": encoded(palette, "GIF"),
        "gif-gray": encoded(Image.fromarray(rgb[..., 0]), "GIF"),
        "gif-transparent": encoded(palette, "GIF", transparency=3),
        "gif-animated": encoded(palette, "GIF", save_all=True, duration=50,
                                append_images=[Image.fromarray(scan(height, width, 2)).quantize(60)]),
        "bmp-24": encoded(Image.fromarray(rgb), "BMP"),
        "bmp-32": encoded(Image.fromarray(np.dstack([rgb, alpha])), "BMP"),
        "bmp-8-gray": encoded(Image.fromarray(rgb[..., 0]), "BMP"),
    }


def jpeg_cases(height: int, width: int) -> dict[str, bytes]:
    rgb = scan(height, width)
    return {
        "jpeg-rgb": encoded(Image.fromarray(rgb), "JPEG", quality=90),
        "jpeg-gray": encoded(Image.fromarray(rgb[..., 0]), "JPEG", quality=90),
        "jpeg-progressive": encoded(Image.fromarray(rgb), "JPEG", quality=75, progressive=True),
        "jpeg-444": encoded(Image.fromarray(rgb), "JPEG", quality=95, subsampling=0),
    }


SHAPES = [(31, 57), (48, 48), (130, 90), (300, 420)]  # smaller, equal to and larger than the sizes below


@pytest.mark.parametrize("height, width", SHAPES, ids=[f"{h}x{w}" for h, w in SHAPES])
def test_graph_and_python_decoders_give_identical_pixels(height: int, width: int):
    cases = {**lossless_cases(height, width), **jpeg_cases(height, width)}
    for size in (48, 96):
        python = np.stack([decode_image(blob, size) for blob in cases.values()])
        graph = graph_decode(list(cases.values()), size)
        assert graph.dtype == np.float32 and graph.shape == (len(cases), size, size, 3)
        different = [name for name, p, g in zip(cases, python, graph) if not np.array_equal(p.astype(np.float32), g)]
        assert different == [], f"graph and Python pixels differ at {size} px for {different}"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied_in_the_graph_too(fmt: str):
    rgb = scan(40, 70)
    blobs = [encoded(Image.fromarray(rgb), fmt, exif=with_exif_orientation(value)) for value in range(1, 9)]
    python = np.stack([decode_image(blob, 32) for blob in blobs])
    np.testing.assert_array_equal(graph_decode(blobs, 32), python.astype(np.float32))
    # every orientation is a different image (the rotation or flip really happened)
    assert len({p.tobytes() for p in python}) == 8


def test_xmp_orientation_is_read_like_pillow():
    rgb = scan(40, 70)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="8"/></x:xmpmeta>'
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta><tiff:Orientation>6</tiff:Orientation></x:xmpmeta>", zip=False)
    blobs = [encoded(Image.fromarray(rgb), "JPEG", xmp=xmp), encoded(Image.fromarray(rgb), "PNG", pnginfo=info)]
    python = np.stack([decode_image(blob, 32) for blob in blobs])
    np.testing.assert_array_equal(graph_decode(blobs, 32), python.astype(np.float32))
    assert read_pixels(blobs[0]).shape == (70, 40, 3) and read_pixels(blobs[1]).shape == (70, 40, 3)


def gif_with_a_smaller_first_frame(pixels: np.ndarray) -> bytes:
    """A GIF whose logical screen is larger than its first frame (Pillow and TensorFlow fill the rest
    differently)."""
    import struct

    gif = bytearray(encoded(Image.fromarray(pixels).quantize(60), "GIF", transparency=5))
    gif[6:10] = struct.pack("<HH", pixels.shape[1] + 10, pixels.shape[0] + 6)
    frame = gif.index(b",", 13)  # the first image descriptor, after the graphic control extension
    gif[frame + 1 : frame + 5] = struct.pack("<HH", 4, 3)
    return bytes(gif)


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda a: encoded(Image.fromarray(a), "TIFF"), "TIFF is not supported"),
        (lambda a: encoded(Image.fromarray(a[..., 0].astype(np.uint16) * 200), "PNG"), "16-bit PNG"),
        (lambda a: encoded(Image.fromarray(a).convert("CMYK"), "JPEG"), "CMYK/YCCK JPEG"),
        (lambda a: encoded(Image.fromarray(a), "WEBP"), "WebP"),
        (lambda a: encoded(Image.fromarray(a).quantize(20), "BMP"), "BMP with a colour palette"),
        (lambda a: encoded(Image.fromarray(a[..., 0] > 100), "BMP"), "BMP with this bit depth"),
        (lambda a: gif_with_a_smaller_first_frame(a), "GIF whose first frame does not cover"),
        (lambda a: b"<html>404</html>", "unrecognised format"),
        (lambda a: b"", "unrecognised format"),
    ],
    ids=["tiff", "png-16bit", "cmyk-jpeg", "webp", "bmp-palette", "bmp-1bit", "gif-partial-frame", "html", "empty"],
)
def test_graph_refuses_what_it_cannot_decode_like_pillow(make, named: str):
    blob = make(scan(20, 30))
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{decoder.GRAPH_ERROR_PREFIX} {named}"):
        graph_decode([encoded(Image.fromarray(scan(20, 30)), "PNG"), blob], 16)


def test_decode_image_is_read_pixels_then_resize(tmp_path: Path):
    cases = {**lossless_cases(70, 50), **jpeg_cases(70, 50)}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        for size in (24, 70, 100):
            expected = resize(read_pixels(blob), size)
            assert expected.shape == (size, size, 3) and expected.dtype == np.uint8
            np.testing.assert_array_equal(decode_image(blob, size), expected)
            np.testing.assert_array_equal(decode_image(tmp_path / name, size), expected)


def test_read_pixels_is_full_resolution_without_jpeg_draft():
    blob = encoded(Image.fromarray(scan(600, 800)), "JPEG")
    pixels = read_pixels(blob)
    assert pixels.shape == (600, 800, 3) and pixels.dtype == np.uint8
    with Image.open(io.BytesIO(blob)) as image:  # Pillow's full decode, same IDCT
        np.testing.assert_array_equal(pixels, np.asarray(image.convert("RGB")))


def test_alpha_and_trns_are_composited_on_black_by_rounding():
    rgb = scan(10, 12)
    alpha = np.random.default_rng(3).integers(0, 256, (10, 12), dtype=np.uint8)
    out = read_pixels(encoded(Image.fromarray(np.dstack([rgb, alpha])), "PNG"))
    expected = np.floor(rgb.astype(np.int64) * alpha[..., None] / 255 + 0.5)  # never a tie: 255 is odd
    np.testing.assert_array_equal(out, expected)
    key = tuple(int(v) for v in rgb[0, 0])
    out = read_pixels(encoded(Image.fromarray(rgb), "PNG", transparency=key))
    assert out[0, 0].tolist() == [0, 0, 0] and (out[np.all(rgb != key, axis=-1)] > 0).any()


def test_sixteen_bit_images_are_stretched():
    ramp = np.tile(np.linspace(1000, 3000, 64).astype(np.uint16), (8, 1))
    out = read_pixels(encoded(Image.fromarray(ramp), "PNG"))
    assert out.shape == (8, 64, 3) and out[:, 0].max() == 0 and out[:, -1].min() == 255


def test_resize_is_antialiased_and_identity_at_the_same_size():
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    checker = np.repeat(checker[..., None], 3, axis=-1)
    small = resize(checker, 16)
    assert np.abs(small.astype(int) - 127.5).max() <= 1  # averaged, not aliased to 0 or 255
    image = scan(33, 33)
    np.testing.assert_array_equal(resize(image, 33), image)


def test_resize_is_thread_safe():
    images = [scan(50 + i, 70 - i, seed=i) for i in range(12)]
    serial = [resize(image, 40) for image in images]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda image: resize(image, 40), images))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_errors_and_limits(monkeypatch):
    with pytest.raises(DecodeError, match="not an image"):
        read_pixels(b"not an image")
    monkeypatch.setattr(decoder, "MAX_PIXELS", 100)
    with pytest.raises(DecodeError, match="too large"):
        decode_image(encoded(Image.new("L", (20, 20)), "PNG"), 8)


def test_data_uses_this_decoder_and_its_version_keys_the_cache(blob_dataset: Path, monkeypatch, tmp_path: Path):
    assert data.decode_image is decoder.decode_image and data.DecodeError is decoder.DecodeError
    assert data.DECODER_VERSION == decoder.DECODER_VERSION == "2"
    cache = tmp_path / "cache"
    first = data.load_dataset(blob_dataset, 24, cache_dir=cache)
    entries = sorted(cache.iterdir())
    monkeypatch.setattr(data, "DECODER_VERSION", "test-next")
    second = data.load_dataset(blob_dataset, 24, cache_dir=cache)
    assert len(sorted(cache.iterdir())) == len(entries) + 1  # a new decoder never reuses an old entry
    np.testing.assert_array_equal(first.images(), second.images())
    path = blob_dataset / first.paths[0]
    np.testing.assert_array_equal(first.images(np.array([0]))[0], decode_image(path, 24))


def test_low_bit_depth_png_with_and_without_transparency():
    gray = scan(21, 35)[..., 0]
    blobs = {
        "1bit-trns": encoded(Image.fromarray(gray > 120), "PNG", transparency=0),
        "2bit-gray": encoded(Image.fromarray(gray // 64 * 85), "PNG", bits=2),
        "4bit-gray": encoded(Image.fromarray(gray // 16 * 17), "PNG", bits=4),
        "4bit-palette-trns": encoded(Image.fromarray(scan(21, 35)).quantize(16), "PNG", bits=4, transparency=2),
    }
    python = np.stack([decode_image(blob, 16) for blob in blobs.values()])
    np.testing.assert_array_equal(graph_decode(list(blobs.values()), 16), python.astype(np.float32))


def test_png_exif_chunk_after_the_image_data_is_applied_in_both():
    import struct
    import zlib

    png = encoded(Image.fromarray(scan(20, 30)), "PNG")
    end = png.rindex(b"IEND") - 4
    blobs = []
    for exif in (with_exif_orientation(6)[6:], with_exif_orientation(8)):  # as the spec says, and JPEG-style
        chunk = struct.pack(">I", len(exif)) + b"eXIf" + exif + struct.pack(">I", zlib.crc32(b"eXIf" + exif))
        blobs.append(png[:end] + chunk + png[end:])
    python = np.stack([decode_image(blob, 16) for blob in blobs])
    assert read_pixels(blobs[0]).shape == read_pixels(blobs[1]).shape == (30, 20, 3)
    np.testing.assert_array_equal(graph_decode(blobs, 16), python.astype(np.float32))
