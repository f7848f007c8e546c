"""Precision and distribution choices, the validation-F1 checkpoint, and the training loop."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tumorclf.artifacts import atomic_write_json, atomic_write_text
from tumorclf.config import Config
from tumorclf.evaluation import precision_recall_f1
from tumorclf.models import set_trainable
from tumorclf.pipeline import TrainData

log = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512_BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def select_precision(requested: str, gpus: int | None = None, bf16_cpu: bool | None = None) -> str:
    """The Keras dtype policy to use.

    `auto`: mixed_float16 on a GPU; mixed_bfloat16 on a CPU with native bf16, where
    `python -m tumorclf.bench` measured every model faster (VGG16 training 1.9x, SimpleCNN 1.24x;
    README, "Precision"); float32 otherwise.
    """
    if requested != "auto":
        return requested
    gpus = len(tf.config.list_physical_devices("GPU")) if gpus is None else gpus
    if gpus:
        return "mixed_float16"
    return "mixed_bfloat16" if (cpu_has_bf16() if bf16_cpu is None else bf16_cpu) else "float32"


def select_strategy(requested: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy. `auto`: MirroredStrategy when more than one GPU is visible.

    Call it before any other TensorFlow op, as tf.distribute expects.
    """
    if requested == "multiworker":
        raise ValueError(
            "--strategy multiworker is not available: Keras 3's Model.fit fails under "
            "tf.distribute.MultiWorkerMirroredStrategy (keras-team/keras#20585, still failing with "
            f"Keras {keras.__version__} / TensorFlow {tf.__version__}); use mirrored or default"
        )
    gpus = tf.config.list_logical_devices("GPU")
    if requested == "auto":
        requested = "mirrored" if len(gpus) > 1 else "default"
    if requested == "default":
        return tf.distribute.get_strategy()
    if requested == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    raise ValueError(f"unknown strategy {requested!r}")


class F1Checkpoint(keras.callbacks.Callback):
    """Validation precision, recall and F1 (Tumor positive) on the whole validation set each
    epoch, added to the epoch logs (so History, CSVLogger and TensorBoard record them), and a
    checkpoint saved only when F1 improves. With `patience`, training stops once that many epochs
    pass without improvement (`stopped` is then True)."""

    def __init__(self, val_data: tf.data.Dataset, val_labels: np.ndarray, filepath: str | os.PathLike,
                 best_f1: float = -np.inf, best_epoch: int | None = None, patience: int | None = None):
        super().__init__()
        self.val_data = val_data
        self.val_labels = np.asarray(val_labels)
        self.filepath = Path(filepath)
        self.best_f1 = best_f1
        self.best_epoch = best_epoch
        self.patience = patience
        self.stopped = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        probs = self.model.predict(self.val_data, verbose=0)
        precision, recall, f1 = precision_recall_f1(self.val_labels, np.argmax(probs, axis=1))
        if logs is not None:
            logs.update(val_precision=precision, val_recall=recall, val_f1=f1)
        if f1 > self.best_f1:
            log.info("epoch %d: val_f1 improved %.4f -> %.4f, saving %s", epoch + 1, self.best_f1, f1, self.filepath)
            self.best_f1, self.best_epoch = f1, epoch + 1
            save_model_atomically(self.model, self.filepath)
        else:
            log.info("epoch %d: val_f1 %.4f (best %.4f at epoch %d)", epoch + 1, f1, self.best_f1, self.best_epoch)
        if self.patience is not None and epoch + 1 - self.best_epoch >= self.patience:
            log.info("no better val_f1 for %d epochs: stopping early", self.patience)
            self.stopped = True
            self.model.stop_training = True


def seed_states(obj: keras.Layer) -> list[keras.Variable]:
    """The random-generator states of a layer or model (its variables that are not weights)."""
    weights = {id(w) for w in obj.weights}
    return [v for v in obj.variables if id(v) not in weights]


class EpochSeeding(keras.callbacks.Callback):
    """At each epoch start, set the data epoch and reset every random-generator state (augmentation
    layers and the model's own, such as dropout) from (seed, epoch), so that an epoch's randomness
    does not depend on what ran before it in this process."""

    def __init__(self, seed: int, data: TrainData):
        super().__init__()
        self.seed = seed
        self.data = data

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.data.epoch.assign(epoch)
        states = seed_states(self.data.augmentation) if self.data.augmentation is not None else []
        for i, state in enumerate(states + seed_states(self.model)):
            state.assign(np.array([self.seed * 1009 + i, epoch * 100_003], dtype=state.dtype))


PROGRESS = "progress.json"


class EpochBackup(keras.callbacks.Callback):
    """Last callback of an epoch: model and optimizer state to `backup/epoch_NNNN.weights.h5`, then
    `progress.json` (atomically) naming it with the F1 checkpoint's best. Older backups are removed.
    A crash at any point leaves `progress.json` pointing at a complete backup."""

    def __init__(self, run_dir: Path, checkpoint: F1Checkpoint, seconds_before: float = 0.0):
        super().__init__()
        self.run_dir = run_dir
        self.folder = run_dir / "backup"
        self.checkpoint = checkpoint
        self.seconds_before = seconds_before  # training time of earlier, interrupted processes
        self.started = time.time()

    @property
    def train_seconds(self) -> float:
        return self.seconds_before + time.time() - self.started

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.folder.mkdir(exist_ok=True)
        path = self.folder / f"epoch_{epoch + 1:04d}.weights.h5"
        self.model.save_weights(path)
        atomic_write_json(self.run_dir / PROGRESS, {
            "epochs_done": epoch + 1, "backup": path.name,
            "best_val_f1": float(self.checkpoint.best_f1), "best_epoch": self.checkpoint.best_epoch,
            "stopped_early": self.checkpoint.stopped, "train_seconds": round(self.train_seconds, 1),
        })
        for old in self.folder.glob("epoch_*.weights.h5"):
            if old != path:
                old.unlink()


def read_progress(run_dir: Path) -> dict | None:
    path = run_dir / PROGRESS
    return json.loads(path.read_text()) if path.is_file() else None


def truncate_history(path: Path, epochs_done: int) -> None:
    """Keep the header and the rows of completed epochs (a crash may have logged one more)."""
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        atomic_write_text(path, "".join(lines[: 1 + epochs_done]))


def save_model_atomically(model: keras.Model, path: Path) -> None:
    """`model.save` to a temporary file beside `path`, then rename over it."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def compile_model(model: keras.Model, learning_rate: float, momentum: float) -> None:
    """The paper's recipe: SGD with momentum, categorical cross-entropy on one-hot labels."""
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )


@dataclass
class TrainResult:
    best_checkpoint: Path
    best_epoch: int | None
    best_val_f1: float
    epochs_run: int
    train_seconds: float  # including earlier, interrupted processes of the same run


def train(
    cfg: Config,
    build: Callable[[], keras.Model],
    strategy: tf.distribute.Strategy,
    train_data: TrainData,
    val_data: tf.data.Dataset,
    val_labels: np.ndarray,
    run_dir: Path,
    resume: bool = False,
) -> TrainResult:
    """Build inside the strategy's scope, fit with the configured fine-tuning policy, and keep
    the best model by validation F1 at `run_dir/best.keras`. With `resume`, continue after the
    last completed epoch recorded in `progress.json`, with its weights and optimizer state."""
    progress = read_progress(run_dir) if resume else None
    done = progress["epochs_done"] if progress else 0
    if progress:
        log.info("resuming after epoch %d (best val_f1 %.4f at epoch %s)", done, progress["best_val_f1"],
                 progress["best_epoch"])
        truncate_history(run_dir / "history.csv", done)
        checkpoint = F1Checkpoint(val_data, val_labels, run_dir / "best.keras", progress["best_val_f1"],
                                  progress["best_epoch"], cfg.patience)
        checkpoint.stopped = progress.get("stopped_early", False)
    else:
        checkpoint = F1Checkpoint(val_data, val_labels, run_dir / "best.keras", patience=cfg.patience)
    epoch_backup = EpochBackup(run_dir, checkpoint, progress.get("train_seconds", 0.0) if progress else 0.0)
    callbacks = [
        EpochSeeding(cfg.seed, train_data),
        checkpoint,  # before the loggers, so they see val_f1
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), write_graph=False),
        epoch_backup,  # last: marks the epoch complete
    ]
    with strategy.scope():
        model = build()
        backup = run_dir / "backup" / progress["backup"] if progress else None
        start = 0
        for policy, epochs, learning_rate in _phases(cfg):
            end = start + epochs
            if done < end and not checkpoint.stopped:
                if backup is not None and done == start:  # resuming at a phase boundary: weights only
                    model.load_weights(backup)
                    backup = None
                trainable = set_trainable(model, policy, cfg.unfreeze_from)
                log.info("phase %s: %d layers with weights trainable, lr %g, epochs %d-%d",
                         policy, trainable, learning_rate, max(start, done) + 1, end)
                compile_model(model, learning_rate, cfg.momentum)
                if backup is not None:  # resuming inside this phase: weights and optimizer state
                    model.optimizer.build(model.trainable_variables)
                    model.load_weights(backup)
                    backup = None
                history = model.fit(train_data.dataset, validation_data=val_data, initial_epoch=max(start, done),
                                    epochs=end, callbacks=callbacks, shuffle=False, verbose=2)
                done = max(start, done) + len(history.epoch)
            start = end
    return TrainResult(checkpoint.filepath, checkpoint.best_epoch, float(checkpoint.best_f1), done,
                       epoch_backup.train_seconds)


def _phases(cfg: Config) -> list[tuple[str, int, float]]:
    """(policy, epochs, learning rate) for each training phase."""
    if cfg.fine_tune != "two_phase":
        return [(cfg.fine_tune, cfg.epochs, cfg.learning_rate)]
    return [
        ("frozen", cfg.head_epochs, cfg.learning_rate),
        ("full", cfg.epochs - cfg.head_epochs, cfg.learning_rate * cfg.fine_tune_lr_factor),
    ]
