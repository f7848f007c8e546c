"""The test suite's measured times, from committed logs of `.ci/run` (a fresh clone installing and testing)."""

from __future__ import annotations

import re

from tumorclf.documentation.tables.cells import Results, Table, number
from tumorclf.errors import UserError

LOGS = "suite"  # experiments/results/suite/ci_run_*.log
COMMAND = "bash .ci/run > experiments/results/suite/ci_run_N.log 2>&1"
SUMMARY = re.compile(r"^(?:(?P<failed>\d+) failed, )?(?P<passed>\d+) passed(?:, (?P<skipped>\d+) skipped)?.* in "
                     r"(?P<seconds>[\d.]+)s", re.MULTILINE)
WALL = re.compile(r"^ci wall seconds: (\d+)$", re.MULTILINE)
DURATION = re.compile(r"^(?P<seconds>[\d.]+)s (?P<phase>call|setup|teardown) +(?P<test>\S+)$", re.MULTILINE)


def ci_logs(results: Results) -> list[str]:
    """The committed CI logs, oldest first (relative to the results folder)."""
    logs = sorted(str(p.relative_to(results.folder)) for p in (results.folder / LOGS).glob("ci_run_*.log"))
    if not logs:
        raise UserError(f"no CI logs in {results.folder / LOGS}: run `{COMMAND}` from a fresh clone")
    return logs


def suite_runs(results: Results) -> Table:
    rows = []
    for name in ci_logs(results):
        text = results.path(name).read_text()
        summary, wall = SUMMARY.search(text), WALL.search(text)
        rows.append([name.split("/")[-1], summary["passed"], summary["skipped"] or "0", summary["failed"] or "0",
                     number(float(summary["seconds"]) / 60, 2), number(int(wall[1]) / 60, 2) if wall else "-"])
    return Table(["log", "passed", "skipped", "failed", "test minutes", "minutes with the install"], rows,
                 [results.source(name) for name in ci_logs(results)], COMMAND,
                 "Each run from a fresh clone beside ../shared on the idle 2-core machine, chromium installed.")


def slowest_tests(results: Results) -> Table:
    """The 15 slowest test phases of the latest log: where the suite's time goes."""
    name = ci_logs(results)[-1]
    found = DURATION.finditer(results.path(name).read_text())
    return Table(["seconds", "phase", "test"],
                 [[m["seconds"], m["phase"], f"`{m['test']}`"] for m in found],
                 [results.source(name)], COMMAND)


TABLES = {"development-suite-runs": suite_runs, "development-slowest-tests": slowest_tests}
