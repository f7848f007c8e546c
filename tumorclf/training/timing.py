"""Where a run's wall time goes: one row per phase (decode, feature caching, each epoch, calibration, gate,
test), with the arithmetic of the compute phases and the share of the machine's dense-math limit they reached.

Written to the run folder as `timing.json` and logged as a table at the end of every run, so a slow run says
which phase to cut, and whether that phase is slow because it does much work or because it runs far below what
the machine can do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import keras


@dataclass
class Phase:
    name: str
    seconds: float
    gflop: float | None = None  # the arithmetic done (multiply-adds x 2), where it is known

    def gflops(self) -> float | None:
        return self.gflop / self.seconds if self.gflop is not None and self.seconds > 0 else None


class PhaseTimes:
    """The phases of one run, in the order they ran."""

    def __init__(self) -> None:
        self.phases: list[Phase] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        """Time the block as phase `name`; the block may set the phase's `gflop`."""
        entry = Phase(name, 0.0)
        started = time.perf_counter()
        try:
            yield entry
        finally:
            entry.seconds = time.perf_counter() - started
            self.phases.append(entry)

    def add(self, name: str, seconds: float, gflop: float | None = None) -> None:
        self.phases.append(Phase(name, seconds, gflop))

    def report(self, peak_gflops: float | None, precision: str) -> dict:
        """`timing.json`'s contents: each phase with its share of `peak_gflops` (the limit at `precision`)."""
        rows = []
        for p in self.phases:
            speed = p.gflops()
            rows.append({**asdict(p), "seconds": round(p.seconds, 2),
                         "gflop": None if p.gflop is None else round(p.gflop, 1),
                         "gflops_per_s": None if speed is None else round(speed, 1),
                         "share_of_peak": None if speed is None or not peak_gflops else round(speed / peak_gflops, 3)})
        return {"phases": rows, "total_seconds": round(sum(p.seconds for p in self.phases), 1),
                "peak_gflops": peak_gflops, "precision": precision}


def table_lines(report: dict) -> list[str]:
    """The report as aligned text lines, for the log."""
    lines = [f"{'phase':<14} {'seconds':>8} {'GFLOP/s':>8} {'of peak':>8}"]
    for row in report["phases"]:
        speed = "-" if row["gflops_per_s"] is None else f"{row['gflops_per_s']:.0f}"
        share = "-" if row["share_of_peak"] is None else f"{100 * row['share_of_peak']:.0f}%"
        lines.append(f"{row['name']:<14} {row['seconds']:>8.1f} {speed:>8} {share:>8}")
    lines.append(f"{'total':<14} {report['total_seconds']:>8.1f}   (peak {report['peak_gflops']} GFLOP/s in "
                 f"{report['precision']})")
    return lines


class EpochTimes(keras.callbacks.Callback):
    """One phase per epoch, from its start to the end of its validation pass (place it after `Validation`)."""

    def __init__(self, times: PhaseTimes, gflop_per_epoch: float | None):
        super().__init__()
        self.times, self.gflop = times, gflop_per_epoch
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.times.add(f"epoch {epoch + 1}", time.perf_counter() - self.started, self.gflop)
