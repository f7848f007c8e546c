"""Find the class folders, decode images by content, and cache the decoded pixels on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumorclf.data.decoder import DECODER_VERSION, DecodeError, decode_image
from tumorclf.errors import UserError
from tumorclf.data import medical
from tumorclf.utils.array_cache import default_cache_dir
from tumorclf.utils.progress import Progress

log = logging.getLogger(__name__)

CLASS_NAMES = ("Healthy", "Tumor")
TUMOR_WORDS = {"tumor", "tumour", "tumors", "cancer", "yes", "glioma", "meningioma", "pituitary", "positive"}
HEALTHY_WORDS = {"healthy", "normal", "no", "not", "non", "negative", "none", "notumor", "nontumor", "without"}
# The formats the decoder reads besides Pillow's, in the decoded-image cache key: DECODER_VERSION stays (no
# existing format's pixels changed, and trained models record it), but entries written before DICOM and NIfTI
# were decoded hold those files as failures and must not be reused. The version after the colon is
# `tumorclf.data.medical`'s windowing: 2 keeps plain 8-bit DICOM values and looks VOI LUTs up correctly.
CACHE_FORMATS = "dicom,nifti:2"


class DataError(UserError, ValueError):
    """The data folder cannot be used as given; the message says why."""


@dataclass(frozen=True)
class ClassFolders:
    healthy: Path | None  # None: a one-class folder (`find_class_folders(one_class=True)`) without this class
    tumor: Path | None
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


def class_of_name(name: str) -> int | None:
    """The label a folder name says (0 for a healthy word, checked first, 1 for a tumour word), or None."""
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    if words & HEALTHY_WORDS:
        return 0
    if words & TUMOR_WORDS:
        return 1
    return None


def find_class_folders(root: Path, classes: tuple[str, str] | None = None, one_class: bool = False) -> ClassFolders:
    """Decide which sub-folder is Healthy (0) and which is Tumor (1). With `one_class` (evaluation only: training
    needs both classes) a folder may hold one of them, decided by its name or named by `classes`; the absent
    class is None."""
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    if classes is not None:
        healthy, tumor = (root / name for name in classes)
        missing = [folder for folder in (healthy, tumor) if not folder.is_dir()]
        if len(missing) == 2 or (missing and not one_class):
            raise DataError(f"class folder named by --classes not found: {missing[0]}")
        return ClassFolders(None if healthy in missing else healthy, None if tumor in missing else tumor,
                            f"given by --classes: healthy={classes[0]!r}, tumor={classes[1]!r}")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if one_class and len(subdirs) == 1:
        label = class_of_name(subdirs[0].name)
        if label is None:
            raise DataError(f"cannot tell whether {subdirs[0].name!r} in {root} holds healthy or tumour slices "
                            "(a healthy folder's name contains healthy/normal/no/not, a tumour folder's "
                            "tumor/tumour/glioma/...); name it with --classes HEALTHY_FOLDER TUMOR_FOLDER")
        found = (subdirs[0], None) if label == 0 else (None, subdirs[0])
        return ClassFolders(*found, f"from the folder name: {CLASS_NAMES[label].lower()}={subdirs[0].name!r} only")
    if len(subdirs) != 2:
        names = ", ".join(p.name for p in subdirs) or "none"
        raise DataError(
            f"expected {'one or two' if one_class else 'exactly two'} class folders in {root}, found "
            f"{len(subdirs)} ({names}); name them with --classes HEALTHY_FOLDER TUMOR_FOLDER"
        )
    healthy = [p for p in subdirs if class_of_name(p.name) == 0]
    if len(healthy) != 1:
        raise DataError(
            f"cannot tell which of {subdirs[0].name!r} and {subdirs[1].name!r} is the healthy class "
            "(a healthy folder's name contains healthy/normal/no/not); "
            "name them with --classes HEALTHY_FOLDER TUMOR_FOLDER"
        )
    tumor = next(p for p in subdirs if p != healthy[0])
    return ClassFolders(healthy[0], tumor, f"from folder names: healthy={healthy[0].name!r}, tumor={tumor.name!r}")


@dataclass(frozen=True)
class Listing:
    """What lies below a folder: the usable files, and the entries that cannot be used, with the reason."""

    files: list[Path]  # regular files (symbolic links to files followed), sorted
    problems: list[tuple[Path, str]]  # (path, reason), sorted: dangling links, unreadable entries, special files


def unreadable_reason(exc: OSError) -> str:
    """One short reason for a file or folder the OS refuses, e.g. 'unreadable: Permission denied'."""
    return f"unreadable: {exc.strerror or type(exc).__name__}"


def scan_below(folder: Path) -> Listing:
    """Every non-hidden entry below `folder` (hidden folders skipped too), sorted as paths sort.

    Regular files, and symbolic links to them, are `files`. Everything else that is not a folder is a
    problem with its reason rather than dropped silently: a dangling symbolic link, an entry or
    folder the OS refuses (permission denied, a link loop), a link to a folder (not followed, so a
    loop cannot recurse) and a special file (a FIFO would block a reader forever).
    """
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []

    def walk(directory: Path) -> None:
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            problems.append((directory, f"folder {unreadable_reason(exc)}"))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = directory / entry.name
            try:
                if entry.is_symlink():
                    try:
                        target = os.stat(path)
                    except FileNotFoundError:
                        problems.append((path, "dangling symbolic link"))
                        continue
                    if stat.S_ISDIR(target.st_mode):
                        problems.append((path, "symbolic link to a folder (not followed)"))
                    elif stat.S_ISREG(target.st_mode):
                        files.append(path)
                    else:
                        problems.append((path, "not a regular file"))
                elif entry.is_dir(follow_symlinks=False):
                    walk(path)
                elif entry.is_file(follow_symlinks=False):
                    files.append(path)
                else:
                    problems.append((path, "not a regular file"))
            except OSError as exc:  # e.g. a symbolic link loop
                problems.append((path, unreadable_reason(exc)))

    walk(folder)
    return Listing(sorted(files), sorted(problems))


def files_below(folder: Path) -> list[Path]:
    """Every non-hidden file below `folder` (hidden folders skipped too), sorted. Entries that are not
    usable files (see `scan_below`) are logged once each as skipped."""
    listing = scan_below(folder)
    for path, reason in listing.problems:
        log.warning("skipped %s: %s", path, reason)
    return listing.files


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, and every non-hidden file below each folder."""
    return [f for item in inputs for f in (files_below(item) if item.is_dir() else [item])]


def label_from_folder(path: Path) -> int | None:
    """The true label implied by a file's class folder name, or None when the name does not say."""
    return class_of_name(path.parent.name)


def list_files(folders: ClassFolders, one_class: bool = False) -> tuple[list[tuple[Path, int]], list[tuple[Path, str]]]:
    """Every non-hidden file below each class folder with its label, in a stable order, and the entries
    that cannot be used with their reason (see `scan_below`). An empty class folder is an error, unless
    `one_class` and the other one holds something."""
    files: list[tuple[Path, int]] = []
    problems: list[tuple[Path, str]] = []
    empty: list[str] = []
    for label, folder in enumerate((folders.healthy, folders.tumor)):
        if folder is None:
            continue
        found = scan_below(folder)
        if not found.files and not found.problems:
            empty.append(f"class folder {folder} ({CLASS_NAMES[label]}) holds no files")
        files.extend((p, label) for p in found.files)
        problems.extend(found.problems)
    if empty and not (one_class and (files or problems)):
        raise DataError(empty[0])
    return files, problems


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks; `OSError` when the file cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(paths: list[Path]) -> list[tuple[str | None, str]]:
    """(SHA-256, "") for each readable file and (None, reason) for each unreadable one, in order, with progress."""

    def one(path: Path) -> tuple[str | None, str]:
        try:
            return file_sha256(path), ""
        except OSError as exc:
            return None, unreadable_reason(exc)

    results: list[tuple[str | None, str]] = []
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool, Progress(len(paths), "hashing", unit="files") as progress:
        for result in pool.map(one, paths):
            results.append(result)
            progress.update()
    return results


def header_facts(root: Path, paths: list[str]) -> tuple[list[tuple[int, int]], list[str]]:
    """(width, height) and container format of each file below `root`, the files the decoder read: a Pillow
    image's from its header only (also under a lying ``.dcm`` name); a DICOM's or NIfTI's ("dicom", "nifti")
    from its decoded middle slice, the one `read_pixels` gives, as its size depends on the volume's orientation."""

    def one(path: str) -> tuple[tuple[int, int], str]:
        from PIL import Image

        file = Path(root) / path
        kind = medical.sniff(file)
        if kind is not None:
            try:
                height, width = medical.read_slices(file, kind, medical.Slices.parse("middle"))[0][1].shape[:2]
                return (width, height), kind
            except medical.NotDicom:  # only its .dcm name said DICOM: Pillow reads it, as the decoder does
                pass
        with Image.open(file) as image:
            return image.size, (image.format or "unknown").lower()

    with ThreadPoolExecutor(4) as pool:
        facts = list(pool.map(one, paths))
    return [size for size, _ in facts], [fmt for _, fmt in facts]


def load_dataset(
    root: str | os.PathLike,
    image_size: int,
    classes: tuple[str, str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_files: int | None = None,
    *,
    one_class: bool = False,
) -> Dataset:
    """Scan, hash and decode a class-folder dataset, reusing the on-disk cache when it matches.

    The cache is keyed by the files' content (SHA-256), the image size, the decoder version and the formats it
    reads (`CACHE_FORMATS`), so renaming files does not invalidate it and a second run decodes nothing.
    Entries that cannot be used (dangling links, unreadable or undecodable files) end in `Dataset.skipped`
    with their reason. Both classes must have readable images, unless `one_class` (for evaluation: a folder
    of tumour slices alone still has a sensitivity): then one class folder, or one with images, is enough.
    """
    root = Path(root)
    folders = find_class_folders(root, classes, one_class)
    log.info("classes %s", folders.how)
    files, problems = list_files(folders, one_class)
    if max_files is not None and max_files < len(files):
        picks = np.random.default_rng(0).choice(len(files), size=max_files, replace=False)
        files = [files[i] for i in sorted(picks)]
    dataset = load_files(root, folders, files, image_size, cache_dir, problems)
    absent = [name for label, name in enumerate(CLASS_NAMES) if not np.any(dataset.labels == label)]
    if absent and not (one_class and len(absent) == 1):
        what = f"{absent[0]} " if len(absent) == 1 else ""
        raise DataError(f"no readable {what}images in {root} ({len(dataset.skipped)} files skipped)")
    return dataset


def load_files(
    root: str | os.PathLike,
    folders: ClassFolders,
    files: list[tuple[Path, int]],
    image_size: int,
    cache_dir: str | os.PathLike | None = None,
    problems: list[tuple[Path, str]] = (),
) -> Dataset:
    """Hash and decode `files` ((path, label), paths below `root`) through the decoded-image cache.

    Files that cannot be read or decoded, and the listing's `problems`, are skipped: each is logged
    once and kept in `Dataset.skipped` (path relative to `root`, reason), sorted by path. A class may
    end up with no images; `load_dataset` refuses that, callers of this function decide themselves.
    """
    root = Path(root)

    def relative(path: Path) -> str:
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

    skipped = [(relative(path), reason) for path, reason in problems]
    hashed = hash_files([path for path, _ in files])
    path_of = {digest: path for (path, _), (digest, _) in zip(files, hashed) if digest is not None}
    unique = sorted(path_of)
    pixels, failures = _cached_decode(path_of, unique, image_size, Path(cache_dir or default_cache_dir()))
    usable = [i for i, h in enumerate(unique) if h not in failures]
    pixels = np.asarray(pixels[usable]) if len(usable) < len(unique) else pixels
    row_of = {unique[i]: row for row, i in enumerate(usable)}
    paths, labels, shas, index = [], [], [], []
    for (path, label), (digest, reason) in zip(files, hashed):
        rel = relative(path)
        if digest is None or digest in failures:
            skipped.append((rel, reason or failures[digest]))
            continue
        paths.append(rel)
        labels.append(label)
        shas.append(digest)
        index.append(row_of[digest])
    skipped.sort()
    for rel, reason in skipped:
        log.warning("skipped %s: %s", rel, reason)
    return Dataset(root, folders, paths, np.asarray(labels, dtype=np.int64), shas, np.asarray(index, dtype=np.int64),
                   pixels, skipped)


def _cached_decode(
    path_of: dict[str, Path], unique: list[str], size: int, cache_dir: Path
) -> tuple[np.ndarray, dict[str, str]]:
    """Decoded pixels for each content hash in `unique` (failures get a zero image and a reason)."""
    key = hashlib.sha256(f"{DECODER_VERSION}|{CACHE_FORMATS}|{size}|{','.join(unique)}".encode()).hexdigest()[:20]
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
        except (DecodeError, OSError) as exc:
            failures[digest] = str(exc)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool, Progress(len(unique), "decoding", unit="images") as progress:
        for _ in pool.map(work, enumerate(unique)):
            progress.update()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=cache_dir))
    np.save(tmp / "images.npy", pixels)
    (tmp / "failures.json").write_text(json.dumps(failures, indent=1))
    try:
        os.replace(tmp, entry)
    except OSError:  # another process filled the same entry first; its content is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return pixels, failures
