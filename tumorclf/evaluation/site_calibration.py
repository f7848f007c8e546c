"""Fit a run's operating point on a site's own labelled folder, so the site can move the threshold to its
scanners without retraining (`calibrate_on_folder`; the command is `tumorclf calibrate`).

The folder is read as ``evaluate --data`` reads it (`tumorclf.evaluation.evaluate.external`): two class
folders, or one (a collection of tumour slices alone is enough). The threshold is the highest on calibrated
P(Tumor) that reaches the target sensitivity on the folder's tumour slices
(`tumorclf.metrics.calibration.threshold_for_sensitivity`). The temperature stays the run's validation
temperature, even when the folder holds both classes: one calibrated P(Tumor) per run keeps every point of the
run on one scale (`tumorclf.runs.points`), a one-class folder could not fit one, and a site folder is usually
too small to fit both a temperature and a threshold without the second reusing the first's noise.

A target is only resolvable with enough tumour slices: with n of them the sensitivities reachable step by
1 / n, so fewer than `min_tumour_slices` (max(20, ceil(1 / (1 - target))): 100 for 0.99) is refused, before
the model is loaded and with nothing written. Images the contamination check finds to be copies of the run's
training or validation files are counted, warned about and recorded (they stay in the fit: the site's
threshold is for the site's images as they come).

The point is stored in the run folder's ``operating_points.json`` under its name, atomically, with its
provenance: the folder, the slices per class, the SHA-256 of the sorted ``path<TAB>sha256`` lines of its
files (same files, same bytes: same hash), the UTC time, the tumorclf version and the target. ``select``
makes it the point the run applies (`tumorclf.runs.points.chosen`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tumorclf.data.dataset import CLASS_NAMES
from tumorclf.errors import UsageError
from tumorclf.evaluation.evaluate import check_contamination, external, operating_point, reference_set, score
from tumorclf.metrics.calibration import sensitivity, threshold_for_sensitivity
from tumorclf.metrics.classification import decide, specificity
from tumorclf.runs.folder import RunDir, RunExistsError
from tumorclf.runs.points import BUILTIN, NamedPoint, calibrated
from tumorclf.utils.files import versions

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MIN_TUMOUR_SLICES = 20  # even a low target needs this many tumour slices to say anything


class CalibrateError(UsageError):
    """The folder cannot resolve the target, or the name is taken or invalid; nothing was written."""


def min_tumour_slices(target: float) -> int:
    """Tumour slices needed to resolve `target`: max(20, ceil(1 / (1 - target))) (100 for 0.99)."""
    return max(MIN_TUMOUR_SLICES, math.ceil(1 / (1 - target) - 1e-9))


def files_hash(paths: list[str], sha256: list[str]) -> str:
    """SHA-256 of the sorted ``path<TAB>sha256`` lines of the files: it changes when a file is added, removed,
    renamed or changed."""
    lines = sorted(f"{path}\t{sha}" for path, sha in zip(paths, sha256))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def check_name(run: RunDir, name: str, overwrite: bool) -> None:
    """A name that is none of `BUILTIN`, fits `NAME_PATTERN`, and is not taken unless `overwrite`."""
    if name in BUILTIN or not NAME_PATTERN.fullmatch(name):
        raise CalibrateError(f"calibrate: --name {name!r} must be 1-64 letters, digits, '_', '.' or '-' and none "
                             f"of {', '.join(BUILTIN)}")
    if name in run.calibrated_points()["points"] and not overwrite:
        raise RunExistsError(f"calibrate: {run.name} already has an operating point {name!r} in "
                             f"{run.calibrated_points_file.name}; pass --overwrite to replace it or --name to "
                             "choose another")


def calibrate_on_folder(run: RunDir, folder: Path, target: float | None = None, name: str | None = None,
                        select: bool = False, overwrite: bool = False, classes: tuple[str, str] | None = None,
                        batch_size: int | None = None) -> NamedPoint:
    """Fit, store (and with `select` choose) the operating point of `folder` for `run`; returns it. `target`
    defaults to the run's validation target; `name` to the folder's name."""
    run.require_finished()
    cfg = run.config()
    folder = Path(folder)
    name = name or folder.resolve().name
    check_name(run, name, overwrite)
    saved = run.operating_point()
    if target is None:
        target = saved.target_sensitivity if saved else cfg.target_sensitivity
    if not 0 < target < 1:
        raise CalibrateError(f"calibrate: --target-sensitivity must be in (0, 1), got {target}")
    dataset = external(folder, cfg.image_size, classes, cfg.cache_dir)
    tumours, needed = int(np.sum(dataset.labels == 1)), min_tumour_slices(target)
    if tumours < needed:
        raise CalibrateError(f"calibrate: {folder} has {tumours or 'no'} tumour slices; sensitivity {target:g} "
                             f"needs at least {needed} to be resolved (nothing written)")
    batch_size = batch_size or cfg.batch_size
    model = run.load_model()
    point, _ = operating_point(run, model, batch_size, None)  # the run's validation temperature
    probs, _, _ = score(model, None, dataset, batch_size, f"predicting {folder.name}")
    contamination = check_contamination(dataset, reference_set(run), cfg.near_duplicate_bits)
    copies = int(contamination.mask.sum())
    if copies:
        log.warning("%d of %d images of %s are copies of %s's training or validation files (see tumorclf evaluate "
                    "--data); they are kept in the fit", copies, len(dataset), folder, run.name)
    labels, calibrated_p = dataset.labels, point.calibrate(probs[:, 1])
    threshold = threshold_for_sensitivity(labels, calibrated_p, target)
    decided = decide(calibrated_p, threshold)
    healthy = bool(np.any(labels == 0))
    entry = {"threshold": threshold, "temperature": point.temperature, "target_sensitivity": target,
             "sensitivity": sensitivity(labels, decided),
             "specificity": specificity(labels, decided) if healthy else None,
             "provenance": {
                 "folder": str(folder.resolve()), "target_sensitivity": target,
                 "slices": {label: int(np.sum(labels == i)) for i, label in enumerate(CLASS_NAMES)},
                 "skipped": len(dataset.skipped), "contaminated": copies,
                 "files_sha256": files_hash(dataset.paths, dataset.sha256),
                 "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "tumorclf": versions().get("tumorclf"),
                 "temperature": f"the run's, fitted on {point.fitted_on} ({point.n} slices)"}}
    check_name(run, name, overwrite)  # again: another calibrate may have taken it meanwhile
    points = run.calibrated_points()
    points["points"][name] = entry
    if select:
        points["selected"] = name
    run.write_calibrated_points(points)
    return calibrated(run, name, entry, point.temperature)
