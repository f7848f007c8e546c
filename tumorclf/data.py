"""Find the class folders, decode images by content, and cache the decoded pixels on disk."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tumorclf.errors import UserError

log = logging.getLogger(__name__)

CLASS_NAMES = ("Healthy", "Tumor")
TUMOR_WORDS = {"tumor", "tumour", "tumors", "cancer", "yes", "glioma", "meningioma", "pituitary", "positive"}
HEALTHY_WORDS = {"healthy", "normal", "no", "not", "non", "negative", "none", "notumor", "nontumor", "without"}
MAX_PIXELS = 50_000_000  # larger than any sane slice; guards against decompression bombs
DECODER_VERSION = "1"  # bump when decode_image changes, so old caches are not reused


class DataError(UserError, ValueError):
    """The data folder cannot be used as given; the message says why."""


class DecodeError(ValueError):
    """One file cannot be decoded into an image; the message is the reason."""


@dataclass(frozen=True)
class ClassFolders:
    healthy: Path
    tumor: Path
    how: str  # how the assignment was decided, for the log and the config


@dataclass
class Dataset:
    """Decoded, labelled images of one data folder. Byte-identical files share one image."""

    root: Path
    folders: ClassFolders
    paths: list[str]  # relative to root, usable files only
    labels: np.ndarray  # int64, 0 = Healthy, 1 = Tumor
    sha256: list[str]
    image_index: np.ndarray  # row of `unique_images` for each file
    unique_images: np.ndarray  # uint8 (n_unique, size, size, 3)
    skipped: list[tuple[str, str]]  # (relative path, reason)

    def images(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Pixels (uint8, NHWC) of the files at `rows` (all files when None)."""
        index = self.image_index if rows is None else self.image_index[rows]
        return self.unique_images[index]

    def __len__(self) -> int:
        return len(self.paths)


def find_class_folders(root: Path, classes: tuple[str, str] | None = None) -> ClassFolders:
    """Decide which sub-folder is Healthy (0) and which is Tumor (1)."""
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    if classes is not None:
        healthy, tumor = (root / name for name in classes)
        for folder in (healthy, tumor):
            if not folder.is_dir():
                raise DataError(f"class folder named by --classes not found: {folder}")
        return ClassFolders(healthy, tumor, f"given by --classes: healthy={classes[0]!r}, tumor={classes[1]!r}")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(subdirs) != 2:
        names = ", ".join(p.name for p in subdirs) or "none"
        raise DataError(
            f"expected exactly two class folders in {root}, found {len(subdirs)} ({names}); "
            "name them with --classes HEALTHY_FOLDER TUMOR_FOLDER"
        )
    healthy = [p for p in subdirs if HEALTHY_WORDS & set(re.split(r"[^a-z0-9]+", p.name.lower()))]
    if len(healthy) != 1:
        raise DataError(
            f"cannot tell which of {subdirs[0].name!r} and {subdirs[1].name!r} is the healthy class "
            "(a healthy folder's name contains healthy/normal/no/not); "
            "name them with --classes HEALTHY_FOLDER TUMOR_FOLDER"
        )
    tumor = next(p for p in subdirs if p != healthy[0])
    return ClassFolders(healthy[0], tumor, f"from folder names: healthy={healthy[0].name!r}, tumor={tumor.name!r}")


def files_below(folder: Path) -> list[Path]:
    """Every non-hidden file below `folder` (hidden folders skipped too), sorted."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, and every non-hidden file below each folder."""
    return [f for item in inputs for f in (files_below(item) if item.is_dir() else [item])]


def label_from_folder(path: Path) -> int | None:
    """The true label implied by a file's class folder name, or None when the name does not say."""
    words = set(re.split(r"[^a-z0-9]+", path.parent.name.lower()))
    if words & HEALTHY_WORDS:
        return 0
    if words & TUMOR_WORDS:
        return 1
    return None


def list_files(folders: ClassFolders) -> list[tuple[Path, int]]:
    """Every non-hidden file below each class folder, with its label, in a stable order."""
    files: list[tuple[Path, int]] = []
    for label, folder in enumerate((folders.healthy, folders.tumor)):
        found = files_below(folder)
        if not found:
            raise DataError(f"class folder {folder} ({CLASS_NAMES[label]}) holds no files")
        files.extend((p, label) for p in found)
    return files


def decode_image(source: str | os.PathLike | bytes, size: int) -> np.ndarray:
    """Decode any PIL-readable image by its content into uint8 RGB of shape (size, size, 3).

    Handles lying extensions, grayscale, RGBA/LA, palette (with transparency), 16-bit and
    float images, CMYK, and EXIF orientation. Raises `DecodeError` with a reason otherwise.
    """
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(stream) as image:
            if image.width * image.height > MAX_PIXELS:
                raise DecodeError(f"image too large ({image.width}x{image.height} px)")
            if image.format == "JPEG":
                image.draft("RGB", (size, size))  # fast DCT-domain downscale of large JPEGs
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
            return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    except DecodeError:
        raise
    except Image.UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised content)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as exc:
        raise DecodeError(f"unreadable image: {exc}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit RGB; transparency is composited onto black (MRI background)."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        image = Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, image)
    return image.convert("RGB")


def default_cache_dir() -> Path:
    return Path(os.environ.get("TUMORCLF_CACHE", Path.home() / ".cache" / "tumorclf"))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_dataset(
    root: str | os.PathLike,
    image_size: int,
    classes: tuple[str, str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_files: int | None = None,
) -> Dataset:
    """Scan, hash and decode a class-folder dataset, reusing the on-disk cache when it matches.

    The cache is keyed by the files' content (SHA-256) and the image size, so renaming files
    does not invalidate it and a second run decodes nothing.
    """
    root = Path(root)
    folders = find_class_folders(root, classes)
    log.info("classes %s", folders.how)
    files = list_files(folders)
    if max_files is not None and max_files < len(files):
        picks = np.random.default_rng(0).choice(len(files), size=max_files, replace=False)
        files = [files[i] for i in sorted(picks)]
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        hashes = list(pool.map(lambda item: file_sha256(item[0]), files))
    unique = sorted(set(hashes))
    pixels, failures = _cached_decode(
        {h: path for (path, _), h in zip(files, hashes)}, unique, image_size, Path(cache_dir or default_cache_dir())
    )
    usable = [i for i, h in enumerate(unique) if h not in failures]
    pixels = np.asarray(pixels[usable]) if len(usable) < len(unique) else pixels
    row_of = {unique[i]: row for row, i in enumerate(usable)}
    paths, labels, shas, index, skipped = [], [], [], [], []
    for (path, label), digest in zip(files, hashes):
        rel = path.relative_to(root).as_posix()
        if digest in failures:
            skipped.append((rel, failures[digest]))
            log.warning("skipped %s: %s", rel, failures[digest])
            continue
        paths.append(rel)
        labels.append(label)
        shas.append(digest)
        index.append(row_of[digest])
    labels_arr = np.asarray(labels, dtype=np.int64)
    for label, name in enumerate(CLASS_NAMES):
        if not np.any(labels_arr == label):
            raise DataError(f"no readable {name} images in {root} ({len(skipped)} files skipped)")
    return Dataset(root, folders, paths, labels_arr, shas, np.asarray(index, dtype=np.int64), pixels, skipped)


def _cached_decode(
    path_of: dict[str, Path], unique: list[str], size: int, cache_dir: Path
) -> tuple[np.ndarray, dict[str, str]]:
    """Decoded pixels for each content hash in `unique` (failures get a zero image and a reason)."""
    key = hashlib.sha256(f"{DECODER_VERSION}|{size}|{','.join(unique)}".encode()).hexdigest()[:20]
    entry = cache_dir / f"{size}px-{key}"
    if (entry / "images.npy").is_file():
        log.info("decoded-image cache hit: %s", entry)
        failures = json.loads((entry / "failures.json").read_text())
        return np.load(entry / "images.npy", mmap_mode="r"), failures
    log.info("decoding %d distinct images at %d px (cache miss: %s)", len(unique), size, entry)
    pixels = np.zeros((len(unique), size, size, 3), dtype=np.uint8)
    failures: dict[str, str] = {}

    def work(item: tuple[int, str]) -> None:
        row, digest = item
        try:
            pixels[row] = decode_image(path_of[digest], size)
        except DecodeError as exc:
            failures[digest] = str(exc)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(work, enumerate(unique)))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=cache_dir))
    np.save(tmp / "images.npy", pixels)
    (tmp / "failures.json").write_text(json.dumps(failures, indent=1))
    try:
        os.replace(tmp, entry)
    except OSError:  # another process filled the same entry first; its content is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return pixels, failures
