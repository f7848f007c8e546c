"""`tumorclf cache`: what the caches hold (`info`), or empty them (`clear`).

Usage: ``tumorclf cache info|clear [--cache-dir DIR]``

The cache folder ($TUMORCLF_CACHE, else ~/.cache/tumorclf) holds the decoded images of each dataset and image
size, the feature cache of the cached-feature recipes (`features/`, least recently used entries evicted past
$TUMORCLF_FEATURE_CACHE_GB, 20 by default) and the machine's measured dense-math limit (`machine.json`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

NEEDS_TENSORFLOW = False  # files only


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("info", "clear"),
                        help="info: entries and sizes of each cache; clear: remove every cached entry")
    parser.add_argument("--cache-dir", metavar="DIR", type=Path,
                        help="the cache folder (default: $TUMORCLF_CACHE, else ~/.cache/tumorclf)")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(args: argparse.Namespace) -> int:
    from tumorclf.utils.array_cache import FEATURES_FOLDER, ArrayCache, default_cache_dir

    root = args.cache_dir or default_cache_dir()
    features = ArrayCache(root / FEATURES_FOLDER)
    decoded = sorted(p for p in root.glob("*px-*") if p.is_dir()) if root.is_dir() else []
    if args.action == "clear":
        removed = features.clear() if features.folder.is_dir() else 0
        for entry in decoded:
            shutil.rmtree(entry, ignore_errors=True)
        print(f"removed {len(decoded)} decoded-image entries and {removed} feature entries from {root}")
        return 0
    info = features.info() if features.folder.is_dir() else {"entries": 0, "bytes": 0, "limit_bytes": features.limit}
    print(f"cache folder    {root}")
    print(f"decoded images  {len(decoded)} entries, {sum(map(folder_bytes, decoded)) / 1e9:.2f} GB")
    print(f"features        {info['entries']} entries, {info['bytes'] / 1e9:.2f} GB of {info['limit_bytes'] / 1e9:g} GB"
          + (f", least recently used {info['oldest_use']}" if info.get("oldest_use") else ""))
    return 0
