"""Time-to-accuracy curves of finished or running runs, from their `history.csv` (`write_curves`; the command
is `tumorclf curves`).

Each run's curve is its accuracy after each epoch against its training wall time
(`elapsed_minutes`, which includes the fast recipe's feature caching). Test accuracy is drawn
where the run logged it (trained with `--track-test`), validation accuracy otherwise. A CSV of the points
is written beside the figure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tumorclf.utils.files import atomic_write_bytes, atomic_write_text, csv_text, figure_png  # noqa: E402
from tumorclf.runs.folder import RunDir, RunError  # noqa: E402

COLUMNS = ["run", "epoch", "elapsed_minutes", "val_accuracy", "val_f1", "test_accuracy"]


def read_curve(run_dir: Path | RunDir) -> list[dict]:
    """One point per completed epoch: epoch (1-based), minutes, and the accuracies logged."""
    run = RunDir(run_dir) if not isinstance(run_dir, RunDir) else run_dir
    rows = run.history()
    if not rows or "elapsed_minutes" not in rows[0]:
        raise RunError(f"{run.history_file} has no elapsed_minutes column (a run from before it was logged)")
    return [{"run": run.name, "epoch": int(row["epoch"]) + 1, **{
        key: float(row[key]) for key in COLUMNS[2:] if row.get(key) not in (None, "")}} for row in rows]


def curves_figure(curves: dict[str, list[dict]], target: float | None = None) -> bytes:
    """The curves of `read_curve` by run name as PNG bytes, with `target` (an accuracy) as a dashed line."""
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for name, points in curves.items():
        key = "test_accuracy" if all("test_accuracy" in p for p in points) else "val_accuracy"
        axis.plot([p["elapsed_minutes"] for p in points], [p[key] for p in points], marker="o",
                  label=f"{name} ({key.split('_')[0]})")
    if target is not None:
        axis.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:.2%}")
    axis.set_xlim(left=0)
    axis.set_xlabel("training wall time (minutes)")
    axis.set_ylabel("accuracy after the epoch")
    axis.set_title("Time to accuracy")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    return figure_png(figure)


def write_curves(png: Path, runs: list[Path], target: float | None = None) -> None:
    """The curves of `runs` as a figure at `png` and their points as CSV beside it (same name, .csv), both
    written atomically, the figure first."""
    curves = {run_dir.name: read_curve(run_dir) for run_dir in runs}
    atomic_write_bytes(png, curves_figure(curves, target))
    rows = [[point.get(column, "") for column in COLUMNS] for points in curves.values() for point in points]
    atomic_write_text(png.with_suffix(".csv"), csv_text(COLUMNS, rows))
