"""The run-folder contract: every file a run writes, its schema version, and typed readers.

Every module that reads or writes a run folder goes through `RunDir`, so a file name lives here once
and a folder written by a newer tumorclf is refused with one line instead of misread.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tumorclf.utils.files import atomic_write_json, atomic_write_text, csv_text, json_safe
from tumorclf.metrics.calibration import OperatingPoint
from tumorclf.runs.config import Config, ConfigError
from tumorclf.errors import UserError
from tumorclf.metrics.classification import DEFAULT_THRESHOLD

SCHEMA_VERSION = 2  # 1: runs before the run-folder contract (no "schema" key); same files and keys


class RunError(UserError, ValueError):
    """A run folder is missing, unfinished or unreadable; the message says which."""


class RunExistsError(UserError, FileExistsError):
    """The run folder already exists and overwriting was not asked for."""


@dataclass(frozen=True)
class Record:
    """config.json of a run: the config, what was resolved at run time, the split report and versions."""

    config: Config
    resolved: dict[str, Any]
    split: dict[str, Any]
    skipped_files: int
    versions: dict[str, str]
    schema: int

    @property
    def decoder(self) -> str:
        """The decoder version the run was trained with (runs before versions were recorded: "1")."""
        return str(self.resolved.get("decoder", "1"))


class RunDir:
    """One run folder. Paths are properties; readers raise `RunError` with one line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # files -------------------------------------------------------------------------------------
    config_file = property(lambda self: self.path / "config.json")
    split_file = property(lambda self: self.path / "split.csv")
    skipped_file = property(lambda self: self.path / "skipped.csv")
    history_file = property(lambda self: self.path / "history.csv")
    best_model = property(lambda self: self.path / "best.keras")
    metrics_file = property(lambda self: self.path / "metrics.json")
    roc_file = property(lambda self: self.path / "roc.csv")
    roc_png = property(lambda self: self.path / "roc.png")
    confusion_png = property(lambda self: self.path / "confusion_matrix.png")
    predictions_file = property(lambda self: self.path / "test_predictions.csv")
    val_predictions_file = property(lambda self: self.path / "val_predictions.csv")
    operating_point_file = property(lambda self: self.path / "operating_point.json")
    calibrated_points_file = property(lambda self: self.path / "operating_points.json")  # `tumorclf calibrate`'s
    log_file = property(lambda self: self.path / "run.log")
    progress_file = property(lambda self: self.path / "progress.json")
    timing_file = property(lambda self: self.path / "timing.json")  # wall seconds per phase
    backup_dir = property(lambda self: self.path / "backup")
    tensorboard_dir = property(lambda self: self.path / "tensorboard")
    gradcam_dir = property(lambda self: self.path / "gradcam")
    evaluation_dir = property(lambda self: self.path / "evaluation")  # `tumorclf evaluate`'s default --out
    # `train --external`'s evaluation: an `evaluation*` folder, so the model card lists it
    external_dir = property(lambda self: self.path / "evaluation_external")

    BACKUP_PATTERN = "epoch_*.weights.h5"

    def backup_file(self, epoch: int) -> Path:
        """The resume state after `epoch` (1-based): weights and optimizer state of the fitted model."""
        return self.backup_dir / f"epoch_{epoch:04d}.weights.h5"

    def backup_files(self) -> list[Path]:
        """The epoch backups present, oldest first."""
        return sorted(self.backup_dir.glob(self.BACKUP_PATTERN))

    # state -------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.metrics_file.is_file() and self.best_model.is_file()

    def require_finished(self) -> "RunDir":
        if not self.path.is_dir():
            raise RunError(f"run folder not found: {self.path}")
        if not self.finished:
            raise RunError(f"{self.path} is not a finished run (best.keras and metrics.json needed)")
        return self

    def create(self, overwrite: bool = False, resume: bool = False) -> bool:
        """Make the folder; True when an existing one is kept to resume. An existing folder is replaced
        only with `overwrite` and reused only with `resume`."""
        if self.path.exists() and not self.path.is_dir():
            raise RunExistsError(f"{self.path} exists and is not a folder; choose another --name or --out")
        if self.path.exists():
            if resume:
                return True
            if not overwrite:
                raise RunExistsError(
                    f"run folder {self.path} already exists; pass --resume to continue it, --overwrite to replace "
                    "it or --name to choose another"
                )
            shutil.rmtree(self.path)
        try:
            self.path.mkdir(parents=True)
        except OSError as exc:  # a parent is a file, no permission, ...
            raise RunError(f"cannot create run folder {self.path}: {exc.strerror or exc}") from None
        return False

    # readers -----------------------------------------------------------------------------------
    def _require(self, path: Path) -> None:
        if not self.path.is_dir():
            raise RunError(f"run folder not found: {self.path}")
        if not path.is_file():
            raise RunError(f"{self.path} has no {path.name}")

    def _json(self, path: Path) -> dict:
        """A JSON object file; anything else (unreadable, not JSON, not an object) is a `RunError`."""
        self._require(path)
        try:
            value = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunError(f"{path} is unreadable: {' '.join(str(exc).split())}") from None
        if not isinstance(value, dict):
            raise RunError(f"{path} is corrupt: expected a JSON object, got {type(value).__name__}")
        return value

    def _csv(self, path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
        """The rows of a CSV file with at least `columns`, each row complete in them; else a `RunError`."""
        self._require(path)
        try:
            with open(path, newline="") as handle:
                reader = csv.DictReader(handle)
                rows = list(reader)
                header = reader.fieldnames or []
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise RunError(f"{path} is unreadable: {' '.join(str(exc).split())}") from None
        missing = [column for column in columns if column not in header]
        if missing:
            raise RunError(f"{path} is corrupt: no {', '.join(missing)} column (expected {', '.join(columns)})")
        for line, row in enumerate(rows, start=2):
            if any(row.get(column) is None for column in columns):
                raise RunError(f"{path} is corrupt: line {line} is cut short")
        return rows

    def record(self) -> Record:
        """config.json, its config read back through `Config` (types coerced, unknown keys refused)."""
        raw = self._json(self.config_file)
        schema = raw.get("schema", 1)
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise RunError(f"{self.config_file} is corrupt: schema {schema!r} is not an integer")
        if schema > SCHEMA_VERSION:
            raise RunError(f"{self.path} was written by a newer tumorclf (run-folder schema {schema}, "
                           f"this one reads up to {SCHEMA_VERSION})")
        if not isinstance(raw.get("config"), dict):
            raise RunError(f"{self.config_file} holds no valid config: `config` is "
                           f"{'missing' if 'config' not in raw else 'not a JSON object'}")
        try:
            config = Config.from_dict(raw["config"])
        except ConfigError as exc:
            raise RunError(f"{self.config_file} holds no valid config: {exc}") from None
        parts = {key: raw.get(key, {}) for key in ("resolved", "split", "versions")}
        for key, value in parts.items():
            if not isinstance(value, dict):
                raise RunError(f"{self.config_file} is corrupt: `{key}` is not a JSON object")
        skipped = raw.get("skipped_files", 0)
        if not isinstance(skipped, int) or isinstance(skipped, bool):
            raise RunError(f"{self.config_file} is corrupt: skipped_files {skipped!r} is not an integer")
        return Record(config, parts["resolved"], parts["split"], skipped, parts["versions"], schema)

    def config(self) -> Config:
        return self.record().config

    def data_root(self) -> Path:
        """The data folder the run was trained on, as resolved then."""
        data = self.record().resolved.get("data")
        if not isinstance(data, str) or not data:
            raise RunError(f"{self.config_file} records no data folder (resolved.data)")
        return Path(data)

    def metrics(self) -> dict[str, Any]:
        return self._json(self.metrics_file)

    def operating_point(self) -> OperatingPoint | None:
        """operating_point.json (temperature and thresholds fitted on validation), or None for runs without."""
        if not self.operating_point_file.is_file():
            return None
        raw = self._json(self.operating_point_file)
        try:
            point = OperatingPoint.from_dict(raw)
        except (KeyError, TypeError) as exc:
            raise RunError(f"{self.operating_point_file} is corrupt: missing {exc}") from None
        for key in ("temperature", "threshold", "target_sensitivity", "youden_threshold"):
            value = getattr(point, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise RunError(f"{self.operating_point_file} is corrupt: {key} {value!r} is not a number >= 0")
        high = point.high_sensitivity_threshold
        if high is not None and (isinstance(high, bool) or not isinstance(high, (int, float)) or not 0 <= high <= 1):
            raise RunError(f"{self.operating_point_file} is corrupt: high_sensitivity_threshold {high!r} is not a "
                           "number in [0, 1]")
        if not point.temperature > 0 or not point.threshold <= 1:
            raise RunError(f"{self.operating_point_file} is corrupt: temperature {point.temperature} or threshold "
                           f"{point.threshold} out of range")
        return point

    def calibrated_points(self) -> dict[str, Any]:
        """operating_points.json: {"selected": a name or None, "points": {name: point}} of the operating points
        `tumorclf calibrate` fitted on other folders (`tumorclf.runs.points`); empty when there is none."""
        if not self.calibrated_points_file.is_file():
            return {"selected": None, "points": {}}
        raw = self._json(self.calibrated_points_file)
        points, selected = raw.get("points"), raw.get("selected")
        if not isinstance(points, dict) or not all(isinstance(p, dict) for p in points.values()):
            raise RunError(f"{self.calibrated_points_file} is corrupt: `points` is not an object of objects")
        if selected is not None and selected not in points:
            raise RunError(f"{self.calibrated_points_file} is corrupt: selected {selected!r} is none of its points")
        return {"selected": selected, "points": points}

    def write_calibrated_points(self, points: dict[str, Any]) -> None:
        self._write(lambda: atomic_write_json(self.calibrated_points_file, json_safe(points)))

    def temperature(self) -> float:
        """The run's calibration temperature (1.0: uncalibrated, for runs without an operating point)."""
        point = self.operating_point()
        return float(point.temperature) if point else 1.0

    def threshold(self) -> float:
        """The run's operating threshold on calibrated P(Tumor): the operating point's (fitted on validation),
        else `metrics_threshold()`."""
        point = self.operating_point()
        return float(point.threshold) if point else self.metrics_threshold()

    def metrics_threshold(self) -> float:
        """The threshold on raw P(Tumor) behind metrics.json and test_predictions.csv's decisions (else the
        default)."""
        if not self.metrics_file.is_file():
            return DEFAULT_THRESHOLD
        value = self.metrics().get("threshold", DEFAULT_THRESHOLD)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise RunError(f"{self.metrics_file} is corrupt: threshold {value!r} is not a number in [0, 1]")
        return float(value)

    def external_report(self) -> dict[str, Any] | None:
        """The evaluation.json of `train --external`, or None when the run has none."""
        path = self.external_dir / "evaluation.json"
        return self._json(path) if path.is_file() else None

    def progress(self) -> dict[str, Any] | None:
        """progress.json (the resume state after the last completed epoch), or None before the first."""
        if not self.progress_file.is_file():
            return None
        progress = self._json(self.progress_file)
        missing = [key for key in ("epochs_done", "backup", "best_val_f1", "best_epoch") if key not in progress]
        if missing:
            raise RunError(f"{self.progress_file} is corrupt: no {', '.join(missing)}")
        return progress

    def split_rows(self) -> list[dict[str, str]]:
        """split.csv: path,label,split,group,sha256 for every usable file."""
        return self._csv(self.split_file, ("path", "label", "split"))

    def test_predictions(self) -> list[dict[str, str]]:
        """test_predictions.csv: path,label,prob_tumor(,predicted: the decision at the run's threshold; runs
        since the run-folder contract) for every test image."""
        return self._csv(self.predictions_file, ("path", "label", "prob_tumor"))

    def val_predictions(self) -> list[dict[str, str]]:
        """val_predictions.csv: path,label,prob_tumor (raw, uncalibrated) of every validation image."""
        return self._csv(self.val_predictions_file, ("path", "label", "prob_tumor"))

    def validation_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """The labels (int64) and raw P(Tumor) (float64) of val_predictions.csv; a RunError when a value is not
        a number."""
        rows = self.val_predictions()
        try:
            return (np.array([int(row["label"]) for row in rows], dtype=np.int64),
                    np.array([float(row["prob_tumor"]) for row in rows], dtype=np.float64))
        except ValueError as exc:
            raise RunError(f"{self.val_predictions_file} is corrupt: {exc}") from None

    def write_operating_point(self, point: OperatingPoint) -> None:
        self._write(lambda: atomic_write_json(self.operating_point_file, json_safe(point.to_dict())))

    def write_val_predictions(self, paths: list[str], labels, prob_tumor) -> list[float]:
        """val_predictions.csv: P(Tumor) to 9 significant digits (a float32 read back exactly), which are also
        returned, so that the operating point is fitted on the very numbers kept."""
        kept = [float(f"{float(p):.9g}") for p in prob_tumor]
        self._write(lambda: atomic_write_text(self.val_predictions_file, csv_text(
            ["path", "label", "prob_tumor"], zip(paths, [int(label) for label in labels], kept))))
        return kept

    def _write(self, write) -> None:
        try:
            write()
        except OSError as exc:
            raise RunError(f"cannot write into {self.path}: {exc.strerror or exc}") from None

    def history(self) -> list[dict[str, str]]:
        """history.csv: one row per completed epoch (`epoch` 0-based, then the logged metrics)."""
        return self._csv(self.history_file, ("epoch",))

    def roc(self) -> list[tuple[float, float, float]]:
        """roc.csv as (threshold, fpr, tpr) rows, in the file's order."""
        rows = self._csv(self.roc_file, ("threshold", "fpr", "tpr"))
        try:
            return [(float(row["threshold"]), float(row["fpr"]), float(row["tpr"])) for row in rows]
        except ValueError as exc:
            raise RunError(f"{self.roc_file} is corrupt: {exc}") from None

    def load_model(self):
        """The best model (a fresh copy each call)."""
        from tumorclf.models.factory import load_model

        if not self.best_model.is_file():
            raise RunError(f"{self.path} has no best.keras (not a finished run)")
        return load_model(self.best_model)

    # writers -----------------------------------------------------------------------------------
    def write_record(self, config: Config, resolved: dict, split: dict, skipped_files: int,
                     versions: dict) -> None:
        atomic_write_json(self.config_file, {
            "schema": SCHEMA_VERSION, "config": config.to_dict(), "resolved": resolved, "split": split,
            "skipped_files": skipped_files, "versions": versions,
        })

    def attach_log(self) -> logging.Handler:
        """Send the package's log records to run.log as well as the console; detach with `detach_log`."""
        handler = logging.FileHandler(self.log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("tumorclf").addHandler(handler)
        return handler

    @staticmethod
    def detach_log(handler: logging.Handler) -> None:
        logging.getLogger("tumorclf").removeHandler(handler)
        handler.close()
