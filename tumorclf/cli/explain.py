"""`tumorclf explain`: Grad-CAM overlays of images, for one run or several side by side; with ``--boxes``, the
heatmaps scored against tumour boxes.

Usage:
  tumorclf explain --run DIR --inputs PATH [PATH ...] --out DIR [--method gradcam|gradcam++|scorecam ...]
                   [--target predicted|tumor|healthy] [--layer NAME] [--limit N] [--slices middle|all|K]
  tumorclf explain --run DIR DIR [DIR ...] --inputs PATH [PATH ...] --out DIR [...]
  tumorclf explain --run DIR [DIR ...] --boxes FILE [--inputs PATH ...] --out DIR [--method ...] [--overwrite]

One run: one overlay PNG per image, ``FOLDER_STEM[_sliceK]_METHOD.png`` (`explain_images`). Several runs: one
figure per image with each run's overlay side by side, ``compare_FOLDER_STEM[_sliceK]_METHOD.png``
(`compare_runs`, the paper's Figs. 5-8). ``--slices`` picks the slices of a DICOM/NIfTI volume or multi-frame
file as ``tumorclf predict --slices`` does. The written files are listed on stdout, one a line.

With ``--boxes`` (``path,x0,y0,x1,y1`` rows, corners as fractions of width and height): every image of
``--inputs`` (default: the run's own test split, or ``--subset val``) that has a box is scored;
localisation.csv/.json and a figure per method are written (`tumorclf.explain.localisation`; several runs: a
subfolder each), and a table is printed. The heatmaps are of the tumour class.

Earlier spellings still work, with a notice: ``--images`` (now ``--inputs``) and ``--runs A B`` (now
``--run A B``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tumorclf.cli import flags
from tumorclf.data.medical import MIDDLE, slices_argument
from tumorclf.errors import UsageError
from tumorclf.explain.methods import BOX_METHODS, METHODS, TARGETS


def add_arguments(p: argparse.ArgumentParser) -> None:
    runs = p.add_mutually_exclusive_group(required=True)  # required here: --runs alone must be enough
    flags.add_run(runs, help="a finished run to explain; several: their overlays side by side", many=True,
                  required=False)
    flags.deprecated(runs, "--runs", "--run", "run", type=Path, nargs="+")
    images = p.add_mutually_exclusive_group()
    flags.add_inputs(images, help="image files, folders (searched recursively) and DICOM/NIfTI volumes; with "
                                  "--boxes the run's test split when not given")
    flags.deprecated(images, "--images", "--inputs", "inputs", type=Path, nargs="+")
    flags.add_out(p, "folder of the overlay PNGs, or of the localisation scores", required=True)
    p.add_argument("--boxes", type=Path, metavar="FILE",
                   help="score the heatmaps against these tumour boxes (CSV: path,x0,y0,x1,y1 as fractions of the "
                        "image's width and height; paths matched by their trailing folders and file name)")
    p.add_argument("--subset", choices=("test", "val"), default="test",
                   help="with --boxes and no --inputs: which of the run's own splits to score (default: test)")
    flags.add_overwrite(p, "earlier localisation scores in --out")
    p.add_argument("--limit", type=int, metavar="N",
                   help="at most this many files (before --slices picks their slices)")
    p.add_argument("--method", choices=METHODS, nargs="+", metavar="METHOD",
                   help=f"how the class activation map is computed, one or more of {', '.join(METHODS)} (default: "
                        f"{METHODS[0]}; with --boxes {' '.join(BOX_METHODS)})")
    p.add_argument("--target", choices=TARGETS,
                   help=f"class whose evidence is shown (default: {TARGETS[0]}, at the run's operating threshold; "
                        "with --boxes tumor)")
    p.add_argument("--layer", metavar="NAME",
                   help="explain this layer instead of the model's Grad-CAM layer from the registry")
    p.add_argument("--slices", type=slices_argument, default=MIDDLE, metavar="middle|all|K",
                   help="which slices of a DICOM/NIfTI volume or multi-frame file to explain, as predict --slices "
                        "counts them: middle (default: one image per file, named as the file), all (every slice "
                        "with enough brain) or K (0-based); each chosen slice is its own image, named "
                        "FOLDER_STEM_sliceK (K in 3 digits); 2-D images are explained once")


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"explain: --limit must be a positive number of images, got {args.limit}")
    if args.inputs is None and args.boxes is None:
        raise UsageError("explain: --inputs is required (or --boxes, which scores the run's test split)")
    missing = [str(path) for path in (args.inputs or []) + ([args.boxes] if args.boxes else []) if not path.exists()]
    if missing:
        raise UsageError(f"explain: inputs not found: {', '.join(missing)}")
    if args.boxes is not None:
        return _localise(args)
    from tumorclf.data.dataset import expand_inputs
    from tumorclf.explain.gradcam import compare_runs, explain_images
    from tumorclf.runs.folder import RunDir

    files = expand_inputs(args.inputs)[: args.limit]
    runs = [RunDir(path) for path in args.run]
    for method in args.method or METHODS[:1]:
        target = args.target or TARGETS[0]
        if len(runs) == 1:
            written = explain_images(runs[0], files, args.out, method, target, args.layer, args.slices)
        else:
            written = compare_runs(runs, files, args.out, method, target, args.layer, args.slices)
        for path in written:
            print(path)
    return 0


def _localise(args: argparse.Namespace) -> int:
    """--boxes: each run's localisation scores, written and printed as a table."""
    from tumorclf.explain.boxes import match_boxes, read_boxes
    from tumorclf.explain.localisation import OUTPUTS, inputs_and_groups, score_run
    from tumorclf.runs.folder import RunDir

    if args.target not in (None, "tumor"):
        raise UsageError("explain: --boxes scores the tumour class's heatmaps; --target must be tumor or left out")
    boxes = read_boxes(args.boxes)
    methods = args.method or list(BOX_METHODS)
    runs = [RunDir(path).require_finished() for path in args.run]
    outs = [args.out if len(runs) == 1 else args.out / run.name for run in runs]
    for out in outs:
        flags.check_out_folder(out, "explain", "localisation scores", OUTPUTS, args.overwrite)
    print(f"{'run':<24} {'method':<10} {'images':>6} {'pointing':>20} {'energy in box':>20} {'box area':>8} "
          f"{'top IoU':>20} {'rank r (random)':>15} {'explains':>8}")
    for run, out in zip(runs, outs):
        files, groups = inputs_and_groups(run, args.inputs, args.subset)
        files, groups = files[: args.limit], groups[: args.limit]
        summary = score_run(run, files, match_boxes(boxes, files, str(args.boxes)), groups, methods, out,
                            args.layer, str(args.boxes))
        for method, scores in summary["methods"].items():
            def cell(name: str) -> str:
                value, (low, high) = scores[name]["value"], scores[name]["ci95"]
                return f"{value:.3f} [{low:.3f}, {high:.3f}]"

            print(f"{run.name[:24]:<24} {method:<10} {scores['n']:>6} {cell('pointing'):>20} "
                  f"{cell('energy_share'):>20} {scores['area_share']['value']:>8.3f} {cell('top_iou'):>20} "
                  f"{scores['rank_correlation']['value']:>15.3f} {'yes' if scores['explains_model'] else 'NO':>8}")
        print(out)
    return 0
