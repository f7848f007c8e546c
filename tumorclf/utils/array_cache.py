"""A folder of NumPy arrays on disk, addressed by a key that names everything they were computed from.

Computing the frozen part of a backbone over every image is the slowest step of a cached-feature run; this
keeps its results across processes, restarts and reruns. Entries are written to a temporary file and renamed
into place, so two processes writing one key never leave a half-written entry, and a killed writer leaves
only a temporary file that the next write of that key replaces. Each entry records the SHA-256 of its bytes:
a truncated or corrupt entry is detected on read, logged, removed and computed again. Reading an entry marks
it used; past the size limit the least recently used entries are removed first.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SUFFIX = ".npy"
DEFAULT_LIMIT_GB = 20.0  # $TUMORCLF_FEATURE_CACHE_GB overrides it
FEATURES_FOLDER = "features"  # the feature cache, under the cache folder beside the decoded images


def default_cache_dir() -> Path:
    """The cache folder: $TUMORCLF_CACHE, else ~/.cache/tumorclf (decoded images, features, machine.json)."""
    return Path(os.environ.get("TUMORCLF_CACHE", Path.home() / ".cache" / "tumorclf"))


def cache_key(parts: dict) -> str:
    """The SHA-256 of `parts` as canonical JSON: equal descriptions give equal keys."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def limit_bytes() -> int:
    """The size limit: $TUMORCLF_FEATURE_CACHE_GB gigabytes, else `DEFAULT_LIMIT_GB`."""
    text = os.environ.get("TUMORCLF_FEATURE_CACHE_GB", "")
    try:
        gigabytes = float(text) if text else DEFAULT_LIMIT_GB
    except ValueError:
        log.warning("TUMORCLF_FEATURE_CACHE_GB=%r is not a number; using %g", text, DEFAULT_LIMIT_GB)
        gigabytes = DEFAULT_LIMIT_GB
    return int(gigabytes * 1e9)


def storable(array: np.ndarray) -> np.ndarray:
    """`array` as .npy can hold it: an ml_dtypes type (bfloat16 features of a mixed_bfloat16 run) would be
    saved as raw void bytes that load as no number type, so it is stored as a one-field record named after it."""
    if array.dtype.kind != "V" or array.dtype.names:
        return array
    return array.view(np.dtype([(array.dtype.name, f"<u{array.dtype.itemsize}")]))


def from_storable(array: np.ndarray) -> np.ndarray:
    """The array `storable` was given."""
    if not array.dtype.names:
        return array
    import ml_dtypes

    (name,) = array.dtype.names
    return array[name].view(getattr(ml_dtypes, name))


class ArrayCache:
    """Arrays under `folder`, one `KEY.npy` each (its header holds the SHA-256 of the array's bytes)."""

    def __init__(self, folder: Path, limit: int | None = None):
        self.folder = Path(folder)
        self.limit = limit_bytes() if limit is None else limit

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def get(self, key: str) -> np.ndarray | None:
        """The array stored under `key`, or None when there is none or it is damaged (then it is removed)."""
        path = self.path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            digest, payload = blob[:64].decode(), memoryview(blob)[64:]  # a view: entries run to gigabytes
            if hashlib.sha256(payload).hexdigest() != digest:
                raise ValueError("its SHA-256 does not match its contents")
            array = from_storable(np.load(io.BytesIO(payload), allow_pickle=False))
        except (ValueError, UnicodeDecodeError, OSError, EOFError) as exc:
            log.warning("feature cache: entry %s is damaged (%s); computing it again", key[:12], exc)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # used now: the last to be evicted
        return array

    def put(self, key: str, array: np.ndarray) -> None:
        """Store `array` under `key` atomically, then evict least recently used entries beyond the limit."""
        self.folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, storable(np.ascontiguousarray(array)), allow_pickle=False)
        payload = buffer.getbuffer()  # a view of the bytes, not a copy
        if len(payload) > self.limit:
            log.info("feature cache: %s (%.1f GB) exceeds the cache limit; not stored", key[:12], len(payload) / 1e9)
            return
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp_", suffix=SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(hashlib.sha256(payload).hexdigest().encode())
                f.write(payload)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.evict()

    def entries(self) -> list[tuple[Path, int, float]]:
        """(path, bytes, last use) of every entry, least recently used first."""
        found = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            if path.name.startswith(".tmp_"):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            found.append((path, stat.st_size, stat.st_mtime))
        return sorted(found, key=lambda entry: entry[2])

    def evict(self) -> None:
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for path, size, _ in entries:
            if total <= self.limit:
                break
            path.unlink(missing_ok=True)
            total -= size
            log.info("feature cache: evicted %s (%.0f MB, least recently used)", path.stem[:12], size / 1e6)

    def info(self) -> dict:
        entries = self.entries()
        return {"folder": str(self.folder), "entries": len(entries), "bytes": sum(s for _, s, _ in entries),
                "limit_bytes": self.limit,
                "oldest_use": time.strftime("%Y-%m-%d %H:%M", time.localtime(entries[0][2])) if entries else None}

    def clear(self) -> int:
        """Remove every entry (and left-over temporary files); returns the number of entries removed."""
        removed = 0
        for path in self.folder.glob(f"*{SUFFIX}"):
            path.unlink(missing_ok=True)
            removed += not path.name.startswith(".tmp_")
        return removed
