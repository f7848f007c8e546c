"""Runs that can form an ensemble (`check_members`), and an ensemble's operating point from its members'
saved validation predictions (`ensemble_point`), without loading a model.

Members must share the split (identical split.csv rows: the same train, validation and test files, e.g. runs
of several seeds trained with one --split-seed), the image size and the class folders: then their validation
predictions are of the same images, the ensemble's test split is each member's, and the contamination check
and bootstrap groups of the first member hold for all of them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tumorclf.metrics.calibration import OperatingPoint
from tumorclf.metrics.ensemble import ensemble_operating_point
from tumorclf.runs.folder import RunDir, RunError


def split_key(run: RunDir) -> list[tuple]:
    """split.csv's rows, each as its sorted (column, value) pairs, sorted: equal for equal splits."""
    return sorted(tuple(sorted(row.items())) for row in run.split_rows())


def check_members(runs: Sequence[RunDir]) -> None:
    """Every run finished, and each after the first with the first's split, image size and classes; else one
    RunError naming the run that differs."""
    if not runs:
        raise RunError("an ensemble needs at least one run")
    first = runs[0].require_finished()
    split, config = split_key(first), first.config()
    for run in runs[1:]:
        run.require_finished()
        other = run.config()
        if split_key(run) != split:
            raise RunError(f"{run.path} cannot join an ensemble with {first.path}: its split.csv differs (members "
                           "must share one split, e.g. trained with the same --split-seed)")
        for what, mine, theirs in (("image size", config.image_size, other.image_size),
                                   ("classes", config.classes, other.classes)):
            if mine != theirs:
                raise RunError(f"{run.path} cannot join an ensemble with {first.path}: its {what} is {theirs}, "
                               f"not {mine}")


def member_validation(runs: Sequence[RunDir]) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """The shared validation files (the first member's order), their labels and each member's raw P(Tumor) of
    them, from the members' val_predictions.csv; a member whose files differ is a RunError naming it."""
    rows = [run.val_predictions() for run in runs]
    paths = [row["path"] for row in rows[0]]
    try:
        labels = np.array([int(row["label"]) for row in rows[0]], dtype=np.int64)
        probs = [{row["path"]: float(row["prob_tumor"]) for row in member} for member in rows]
    except ValueError as exc:
        raise RunError(f"a member's val_predictions.csv is corrupt: {exc}") from None
    for run, member in zip(runs, probs):
        if set(member) != set(paths) or len(member) != len(paths):
            raise RunError(f"{run.val_predictions_file} holds other validation files than "
                           f"{runs[0].val_predictions_file}")
    return paths, labels, [np.array([member[path] for path in paths], dtype=np.float64) for member in probs]


def member_points(runs: Sequence[RunDir]) -> list[OperatingPoint]:
    """Each member's saved operating point; a member without one is a RunError (evaluate it once to fit it)."""
    points = [run.operating_point() for run in runs]
    for run, point in zip(runs, points):
        if point is None:
            raise RunError(f"{run.path} has no operating_point.json: `tumorclf evaluate --run {run.path}` fits it")
    return points


def ensemble_point(runs: Sequence[RunDir], target_sensitivity: float | None = None) -> OperatingPoint:
    """The ensemble's operating point from the members' saved files alone (val_predictions.csv and
    operating_point.json), at `target_sensitivity` (default: the first member's)."""
    check_members(runs)
    points = member_points(runs)
    _, labels, raws = member_validation(runs)
    target = points[0].target_sensitivity if target_sensitivity is None else target_sensitivity
    return ensemble_operating_point(labels, raws, points, target)
