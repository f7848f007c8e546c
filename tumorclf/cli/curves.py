"""`tumorclf curves`: time-to-accuracy curves of finished or running runs, from their history.csv
(`tumorclf.evaluation.curves`).

Usage: ``tumorclf curves --run DIR [DIR ...] --out DIR [--target 0.9783]``

Writes ``curves.png`` (each run's accuracy after each epoch against its training wall time) and
``curves.csv`` (the points) into ``--out``, and prints the figure's path.

Earlier spellings still work, with a notice: run folders without ``--run``, and ``--out FILE.png`` (the
figure itself, its CSV beside it).
"""

from __future__ import annotations

import argparse

from tumorclf.cli import flags

FIGURE_FILE = "curves.png"  # written into --out, with its points beside it as curves.csv


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_run(p, help="run folders, finished or running", many=True, required=False)  # or, deprecated, no flag
    flags.positional(p, "runs")
    flags.add_out(p, f"folder for {FIGURE_FILE} and curves.csv", required=True)
    p.add_argument("--target", type=float, metavar="ACCURACY", help="draw this accuracy as a line, e.g. 0.9783")


def run(args: argparse.Namespace) -> int:
    flags.merge_required(args, "runs", "--run", "run", "curves")
    figure = flags.out_file(args.out, FIGURE_FILE, (".png",))
    from tumorclf.evaluation.curves import write_curves

    write_curves(figure, args.run, args.target)
    print(figure)
    return 0
