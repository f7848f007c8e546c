"""The one command line: `tumorclf COMMAND ...`, with one logging set-up and one error wrapper.

Each command is a module of this package with `add_arguments(parser)` and `run(args) -> int`, a thin layer
over the library: it imports the library (and TensorFlow) only inside `run`, so every `--help` answers at
once; TensorFlow is imported after the flags parse (a mistyped flag answers at once), except for a command
whose module sets `NEEDS_TENSORFLOW = False`. Only the chosen command's module is imported. Bad input of any
command ends in one `tumorclf: error: ...` line and exit code 2. `python -m tumorclf COMMAND` and, for
training, the study's `python -m tumorclf.run` are aliases.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from tumorclf.errors import UsageError, UserError

# command -> its one-line help; the command's module is tumorclf.cli.<command> (`module`)
COMMANDS: dict[str, str] = {
    "train": "train one configuration, keep the best epoch by validation F1, test it",
    "evaluate": "score a finished run on its test split or on other class folders",
    "calibrate": "fit a run's operating point on a site's own labelled folder, without retraining",
    "predict": "P(tumour) of images, folders and volumes: a .keras model, a SavedModel or a model.onnx",
    "explain": "Grad-CAM overlays of images, for one run or several side by side, or scored against tumour boxes",
    "gate": "fit the input quality gate of a finished run trained before it existed",
    "export": "SavedModel (serve, serve_bytes) and/or ONNX, with a model card",
    "serve": "a local web page: drop a slice, see P(tumour), the decision and Grad-CAM",
    "study": "a resumable study of several configurations from a YAML file",
    "ablation": "evaluate a study's finished runs at their operating points, append-only",
    "transfer": "a study's runs, their seeds' ensemble and test-time augmentation on external folders, every point",
    "bench": "machine limit and per-model training/inference speed",
    "leakage": "test accuracy of runs on leaked vs clean test images",
    "curves": "time-to-accuracy curves of runs",
    "audit": "find duplicates, label errors, outliers and shortcuts in a dataset folder",
    "cache": "what the decoded-image and feature caches hold (info), or empty them (clear)",
    "docs": "rewrite the result tables of README.md and docs/ from experiments/results/ (or --check them)",
}


def module(command: str) -> str:
    """Where `command` lives: one module a command, named as the command."""
    return f"tumorclf.cli.{command}"


class Parser(argparse.ArgumentParser):
    """argparse whose errors become a `UsageError` (one line from the wrapper) instead of usage + exit."""

    def error(self, message: str):
        command = self.prog.removeprefix("tumorclf").strip()
        raise UsageError(f"{command}: {message}" if command else message)


def parser(command: str | None = None) -> Parser:
    """The top-level parser; with `command`, that command's sub-parser gets its arguments."""
    top = Parser(prog="tumorclf", description="Brain-MRI Healthy/Tumor classification with Keras 3: train, "
                 "evaluate, predict, explain, export, study, benchmark. `tumorclf COMMAND --help` for a command.")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, help_text in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module(name)).add_arguments(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (2 and one line on bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tumorclf").setLevel(logging.INFO)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        args = parser(command).parse_args(argv)
        if args.command is None:
            parser().print_help()
            return 2
        chosen = importlib.import_module(module(args.command))
        if getattr(chosen, "NEEDS_TENSORFLOW", True):
            import_tensorflow_quietly()  # after parsing: a mistyped flag answers at once
        return int(chosen.run(args) or 0)
    except UserError as exc:
        print(f"tumorclf: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tumorclf: interrupted", file=sys.stderr)
        return 130


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 closed: its C++ start-up notices (oneDNN, absl) ignore
    TF_CPP_MIN_LOG_LEVEL and would otherwise precede every one-line error. Python errors still surface."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
