"""`tumorclf explain`: Grad-CAM overlays of images, for one run or several side by side.

Usage:
  tumorclf explain --run DIR --inputs PATH [PATH ...] --out DIR [--method gradcam|gradcam++|scorecam]
                   [--target predicted|tumor|healthy] [--layer NAME] [--limit N] [--slices middle|all|K]
  tumorclf explain --run DIR DIR [DIR ...] --inputs PATH [PATH ...] --out DIR [...]

One run: one overlay PNG per image, ``FOLDER_STEM[_sliceK]_METHOD.png`` (`explain_images`). Several runs: one
figure per image with each run's overlay side by side, ``compare_FOLDER_STEM[_sliceK]_METHOD.png``
(`compare_runs`, the paper's Figs. 5-8). ``--slices`` picks the slices of a DICOM/NIfTI volume or multi-frame
file as ``tumorclf predict --slices`` does. The written files are listed on stdout, one a line.

Earlier spellings still work, with a notice: ``--images`` (now ``--inputs``) and ``--runs A B`` (now
``--run A B``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tumorclf.cli import flags
from tumorclf.data.medical import MIDDLE, slices_argument
from tumorclf.errors import UsageError
from tumorclf.explain.methods import METHODS, TARGETS


def add_arguments(p: argparse.ArgumentParser) -> None:
    runs = p.add_mutually_exclusive_group(required=True)  # required here: --runs alone must be enough
    flags.add_run(runs, help="a finished run to explain; several: their overlays side by side", many=True,
                  required=False)
    flags.deprecated(runs, "--runs", "--run", "run", type=Path, nargs="+")
    images = p.add_mutually_exclusive_group(required=True)
    flags.add_inputs(images)
    flags.deprecated(images, "--images", "--inputs", "inputs", type=Path, nargs="+")
    flags.add_out(p, "folder of the overlay PNGs", required=True)
    p.add_argument("--limit", type=int, metavar="N",
                   help="at most this many files (before --slices picks their slices)")
    p.add_argument("--method", choices=METHODS, default=METHODS[0],
                   help=f"how the class activation map is computed (default: {METHODS[0]})")
    p.add_argument("--target", choices=TARGETS, default=TARGETS[0],
                   help=f"class whose evidence is shown (default: {TARGETS[0]}, at the run's operating threshold)")
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
    missing = [str(path) for path in args.inputs if not path.exists()]
    if missing:
        raise UsageError(f"explain: inputs not found: {', '.join(missing)}")
    from tumorclf.data.dataset import expand_inputs
    from tumorclf.explain.gradcam import compare_runs, explain_images
    from tumorclf.runs.folder import RunDir

    files = expand_inputs(args.inputs)[: args.limit]
    runs = [RunDir(path) for path in args.run]
    if len(runs) == 1:
        written = explain_images(runs[0], files, args.out, args.method, args.target, args.layer, args.slices)
    else:
        written = compare_runs(runs, files, args.out, args.method, args.target, args.layer, args.slices)
    for path in written:
        print(path)
    return 0
