"""A finished run's own files of a split (`split.csv`), decoded as in training: what `evaluate` scores again
and what a quality gate fitted after training is fitted on."""

from __future__ import annotations

import logging
from pathlib import Path

from tumorclf.data import dataset as data
from tumorclf.runs.folder import RunDir, RunError

log = logging.getLogger(__name__)


def own_split(run: RunDir, names: tuple[str, ...], needed_for: str = "pass --data to score other folders",
              changed_means: str = "the result will differ from its metrics.json",
              root: Path | None = None) -> data.Dataset:
    """The run's files of the splits `names` (split.csv) under its data folder (or `root`, where it has moved),
    decoded as in training. `needed_for` and `changed_means` complete the messages when the folder is gone or
    files changed."""
    cfg = run.config()
    rows = [row for row in run.split_rows() if row["split"] in names]
    if not rows:
        raise RunError(f"{run.split_file} assigns no file to the {'/'.join(names)} split")
    if root is None:
        root = run.data_root()
        if not root.is_dir():
            raise RunError(f"the data folder of {run} is gone: {root}; {needed_for}")
    elif not root.is_dir():
        raise RunError(f"data folder not found: {root}")
    folders = data.find_class_folders(root, cfg.classes)
    dataset = data.load_files(root, folders, [(root / row["path"], int(row["label"])) for row in rows],
                              cfg.image_size, cfg.cache_dir)
    if not dataset.paths:
        raise RunError(f"none of the {len(rows)} {'/'.join(names)} files of {run} can be read under {root}, e.g. "
                       f"{dataset.skipped[0][0]}: {dataset.skipped[0][1]}")
    recorded = {row["path"]: row.get("sha256") for row in rows}
    changed = sum(1 for path, sha in zip(dataset.paths, dataset.sha256) if recorded[path] not in (None, "", sha))
    if changed or dataset.skipped:
        log.warning("%d %s files changed and %d unreadable since %s was trained: %s", changed, "/".join(names),
                    len(dataset.skipped), run.name, changed_means)
    return dataset
