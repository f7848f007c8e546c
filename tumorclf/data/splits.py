"""Duplicate grouping and the split protocols: `paper` (over files), `grouped` (leak-free) and `source`
(leave-source-out: the test split is every file of the held-out source collections)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn

from tumorclf.utils.files import csv_text
from tumorclf.data.dataset import DataError

SPLIT_NAMES = ("train", "val", "test")
EXCLUDED = -1  # the assignment of a file in no split (source protocol: a duplicate of a held-out file)
EXCLUDED_NAME = "excluded"


@dataclass
class Split:
    """Which split each file is in (0 train, 1 val, 2 test, -1 excluded), its duplicate group, and a report."""

    assignment: np.ndarray
    groups: np.ndarray
    report: dict[str, int | str]

    def indices(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.assignment == SPLIT_NAMES.index(name))


def perceptual_hash(images: np.ndarray) -> np.ndarray:
    """64-bit DCT perceptual hash (pHash) of each uint8 RGB image, as uint64."""
    out = np.empty(len(images), dtype=np.uint64)
    weights = 1 << np.arange(63, -1, -1, dtype=np.uint64)
    for i, image in enumerate(images):
        gray = Image.fromarray(np.asarray(image)).convert("L").resize((32, 32), Image.Resampling.BOX)
        low = dctn(np.asarray(gray, dtype=np.float64), norm="ortho")[:8, :8].ravel()
        bits = (low > np.median(low)).astype(np.uint64)
        out[i] = np.sum(bits * weights, dtype=np.uint64)
    return out


def near_duplicate_pairs(hashes: np.ndarray, max_bits: int, chunk: int = 1024) -> np.ndarray:
    """Pairs (i < j) whose hashes differ in at most `max_bits` bits, shape (n_pairs, 2)."""
    pairs = []
    for start in range(0, len(hashes), chunk):
        block = hashes[start : start + chunk, None] ^ hashes[None, :]
        distance = np.bitwise_count(block)
        rows, cols = np.nonzero(distance <= max_bits)
        rows = rows + start
        keep = rows < cols
        pairs.append(np.stack([rows[keep], cols[keep]], axis=1))
    return np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.int64)


def group_duplicates(image_index: np.ndarray, unique_images: np.ndarray, max_bits: int) -> tuple[np.ndarray, int]:
    """Group files whose content is byte-identical (same `image_index`) or perceptually near-identical.

    Returns each file's group id and how many merges the perceptual hash made between
    otherwise distinct contents. `max_bits` < 0 groups byte-identical files only.
    """
    parent = np.arange(len(unique_images))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    merges = 0
    pairs = near_duplicate_pairs(perceptual_hash(unique_images), max_bits) if max_bits >= 0 else []
    for a, b in pairs:
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
            merges += 1
    roots = np.array([find(i) for i in range(len(unique_images))], dtype=np.int64)
    _, groups = np.unique(roots[image_index], return_inverse=True)
    return groups.astype(np.int64), merges


def paper_split(labels: np.ndarray, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """Stratified split over files, as the paper did (duplicates may straddle splits)."""
    assignment = np.empty(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_train = int(round(fractions[0] * len(members)))
        n_val = int(round(fractions[1] * len(members)))
        assignment[members[:n_train]] = 0
        assignment[members[n_train : n_train + n_val]] = 1
        assignment[members[n_train + n_val :]] = 2
    return assignment


def grouped_split(
    labels: np.ndarray, groups: np.ndarray, fractions: tuple[float, float, float], seed: int
) -> np.ndarray:
    """Stratified split over duplicate groups: all files of a group land in the same split.

    A group's stratum is its majority label. Groups are dealt, largest first and in seeded
    random order among equals, to the split furthest below its target share of that stratum.
    `fractions` may have any length: split i gets the share `fractions[i]`.
    """
    n_groups = groups.max() + 1 if len(groups) else 0
    sizes = np.bincount(groups, minlength=n_groups)
    tumor_votes = np.bincount(groups, weights=labels, minlength=n_groups)
    group_label = (tumor_votes * 2 >= sizes).astype(np.int64)
    target = np.asarray(fractions, dtype=np.float64)
    group_split = np.empty(n_groups, dtype=np.int64)
    rng = np.random.default_rng(seed)
    for label in np.unique(group_label):
        members = rng.permutation(np.flatnonzero(group_label == label))
        members = members[np.argsort(-sizes[members], kind="stable")]
        filled = np.zeros(len(target))
        goal = target * sizes[members].sum()
        for g in members:
            choice = int(np.argmax((goal - filled) / goal))
            group_split[g] = choice
            filled[choice] += sizes[g]
    return group_split[groups]


def source_split(labels: np.ndarray, groups: np.ndarray, sources: np.ndarray, holdout: tuple[str, ...],
                 fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """Leave-source-out: every file of a `holdout` source is test; the other files are split into train
    and val by `grouped_split` (at the train:val ratio of `fractions`), except the files of a duplicate
    group that reaches into a held-out source, which are excluded (`EXCLUDED`) rather than leak it."""
    held = np.isin(sources, holdout)
    assignment = np.full(len(labels), EXCLUDED, dtype=np.int64)
    assignment[held] = 2
    touched = np.isin(groups, np.unique(groups[held]))
    rest = np.flatnonzero(~touched)
    if len(rest):
        _, local_groups = np.unique(groups[rest], return_inverse=True)
        assignment[rest] = grouped_split(labels[rest], local_groups, fractions[:2], seed)
    return assignment


def make_split(
    protocol: str,
    labels: np.ndarray,
    image_index: np.ndarray,
    unique_images: np.ndarray,
    fractions: tuple[float, float, float],
    seed: int,
    near_duplicate_bits: int,
    sources: np.ndarray | None = None,
    holdout: tuple[str, ...] = (),
) -> Split:
    """Group duplicates, split by `protocol`, and check that every split holds both classes.

    `sources` (each file's source collection) and `holdout` are the `source` protocol's."""
    groups, merges = group_duplicates(image_index, unique_images, near_duplicate_bits)
    if protocol == "paper":
        assignment = paper_split(labels, fractions, seed)
    elif protocol == "grouped":
        assignment = grouped_split(labels, groups, fractions, seed)
    elif protocol == "source":
        if sources is None or not holdout:
            raise ValueError("the source protocol needs each file's source and the held-out sources")
        assignment = source_split(labels, groups, sources, holdout, fractions, seed)
    else:
        raise ValueError(f"unknown split protocol {protocol!r}")
    mixed = _groups_with_several(groups, labels)
    used = assignment != EXCLUDED
    leaked = _groups_with_several(groups[used], assignment[used])
    report: dict[str, int | str] = {
        "protocol": protocol,
        "files": len(labels),
        "distinct_contents": int(len(np.unique(image_index))),
        "byte_identical_copies": int(len(labels) - len(np.unique(image_index))),
        "near_duplicate_merges": merges,
        "duplicate_groups": int(groups.max() + 1) if len(groups) else 0,
        "groups_with_both_labels": int(mixed),
        "groups_spanning_splits": int(leaked),
    }
    if protocol == "source":
        report["holdout_sources"] = ",".join(holdout)
        report["excluded_duplicates_of_holdout"] = int(np.sum(~used))
        report["excluded_groups"] = int(len(np.unique(groups[~used])))
        for name in sorted(set(sources.tolist())):
            report[f"source_{name}"] = int(np.sum(sources == name))
    for i, name in enumerate(SPLIT_NAMES):
        for label, class_name in enumerate(("healthy", "tumor")):
            count = int(np.sum((assignment == i) & (labels == label)))
            report[f"{name}_{class_name}"] = count
            if count == 0:
                where = (f" (held out: {', '.join(holdout)})" if protocol == "source" else "")
                raise DataError(
                    f"the {name} split has no {class_name} images{where} ({len(labels)} usable files): "
                    + ("hold out other sources, or sources of both classes" if protocol == "source" and name == "test"
                       else "the dataset is too small for this split")
                )
    return Split(assignment, groups, report)


def read_sources(csv_path: Path, paths: list[str], unlisted: str | None = None) -> np.ndarray:
    """Each file's source collection from a `path,source` CSV (path relative to the data folder; other
    columns ignored). A file the CSV does not list is a `DataError`, unless `unlisted` names its source."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"path", "source"} - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"sources file {csv_path} has no {' or '.join(sorted(missing))} column "
                                f"(columns: {', '.join(reader.fieldnames or ()) or 'none'})")
            listed: dict[str, str] = {}
            for row in reader:
                path, source = Path(row["path"] or "").as_posix(), (row["source"] or "").strip()
                if listed.get(path, source) != source:
                    raise DataError(f"sources file {csv_path} lists {path!r} twice, as {listed[path]!r} and "
                                    f"{source!r}")
                listed[path] = source
    except FileNotFoundError:
        raise DataError(f"sources file not found: {csv_path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"sources file {csv_path} cannot be read as CSV: {exc}") from None
    blank = [path for path, source in listed.items() if not source]
    if blank:
        raise DataError(f"sources file {csv_path} gives no source for {len(blank)} paths, e.g. {blank[0]!r}")
    out = [listed.get(Path(path).as_posix(), unlisted) for path in paths]
    absent = [path for path, source in zip(paths, out) if source is None]
    if absent:
        raise DataError(f"{len(absent)} of {len(paths)} files are not in {csv_path}, e.g. {absent[0]!r}; "
                        "add them or name their source with --unlisted-source NAME")
    return np.asarray(out, dtype=str)


def check_holdout(sources: np.ndarray, holdout: tuple[str, ...]) -> None:
    """A held-out source must exist, and at least one source must remain to train on."""
    known = sorted(set(sources.tolist()))
    unknown = [name for name in holdout if name not in known]
    if unknown:
        raise DataError(f"unknown held-out source(s) {', '.join(unknown)}; the files' sources are {', '.join(known)}")
    if set(known) <= set(holdout):
        raise DataError(f"holding out every source ({', '.join(known)}) leaves nothing to train on")


def _groups_with_several(groups: np.ndarray, values: np.ndarray) -> int:
    """How many groups contain more than one distinct value."""
    pairs = np.unique(np.stack([groups, values]), axis=1)
    return int(np.sum(np.bincount(pairs[0]) > 1))


def manifest_csv(paths: list[str], labels: np.ndarray, sha256: list[str], split: Split) -> str:
    """The split manifest as CSV text: path,label,split,group,sha256."""
    names = (EXCLUDED_NAME if a == EXCLUDED else SPLIT_NAMES[a] for a in split.assignment)
    rows = zip(paths, labels.tolist(), names, split.groups.tolist(), sha256)
    return csv_text(["path", "label", "split", "group", "sha256"], rows)
