"""`tumorclf audit DATA`: find duplicates, likely label errors, outliers and shortcut collections in a
class-folder dataset before anyone trains on it. The data are only read, never changed.

It reuses the training path's pieces: the decoder and its cache (`data.load_dataset`), the duplicate
grouping of the leak-free split (`splits.group_duplicates`), the sources file of the leave-source-out
protocol (`splits.read_sources`) and the project's ImageNet backbone (`features.pooled_features`).
The checks are in `findings`, the report in `audit_report`. Writes `OUT/findings.csv`,
`OUT/collections.csv`, `OUT/report.html` and PNG contact sheets.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from tumorclf import data, findings
from tumorclf.artifacts import atomic_write_text, csv_text
from tumorclf.decoder import DecodeError, read_pixels
from tumorclf.errors import UsageError
from tumorclf.rundir import RunExistsError

log = logging.getLogger(__name__)

OUTPUT_FILES = ("report.html", "findings.csv", "collections.csv")
DEFAULT_OUT = Path("audit")
SIZE_CLUSTER_MIN = 10  # an exact size/format shared by fewer files joins its format's "other sizes"
UNLISTED_SOURCE = "unlisted"


def size_format_names(sizes: list[tuple[int, int]], formats: list[str]) -> np.ndarray:
    """Each file's "format WxH", or "format, other sizes" when fewer than SIZE_CLUSTER_MIN files share it."""
    exact = [f"{fmt} {w}x{h}" for (w, h), fmt in zip(sizes, formats)]
    counts = {name: exact.count(name) for name in set(exact)}
    return np.asarray([name if counts[name] >= SIZE_CLUSTER_MIN else f"{fmt}, other sizes"
                       for name, fmt in zip(exact, formats)])


def content_keys(dataset: data.Dataset) -> list[str]:
    """The SHA-256 of each row of `dataset.unique_images`."""
    keys = [""] * len(dataset.unique_images)
    for digest, row in zip(dataset.sha256, dataset.image_index):
        keys[row] = digest
    return keys


def audit(root: Path, image_size: int = 224, folds: int = 5, sources: Path | None = None,
          classes: tuple[str, str] | None = None, model: str = "vgg16", weights_dir: str | None = None,
          clusters: int = 8, max_bits: int = 4, cache_dir: str | None = None):
    """Run every check on the dataset at `root`; returns (AuditResult, thumbnail function)."""
    from tumorclf.audit_report import AuditResult
    from tumorclf.features import pooled_features
    from tumorclf.splits import group_duplicates, read_sources

    started = time.time()
    dataset = data.load_dataset(root, image_size, classes, cache_dir)
    paths, labels, index = dataset.paths, dataset.labels, dataset.image_index
    source_names = read_sources(sources, paths, UNLISTED_SOURCE) if sources else None
    groups, _ = group_duplicates(index, dataset.unique_images, max_bits)
    for label, name in enumerate(data.CLASS_NAMES):
        distinct = len(np.unique(groups[labels == label]))
        if distinct < 2:  # the out-of-fold checks need two groups per class; say so before the slow part
            raise data.DataError(f"audit: {name} has {distinct} distinct image (after grouping copies) in {root}; "
                                 "the out-of-fold checks need at least two per class")
    sizes, formats = data.header_facts(Path(root), paths)
    spread, chroma = findings.pixel_statistics(dataset.unique_images)
    unique_features = pooled_features(np.asarray(dataset.unique_images), content_keys(dataset), model, weights_dir,
                                      Path(cache_dir or data.default_cache_dir()))
    features = unique_features[index]
    log.info("audit: out-of-fold label check over %d folds of duplicate groups", folds)
    probs = findings.out_of_fold_probabilities(features, labels, groups, folds)
    distance = findings.knn_distance(features, groups)
    groupings = {"size/format": size_format_names(sizes, formats),
                 "appearance": findings.appearance_clusters(unique_features, clusters)[index]}
    if source_names is not None:
        groupings["source"] = source_names
    shortcuts, table, accuracy = findings.shortcut_findings(groupings, labels, groups, folds)
    found = (findings.duplicate_findings(paths, labels, index, groups)
             + findings.label_error_findings(paths, labels, probs)
             + findings.outlier_findings(paths, sizes, spread[index], chroma[index], distance, image_size // 2)
             + shortcuts)
    row_of = {path: row for row, path in enumerate(paths)}

    def thumbnail(path: str) -> np.ndarray | None:
        """The file as it is (its own size and aspect), for the contact sheets."""
        row = row_of.get(path)
        if row is None:
            return None
        try:
            return read_pixels(Path(root) / path)
        except (DecodeError, OSError):  # changed since it was decoded: show what the checks saw
            return np.asarray(dataset.unique_images[index[row]])

    result = AuditResult(
        root=str(root), files=len(paths), unique=len(dataset.unique_images),
        per_class=tuple(int(n) for n in np.bincount(labels, minlength=2)), skipped=dataset.skipped,
        findings=findings.sort_findings(found), collections=table, grouping_accuracy=accuracy,
        duplicates_per_class=duplicates_per_class(labels, index, groups),
        settings={"image size": image_size, "folds": folds, "backbone": f"{model} (ImageNet, frozen)",
                  "near-duplicate pHash bits": max_bits, "appearance clusters": clusters,
                  "sources": str(sources) if sources else "none", "blank: gray range <=": findings.BLANK_SPREAD,
                  "colour: chroma >": findings.COLOUR_CHROMA, "small: short side <": image_size // 2,
                  "extreme aspect >=": findings.EXTREME_ASPECT, "outlier: robust z >": findings.OUTLIER_Z},
        seconds=time.time() - started)
    return result, thumbnail


def duplicates_per_class(labels: np.ndarray, image_index: np.ndarray, groups: np.ndarray) -> dict[str, tuple[int, int]]:
    """Files per class that have a byte-identical copy ("exact") or are in a near-copy group ("near")."""
    exact = np.bincount(image_index)[image_index] > 1
    near = np.bincount(groups)[groups] > 1
    return {name: tuple(int(np.sum(mask & (labels == k))) for k in range(2)) for name, mask in
            (("exact", exact), ("near", near))}


def findings_csv(found: list[findings.Finding]) -> str:
    return csv_text(["path", "finding", "score", "details"],
                    ((f.path, f.finding, f"{f.score:.6g}", f.details) for f in found))


def collections_csv(result) -> str:
    return csv_text(["kind", "name", "files", "healthy", "tumor", "majority_share", "kind_balanced_accuracy"],
                    ((c.kind, c.name, c.files, *c.per_class, f"{c.purity:.4f}",
                      f"{result.grouping_accuracy[c.kind]:.4f}") for c in result.collections))


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an `--out` that is a file, or that holds an earlier audit unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"audit: --out {out} exists and is not a folder")
    earlier = [name for name in OUTPUT_FILES if (out / name).exists()]
    if earlier and not overwrite:
        raise RunExistsError(f"audit: {out} already holds an audit ({', '.join(earlier)}); pass --overwrite to "
                             "replace it or --out to choose another folder")


def add_arguments(p) -> None:
    p.add_argument("data", type=Path, metavar="DATA", help="dataset folder of two class folders")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help=f"folder for report.html, findings.csv, collections.csv and the sheets (default {DEFAULT_OUT})")
    p.add_argument("--sources", type=Path, metavar="FILE.csv",
                   help="path,source CSV naming each file's collection; files it does not list are "
                        f"{UNLISTED_SOURCE!r}")
    p.add_argument("--folds", type=int, default=5, help="folds over duplicate groups for out-of-fold checks (default 5)")
    p.add_argument("--classes", nargs=2, metavar=("HEALTHY", "TUMOR"),
                   help="the class folder names, where the folder names do not tell")
    p.add_argument("--image-size", type=int, default=224, help="decoding and feature size in px (default 224)")
    p.add_argument("--model", default="vgg16", help="ImageNet backbone of the features (default vgg16)")
    p.add_argument("--weights-dir", metavar="DIR", help="folder holding the backbone's ImageNet weights file")
    p.add_argument("--clusters", type=int, default=8, help="appearance clusters (k-means; default 8)")
    p.add_argument("--near-duplicate-bits", type=int, default=4,
                   help="pHash distance that counts as a near copy (default 4, as the split's; -1: byte identity)")
    p.add_argument("--cache-dir", metavar="DIR", help="decoded-image and feature cache (default $TUMORCLF_CACHE)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier audit in --out")


def run(args) -> int:
    from tumorclf.audit_report import write_report
    from tumorclf.registry import spec

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
    check_out(args.out, args.overwrite)
    result, thumbnail = audit(args.data, args.image_size, args.folds, args.sources,
                              tuple(args.classes) if args.classes else None, args.model, args.weights_dir,
                              args.clusters, args.near_duplicate_bits, args.cache_dir)
    (args.out / "report.html").unlink(missing_ok=True)  # replaced: absent until the new outputs are complete
    for stale in [*args.out.glob("sheet_*.png"), args.out / "top_findings.png"]:  # an earlier audit's pictures
        stale.unlink(missing_ok=True)
    atomic_write_text(args.out / "findings.csv", findings_csv(result.findings))
    atomic_write_text(args.out / "collections.csv", collections_csv(result))
    write_report(args.out, result, thumbnail)
    counts = {name: sum(f.finding == name for f in result.findings) for name in findings.FINDINGS}
    print(f"audited {result.files} files ({result.unique} distinct contents, {len(result.skipped)} skipped) "
          f"in {result.seconds / 60:.1f} min")
    for name, n in counts.items():
        print(f"  {name:<24} {n}")
    for kind, value in result.grouping_accuracy.items():
        if value >= findings.SHORTCUT_ACCURACY:
            print(f"  warning: {kind} alone predicts the label at out-of-fold balanced accuracy {value:.3f}")
    print(args.out / "report.html")
    return 0


if __name__ == "__main__":
    from tumorclf.cli import alias

    raise SystemExit(alias("tumorclf.audit"))
