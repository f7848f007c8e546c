"""What every generated table is made of: a `Table` (header, rows, the files it was read from and the command
that made them) and the few ways a cell is written (a value with its 95% interval, a plain number)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from tumorclf.errors import UserError

DATA = "../shared/data/brain_tumor_dataset"  # the dataset every committed study ran on
# the rows of the headline recipe (ImageNet VGG16, robust) in a study's results.csv
ROBUST_RECIPE = {"recipe": "robust", "measures": "percentile+foreground+acquisition"}


def study_results(study: str) -> str:
    """The results.csv of the study file experiments/STUDY.yaml, relative to the results folder."""
    return f"{study}/results.csv"


def study_command(study: str) -> str:
    """The command that writes `study_results(study)`."""
    return f"tumorclf study --config experiments/{study}.yaml --data {DATA}"


@dataclass(frozen=True)
class Table:
    """A Markdown table with its provenance, which is printed under it."""

    header: list[str]
    rows: list[list[str]]
    sources: list[str]  # paths relative to the project's root, e.g. experiments/results/robust/ablation.csv
    command: str  # the command that wrote the sources
    note: str = ""  # one sentence printed under the table, before the provenance

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in self.rows]
        sources = ", ".join(f"`{s}`" for s in self.sources)
        lines += ["", (self.note + " " if self.note else "")
                  + f"<sub>From {sources}, written by `{self.command}`; this table is rewritten by "
                    "`tumorclf docs`.</sub>"]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Snippet:
    """A code block of what a command prints, rebuilt from the results it reported, with its provenance."""

    text: str
    sources: list[str]
    command: str

    def markdown(self) -> str:
        sources = ", ".join(f"`{s}`" for s in self.sources)
        return (f"```\n{self.text}\n```\n\n<sub>From {sources}, written by `{self.command}`; this block is "
                "rewritten by `tumorclf docs`.</sub>\n")


class Results:
    """The committed results folder (`ROOT/experiments/results`), read with one-line errors and with every file
    read recorded as a source relative to the project's root."""

    def __init__(self, root: Path):
        self.root = root
        self.folder = root / "experiments" / "results"

    def path(self, relative: str) -> Path:
        path = self.folder / relative
        if not path.is_file():
            raise UserError(f"results file {path} is missing: rerun the command that writes it, or restore it")
        return path

    def source(self, relative: str) -> str:
        return str(self.path(relative).relative_to(self.root))

    def csv(self, relative: str) -> list[dict[str, str]]:
        with self.path(relative).open(newline="") as f:
            return list(csv.DictReader(f))

    def json(self, relative: str):
        return json.loads(self.path(relative).read_text())


def the_row(rows: list[dict[str, str]], **match: str) -> dict[str, str]:
    """The one row whose columns equal `match` (an error names the values when there is none or several)."""
    found = [row for row in rows if all(row.get(k) == v for k, v in match.items())]
    if len(found) != 1:
        raise UserError(f"{len(found)} result rows match {match}; a generated table needs exactly one")
    return found[0]


def number(value, digits: int = 3) -> str:
    """`value` with `digits` decimals; `-` when it is missing or not finite."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "-"
    return f"{value:.{digits}f}" if math.isfinite(value) else "-"


def interval(row: dict, metric: str, digits: int = 3) -> str:
    """`0.961 [0.946, 0.974]`: a metric with its 95% interval, from a results row (`metric`, `metric_lo`,
    `metric_hi`) or from an evaluation's `{"value": v, "ci95": [lo, hi]}`."""
    item = row[metric]
    if isinstance(item, dict):
        value, (lo, hi) = item["value"], item.get("ci95") or (None, None)
    else:
        value, lo, hi = item, row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    text = number(value, digits)
    if text == "-" or number(lo) == "-" or number(hi) == "-":
        return text
    return f"{text} [{number(lo, digits)}, {number(hi, digits)}]"
