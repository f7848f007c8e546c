"""`tumorclf gate`: fit the input quality gate of a finished run trained before the gate existed
(`tumorclf.gate.refit`); training fits it at its end.

Usage: ``tumorclf gate --run RUN [--data DIR] [--batch-size N] [--overwrite]``

Writes ``gate.json`` and ``gate.npz`` into the run folder and prints the out-of-distribution threshold and
what it rejects of the validation split. ``--data`` is the run's data folder where it is now, if it has
moved; an existing gate is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tumorclf.cli import flags


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_run(p)
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="the run's data folder where it is now (default: the folder it was trained on)")
    flags.add_batch_size(p)
    flags.add_overwrite(p, "the run's existing gate")


def run(args: argparse.Namespace) -> int:
    flags.check_batch_size(args, "gate")
    from tumorclf.gate.quality_gate import GATE_JSON
    from tumorclf.gate.refit import describe, fit_run_gate
    from tumorclf.runs.folder import RunDir

    run_dir = RunDir(args.run)
    gate = fit_run_gate(run_dir, args.data, args.batch_size, args.overwrite)
    print(f"{run_dir.name}: {describe(gate)}")
    print(run_dir.path / GATE_JSON)
    return 0
