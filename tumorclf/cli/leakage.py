"""`tumorclf leakage`: test accuracy of finished runs split by whether a test image has a byte-identical copy,
a near-duplicate or nothing in training (`tumorclf.evaluation.leakage`).

Usage: ``tumorclf leakage --run DIR [DIR ...] [--out DIR]``

Prints one line per run and kind of test image (and `leaked`, the first two kinds together): correct of
images and accuracy. With ``--out``, the same rows go to ``leakage.csv`` in that folder.

Earlier spellings still work, with a notice: run folders without ``--run``, and ``--out FILE.csv``
(the file itself).
"""

from __future__ import annotations

import argparse

from tumorclf.cli import flags

CSV_FILE = "leakage.csv"  # written into --out


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_run(p, help="finished run folders", many=True, required=False)  # or, deprecated, no flag
    flags.positional(p, "runs")
    flags.add_out(p, f"folder to also write the rows into, as {CSV_FILE} (default: print them only)")


def run(args: argparse.Namespace) -> int:
    flags.merge_required(args, "runs", "--run", "run", "leakage")
    out = flags.out_file(args.out, CSV_FILE, (".csv",))
    from tumorclf.evaluation.leakage import leakage_rows, write_csv

    rows = [row for run_dir in args.run for row in leakage_rows(run_dir)]
    for row in rows:
        print(f"{row['run']:<45} {row['kind']:<24} {row['correct']:>4}/{row['images']:<4} {row['accuracy']}")
    if out:
        write_csv(out, rows)
    return 0
