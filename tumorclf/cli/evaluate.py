"""`tumorclf evaluate`: score a finished run on its own test split, or on other folders of class folders,
at its validation-fitted operating point, with a contamination check and group-bootstrap intervals
(`tumorclf.evaluation.evaluate`).

Usage: ``tumorclf evaluate --run RUN [RUN ...] [--tta [VIEW ...]] [--data DIR ...] [--target-sensitivity S]
[--bootstrap N] [--out DIR] [--overwrite] [--threshold T] [--classes HEALTHY TUMOR] [--batch-size N] [--seed N]
[--no-gate]``

Without ``--data`` the run's own test split is scored again. With ``--data``, each folder holds two class
folders named as for training (or ``--classes``), or one (then only the metrics its class allows, the others
n/a); each is reported on its own and, with several, pooled.
``--target-sensitivity`` other than the run's refits the operating point for this evaluation only;
``--no-gate`` scores without the run's quality gate.
Several ``--run`` score their ensemble (mean of the members' calibrated P(Tumor); they must share the split,
image size and classes) and ``--tta`` averages each image over fixed test-time views
(`tumorclf.evaluation.combined`); both refit the operating point on validation for this evaluation only and
need ``--out``.

Writes, atomically, into ``--out`` (default ``RUN/evaluation``; never a run folder; an earlier evaluation
is replaced only with ``--overwrite``): ``predictions.csv``, ``skipped.csv``, ``contaminated.csv``,
``reliability.png``, ``roc.png`` and, last, ``evaluation.json``; prints a table of the metrics.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from tumorclf.cli import flags
from tumorclf.errors import UsageError
from tumorclf.metrics import DEFAULT_RESAMPLES

if TYPE_CHECKING:
    from tumorclf.runs.folder import RunDir


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_run(p, "a finished run folder; several: score their ensemble (they must share one split, image size "
                     "and classes; the first one's gate, contamination check and groups apply)", many=True)
    p.add_argument("--tta", nargs="*", metavar="VIEW",
                   help="test-time augmentation: average each image's softmax over these fixed views (default: "
                        "identity hflip rotate+5 rotate-5), one inference pass each; the operating point is refitted "
                        "on the validation split's averaged predictions")
    p.add_argument("--data", nargs="+", type=Path, metavar="DIR",
                   help="folders of two class folders (or of one: only its class's metrics) to score, each on "
                        "its own and (several) pooled (default: the run's own test split)")
    p.add_argument("--classes", nargs=2, metavar=("HEALTHY", "TUMOR"),
                   help="with --data: the class folder names, where the folder names do not tell")
    p.add_argument("--target-sensitivity", type=float, metavar="S",
                   help="operating point: the highest threshold reaching this sensitivity on validation "
                        "(default: the run's saved operating point, fitted at the --target-sensitivity it was "
                        "trained with)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, metavar="N",
                   help=f"bootstrap resamples of duplicate groups for the 95%% intervals (default: "
                        f"{DEFAULT_RESAMPLES}; 0: none)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the bootstrap (default: 0)")
    flags.add_out(p, "folder for evaluation.json and the other outputs (default: RUN/evaluation)")
    flags.add_overwrite(p, "an earlier evaluation in --out")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="calibrated P(Tumor) at or above which Tumor is predicted (default: the operating point)")
    flags.add_batch_size(p)
    p.add_argument("--no-gate", action="store_true",
                   help="score without the run's quality gate (empty quality and ood_score columns, no gate section)")


def check_out(out: Path, run: RunDir, overwrite: bool) -> None:
    """Refuse an `--out` that is a run folder (its skipped.csv would be replaced) or not a folder, and one
    holding an earlier evaluation unless `overwrite`: before the slow scoring, not after it."""
    from tumorclf.evaluation.evaluate import OUTPUT_FILES
    from tumorclf.runs.folder import RunDir

    if RunDir(out).config_file.is_file() or out.resolve() == run.path.resolve():
        raise UsageError(f"evaluate: --out must not be a run folder ({out} is one: its skipped.csv would be "
                         "replaced); choose another --out")
    flags.check_out_folder(out, "evaluate", "an evaluation", OUTPUT_FILES, overwrite)


def check_values(args: argparse.Namespace) -> None:
    """One-line errors for values out of range, before any file is read."""
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UsageError(f"evaluate: --threshold must be in [0, 1], got {args.threshold}")
    if args.target_sensitivity is not None and not 0 < args.target_sensitivity <= 1:
        raise UsageError(f"evaluate: --target-sensitivity must be in (0, 1], got {args.target_sensitivity}")
    if args.bootstrap < 0:
        raise UsageError(f"evaluate: --bootstrap must be >= 0, got {args.bootstrap}")
    flags.check_batch_size(args, "evaluate")
    if (len(args.run) > 1 or args.tta is not None) and not args.out:
        raise UsageError("evaluate: an ensemble (several --run) or --tta is not the run's own evaluation; give --out")
    if args.classes and not args.data:
        raise UsageError("evaluate: --classes names the class folders of --data folders; give --data too")


def run(args: argparse.Namespace) -> int:
    check_values(args)
    from tumorclf.evaluation.evaluate import EVALUATION_FILE, evaluate, table, write_outputs
    from tumorclf.runs.folder import RunDir

    runs = [RunDir(path) for path in args.run]
    run_dir = runs[0]
    scoring = None
    if len(runs) > 1 or args.tta is not None:
        from tumorclf.evaluation.combined import Combined

        scoring = Combined(runs, args.tta)  # refuses members that differ, before anything is read or written
    out = args.out or run_dir.evaluation_dir
    check_out(out, run_dir, args.overwrite)
    report, scored, point = evaluate(run_dir, args.data, args.threshold, args.batch_size,
                                     tuple(args.classes) if args.classes else None, args.target_sensitivity,
                                     args.bootstrap, args.seed, use_gate=not args.no_gate, scoring=scoring)
    (out / EVALUATION_FILE).unlink(missing_ok=True)  # replaced: absent until the new outputs are complete
    write_outputs(out, report, scored, point)
    scored_by = " + ".join(run.name for run in runs) + (" with test-time views" if args.tta is not None else "")
    print(f"{scored_by}: temperature {point.temperature:.3f}, threshold {report['threshold']:.4f} "
          f"(sensitivity >= {point.target_sensitivity:g} on validation); 95% intervals over "
          f"{args.bootstrap} resamples of duplicate groups")
    print(table(report))
    print(out / EVALUATION_FILE)
    return 0
