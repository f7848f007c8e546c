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

from tumorclf.cli import flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flags.add_study_file(parser, "experiments/robust.yaml")


def run(args: argparse.Namespace) -> int:
    flags.check_bootstrap(args, "ablation")
    from tumorclf.studies.ablation import ABLATION_FILE, TABLE_FILE, record_study

    new, results = record_study(args.config, args.data, args.bootstrap)
    print(f"{len(new)} new evaluation(s) appended to {results / ABLATION_FILE}")
    print((results / TABLE_FILE).read_text())
    return 0
