"""The command line's one vocabulary: each concept has one flag, spelled the same in every command (the table
is docs/cli.md: `--run`, `--model-file`, `--model`, `--data`, `--inputs`, `--out`, `--config`; lists separated by
spaces). Flags of earlier versions still work for now, with a one-line notice on stderr (`deprecated`).
Importing this module loads no TensorFlow: every ``--help`` answers at once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from tumorclf.errors import UsageError
from tumorclf.metrics import DEFAULT_RESAMPLES


def notice(message: str) -> None:
    """One line on stderr, where a script's author sees it and its output stays clean."""
    print(f"tumorclf: deprecated: {message}", file=sys.stderr)


class Deprecated(argparse.Action):
    """An old spelling of a flag: stores into the new flag's destination and says what to write instead."""

    def __init__(self, option_strings: list[str], dest: str, new: str, store_true: bool = False, **kwargs: Any):
        if store_true:
            kwargs["nargs"] = 0
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new, self.store_true = new, store_true

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        notice(f"{option_string} will be removed; use {self.new}")
        setattr(namespace, self.dest, True if self.store_true else values)


def deprecated(parser: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """Accept `old` as a hidden alias of the flag `new` (same destination, type and nargs)."""
    parser.add_argument(old, action=Deprecated, new=new, dest=dest, default=argparse.SUPPRESS, **kwargs)


def positional(parser: argparse.ArgumentParser, dest: str) -> None:
    """Accept paths given without their flag, as earlier versions took them (see `merge_positional`)."""
    parser.add_argument(dest, nargs="*", type=Path, help=argparse.SUPPRESS)


def merge_positional(args: argparse.Namespace, dest: str, flag: str, into: str) -> None:
    """Move paths given without a flag into the flag's destination, with a notice; keeps `args` unchanged
    when none were given."""
    given = getattr(args, dest, None) or []
    if given:
        notice(f"paths without a flag will not be accepted; use {flag} {' '.join(map(str, given))}")
        setattr(args, into, [*(getattr(args, into, None) or []), *given])
    if hasattr(args, dest):
        delattr(args, dest)


def space_separated(values: Sequence[str] | None, flag: str) -> list[str] | None:
    """A list flag's values, split where an earlier version's comma-separated form was given."""
    if values is None:
        return None
    if any("," in value for value in values):
        notice(f"comma-separated lists will not be accepted; separate the values of {flag} with spaces")
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def add_run(parser: argparse.ArgumentParser, help: str = "a finished run folder", many: bool = False,
            required: bool = True) -> None:
    parser.add_argument("--run", type=Path, nargs="+" if many else None, required=required, metavar="DIR",
                        help=help)


def add_operating_point(parser: argparse.ArgumentParser, of: str) -> None:
    parser.add_argument("--operating-point", metavar="NAME",
                        help=f"the operating point {of} decides at: validation, high_sensitivity, youden, default_0.5 "
                             "or a name of tumorclf calibrate (when not given: the one calibrate --select chose, "
                             "else validation); an export has only the point it was exported with")


def check_point_or_threshold(args: argparse.Namespace, command: str) -> None:
    """`--threshold` and `--operating-point` both choose the threshold: one of them at most."""
    if args.threshold is not None and args.operating_point is not None:
        raise UsageError(f"{command}: give --threshold or --operating-point, not both")


def add_study_file(parser: argparse.ArgumentParser, example: str, names: str = "the results folder") -> None:
    """--config, --data and --bootstrap of a command that evaluates a study file's finished runs."""
    parser.add_argument("--config", required=True, type=Path, metavar="FILE.yaml",
                        help=f"the study file (e.g. {example}); it names {names}")
    parser.add_argument("--data", metavar="DIR", help="data folder (default: the study file's `data`, else "
                        "$TUMORCLF_DATA)")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, metavar="N",
                        help=f"bootstrap resamples of duplicate groups (default: {DEFAULT_RESAMPLES})")


def check_bootstrap(args: argparse.Namespace, command: str) -> None:
    if args.bootstrap < 1:
        raise UsageError(f"{command}: --bootstrap must be >= 1, got {args.bootstrap}")


def add_model_file(parser: argparse.ArgumentParser, help: str) -> None:
    # one of the two is required: argparse would count a required --model-file missing when only --model is given
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-file", type=Path, metavar="PATH", help=help)
    deprecated(which, "--model", "--model-file", "model_file", type=Path)


def add_inputs(parser: argparse.ArgumentParser, help: str = "image files, folders (searched recursively) and "
               "DICOM/NIfTI volumes") -> None:
    parser.add_argument("--inputs", type=Path, nargs="+", metavar="PATH", help=help)


def add_out(parser: argparse.ArgumentParser, help: str, required: bool = False, default: Path | None = None) -> None:
    parser.add_argument("--out", type=Path, required=required, default=default, metavar="DIR", help=help)


def add_overwrite(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_batch_size(parser: argparse.ArgumentParser, default: str = "the run's") -> None:
    parser.add_argument("--batch-size", type=int, metavar="N", help=f"prediction batch size (default: {default})")


def check_batch_size(args: argparse.Namespace, command: str) -> None:
    """The one-line refusal of a `--batch-size` below 1 (unset means the command's default)."""
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"{command}: --batch-size must be a positive integer, got {args.batch_size}")


def out_file(out: Path | None, name: str, suffixes: tuple[str, ...]) -> Path | None:
    """The file a command writes into the folder `--out`; an earlier version's `--out FILE` (a path with one of
    `suffixes`) still names the file itself, with a notice."""
    if out is None:
        return None
    if out.suffix.lower() in suffixes and not out.is_dir():
        notice(f"--out names the output folder; {out} is taken as the file itself for now (write --out "
               f"{out.parent} for {out.parent / name})")
        return out
    return out / name


def merge_required(args: argparse.Namespace, dest: str, flag: str, into: str, command: str) -> None:
    """`merge_positional` for a required flag (declared not required, since paths without it may stand in):
    neither given ends in the one line argparse gives for a missing required flag."""
    merge_positional(args, dest, flag, into)
    if not getattr(args, into, None):
        raise UsageError(f"{command}: the following arguments are required: {flag}")


def check_out_folder(out: Path, command: str, holds: str, files: Sequence[str], overwrite: bool) -> None:
    """Refuse an `--out` that is a file, and one that already holds `holds` (any of `files`) unless `overwrite`:
    an earlier result is never replaced without being asked."""
    from tumorclf.runs.folder import RunExistsError  # loads the run-folder contract only when a command runs

    if out.exists() and not out.is_dir():
        raise UsageError(f"{command}: --out {out} exists and is not a folder")
    earlier = [name for name in files if (out / name).exists()]
    if earlier and not overwrite:
        raise RunExistsError(f"{command}: {out} already holds {holds} ({', '.join(earlier)}); pass --overwrite to "
                             "replace it or --out to choose another folder")
