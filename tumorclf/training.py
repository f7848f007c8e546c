"""Precision and distribution choices, the validation-F1 checkpoint, and the training loop."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tumorclf.config import Config
from tumorclf.evaluation import precision_recall_f1
from tumorclf.models import set_trainable

log = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512_BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def select_precision(
    requested: str, model: str, gpus: int | None = None, bf16_cpu: bool | None = None
) -> str:
    """The Keras dtype policy to use.

    `auto`: mixed_float16 on a GPU. On a CPU with native bf16, mixed_bfloat16 for the
    keras.applications backbones (VGG16 trained 2.7x faster) but float32 for SimpleCNN, whose
    small convolutions ran 20% slower in bf16 (README, "Precision"). float32 otherwise.
    """
    if requested != "auto":
        return requested
    gpus = len(tf.config.list_physical_devices("GPU")) if gpus is None else gpus
    if gpus:
        return "mixed_float16"
    bf16_cpu = cpu_has_bf16() if bf16_cpu is None else bf16_cpu
    return "mixed_bfloat16" if bf16_cpu and model != "simplecnn" else "float32"


def select_strategy(requested: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy. `auto`: MirroredStrategy when more than one GPU is visible."""
    gpus = tf.config.list_logical_devices("GPU")
    if requested == "auto":
        requested = "mirrored" if len(gpus) > 1 else "default"
    if requested == "default":
        return tf.distribute.get_strategy()
    if requested == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if requested == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multiworker needs the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {requested!r}")


class F1Checkpoint(keras.callbacks.Callback):
    """Validation precision, recall and F1 (Tumor positive) on the whole validation set each
    epoch, added to the epoch logs (so History, CSVLogger and TensorBoard record them), and a
    checkpoint saved only when F1 improves."""

    def __init__(self, val_data: tf.data.Dataset, val_labels: np.ndarray, filepath: str | os.PathLike):
        super().__init__()
        self.val_data = val_data
        self.val_labels = np.asarray(val_labels)
        self.filepath = Path(filepath)
        self.best_f1 = -np.inf
        self.best_epoch: int | None = None

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


def train(
    cfg: Config,
    build: Callable[[], keras.Model],
    strategy: tf.distribute.Strategy,
    train_data: tf.data.Dataset,
    val_data: tf.data.Dataset,
    val_labels: np.ndarray,
    run_dir: Path,
) -> TrainResult:
    """Build inside the strategy's scope, fit with the configured fine-tuning policy, and keep
    the best model by validation F1 at `run_dir/best.keras`."""
    checkpoint = F1Checkpoint(val_data, val_labels, run_dir / "best.keras")
    callbacks = [
        checkpoint,  # first, so the loggers below see val_f1
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), write_graph=False),
    ]
    with strategy.scope():
        model = build()
        phases = _phases(cfg)
        start = 0
        for policy, epochs, learning_rate in phases:
            trainable = set_trainable(model, policy, cfg.unfreeze_from)
            log.info("phase %s: %d layers with weights trainable, lr %g, epochs %d-%d",
                     policy, trainable, learning_rate, start + 1, start + epochs)
            compile_model(model, learning_rate, cfg.momentum)
            model.fit(train_data, validation_data=val_data, initial_epoch=start, epochs=start + epochs,
                      callbacks=callbacks, shuffle=False, verbose=2)
            start += epochs
    return TrainResult(checkpoint.filepath, checkpoint.best_epoch, float(checkpoint.best_f1), start)


def _phases(cfg: Config) -> list[tuple[str, int, float]]:
    """(policy, epochs, learning rate) for each training phase."""
    if cfg.fine_tune != "two_phase":
        return [(cfg.fine_tune, cfg.epochs, cfg.learning_rate)]
    return [
        ("frozen", cfg.head_epochs, cfg.learning_rate),
        ("full", cfg.epochs - cfg.head_epochs, cfg.learning_rate * cfg.fine_tune_lr_factor),
    ]
