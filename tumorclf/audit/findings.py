"""The checks of `tumorclf audit`: each turns arrays about a dataset into findings, and changes nothing.

A finding is one row of `findings.csv` (`path,finding,score,details`): a file, or for the collection
checks a group of files named `KIND:NAME`. Within a finding a higher score means a stronger case,
so sorting by score puts what to look at first on top. `FINDINGS` says, for each, what it means and
what the training split already does about it; the report prints both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from tumorclf.data.dataset import CLASS_NAMES
from tumorclf.data.pixel_statistics import BLANK_SPREAD, COLOUR_CHROMA

# name -> (title, what the training split does about it)
FINDINGS: dict[str, tuple[str, str]] = {
    "duplicate_across_labels": (
        "copies filed under both labels",
        "the grouped split keeps a duplicate group in one split and stratifies it by its majority label, so "
        "the copies cannot leak; the wrong label still trains the model: remove or relabel"),
    "exact_duplicate": (
        "byte-identical copies",
        "decoded once; the grouped and source splits keep every copy in the same split"),
    "near_duplicate": (
        "near copies (perceptual hash)",
        "the grouped and source splits keep each near-copy group in one split; the paper split does not"),
    "likely_label_error": (
        "likely label errors (out-of-fold disagreement)",
        "nothing: the file trains with its folder's label; look at it and move it if the folder is wrong"),
    "blank": (
        "near-blank or near-constant slices",
        "nothing: it trains and is scored like any slice; remove it"),
    "small_image": (
        "tiny images (upscaled to the model's size)",
        "nothing: it is resized like any other; check it is a real slice"),
    "extreme_aspect": (
        "extreme aspect ratios (stretched when resized)",
        "nothing: the foreground framing of the robust recipe crops to the head, the others stretch"),
    "colour": (
        "colour images in a grayscale modality",
        "nothing: colour is kept as decoded; likely a photo, a screenshot or an annotated figure"),
    "feature_outlier": (
        "far from every other image in feature space",
        "nothing: likely not a brain MRI slice (a CT, a photo, another body part); remove it"),
    "shortcut_grouping": (
        "a grouping that alone predicts the label",
        "the leave-source-out protocol (--split source) measures how much a model relies on it"),
    "shortcut_cluster": (
        "a collection that is (nearly) one class",
        "the leave-source-out protocol (--split source) measures how much a model relies on it"),
}

EXTREME_ASPECT = 2.0  # long side / short side
OUTLIER_Z = 4.0  # robust z-score of the k-NN feature distance
NEIGHBOURS = 5
SHORTCUT_ACCURACY = 0.8  # out-of-fold balanced accuracy of a grouping's majority label that earns a warning
PURE_SHARE = 0.95  # a cluster with at least this share of one class...
PURE_MIN_FILES = 20  # ...and at least this many files is a `shortcut_cluster`


@dataclass(frozen=True)
class Finding:
    path: str  # relative to the data folder; `KIND:NAME` for a group of files
    finding: str  # a key of FINDINGS
    score: float
    details: str


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """In the order of FINDINGS, then by score (highest first), then by path."""
    order = {name: i for i, name in enumerate(FINDINGS)}
    return sorted(findings, key=lambda f: (order[f.finding], -f.score, f.path))


def _label_counts(labels: np.ndarray) -> str:
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    return ", ".join(f"{n} {name}" for n, name in zip(counts, CLASS_NAMES))


def _members(paths: list[str], rows: np.ndarray, me: int, limit: int = 3) -> str:
    others = [paths[r] for r in rows if r != me]
    return "; ".join(others[:limit]) + (f"; +{len(others) - limit} more" if len(others) > limit else "")


# --- duplicates -----------------------------------------------------------------------------------------------

def duplicate_findings(paths: list[str], labels: np.ndarray, image_index: np.ndarray,
                       groups: np.ndarray) -> list[Finding]:
    """Byte-identical copies (same `image_index`), near copies (same duplicate `groups` but distinct
    contents) and groups filed under both labels. A cross-label file's score is the share of its group
    under the other label, so the copy whose folder its group contradicts most comes first."""
    found = []
    for group in np.flatnonzero(np.bincount(groups) > 1):
        rows = np.flatnonzero(groups == group)
        group_labels = labels[rows]
        mixed = len(np.unique(group_labels)) > 1
        near = len(np.unique(image_index[rows])) > 1
        for r in rows:
            same_bytes = rows[image_index[rows] == image_index[r]]
            summary = f"group {group}: {len(rows)} files ({_label_counts(group_labels)})"
            if mixed:
                against = float(np.mean(group_labels != labels[r]))
                found.append(Finding(paths[r], "duplicate_across_labels", against,
                                     f"{summary}; filed as {CLASS_NAMES[labels[r]]}; with {_members(paths, rows, r)}"))
            if len(same_bytes) > 1:
                found.append(Finding(paths[r], "exact_duplicate", float(len(same_bytes)),
                                     f"{len(same_bytes)} byte-identical files; with {_members(paths, same_bytes, r)}"))
            if near:
                found.append(Finding(paths[r], "near_duplicate", float(len(rows)),
                                     f"{summary}; with {_members(paths, rows, r)}"))
    return found


# --- label errors ---------------------------------------------------------------------------------------------

def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int,
                              seed: int = 0) -> np.ndarray:
    """P(class) of each file from a logistic regression trained on the other folds; the folds are
    stratified and never split a duplicate group, so no file is scored by a model that saw its copy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_groups_per_class = [len(np.unique(groups[labels == k])) for k in range(len(CLASS_NAMES))]
    folds = min(folds, *n_groups_per_class)
    if folds < 2:
        raise ValueError("each class needs at least two duplicate groups for out-of-fold predictions")
    probs = np.zeros((len(labels), len(CLASS_NAMES)))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(features, labels, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        model.fit(features[train], labels[train])
        probs[test] = model.predict_proba(features[test])
    return probs


def label_issues(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Confident learning (Northcutt et al., 2021; cleanlab's confident joint): a file is a label issue
    when the classes whose probability reaches that class's threshold (the mean probability of the class
    over the files labelled with it) exist and the likeliest of them is not its label. Boolean mask."""
    thresholds = np.array([probs[labels == k, k].mean() for k in range(probs.shape[1])])
    confident = probs >= thresholds
    masked = np.where(confident, probs, -1.0)
    return confident.any(axis=1) & (masked.argmax(axis=1) != labels)


def label_error_findings(paths: list[str], labels: np.ndarray, probs: np.ndarray) -> list[Finding]:
    """The label issues, scored by 1 - the out-of-fold probability of the folder's label."""
    issues = np.flatnonzero(label_issues(probs, labels))
    return [Finding(paths[r], "likely_label_error", float(1.0 - probs[r, labels[r]]),
                    f"filed as {CLASS_NAMES[labels[r]]}; out-of-fold P({CLASS_NAMES[1 - labels[r]]}) = "
                    f"{probs[r, 1 - labels[r]]:.3f}") for r in issues]


# --- outliers -------------------------------------------------------------------------------------------------

def knn_distance(features: np.ndarray, groups: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Mean cosine distance of each row to its k nearest rows outside its own duplicate group (so a
    pair of copies does not vouch for each other)."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    out = np.empty(len(unit))
    k = max(1, min(k, len(unit) - 1))
    for start in range(0, len(unit), 1024):
        distance = 1.0 - unit[start:start + 1024] @ unit.T
        distance[groups[start:start + 1024, None] == groups[None, :]] = np.inf
        nearest = np.sort(distance, axis=1)[:, :k]
        nearest[~np.isfinite(nearest)] = 2.0  # fewer than k others: the farthest a cosine distance can be
        out[start:start + 1024] = nearest.mean(axis=1)
    return out


def robust_z(values: np.ndarray) -> np.ndarray:
    """(value - median) / (1.4826 MAD): a z-score that the outliers themselves do not inflate. When more
    than half the values are equal (MAD 0) the mean absolute deviation (x 1.2533) scales instead; when all
    are equal every z is 0."""
    median = np.median(values)
    deviation = np.abs(values - median)
    scale = 1.4826 * np.median(deviation) or 1.2533 * np.mean(deviation)
    return (values - median) / scale if scale > 0 else np.zeros(len(values))


def outlier_findings(paths: list[str], sizes: list[tuple[int, int]], spread: np.ndarray, chroma: np.ndarray,
                     distance: np.ndarray, min_side: int) -> list[Finding]:
    """Near-blank, tiny (short side under `min_side`), stretched, colour and feature-space outliers."""
    found = []
    z = robust_z(distance)
    for r, path in enumerate(paths):
        width, height = sizes[r]
        if spread[r] <= BLANK_SPREAD:
            found.append(Finding(path, "blank", float(1.0 - spread[r] / 255.0),
                                 f"1st-99th percentile gray range {spread[r]:.1f} of 255"))
        if min(width, height) < min_side:
            found.append(Finding(path, "small_image", float(min_side / max(min(width, height), 1)),
                                 f"{width}x{height} px, short side under {min_side}"))
        aspect = max(width, height) / max(min(width, height), 1)
        if aspect >= EXTREME_ASPECT:
            found.append(Finding(path, "extreme_aspect", float(aspect), f"{width}x{height} px"))
        if chroma[r] > COLOUR_CHROMA:
            found.append(Finding(path, "colour", float(chroma[r]),
                                 f"mean channel spread {chroma[r]:.1f} of 255 (gray is 0)"))
        if z[r] > OUTLIER_Z:
            found.append(Finding(path, "feature_outlier", float(z[r]),
                                 f"mean cosine distance to its {NEIGHBOURS} nearest other images {distance[r]:.3f} "
                                 f"(median {np.median(distance):.3f}); robust z {z[r]:.1f}"))
    return found


# --- collections and shortcuts ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Collection:
    """One cluster of one grouping, with its class balance."""

    kind: str  # "size/format", "appearance" or "source"
    name: str
    files: int
    per_class: tuple[int, ...]

    @property
    def purity(self) -> float:
        return max(self.per_class) / self.files

    @property
    def majority(self) -> str:
        return CLASS_NAMES[int(np.argmax(self.per_class))]


def collections(kind: str, names: np.ndarray, labels: np.ndarray) -> list[Collection]:
    """The class balance of each value of `names`, largest first."""
    counts = Counter(names.tolist())
    return [Collection(kind, name, n, tuple(int(np.sum(labels[names == name] == k)) for k in range(len(CLASS_NAMES))))
            for name, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


def grouping_accuracy(names: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int, seed: int = 0) -> float:
    """Out-of-fold balanced accuracy of guessing each file's label as the majority label of its cluster
    in the other folds (the overall majority for a cluster those folds lack): how well the grouping
    alone predicts the label. Folds never split a duplicate group."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold

    folds = max(2, min(folds, *[len(np.unique(groups[labels == k])) for k in range(len(CLASS_NAMES))]))
    guess = np.empty_like(labels)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(names, labels, groups):
        overall = int(np.mean(labels[train]) >= 0.5)
        majority = {}
        for name in np.unique(names[train]):
            votes = labels[train][names[train] == name]
            majority[name] = int(np.mean(votes) >= 0.5)
        guess[test] = [majority.get(name, overall) for name in names[test]]
    return float(balanced_accuracy_score(labels, guess))


def appearance_clusters(features: np.ndarray, clusters: int, seed: int = 0) -> np.ndarray:
    """k-means clusters (named `A1`, `A2`, ...) of the features reduced to at most 32 principal components."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    clusters = max(1, min(clusters, len(features)))
    reduced = PCA(n_components=min(32, *features.shape), random_state=seed).fit_transform(features)
    ids = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit_predict(reduced)
    return np.asarray([f"A{i + 1}" for i in ids])


def shortcut_findings(groupings: dict[str, np.ndarray], labels: np.ndarray, groups: np.ndarray,
                      folds: int) -> tuple[list[Finding], list[Collection], dict[str, float]]:
    """For each grouping (kind -> each file's cluster name): its clusters, how well it alone predicts the
    label out of fold, a `shortcut_grouping` finding when that reaches SHORTCUT_ACCURACY, and a
    `shortcut_cluster` finding for each large cluster that is (nearly) one class."""
    found, table, accuracy = [], [], {}
    for kind, names in groupings.items():
        accuracy[kind] = grouping_accuracy(names, labels, groups, folds)
        clusters = collections(kind, names, labels)
        table.extend(clusters)
        if accuracy[kind] >= SHORTCUT_ACCURACY:
            found.append(Finding(kind, "shortcut_grouping", accuracy[kind],
                                 f"the majority label of each of its {len(clusters)} clusters predicts a file's "
                                 f"label at out-of-fold balanced accuracy {accuracy[kind]:.3f}"))
        for c in clusters:
            if c.purity >= PURE_SHARE and c.files >= PURE_MIN_FILES:
                found.append(Finding(f"{kind}:{c.name}", "shortcut_cluster", c.purity,
                                     f"{c.files} files, {_label_counts(np.repeat(np.arange(len(c.per_class)), c.per_class))}: "
                                     f"{c.purity:.1%} {c.majority}"))
    return found, table, accuracy
