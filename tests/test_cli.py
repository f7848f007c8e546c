"""The command line as a whole (docs/cli.md): one flag per concept in every command, help at once, each default
stated once."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tumorclf.cli.main import COMMANDS, parser

CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
HEAVY = ("tensorflow", "keras", "matplotlib", "scipy", "sklearn", "tf_keras_vis", "onnx", "flask")


def command_parser(name: str) -> argparse.ArgumentParser:
    return parser(name)._subparsers._group_actions[0].choices[name]


def visible(name: str) -> list[argparse.Action]:
    """The arguments `tumorclf NAME --help` shows (deprecated spellings are hidden)."""
    return [action for action in command_parser(name)._actions
            if action.help != argparse.SUPPRESS and "-h" not in action.option_strings]


def concept_table() -> dict[str, set[str]]:
    """docs/cli.md's "One flag per concept" rows: flag -> the commands that take it."""
    section = CLI_DOC.read_text().split("## One flag per concept")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].startswith("`--"):
            rows[cells[1].strip("`").split()[0]] = {c.strip() for c in cells[2].split(",")}
    return rows


def test_the_doc_lists_every_command():
    table = CLI_DOC.read_text().split("## The commands")[1]
    assert set(re.findall(r"^\| `(\w+)` \|", table, re.M)) == set(COMMANDS)


@pytest.mark.parametrize("flag", sorted(concept_table()))
def test_each_concept_has_one_flag_in_exactly_the_commands_the_doc_names(flag: str):
    takes = {name for name in COMMANDS if any(flag in action.option_strings for action in visible(name))}
    assert takes == concept_table()[flag]


def test_no_command_takes_paths_without_a_flag_or_an_earlier_spelling():
    earlier = {"--output", "--images", "--runs", "--models", "--only"}
    for name in COMMANDS:
        for action in visible(name):
            # a positional is a verb from a fixed list (`cache info`), never a path
            assert action.option_strings or action.choices, f"{name}: positional {action.dest}"
            assert not earlier & set(action.option_strings), (name, action.option_strings)
    assert {"--model-file", "--inputs"} <= set(command_parser("predict")._option_string_actions)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_states_each_default_at_most_once(name: str):
    for action in visible(name):
        assert (action.help or "").count("default") <= 1, (name, action.option_strings, action.help)
    text = command_parser(name).format_help()
    assert not re.search(r"\(default: [^)]*\)\s*\(default", text), name


def test_declaring_every_command_loads_no_heavy_library():
    """Every command's arguments are declared without TensorFlow and friends: --help answers at once."""
    code = ("import sys; from tumorclf.cli.main import COMMANDS, parser\n"
            "for name in COMMANDS: parser(name)\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_answers_in_under_a_second(name: str):
    """Wall time of `python -m tumorclf NAME --help`, the best of three (a busy machine may delay one start)."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "tumorclf", name, "--help"], capture_output=True, text=True,
                                timeout=60)
        times.append(time.perf_counter() - start)
        assert result.returncode == 0 and result.stdout.startswith(f"usage: tumorclf {name}"), result.stderr
        if times[-1] < 1:
            break
    assert min(times) < 1.0, (name, times)
