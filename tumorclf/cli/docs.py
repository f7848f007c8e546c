"""`tumorclf docs`: rewrite every generated table of README.md and docs/ from the committed results files, or
with ``--check`` only list the tables that no longer match them (exit code 1).

Usage: ``tumorclf docs [--check] [--project DIR]``

A table is generated between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` lines
(`tumorclf.documentation`); text outside those lines is never touched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NEEDS_TENSORFLOW = False  # it reads and writes text only


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="write nothing; list each table that differs from its results files and exit 1 if any")
    parser.add_argument("--project", metavar="DIR", type=Path, default=Path("."),
                        help="the project folder holding README.md, docs/ and experiments/results/ (default: .)")


def run(args: argparse.Namespace) -> int:
    from tumorclf.documentation.blocks import drifted, pages, rewrite
    from tumorclf.documentation.tables import body_of
    from tumorclf.errors import UserError

    found = pages(args.project)
    if not found:
        raise UserError(f"{args.project} has neither README.md nor docs/*.md")
    body = body_of(args.project)
    if args.check:
        stale = drifted(found, body)
        for path, name in stale:
            print(f"{path}: table {name!r} differs from its results files; run `tumorclf docs`", file=sys.stderr)
        return 1 if stale else 0
    for path in rewrite(found, body):
        print(f"rewrote {path}")
    return 0
