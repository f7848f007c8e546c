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
    """The tf.distribute strategy. `auto`: MirroredStrategy when more than one GPU is visible;
    `multiworker`: MultiWorkerMirroredStrategy over the cluster described by `TF_CONFIG`.

    Call it before any other TensorFlow op, as tf.distribute expects.
    """
    if requested == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy multiworker needs TF_CONFIG, the JSON description of the cluster "
                             "and of this worker's task (see README, Robustness)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if requested == "auto":
        requested = "mirrored" if len(gpus) > 1 else "default"
    if requested == "default":
        return tf.distribute.get_strategy()
    if requested == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    raise ValueError(f"unknown strategy {requested!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder: always, except on the non-chief workers of a
    multi-worker cluster."""
    return bool(getattr(strategy.extended, "should_checkpoint", True))


def is_multiworker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


class F1Checkpoint(keras.callbacks.Callback):
    """Validation precision, recall and F1 (Tumor positive) on the whole validation set each
    epoch, added to the epoch logs (so History, CSVLogger and TensorBoard record them), and a
    checkpoint saved only when F1 improves (of `save` where given, else of the fitted model). With `patience`, training stops once that many epochs
    pass without improvement (`stopped` is then True)."""

    def __init__(self, val_data: tf.data.Dataset, val_labels: np.ndarray, filepath: str | os.PathLike,
                 patience: int | None = None, save: keras.Model | None = None):
        super().__init__()
        self.save = save  # the model to save, when it is not the one being fitted (the fast recipe's top)
        self.val_data = val_data
        self.val_labels = np.asarray(val_labels)
        self.filepath = Path(filepath)
        self.best_f1 = -np.inf  # a resumed run sets these from progress.json
        self.best_epoch: int | None = None
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
            save_model_atomically(self.save or self.model, self.filepath)
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


class HeldOutCurve(keras.callbacks.Callback):
    """Test accuracy and F1 in the epoch logs, for time-to-accuracy curves. Recorded only: the
    checkpoint is still chosen by validation F1 alone."""

    def __init__(self, test_data, test_labels: np.ndarray):
        super().__init__()
        self.test_data = test_data
        self.test_labels = np.asarray(test_labels)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        predicted = np.argmax(self.model.predict(self.test_data, verbose=0), axis=1)
        if logs is not None:
            logs.update(test_accuracy=float(np.mean(predicted == self.test_labels)),
                        test_f1=precision_recall_f1(self.test_labels, predicted)[2])


PROGRESS = "progress.json"


class EpochBackup(keras.callbacks.Callback):
    """Last callback of an epoch: model and optimizer state to `backup/epoch_NNNN.weights.h5`, then
    `progress.json` (atomically) naming it with the F1 checkpoint's best. Older backups are removed.
    A crash at any point leaves `progress.json` pointing at a complete backup."""

    def __init__(self, run_dir: Path, checkpoint: F1Checkpoint, clock: Clock):
        super().__init__()
        self.run_dir = run_dir
        self.folder = run_dir / "backup"
        self.checkpoint = checkpoint
        self.clock = clock

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.folder.mkdir(exist_ok=True)
        path = self.folder / f"epoch_{epoch + 1:04d}.weights.h5"
        self.model.save_weights(path)
        atomic_write_json(self.run_dir / PROGRESS, {
            "epochs_done": epoch + 1, "backup": path.name,
            "best_val_f1": float(self.checkpoint.best_f1), "best_epoch": self.checkpoint.best_epoch,
            "stopped_early": self.checkpoint.stopped, "train_seconds": round(self.clock.seconds, 1),
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


def compile_model(model: keras.Model, learning_rate: float, momentum: float, jit_compile: bool = False) -> None:
    """The paper's recipe: SGD with momentum, categorical cross-entropy on one-hot labels.
    `jit_compile`: XLA for the train step (optional: `python -m tumorclf.bench --jit-compile` measures it)."""
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


@dataclass
class TrainResult:
    best_checkpoint: Path
    best_epoch: int | None
    best_val_f1: float
    epochs_run: int
    train_seconds: float  # including earlier, interrupted processes of the same run


@dataclass
class Session:
    """What a training loop needs to start or resume: where it stands and its callbacks."""

    done: int  # completed epochs
    backup: Path | None  # weights and optimizer state to resume from
    checkpoint: F1Checkpoint
    clock: Clock
    callbacks: list[keras.callbacks.Callback]

    @property
    def finished(self) -> bool:
        """Stopped early, or out of time after at least one epoch."""
        return self.checkpoint.stopped or (self.done > 0 and self.clock.expired)

    def result(self) -> TrainResult:
        return TrainResult(self.checkpoint.filepath, self.checkpoint.best_epoch, float(self.checkpoint.best_f1),
                           self.done, self.clock.seconds)


def start_session(cfg: Config, run_dir: Path, data, val_data, val_labels: np.ndarray, resume: bool,
                  test: tuple | None = None) -> Session:
    """Read `progress.json` when resuming, and make the callbacks in their order: seeding, the F1
    checkpoint, the test tracker (with `test` = (data, labels)), the clock, the loggers, the backup."""
    progress = read_progress(run_dir) if resume else None
    checkpoint = F1Checkpoint(val_data, val_labels, run_dir / "best.keras", patience=cfg.patience)
    clock = Clock(limit_minutes=cfg.max_minutes)
    done, backup = 0, None
    if progress:
        done, backup = progress["epochs_done"], run_dir / "backup" / progress["backup"]
        log.info("resuming after epoch %d (best val_f1 %.4f at epoch %s)", done, progress["best_val_f1"],
                 progress["best_epoch"])
        truncate_history(run_dir / "history.csv", done)
        checkpoint.best_f1, checkpoint.best_epoch = progress["best_val_f1"], progress["best_epoch"]
        checkpoint.stopped = progress.get("stopped_early", False)
        clock.seconds_before = progress.get("train_seconds", 0.0)
    callbacks = [
        EpochSeeding(cfg.seed, data),
        checkpoint,  # before the loggers, so they see val_f1
        *([HeldOutCurve(*test)] if test else []),
        clock,
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), write_graph=False),
        EpochBackup(run_dir, checkpoint, clock),  # last: marks the epoch complete
    ]
    return Session(done, backup, checkpoint, clock, callbacks)


def train(
    cfg: Config,
    build: Callable[[], keras.Model],
    strategy: tf.distribute.Strategy,
    train_data: TrainData,
    val_data: tf.data.Dataset,
    val_labels: np.ndarray,
    run_dir: Path,
    resume: bool = False,
    test: tuple | None = None,
) -> TrainResult:
    """Build inside the strategy's scope, fit with the configured fine-tuning policy, and keep
    the best model by validation F1 at `run_dir/best.keras`. With `resume`, continue after the
    last completed epoch recorded in `progress.json`, with its weights and optimizer state.
    With `test` = (dataset, labels), test accuracy and F1 are logged each epoch (not used to choose)."""
    session = start_session(cfg, run_dir, train_data, val_data, val_labels, resume, test)
    with strategy.scope():
        model = build()
        start = 0
        for policy, epochs, learning_rate in _phases(cfg):
            end = start + epochs
            if session.done < end and not session.finished:
                if session.backup is not None and session.done == start:  # at a phase boundary: weights only
                    model.load_weights(session.backup)
                    session.backup = None
                trainable = set_trainable(model, policy, cfg.unfreeze_from)
                log.info("phase %s: %d layers with weights trainable, lr %g, epochs %d-%d",
                         policy, trainable, learning_rate, max(start, session.done) + 1, end)
                compile_model(model, learning_rate, cfg.momentum, cfg.jit_compile)
                if session.backup is not None:  # resuming inside this phase: weights and optimizer state
                    model.optimizer.build(model.trainable_variables)
                    model.load_weights(session.backup)
                    session.backup = None
                if is_multiworker(strategy):
                    ran = fit_multiworker(model, strategy, train_data.dataset, max(start, session.done), end,
                                          session.callbacks)
                else:
                    ran = len(model.fit(train_data.dataset, validation_data=val_data,
                                        initial_epoch=max(start, session.done), epochs=end,
                                        callbacks=session.callbacks, shuffle=False, verbose=2).epoch)
                session.done = max(start, session.done) + ran
            start = end
    return session.result()


def fit_multiworker(model: keras.Model, strategy: tf.distribute.Strategy, dataset: tf.data.Dataset,
                    initial_epoch: int, epochs: int, callbacks: list[keras.callbacks.Callback]) -> int:
    """`Model.fit` for MultiWorkerMirroredStrategy, which Keras 3's own fit does not support
    (keras-team/keras#20585): a tf.function step under `strategy.run`, the global batch split across
    workers, the loss averaged over the global batch and gradients all-reduced by the optimizer.
    Callbacks run on every worker; a stop requested on any worker stops all of them, so that no
    worker waits forever in a collective. Returns the number of epochs run."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    distributed = strategy.experimental_distribute_dataset(dataset.with_options(options))
    loss_fn = keras.losses.CategoricalCrossentropy(reduction=None)

    @tf.function
    def train_step(x, y):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                global_batch = tf.cast(tf.shape(x)[0] * strategy.num_replicas_in_sync, tf.float32)
                loss = tf.reduce_sum(loss_fn(y, probs)) / global_batch
                hits = tf.reduce_sum(tf.cast(tf.argmax(probs, -1) == tf.argmax(y, -1), tf.float32))
            gradients = tape.gradient(model.optimizer.scale_loss(loss), model.trainable_variables)
            model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss, hits, tf.cast(tf.shape(x)[0], tf.float32)

        return [strategy.reduce("SUM", value, axis=None) for value in strategy.run(replica_step, args=(x, y))]

    @tf.function
    def any_worker(flag):
        return strategy.reduce("SUM", strategy.run(lambda: tf.identity(flag)), axis=None)

    callback_list = keras.callbacks.CallbackList(callbacks, model=model)
    model.stop_training = False
    callback_list.on_train_begin()
    ran = 0
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        loss_sum, hits, seen, steps = 0.0, 0.0, 0.0, 0
        for x, y in distributed:
            loss, batch_hits, batch_seen = train_step(x, y)
            loss_sum, hits, seen, steps = loss_sum + float(loss), hits + float(batch_hits), seen + float(batch_seen), steps + 1
        logs = {"accuracy": hits / max(seen, 1.0), "loss": loss_sum / max(steps, 1)}
        callback_list.on_epoch_end(epoch, logs)
        ran += 1
        log.info("epoch %d/%d: loss %.4f, accuracy %.4f", epoch + 1, epochs, logs["loss"], logs["accuracy"])
        if float(any_worker(tf.constant(float(model.stop_training)))) > 0:
            break
    callback_list.on_train_end()
    return ran


def _phases(cfg: Config) -> list[tuple[str, int, float]]:
    """(policy, epochs, learning rate) for each training phase."""
    if cfg.fine_tune != "two_phase":
        return [(cfg.fine_tune, cfg.epochs, cfg.learning_rate)]
    return [
        ("frozen", cfg.head_epochs, cfg.learning_rate),
        ("full", cfg.epochs - cfg.head_epochs, cfg.learning_rate * cfg.fine_tune_lr_factor),
    ]
