"""The data audit: find duplicates, likely label errors, outliers and shortcut collections in a class-folder
dataset before anyone trains on it. The data are only read, never changed.

It reuses the training path's pieces: the decoder and its cache (`data.dataset.load_dataset`), the duplicate
grouping of the leak-free split (`splits.group_duplicates`), the sources file of the leave-source-out
protocol (`splits.read_sources`) and the project's ImageNet backbone (`embeddings.pooled_features`).
The checks are in `findings`, the report in `report`. `audit` runs the checks; `write_audit` writes
`OUT/findings.csv`, `OUT/collections.csv`, `OUT/report.html` and PNG contact sheets.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tumorclf.audit import findings
from tumorclf.data import dataset as data
from tumorclf.data.decoder import DecodeError, read_pixels
from tumorclf.data.pixel_statistics import BLANK_SPREAD, COLOUR_CHROMA, pixel_statistics
from tumorclf.utils.array_cache import default_cache_dir
from tumorclf.utils.files import atomic_write_text, csv_text

if TYPE_CHECKING:
    from tumorclf.audit.report import AuditResult, Thumbnail

log = logging.getLogger(__name__)

OUTPUT_FILES = ("report.html", "findings.csv", "collections.csv")  # any of them in a folder: an earlier audit
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
          clusters: int = 8, max_bits: int = 4, cache_dir: str | None = None) -> tuple[AuditResult, Thumbnail]:
    """Run every check on the dataset at `root`; returns (AuditResult, thumbnail function)."""
    from tumorclf.audit.report import AuditResult
    from tumorclf.audit.embeddings import pooled_features
    from tumorclf.data.splits import group_duplicates, read_sources

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
    spread, chroma = pixel_statistics(dataset.unique_images)
    unique_features = pooled_features(np.asarray(dataset.unique_images), content_keys(dataset), model, weights_dir,
                                      Path(cache_dir or default_cache_dir()))
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
                  "sources": str(sources) if sources else "none", "blank: gray range <=": BLANK_SPREAD,
                  "colour: chroma >": COLOUR_CHROMA, "small: short side <": image_size // 2,
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


def collections_csv(result: AuditResult) -> str:
    return csv_text(["kind", "name", "files", "healthy", "tumor", "majority_share", "kind_balanced_accuracy"],
                    ((c.kind, c.name, c.files, *c.per_class, f"{c.purity:.4f}",
                      f"{result.grouping_accuracy[c.kind]:.4f}") for c in result.collections))


def write_audit(out: Path, result: AuditResult, thumbnail: Thumbnail) -> list[Path]:
    """Write `result` into the folder `out`, replacing an earlier audit there: its report and sheets go first
    and the new report comes last, so a report on disk always belongs to the files beside it. Returns the
    paths written."""
    from tumorclf.audit.report import write_report

    out = Path(out)
    (out / "report.html").unlink(missing_ok=True)
    for stale in [*out.glob("sheet_*.png"), out / "top_findings.png"]:  # an earlier audit's pictures
        stale.unlink(missing_ok=True)
    atomic_write_text(out / "findings.csv", findings_csv(result.findings))
    atomic_write_text(out / "collections.csv", collections_csv(result))
    return [out / "findings.csv", out / "collections.csv", *write_report(out, result, thumbnail)]
