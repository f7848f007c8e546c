"""`tumorclf calibrate`: fit a run's operating point on a site's own labelled folder, without retraining
(`tumorclf.evaluation.site_calibration`).

Usage: ``tumorclf calibrate --run RUN --data FOLDER [--target-sensitivity S] [--name NAME] [--select]
[--overwrite] [--classes HEALTHY TUMOR] [--batch-size N]``

``--data`` holds two class folders, or one (tumour slices alone), as for ``evaluate --data``. The threshold is
the highest on calibrated P(Tumor) (the run's validation temperature) reaching ``--target-sensitivity``
(default: the run's) on the folder's tumour slices; too few of them is a one-line refusal. The point is stored
in ``RUN/operating_points.json`` as ``--name`` (default: the folder's name; an existing one only with
``--overwrite``); ``--select`` makes it the point predict, export and serve apply. Prints one line: what was
fitted and where it is stored.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tumorclf.cli import flags
from tumorclf.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_run(p)
    p.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="the site's labelled folder: two class folders, or one of tumour slices alone")
    p.add_argument("--classes", nargs=2, metavar=("HEALTHY", "TUMOR"),
                   help="the class folder names of --data, where the folder names do not tell")
    p.add_argument("--target-sensitivity", type=float, metavar="S",
                   help="sensitivity to reach on the folder's tumour slices, in (0, 1) (default: the run's "
                        "validation target); needs max(20, ceil(1 / (1 - S))) tumour slices")
    p.add_argument("--name", metavar="NAME", help="the point's name (default: the folder's name)")
    p.add_argument("--select", action="store_true",
                   help="make it the run's operating point for predict, export and serve")
    flags.add_overwrite(p, "a point of the same --name")
    flags.add_batch_size(p)


def run(args: argparse.Namespace) -> int:
    if args.target_sensitivity is not None and not 0 < args.target_sensitivity < 1:
        raise UsageError(f"calibrate: --target-sensitivity must be in (0, 1), got {args.target_sensitivity}")
    flags.check_batch_size(args, "calibrate")
    from tumorclf.evaluation.site_calibration import calibrate_on_folder
    from tumorclf.runs.folder import RunDir

    run_dir = RunDir(args.run)
    point = calibrate_on_folder(run_dir, args.data, args.target_sensitivity, args.name, args.select,
                                args.overwrite, tuple(args.classes) if args.classes else None, args.batch_size)
    entry = run_dir.calibrated_points()["points"][point.name]
    measured = f"sensitivity {entry['sensitivity']:.3f}" + (
        f", specificity {entry['specificity']:.3f}" if entry["specificity"] is not None else
        ", specificity n/a (no healthy slices)")
    print(f"{point.describe()}; on the folder: {measured}; stored in {run_dir.calibrated_points_file}"
          + (" (selected)" if args.select else ""))
    return 0
