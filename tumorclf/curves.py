"""Time-to-accuracy curves of finished or running runs, from their `history.csv`.

Usage: ``tumorclf curves RUN_DIR [RUN_DIR ...] --out FILE.png [--target 0.9783]``

Each run's curve is its accuracy after each epoch against its training wall time
(`elapsed_minutes`, which includes the fast recipe's feature caching). Test accuracy is drawn
where the run logged it (`--track-test`), validation accuracy otherwise. A CSV of the points is
written beside the figure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tumorclf.artifacts import atomic_write_bytes, atomic_write_text, csv_text, figure_png  # noqa: E402
from tumorclf.rundir import RunDir, RunError  # noqa: E402

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


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", type=Path, help="run folders")
    p.add_argument("--out", type=Path, required=True, help="PNG to write (and a .csv beside it)")
    p.add_argument("--target", type=float, help="draw this accuracy as a line, e.g. 0.9783")


def run(args) -> int:
    curves = {run_dir.name: read_curve(RunDir(run_dir)) for run_dir in args.runs}
    atomic_write_bytes(args.out, curves_figure(curves, args.target))
    rows = [[point.get(column, "") for column in COLUMNS] for points in curves.values() for point in points]
    atomic_write_text(args.out.with_suffix(".csv"), csv_text(COLUMNS, rows))
    print(args.out)
    return 0


if __name__ == "__main__":
    from tumorclf.cli import alias

    raise SystemExit(alias("tumorclf.curves"))
