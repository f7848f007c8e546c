"""`tumorclf ablation`: every finished run of a study evaluated at its operating point, appended to the study's
ablation table.

Usage: ``tumorclf ablation --config experiments/robust.yaml [--data DIR] [--bootstrap N]``

Each finished run of the study file is scored on its own test split at its validation-fitted operating point,
with group-bootstrap intervals, once (``RESULTS/evaluations/RUN_NAME/``); each evaluation is one row appended to
``RESULTS/ablation.csv``, never rewritten. The latest row of each configuration, both protocols side by side
(``RESULTS/ablation.md``), is printed at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tumorclf.errors import UsageError
from tumorclf.metrics import DEFAULT_RESAMPLES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, metavar="FILE.yaml",
                        help="the study file (e.g. experiments/robust.yaml); it names the results folder")
    parser.add_argument("--data", metavar="DIR", help="data folder (default: the study file's `data`, else "
                        "$TUMORCLF_DATA)")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, metavar="N",
                        help=f"bootstrap resamples of duplicate groups (default: {DEFAULT_RESAMPLES})")


def run(args: argparse.Namespace) -> int:
    if args.bootstrap < 1:
        raise UsageError(f"ablation: --bootstrap must be >= 1, got {args.bootstrap}")
    from tumorclf.studies.ablation import ABLATION_FILE, TABLE_FILE, record_study

    new, results = record_study(args.config, args.data, args.bootstrap)
    print(f"{len(new)} new evaluation(s) appended to {results / ABLATION_FILE}")
    print((results / TABLE_FILE).read_text())
    return 0
