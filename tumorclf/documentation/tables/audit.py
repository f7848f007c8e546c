"""The tables of docs/audit.md: what `tumorclf audit` found in the project's dataset, read from the audit's own
findings.csv and collections.csv so that the page states what the committed report states."""

from __future__ import annotations

from collections import Counter

from tumorclf.audit.dataset_audit import SIZE_CLUSTER_MIN
from tumorclf.audit.findings import FINDINGS, PURE_MIN_FILES, PURE_SHARE
from tumorclf.documentation.tables.cells import Results, Table, number

FINDINGS_CSV = "audit/findings.csv"
COLLECTIONS_CSV = "audit/collections.csv"
COMMAND = ("tumorclf audit --data ../shared/data/brain_tumor_dataset --sources ../shared/data/provenance.csv "
           "--weights-dir ../shared/weights --out experiments/results/audit")
GROUP_FINDINGS = ("shortcut_grouping", "shortcut_cluster")  # rows name a group of files (`KIND:NAME`), not a file
CONFIDENT = 0.99  # an out-of-fold probability of the other class at least this high is counted apart
STRONGEST = 12  # likely label errors listed by name
LARGEST = 10  # size/format clusters listed by name


def _rows(results: Results, finding: str) -> list[dict[str, str]]:
    return [row for row in results.csv(FINDINGS_CSV) if row["finding"] == finding]


def _folder(path: str) -> str:
    return path.split("/", 1)[0] + "/"


def _by_folder(rows: list[dict[str, str]]) -> str:
    """`47 in Healthy/, 38 in Brain Tumor/`: how many of `rows` each class folder holds, most first."""
    counts = Counter(_folder(row["path"]) for row in rows)
    return ", ".join(f"{n:,} in `{folder}`" for folder, n in counts.most_common()) or "-"


def _table(results: Results, header: list[str], rows: list[list[str]], sources: tuple[str, ...],
           note: str = "") -> Table:
    return Table(header, rows, [results.source(s) for s in sources], COMMAND, note)


def findings(results: Results) -> Table:
    """The report's summary: each finding, how many rows it has, and what the training split does about it."""
    body = []
    for name, (title, split_does) in FINDINGS.items():
        rows = _rows(results, name)
        where = "-" if name in GROUP_FINDINGS else _by_folder(rows)
        body.append([f"`{name}`", title, f"{len(rows):,}", where, split_does])
    return _table(results, ["finding", "what it is", "rows", "by class folder", "what the training split does"],
                  body, (FINDINGS_CSV,),
                  "A row is a file, except for the two shortcut findings, whose rows are groupings and clusters.")


def duplicates(results: Results) -> Table:
    """Files, distinct contents and copies: the counts behind "train on the grouped split"."""
    exact = _rows(results, "exact_duplicate")
    surplus = round(sum((float(row["score"]) - 1) / float(row["score"]) for row in exact))  # score: copies in set
    files = sum(int(row["files"]) for row in results.csv(COLLECTIONS_CSV) if row["kind"] == "size/format")
    across = _rows(results, "duplicate_across_labels")
    groups = {row["details"].split(":", 1)[0] for row in across}  # "group 16: 5 files ..."
    near = _rows(results, "near_duplicate")
    body = [["files in the dataset", f"{files:,}", "-"],
            ["distinct contents (files less surplus byte copies)", f"{files - surplus:,}", "-"],
            ["files with a byte-identical copy", f"{len(exact):,}", _by_folder(exact)],
            ["surplus byte copies (a set of n identical files counts n - 1)", f"{surplus:,}", "-"],
            ["files in a near-copy group with distinct contents", f"{len(near):,}", _by_folder(near)],
            ["duplicate groups filed under both labels", f"{len(groups):,}", "-"],
            ["files in those groups", f"{len(across):,}", _by_folder(across)]]
    return _table(results, ["count", "files", "by class folder"], body, (FINDINGS_CSV, COLLECTIONS_CSV))


def label_errors(results: Results) -> Table:
    """How many files the out-of-fold check flags in each class folder, and how many of them confidently."""
    rows = _rows(results, "likely_label_error")
    flagged = Counter(_folder(row["path"]) for row in rows)
    confident = Counter(_folder(row["path"]) for row in rows if float(row["score"]) >= CONFIDENT)
    body = [[f"`{folder}`", f"{n:,}", f"{confident[folder]:,}"] for folder, n in flagged.most_common()]
    body.append(["all", f"{len(rows):,}", f"{sum(confident.values()):,}"])
    return _table(results, ["filed under", "likely label errors", f"of them with P(other class) >= {CONFIDENT}"],
                  body, (FINDINGS_CSV,),
                  "P(other class) is the out-of-fold probability of the class the folder does not say.")


def strongest_label_errors(results: Results) -> Table:
    """The files to look at first: the likely label errors with the highest out-of-fold disagreement."""
    rows = _rows(results, "likely_label_error")[:STRONGEST]  # findings.csv is sorted by score within a finding
    body = [[f"`{row['path']}`", number(row["score"], 4), row["details"].split(";", 1)[0].removeprefix("filed as ")]
            for row in rows]
    return _table(results, ["file", "score: P(other class)", "filed as"], body, (FINDINGS_CSV,),
                  f"The {len(rows)} strongest of the `likely_label_error` rows.")


def shortcuts(results: Results) -> Table:
    """How well each grouping alone predicts the label, and how many of its clusters are one class."""
    collections = results.csv(COLLECTIONS_CSV)
    pure = Counter(row["path"].split(":", 1)[0] for row in _rows(results, "shortcut_cluster"))
    body = []
    for kind in dict.fromkeys(row["kind"] for row in collections):
        clusters = [row for row in collections if row["kind"] == kind]
        body.append([kind, f"{len(clusters):,}", number(clusters[0]["kind_balanced_accuracy"]),
                     f"{sum(row['tumor'] == '0' for row in clusters):,}",
                     f"{sum(row['healthy'] == '0' for row in clusters):,}", f"{pure[kind]:,}"])
    return _table(results, ["grouping", "clusters", "out-of-fold balanced accuracy of its majority label",
                            "clusters all Healthy", "clusters all Tumor",
                            f"`shortcut_cluster` rows ({PURE_MIN_FILES}+ files, {PURE_SHARE:.0%}+ one class)"],
                  body, (COLLECTIONS_CSV, FINDINGS_CSV),
                  "0.5 is chance; 1 means the grouping alone gives every file's label.")


def _clusters(results: Results, kind: str, limit: int | None = None) -> list[list[str]]:
    rows = [row for row in results.csv(COLLECTIONS_CSV) if row["kind"] == kind][:limit]  # largest first
    return [[row["name"], f"{int(row['files']):,}", f"{int(row['healthy']):,}", f"{int(row['tumor']):,}",
             number(row["majority_share"])] for row in rows]


def sources(results: Results) -> Table:
    """The class balance of each source collection (from the `--sources` file)."""
    return _table(results, ["source", "files", "Healthy", "Tumor", "majority share"],
                  _clusters(results, "source"), (COLLECTIONS_CSV,))


def size_format(results: Results) -> Table:
    """The largest clusters of files sharing a format and an exact size."""
    return _table(results, ["format and size", "files", "Healthy", "Tumor", "majority share"],
                  _clusters(results, "size/format", LARGEST), (COLLECTIONS_CSV,),
                  f"The {LARGEST} largest of the size/format clusters; a size shared by fewer than "
                  f"{SIZE_CLUSTER_MIN} files joins its format's \"other sizes\".")


def outliers(results: Results) -> Table:
    """Every colour and feature-space outlier, with what the check measured."""
    rows = _rows(results, "colour") + _rows(results, "feature_outlier")
    body = [[f"`{row['path']}`", f"`{row['finding']}`", number(row["score"], 1), row["details"]] for row in rows]
    return _table(results, ["file", "finding", "score", "details"], body, (FINDINGS_CSV,),
                  "Score: for `colour` the mean channel spread (of 255), for `feature_outlier` the robust z-score.")


TABLES = {"audit-findings": findings, "audit-duplicates": duplicates, "audit-label-errors": label_errors,
          "audit-label-errors-strongest": strongest_label_errors, "audit-shortcuts": shortcuts,
          "audit-sources": sources, "audit-size-format": size_format, "audit-outliers": outliers}
