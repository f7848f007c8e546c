"""The callbacks of the one training loop, in the order they run at an epoch's end.

Every backend (Keras `fit`, the multi-worker loop) and every recipe runs the same list, so every run
folder gets the same validation pass, checkpoint, history columns and resume state.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from tumorclf.utils.files import atomic_write_json, atomic_write_text, csv_text
from tumorclf.metrics.classification import classification_metrics
from tumorclf.runs.folder import RunDir

log = logging.getLogger(__name__)

# history.csv on every path; `epoch` is 0-based, as Keras' CSVLogger wrote it, so older run folders read the same.
# The test columns stay empty unless --track-test.
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1",
                   "elapsed_minutes", "test_accuracy", "test_f1", "outside_share")


def score(model: keras.Model, inputs: Any, labels: np.ndarray) -> dict[str, float]:
    """Loss, accuracy, precision, recall and F1 (Tumor positive) of one predict over `inputs`, computed as
    `evaluation.classification_metrics` computes the test metrics (same threshold and clipping)."""
    metrics = classification_metrics(labels, model.predict(inputs, verbose=0))
    return {"loss": metrics["test_loss"], **{key: metrics[key] for key in ("accuracy", "precision", "recall", "f1")}}


def save_model_atomically(model: keras.Model, path: Path) -> None:
    """`model.save` to a temporary file beside `path`, then rename over it."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


class EpochKeyed(Protocol):
    """Training input whose order and augmentation are keyed by an epoch variable."""

    epoch: tf.Variable
    augmentation: keras.Sequential | None


def seed_states(obj: keras.Layer) -> list[keras.Variable]:
    """The random-generator states of a layer or model (its variables that are not weights)."""
    weights = {id(w) for w in obj.weights}
    return [v for v in obj.variables if id(v) not in weights]


class EpochSeeding(keras.callbacks.Callback):
    """At each epoch start, set the data epoch and reset every random-generator state (augmentation
    layers and the model's own, such as dropout) from (seed, epoch), so that an epoch's randomness
    does not depend on what ran before it in this process."""

    def __init__(self, seed: int, data: EpochKeyed):
        super().__init__()
        self.seed = seed
        self.data = data

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.data.epoch.assign(epoch)
        states = seed_states(self.data.augmentation) if self.data.augmentation is not None else []
        for i, state in enumerate(states + seed_states(self.model)):
            state.assign(np.array([self.seed * 1009 + i, epoch * 100_003], dtype=state.dtype))


class Validation(keras.callbacks.Callback):
    """The epoch's one validation pass: one predict over the validation set gives val_loss, val_accuracy,
    val_precision, val_recall and val_f1 (added to the epoch logs, so history and TensorBoard get them),
    and `save` (the whole model, also when only its top is fitted) goes to `filepath` when val_f1 improves.
    With `patience`, training stops once that many epochs pass without improvement (`stopped` is then True).
    A resumed run passes the best F1 and epoch so far."""

    def __init__(self, inputs: Any, labels: np.ndarray, filepath: Path, save: keras.Model,
                 patience: int | None = None, best_f1: float = -np.inf, best_epoch: int | None = None):
        super().__init__()
        self.inputs = inputs
        self.labels = np.asarray(labels)
        self.filepath = Path(filepath)
        self.save = save
        self.patience = patience
        self.best_f1, self.best_epoch = best_f1, best_epoch
        self.stopped = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        scores = score(self.model, self.inputs, self.labels)
        if logs is not None:
            logs.update({f"val_{key}": value for key, value in scores.items()})
        f1 = scores["f1"]
        if f1 > self.best_f1:
            log.info("epoch %d: val_f1 improved %.4f -> %.4f, saving %s", epoch + 1, self.best_f1, f1, self.filepath)
            self.best_f1, self.best_epoch = f1, epoch + 1
            save_model_atomically(self.save, self.filepath)
        else:
            log.info("epoch %d: val_f1 %.4f (best %.4f at epoch %d)", epoch + 1, f1, self.best_f1, self.best_epoch)
        if self.patience is not None and epoch + 1 - self.best_epoch >= self.patience:
            log.info("no better val_f1 for %d epochs: stopping early", self.patience)
            self.stopped = True
            self.model.stop_training = True


class HeldOutCurve(keras.callbacks.Callback):
    """Test accuracy and F1 in the epoch logs, for time-to-accuracy curves. Recorded only: the
    checkpoint is still chosen by validation F1 alone."""

    def __init__(self, inputs: Any, labels: np.ndarray):
        super().__init__()
        self.inputs = inputs
        self.labels = np.asarray(labels)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        scores = score(self.model, self.inputs, self.labels)
        if logs is not None:
            logs.update(test_accuracy=scores["accuracy"], test_f1=scores["f1"])


class Clock(keras.callbacks.Callback):
    """Training wall time, across interrupted processes of a run: `elapsed_minutes` in the epoch logs,
    and a stop once `limit_minutes` have passed (checked at epoch ends)."""

    def __init__(self, seconds_before: float = 0.0, limit_minutes: float | None = None):
        super().__init__()
        self.seconds_before = seconds_before
        self.limit_minutes = limit_minutes
        self.started = time.time()

    @property
    def seconds(self) -> float:
        return self.seconds_before + time.time() - self.started

    @property
    def expired(self) -> bool:
        return self.limit_minutes is not None and self.seconds >= 60 * self.limit_minutes

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["elapsed_minutes"] = round(self.seconds / 60, 3)
        if self.expired:
            log.info("time limit of %g minutes reached after epoch %d: stopping", self.limit_minutes, epoch + 1)
            self.model.stop_training = True


def _cell(value: Any) -> Any:
    return "" if value is None else float(value)


class HistoryWriter(keras.callbacks.Callback):
    """One row of HISTORY_COLUMNS per epoch appended to history.csv and synced, whatever the backend
    logged: a column nobody logged stays empty, a key outside the list is not written."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        new = not self.path.is_file() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            if new:
                writer.writerow(HISTORY_COLUMNS)
            writer.writerow([epoch, *(_cell(logs.get(column)) for column in HISTORY_COLUMNS[1:])])
            handle.flush()
            os.fsync(handle.fileno())


def keep_history(path: Path, epochs_done: int) -> None:
    """Rewrite history.csv with the rows of the completed epochs only (a crash may have logged one more,
    or cut a row short), under HISTORY_COLUMNS (a folder from an older tumorclf gets them too)."""
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        rows = [row for _, row in zip(range(epochs_done), csv.DictReader(handle))]
    kept = [[row.get(column) or "" for column in HISTORY_COLUMNS] for row in rows]
    atomic_write_text(path, csv_text(list(HISTORY_COLUMNS), kept))


class EpochBackup(keras.callbacks.Callback):
    """Last callback of an epoch: the fitted model's weights and optimizer state to
    `backup/epoch_NNNN.weights.h5`, then `progress.json` (atomically) naming it with the validation's best.
    Older backups are removed. A crash at any point leaves `progress.json` pointing at a complete backup."""

    def __init__(self, run: RunDir, validation: Validation, clock: Clock):
        super().__init__()
        self.run = run
        self.validation = validation
        self.clock = clock

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.run.backup_dir.mkdir(exist_ok=True)
        path = self.run.backup_file(epoch + 1)
        self.model.save_weights(path)
        atomic_write_json(self.run.progress_file, {
            "epochs_done": epoch + 1, "backup": path.name,
            "best_val_f1": float(self.validation.best_f1), "best_epoch": self.validation.best_epoch,
            "stopped_early": self.validation.stopped, "train_seconds": round(self.clock.seconds, 1),
        })
        for old in self.run.backup_files():
            if old != path:
                old.unlink()
