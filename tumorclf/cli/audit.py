"""`tumorclf audit`: find duplicates, likely label errors, outliers and shortcut collections in a class-folder
dataset before anyone trains on it. The data are only read, never changed.

Usage: ``tumorclf audit --data DIR [--out DIR] [--sources FILE.csv] [--folds 5] [--model vgg16]
[--weights-dir DIR] [--overwrite]``

Writes `OUT/findings.csv`, `OUT/collections.csv`, `OUT/report.html` and PNG contact sheets, then prints the
count of each finding and a warning for each grouping that alone predicts the label.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tumorclf.audit.dataset_audit import OUTPUT_FILES, UNLISTED_SOURCE
from tumorclf.cli import flags
from tumorclf.errors import UsageError

DEFAULT_OUT = Path("audit")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, nargs=1, metavar="DIR", help="dataset folder of two class folders (required)")
    flags.positional(p, "data_paths")
    flags.add_out(p, f"folder for report.html, findings.csv, collections.csv and the sheets (default: {DEFAULT_OUT})",
                  default=DEFAULT_OUT)
    p.add_argument("--sources", type=Path, metavar="FILE.csv",
                   help="path,source CSV naming each file's collection; files it does not list are "
                        f"{UNLISTED_SOURCE!r}")
    p.add_argument("--folds", type=int, default=5, metavar="N",
                   help="folds over duplicate groups for the out-of-fold checks (default: 5)")
    p.add_argument("--classes", nargs=2, metavar=("HEALTHY", "TUMOR"),
                   help="the class folder names, where the folder names do not tell")
    p.add_argument("--image-size", type=int, default=224, metavar="PX",
                   help="decoding and feature size in px (default: 224)")
    p.add_argument("--model", default="vgg16", metavar="NAME",
                   help="ImageNet backbone of the features (default: vgg16)")
    p.add_argument("--weights-dir", metavar="DIR", help="folder holding the backbone's ImageNet weights file")
    p.add_argument("--clusters", type=int, default=8, metavar="K", help="appearance clusters (k-means; default: 8)")
    p.add_argument("--near-duplicate-bits", type=int, default=4, metavar="BITS",
                   help="pHash distance that counts as a near copy (-1: byte identity only; default: 4, as the "
                        "split's)")
    p.add_argument("--cache-dir", metavar="DIR", help="decoded-image and feature cache (default: $TUMORCLF_CACHE)")
    flags.add_overwrite(p, "an earlier audit in --out")


def data_folder(args: argparse.Namespace) -> Path:
    """The one data folder, given as `--data DIR` or, as earlier versions took it, without the flag."""
    flags.merge_positional(args, "data_paths", "--data", "data")
    if not args.data:
        raise UsageError("audit: the following arguments are required: --data")
    if len(args.data) > 1:
        raise UsageError(f"audit: one data folder at a time; got {len(args.data)}: "
                         f"{' '.join(map(str, args.data))}")
    return args.data[0]


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse out-of-range numbers and a backbone without ImageNet weights before the slow part."""
    from tumorclf.models.registry import spec

    if args.folds < 2:
        raise UsageError(f"audit: --folds must be at least 2, got {args.folds}")
    if args.clusters < 1:
        raise UsageError(f"audit: --clusters must be at least 1, got {args.clusters}")
    if args.image_size < 32:
        raise UsageError(f"audit: --image-size must be at least 32 px, got {args.image_size}")
    if not -1 <= args.near_duplicate_bits <= 32:
        raise UsageError(f"audit: --near-duplicate-bits must be in [-1, 32], got {args.near_duplicate_bits}")
    try:
        if not spec(args.model).pretrainable:
            raise UsageError(f"audit: --model {args.model} has no ImageNet weights; choose a pretrained backbone")
    except ValueError as exc:
        raise UsageError(f"audit: {exc}") from None


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an `--out` that is a file, or that holds an earlier audit unless `overwrite`."""
    flags.check_out_folder(out, "audit", "an audit", OUTPUT_FILES, overwrite)


def run(args: argparse.Namespace) -> int:
    from tumorclf.audit.dataset_audit import audit, write_audit
    from tumorclf.audit.findings import FINDINGS, SHORTCUT_ACCURACY

    root = data_folder(args)
    check_arguments(args)
    check_out(args.out, args.overwrite)
    result, thumbnail = audit(root, args.image_size, args.folds, args.sources,
                              tuple(args.classes) if args.classes else None, args.model, args.weights_dir,
                              args.clusters, args.near_duplicate_bits, args.cache_dir)
    write_audit(args.out, result, thumbnail)
    print(f"audited {result.files} files ({result.unique} distinct contents, {len(result.skipped)} skipped) "
          f"in {result.seconds / 60:.1f} min")
    for name in FINDINGS:
        print(f"  {name:<24} {sum(f.finding == name for f in result.findings)}")
    for kind, value in result.grouping_accuracy.items():
        if value >= SHORTCUT_ACCURACY:
            print(f"  warning: {kind} alone predicts the label at out-of-fold balanced accuracy {value:.3f}")
    print(args.out / "report.html")
    return 0
