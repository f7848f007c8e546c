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

from tumorclf.artifacts import atomic_write_json
from tumorclf.config import Config, ConfigError
from tumorclf.errors import UserError

SCHEMA_VERSION = 2  # 1: runs before the run-folder contract (no "schema" key); same files and keys
DEFAULT_THRESHOLD = 0.5  # P(Tumor) at or above which a run says Tumor, unless its metrics.json records another


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
    log_file = property(lambda self: self.path / "run.log")
    progress_file = property(lambda self: self.path / "progress.json")
    backup_dir = property(lambda self: self.path / "backup")
    tensorboard_dir = property(lambda self: self.path / "tensorboard")
    gradcam_dir = property(lambda self: self.path / "gradcam")

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
        if self.path.exists():
            if resume:
                return True
            if not overwrite:
                raise RunExistsError(
                    f"run folder {self.path} already exists; pass --resume to continue it, --overwrite to replace "
                    "it or --name to choose another"
                )
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        return False

    # readers -----------------------------------------------------------------------------------
    def _require(self, path: Path) -> None:
        if not self.path.is_dir():
            raise RunError(f"run folder not found: {self.path}")
        if not path.is_file():
            raise RunError(f"{self.path} has no {path.name}")

    def _json(self, path: Path) -> dict:
        self._require(path)
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"{path} is unreadable: {exc}") from None

    def _csv(self, path: Path) -> list[dict[str, str]]:
        self._require(path)
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))

    def record(self) -> Record:
        """config.json, its config read back through `Config` (types coerced, unknown keys refused)."""
        raw = self._json(self.config_file)
        schema = int(raw.get("schema", 1))
        if schema > SCHEMA_VERSION:
            raise RunError(f"{self.path} was written by a newer tumorclf (run-folder schema {schema}, "
                           f"this one reads up to {SCHEMA_VERSION})")
        try:
            config = Config.from_dict(raw["config"])
        except (KeyError, ConfigError) as exc:
            raise RunError(f"{self.config_file} holds no valid config: {exc}") from None
        return Record(config, raw.get("resolved", {}), raw.get("split", {}), int(raw.get("skipped_files", 0)),
                      raw.get("versions", {}), schema)

    def config(self) -> Config:
        return self.record().config

    def data_root(self) -> Path:
        """The data folder the run was trained on, as resolved then."""
        return Path(self.record().resolved["data"])

    def metrics(self) -> dict[str, Any]:
        return self._json(self.metrics_file)

    def threshold(self) -> float:
        """The run's operating threshold on P(Tumor): recorded in metrics.json, else the default."""
        if self.metrics_file.is_file():
            return float(self.metrics().get("threshold", DEFAULT_THRESHOLD))
        return DEFAULT_THRESHOLD

    def progress(self) -> dict[str, Any] | None:
        return self._json(self.progress_file) if self.progress_file.is_file() else None

    def split_rows(self) -> list[dict[str, str]]:
        """split.csv: path,label,split,group,sha256 for every usable file."""
        return self._csv(self.split_file)

    def test_predictions(self) -> list[dict[str, str]]:
        """test_predictions.csv: path,label,prob_tumor for every test image."""
        return self._csv(self.predictions_file)

    def history(self) -> list[dict[str, str]]:
        return self._csv(self.history_file)

    def load_model(self):
        """The best model (a fresh copy each call)."""
        from tumorclf.models import load_model

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
