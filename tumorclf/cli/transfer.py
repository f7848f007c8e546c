"""`tumorclf transfer`: how a study's runs do on tumours they never saw (`tumorclf.studies.transfer`).

Usage: ``tumorclf transfer --config experiments/transfer.yaml [--data DIR] [--bootstrap N]``

For each finished run of the study file: its own test split (from its saved predictions) and each external
folder of the study (`external:`, evaluated once), at every operating point; per configuration, the ensemble
of its seeds (runs sharing one split) and, with the study's `tta:` views, each run with test-time augmentation.
Writes ``RESULTS/transfer.csv`` (one row per configuration, measure, run, dataset and point) and
``RESULTS/transfer.md`` (mean ± sd over seeds beside the ensemble), and prints the table.
"""

from __future__ import annotations

import argparse

from tumorclf.cli import flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flags.add_study_file(parser, "experiments/transfer.yaml", "the results folder and the external folders")


def run(args: argparse.Namespace) -> int:
    flags.check_bootstrap(args, "transfer")
    from tumorclf.studies.transfer import TABLE_FILE, TRANSFER_FILE, record_transfer_study

    rows, results = record_transfer_study(args.config, args.data, args.bootstrap)
    print(f"{len(rows)} rows in {results / TRANSFER_FILE}")
    print((results / TABLE_FILE).read_text())
    return 0
