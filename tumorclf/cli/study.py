"""`tumorclf study`: every configuration of a study YAML file on each split, resumable, then results.csv, tables and
figures in the file's results folder.

Usage: ``tumorclf study --config experiments/paper.yaml [--data DIR] [--model NAME [NAME ...]] [--status]``

Finished runs are skipped and an interrupted one resumes, so the command can be stopped and run again at any time.
``--status`` reports what is finished, partial or pending without training; ``--model`` trains only the runs of
those architectures (every configuration is still reported). One line per configuration is printed at the end.
"""

from __future__ import annotations

import argparse

from tumorclf.cli import flags
from tumorclf.models.registry import MODELS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE.yaml",
                        help="study YAML (defaults, runs, splits, output, results, data, bootstrap)")
    parser.add_argument("--data", metavar="DIR",
                        help="dataset folder (default: the file's `data`, else $TUMORCLF_DATA)")
    parser.add_argument("--model", nargs="+", choices=tuple(MODELS), metavar="NAME",
                        help=f"train only the runs of these architectures: {', '.join(MODELS)} (default: all)")
    flags.deprecated(parser, "--only", "--model", "model", nargs="+", choices=tuple(MODELS))
    parser.add_argument("--status", action="store_true", help="report what is finished, partial or pending; "
                        "train nothing")


def run(args: argparse.Namespace) -> int:
    from tumorclf.studies.study import run_study_file

    for row in run_study_file(args.config, args.data, train=not args.status, only=args.model):
        accuracy = f"{row['accuracy']:.4f}" if row.get("accuracy") is not None else "-"
        print(f"{row['model']:<12} {'imagenet' if row['imagenet'] else 'scratch':<9} {row['recipe']:<6} "
              f"{row['measures']:<12} {row['protocol']:<10} acc {accuracy:<7} {row['status'][:90]}")
    return 0
