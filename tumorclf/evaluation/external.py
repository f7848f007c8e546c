"""External validation: a finished run scored on folders from collections it never trained on.

A model chosen and calibrated on slices of its training collections can look excellent there and miss tumours
of another collection (docs/robustness.md). `train --external DIR...` (a study's `external:`) evaluates every
such folder at the end of the run, at every stored operating point and at 0.5, with the contamination check and
group-bootstrap intervals of `tumorclf evaluate`, into the run's `evaluation_external` folder, where the model
card finds it. One-class folders (e.g. tumour slices only) report the metrics their class
allows. The folders are checked before training starts, so a typo costs seconds, not a training run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tumorclf.errors import UsageError
from tumorclf.evaluation.evaluate import POOLED, evaluate, write_outputs
from tumorclf.metrics import DEFAULT_RESAMPLES
from tumorclf.metrics.bootstrap import format_interval
from tumorclf.runs.folder import RunDir

log = logging.getLogger(__name__)


def check_external(folders: list[Path], data_root: Path) -> None:
    """Refuse (one line) a folder that does not exist, or one that is, holds or lies inside the training data:
    external slices are for validation only."""
    data = data_root.resolve()
    for folder in folders:
        if not folder.is_dir():
            raise UsageError(f"--external {folder}: no such folder")
        where = folder.resolve()
        if where == data or data in where.parents or where in data.parents:
            raise UsageError(f"--external {folder} overlaps the training data folder {data_root}: external "
                             "folders are for validation only")


def evaluate_external(run: RunDir, folders: list[Path], n_bootstrap: int = DEFAULT_RESAMPLES) -> dict:
    """Evaluate the finished `run` on `folders` into RUN/evaluation_external; returns the report (the content
    of its evaluation.json) and logs one line per folder and operating point."""
    report, scored, point = evaluate(run, data_dirs=folders, n_bootstrap=n_bootstrap)
    write_outputs(run.external_dir, report, scored, point)
    for line in summary_lines(report):
        log.info("external: %s", line)
    return report


def summary_lines(report: dict) -> list[str]:
    """`NAME (n slices): sensitivity 0.95 [0.93, 0.97] at target_sensitivity (0.41), ...` per folder (no pooled
    line), with specificity too where the folder has healthy slices."""
    lines = []
    for name, entry in report["datasets"].items():
        if name == POOLED:
            continue
        parts = []
        for point, values in entry["operating_points"].items():
            cells = [f"{metric} {format_interval(values[metric])}" for metric in ("sensitivity", "specificity")
                     if metric not in entry["not_reportable"]]
            parts.append(f"{', '.join(cells)} at {point} ({values['threshold']:.3g})")
        lines.append(f"{name} ({entry['n']} slices): " + "; ".join(parts))
    return lines
