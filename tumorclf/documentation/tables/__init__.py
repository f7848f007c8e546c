"""Every generated table, by name (the `NAME` of a page's `<!-- generated: NAME -->` block), each made from
committed files under experiments/results/ only. One module a topic, each with a `TABLES` dict of
`name -> function(Results) -> Table`; every module of this package that has one is collected here."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path

from tumorclf.documentation.tables.cells import Results, Table
from tumorclf.errors import UserError


def all_tables() -> dict[str, Callable[[Results], Table]]:
    """name -> generator, over the topic modules of this package (a name defined twice is an error)."""
    tables: dict[str, Callable[[Results], Table]] = {}
    for info in pkgutil.iter_modules(__path__):
        topic = importlib.import_module(f"{__name__}.{info.name}")
        for name, make in getattr(topic, "TABLES", {}).items():
            if name in tables:
                raise ValueError(f"generated table {name!r} is defined twice")
            tables[name] = make
    return tables


def body_of(root: Path) -> Callable[[str], str]:
    """`name -> Markdown` of the tables of the project at `root` (an unknown name is a one-line error)."""
    results, tables = Results(root), all_tables()

    def body(name: str) -> str:
        if name not in tables:
            raise UserError(f"no generated table named {name!r}; known: {', '.join(sorted(tables))}")
        return tables[name](results).markdown()

    return body
