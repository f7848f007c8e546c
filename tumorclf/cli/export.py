"""`tumorclf export`: a run's best model as a SavedModel (signatures serve, serve_bytes) and/or model.onnx, with
model.keras, the run's quality gate and a model card, in one folder (`tumorclf.serving.export`).

Usage: ``tumorclf export --run RUN [RUN ...] [--out DIR] [--format savedmodel onnx] [--threshold T |
--operating-point NAME] [--overwrite] [--measure N] [--evaluation DIR ...]``

``--out`` is the export's folder (default ``saved_models/<run name>``); an earlier export there is replaced
only with ``--overwrite``, and never a run folder or a folder of other files. ``--evaluation`` adds
evaluations of this run written elsewhere (``tumorclf evaluate --run RUN --out DIR``) to the model card,
beside the run's own ``evaluation*/`` subfolders. ``--measure N`` times each format and in-process Keras on
the same N images and records img/s in the card. Several ``--run`` export their ensemble as one model, SavedModel
and/or ONNX (`tumorclf.serving.ensemble`: the mean of the members' calibrated P(Tumor) at the ensemble's
operating point; no gate, no --measure, --evaluation or --operating-point).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tumorclf.cli import flags
from tumorclf.errors import UsageError
from tumorclf.serving.formats import DEFAULT_FORMATS, FORMATS


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_run(p, "a finished run folder; several: one model of their ensemble (same split, image size and "
                     "classes)", many=True)
    flags.add_out(p, "the export's folder (default: saved_models/<run name>)")
    p.add_argument("--format", nargs="+", default=list(DEFAULT_FORMATS), metavar="FORMAT", dest="formats",
                   help=f"one or more of {' '.join(FORMATS)} (default: {' '.join(DEFAULT_FORMATS)}): the "
                        "SavedModel's serve and serve_bytes signatures and/or model.onnx (the serve signature as "
                        "ONNX, needs the onnx extra)")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="decision threshold on calibrated P(Tumor), applied by the SavedModel's signatures and "
                        "model.onnx and recorded in the model card (default: the run's operating threshold; the "
                        "temperature is always the run's)")
    flags.add_operating_point(p, "the export")
    flags.add_overwrite(p, "an earlier export at --out (never a run folder or other files)")
    p.add_argument("--measure", type=int, default=0, metavar="N",
                   help="time each exported format and in-process Keras on the same N images (img/s, batch 32) "
                        "and record the result in the card (default: 0, no timing)")
    p.add_argument("--evaluation", nargs="+", type=Path, metavar="DIR",
                   help="folders written by tumorclf evaluate --out (an evaluation.json of this run) to add to the "
                        "model card beside the run's own evaluation*/ subfolders")


def run(args: argparse.Namespace) -> int:
    """Check the arguments only the command line can get wrong; `export_run` checks the rest."""
    if args.measure < 0:
        raise UsageError(f"export: --measure must be 0 or a positive number of images, got {args.measure}")
    flags.check_point_or_threshold(args, "export")
    if len(args.run) > 1:
        given = [flag for flag, value in (("--measure", args.measure), ("--evaluation", args.evaluation),
                                          ("--operating-point", args.operating_point)) if value]
        if given:
            raise UsageError(f"export: an ensemble (several --run) is exported without a gate or timings, at its own "
                             f"operating point; drop {', '.join(given)}")
        from tumorclf.serving.ensemble import export_ensemble

        print(export_ensemble(args.run, args.out, args.threshold, args.overwrite, args.formats))
        return 0
    from tumorclf.serving.export import export_run

    print(export_run(args.run[0], args.out, args.threshold, args.overwrite, args.measure, args.evaluation,
                     args.formats, args.operating_point))
    return 0
