"""Generated blocks in Markdown files, and the check that they still say what their results files say.

A block is the text between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``, each on a line of its
own; `NAME` is a table of `tumorclf.documentation.tables`. `rewrite` replaces each block's body with what its
table gives today; `drifted` lists the blocks whose body differs, so a test fails when a results file changes
under an unchanged page (or a page is edited by hand inside a block).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tumorclf.errors import UserError
from tumorclf.utils.files import atomic_write_text

BLOCK = re.compile(r"^<!-- generated: (?P<name>[\w.-]+) -->\n(?P<body>.*?)^<!-- end generated -->$",
                   re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    """One generated block of a page: its table's name and the body the page holds now."""

    name: str
    body: str


FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _fenced(text: str) -> list[tuple[int, int]]:
    """The spans of fenced code: markers shown there as examples are not blocks."""
    return [m.span() for m in FENCE.finditer(text)]


def _matches(text: str) -> list[re.Match]:
    fenced = _fenced(text)
    found = [m for m in BLOCK.finditer(text) if not any(a <= m.start() < b for a, b in fenced)]
    begins = [m.start() for m in re.finditer(r"^<!-- generated:", text, re.MULTILINE)
              if not any(a <= m.start() < b for a, b in fenced)]
    if len(begins) != len(found):
        raise UserError("a `<!-- generated: NAME -->` line has no `<!-- end generated -->` line after it")
    return found


def blocks(text: str) -> list[Block]:
    """The generated blocks of a page, in order; a begin marker without its end is an error."""
    return [Block(m["name"], m["body"]) for m in _matches(text)]


def rendered(text: str, body_of: Callable[[str], str]) -> str:
    """`text` with every block's body replaced by `body_of(name)`."""
    out, last = [], 0
    for m in _matches(text):
        out += [text[last:m.start()], f"<!-- generated: {m['name']} -->\n{body_of(m['name'])}<!-- end generated -->"]
        last = m.end()
    return "".join(out) + text[last:]


def pages(root: Path) -> list[Path]:
    """The pages that may hold blocks: README.md and every Markdown file under docs/."""
    return [p for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if p.is_file()]


def drifted(paths: Iterable[Path], body_of: Callable[[str], str]) -> list[tuple[Path, str]]:
    """(page, block name) of every block whose body differs from what its table gives today."""
    return [(path, block.name) for path in paths for block in blocks(path.read_text())
            if block.body != body_of(block.name)]


def rewrite(paths: Iterable[Path], body_of: Callable[[str], str]) -> list[Path]:
    """Rewrite the blocks of each page in place (atomically); returns the pages that changed."""
    changed = []
    for path in paths:
        text = path.read_text()
        new = rendered(text, body_of)
        if new != text:
            atomic_write_text(path, new)
            changed.append(path)
    return changed
