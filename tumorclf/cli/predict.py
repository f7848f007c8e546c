"""`tumorclf predict`: P(tumour) of images, folders and volumes with a `.keras` model, an exported SavedModel
or an export's ``model.onnx``.

Usage: ``tumorclf predict --model-file PATH --inputs PATH [PATH ...] [--out DIR] [--format csv|json]
[--threshold T | --operating-point NAME] [--batch-size N] [--no-gate] [--slices middle|all|K]``

One row per file, or per chosen slice of a volume (`tumorclf.serving.predictors`: its columns, calibration,
operating point and quality gate). ``--out DIR`` writes ``DIR/predictions.csv`` (``predictions.json`` with
``--format json``); without ``--out`` the rows go to stdout. A summary line (files, predicted, unreadable,
refused by the gate, operating point) is logged on stderr.

Earlier spellings still work, with a notice: ``--model PATH`` (now ``--model-file``), paths without a flag
(now ``--inputs``) and ``--out preds.csv`` / ``--out preds.json`` (the file itself, its suffix the format).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

from tumorclf.cli import flags
from tumorclf.data.medical import MIDDLE, slices_argument
from tumorclf.errors import UsageError
from tumorclf.metrics.classification import DEFAULT_THRESHOLD

log = logging.getLogger(__name__)

FORMATS = ("csv", "json")  # the first is the default
BATCH_SIZE = 32


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_model_file(p, "a .keras file, an exported SavedModel folder or an export's model.onnx")
    flags.add_inputs(p)
    flags.positional(p, "paths")
    flags.add_out(p, "write predictions.csv (or .json, --format) into this folder (default: the rows on stdout)")
    p.add_argument("--format", choices=FORMATS, help=f"of the rows, in --out or on stdout (default: {FORMATS[0]})")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="calibrated P(Tumor) at or above which Tumor is predicted; replaces the threshold only, "
                        "the temperature stays the model's (default: the model card's threshold, or the run's "
                        f"for a best.keras, else {DEFAULT_THRESHOLD:g})")
    flags.add_operating_point(p, "a run's best.keras or an export")
    flags.add_batch_size(p, str(BATCH_SIZE))
    p.add_argument("--no-gate", action="store_true",
                   help="no input quality gate: quality and ood_score stay empty and every readable image is "
                        "decided (default: the gate saved with the model, when it has one, leaves tiny, blank, "
                        "colour and out-of-distribution images undecided)")
    p.add_argument("--slices", type=slices_argument, default=MIDDLE, metavar="middle|all|K",
                   help="which slices of a DICOM/NIfTI volume or multi-frame file to score, one row each with its "
                        "index in the slice column: middle (default), all (every slice with enough brain) or K "
                        "(0-based: for NIfTI the axial slice counted inferior to superior after reorientation to "
                        "RAS, not the file's stored index; for multi-frame DICOM the frame in storage order, never "
                        "resliced); 2-D images are scored once")


def destination(out: Path | None, form: str | None) -> tuple[Path | None, str]:
    """Where the rows go (None: stdout) and their format: ``--out DIR`` gets predictions.csv, or .json with
    ``--format json``; an earlier version's ``--out FILE.csv|.json`` names the file itself, its suffix the format."""
    if out is None:
        return None, form or FORMATS[0]
    suffix = out.suffix.lower().lstrip(".")
    named = suffix if suffix in FORMATS else None  # the format an earlier --out FILE would write
    target = flags.out_file(out, f"predictions.{form or named or FORMATS[0]}", tuple(f".{f}" for f in FORMATS))
    if target == out:
        if form not in (None, named):
            raise UsageError(f"predict: --format {form} but --out {out} ends in .{named}; write --out "
                             f"{out.parent} --format {form}")
        return target, named
    if out.exists() and not out.is_dir():
        raise UsageError(f"predict: --out must be a folder, {out} is a file")
    chosen = form or FORMATS[0]
    return out / f"predictions.{chosen}", chosen


def rows_text(rows: list[dict], form: str) -> str:
    """The rows as CSV (`COLUMNS`, the later columns last) or JSON, the same in a file as on stdout."""
    from tumorclf.serving.predictors import COLUMNS
    from tumorclf.utils.files import csv_text

    if form == "json":
        return json.dumps(rows, indent=2, default=str) + "\n"
    return csv_text(COLUMNS, ([row[column] for column in COLUMNS] for row in rows))


def run(args: argparse.Namespace) -> int:
    flags.merge_positional(args, "paths", "--inputs", "inputs")
    if not args.inputs:
        raise UsageError("predict: nothing to score: give the images with --inputs PATH [PATH ...]")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UsageError(f"predict: --threshold must be in [0, 1], got {args.threshold}")
    flags.check_point_or_threshold(args, "predict")
    flags.check_batch_size(args, "predict")
    batch_size = BATCH_SIZE if args.batch_size is None else args.batch_size
    target, form = destination(args.out, args.format)
    missing = [str(path) for path in args.inputs if not path.exists()]
    if missing:
        raise UsageError(f"predict: inputs not found: {', '.join(missing)}")
    from tumorclf.data.dataset import expand_inputs
    from tumorclf.serving.predictors import open_model, predict_files
    from tumorclf.utils.files import atomic_write_text

    model = open_model(args.model_file, args.threshold, gated=not args.no_gate, point_name=args.operating_point)
    from tumorclf.gate.quality_gate import OK, REASONS  # loaded with the model

    files = expand_inputs(args.inputs)
    rows = list(predict_files(model.predictor, model.size, files, model.threshold, batch_size,
                              temperature=model.temperature, min_side=model.min_side, slices=args.slices))
    text = rows_text(rows, form)
    atomic_write_text(target, text) if target else sys.stdout.write(text)
    refused = Counter(r["quality"] for r in rows if r["quality"] not in (None, REASONS[OK]))
    gating = "not gated" if model.min_side is None else f"{sum(refused.values())} refused by the quality gate" + (
        f" ({', '.join(f'{reason} {n}' for reason, n in sorted(refused.items()))})" if refused else "")
    log.info("%d files%s, %d predicted, %d unreadable, %s, temperature %g, threshold %g%s", len(files),
             f" ({len(rows)} rows, slices {args.slices})" if len(rows) != len(files) else "",
             sum(1 for r in rows if r["predicted"]), sum(1 for r in rows if r["error"]), gating,
             model.temperature, model.threshold, f" -> {target}" if target else "")
    return 0
