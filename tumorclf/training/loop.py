"""Precision and distribution choices, and the one training loop.

Every recipe is a list of phases (trainable layers, optimizer, learning rate, epochs) over one fitted
model and one input feed: `paper` fits the whole model on image batches under a fine-tuning policy
(full, frozen, from_layer, or two_phase: frozen then full), `fast` fits the top of the model on cached
stem features (`tumorclf.training.feature_cache`). Every phase runs on one backend, Keras `fit` or the multi-worker loop,
with the same callbacks (`tumorclf.training.callbacks`): one validation pass per epoch, the same history
columns, the same resume state.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from tumorclf.training.callbacks import Clock, EpochBackup, EpochSeeding, HeldOutCurve, HistoryWriter, Validation, keep_history
from tumorclf.explain.boxes import Boxes
from tumorclf.runs.config import Config
from tumorclf.training.attention_prior import guide
from tumorclf.training.conv_gradient import use_forward_input_gradients
from tumorclf.models.flops import forward_flops
from tumorclf.models.stem import split_model
from tumorclf.training.feature_cache import CachedFeatures, cache_features
from tumorclf.training.timing import EpochTimes, PhaseTimes
from tumorclf.models.factory import set_trainable
from tumorclf.transforms.pipeline import make_dataset, make_train_dataset
from tumorclf.models.registry import MODELS
from tumorclf.runs.folder import RunDir

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
    `tumorclf bench` measured every model faster (docs/performance.md, "Precision"); float32 otherwise.
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
                             "and of this worker's task (see docs/training.md)")
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


def compile_model(model: keras.Model, learning_rate: float, momentum: float, jit_compile: bool = False,
                  optimizer: str = "sgd", forward_input_gradients: bool = True) -> None:
    """Categorical cross-entropy on one-hot labels, with SGD and momentum (the paper's recipe) or Adam
    (`optimizer="adam"`: the fast recipe, which on cached features converges in a few epochs).
    `jit_compile`: XLA for the train step (optional: `tumorclf bench --jit-compile` measures it).
    `forward_input_gradients`: convolutions' input gradients as forward convolutions on CPU
    (`training.conv_gradient`: the same gradients, faster; `tumorclf bench --conv-input-gradient` compares)."""
    if forward_input_gradients:
        use_forward_input_gradients(model)
    if optimizer == "adam":
        chosen = keras.optimizers.Adam(learning_rate=learning_rate)
    else:
        chosen = keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)
    model.compile(optimizer=chosen, loss="categorical_crossentropy", metrics=["accuracy"], jit_compile=jit_compile)


@dataclass(frozen=True)
class Phase:
    """Consecutive epochs trained with one set of trainable layers and one optimizer."""

    policy: str  # the `models.set_trainable` policy, applied to the fitted model
    epochs: int
    learning_rate: float
    optimizer: str = "sgd"


def phases(cfg: Config) -> list[Phase]:
    """The recipe as phases. The fast recipe fits only the model's top (last stage and head), all of it."""
    if cfg.cached_features:
        return [Phase("full", cfg.epochs, cfg.learning_rate, "adam")]
    if cfg.fine_tune == "two_phase":
        return [Phase("frozen", cfg.head_epochs, cfg.learning_rate),
                Phase("full", cfg.epochs - cfg.head_epochs, cfg.learning_rate * cfg.fine_tune_lr_factor)]
    return [Phase(cfg.fine_tune, cfg.epochs, cfg.learning_rate)]


@dataclass
class Feed:
    """What the loop reads: training batches whose order and augmentation are keyed by `epoch`
    (see `callbacks.EpochSeeding`), and the held-out sets as (inputs for `model.predict`, labels)."""

    batches: tf.data.Dataset | keras.utils.PyDataset
    epoch: tf.Variable
    augmentation: keras.Sequential | None
    val: tuple[Any, np.ndarray]
    test: tuple[Any, np.ndarray] | None  # only with --track-test


def prepare(cfg: Config, strategy: tf.distribute.Strategy, model: keras.Model, images: dict[str, np.ndarray],
            labels: dict[str, np.ndarray], times: PhaseTimes, boxes: Sequence[Boxes | None] | None = None
            ) -> tuple[keras.Model, Feed]:
    """The model to fit and its feed: the whole model on image batches, or (fast recipe) its top on the
    stem's cached features, so the frozen stem runs once per image and view instead of every epoch; with
    `cfg.attention_prior`, the top trained against Grad-CAM outside the `boxes` (`training.attention_prior`); with
    `cfg.lesion_zoom`, augmented views zoomed around them (`transforms.lesion_zoom`)."""
    held_out = ("val", "test") if cfg.track_test else ("val",)
    if cfg.cached_features:
        with strategy.scope():
            stem, top = split_model(model, MODELS[cfg.model].fast_cut)
        with times.phase("feature cache") as phase:
            views, features, computed = cache_features(cfg, stem, images, held_out, boxes)
            phase.gflop = computed * forward_flops(stem) / 1e9
        held = {name: (features[name], labels[name]) for name in held_out}
        if cfg.attention_prior:
            with strategy.scope():
                top, cached = guide(model, MODELS[cfg.model].fast_cut, views, images["train"], labels["train"],
                                    boxes, cfg.batch_size, cfg.seed, cfg.attention_prior)
        else:
            cached = CachedFeatures(views, labels["train"], cfg.batch_size, cfg.seed)
        return top, Feed(cached, cached.epoch, cached.augmentation, held["val"], held.get("test"))
    data = make_train_dataset(images["train"], labels["train"], cfg.batch_size, cfg.seed, cfg.augment,
                              cfg.deterministic, cfg.acquisition, cfg.elastic)
    held = {name: (make_dataset(images[name], labels[name], cfg.batch_size), labels[name]) for name in held_out}
    return model, Feed(data.dataset, data.epoch, data.augmentation, held["val"], held.get("test"))


@dataclass
class TrainResult:
    best_checkpoint: Path
    best_epoch: int | None
    best_val_f1: float
    epochs_run: int
    train_seconds: float  # including earlier, interrupted processes of the same run


@dataclass
class RunState:
    """Where a run stands after its completed epochs, as `progress.json` records it (a new run: nothing done)."""

    epochs_done: int = 0
    backup: Path | None = None  # weights and optimizer state of the fitted model after the last epoch
    best_val_f1: float = -np.inf
    best_epoch: int | None = None
    stopped_early: bool = False
    train_seconds: float = 0.0

    @classmethod
    def read(cls, run: RunDir) -> RunState:
        progress = run.progress()
        if not progress:
            return cls()
        return cls(progress["epochs_done"], run.backup_dir / progress["backup"], progress["best_val_f1"],
                   progress["best_epoch"], progress.get("stopped_early", False), progress.get("train_seconds", 0.0))


def train(
    cfg: Config,
    run: RunDir,
    build: Callable[[], keras.Model],
    strategy: tf.distribute.Strategy,
    images: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    resume: bool = False,
    times: PhaseTimes | None = None,
    boxes: Sequence[Boxes | None] | None = None,
) -> TrainResult:
    """Train `cfg`'s recipe on the train/val(/test) `images` and `labels`, keeping the best whole model by
    validation F1 at `run.best_model`: the one entry point of every recipe and backend.

    With `resume`, continue after the last epoch recorded in `progress.json`, with its weights and
    optimizer state; a run that had done its epochs, stopped early or run out of time returns at once.
    `boxes`: the training images' tumour boxes, for `cfg.attention_prior` and `cfg.lesion_zoom`.
    """
    state = RunState.read(run) if resume else RunState()
    clock = Clock(state.train_seconds, cfg.max_minutes)  # building and the fast recipe's caching count too
    if resume:  # drop history rows of an epoch that did not complete (progress.json names the last that did)
        keep_history(run.history_file, state.epochs_done)
    if state.epochs_done:
        log.info("resuming after epoch %d (best val_f1 %.4f at epoch %s)", state.epochs_done, state.best_val_f1,
                 state.best_epoch)
        if state.stopped_early or state.epochs_done >= cfg.epochs or clock.expired:
            return TrainResult(run.best_model, state.best_epoch, state.best_val_f1, state.epochs_done, clock.seconds)
    with strategy.scope():
        model = build()
    times = PhaseTimes() if times is None else times
    fitted, feed = prepare(cfg, strategy, model, images, labels, times, boxes)
    validation = Validation(*feed.val, run.best_model, model, cfg.patience, state.best_val_f1, state.best_epoch)
    step_flops = forward_flops(fitted)  # per image; a training step costs about three forward passes
    epoch_gflop = (3 * len(labels["train"]) + len(labels["val"])) * step_flops / 1e9
    callbacks = [
        EpochSeeding(cfg.seed, feed),
        validation,  # before the writers, so they see its val_ metrics
        EpochTimes(times, epoch_gflop),
        *([HeldOutCurve(*feed.test)] if feed.test else []),
        clock,
        HistoryWriter(run.history_file),
        keras.callbacks.TensorBoard(log_dir=str(run.tensorboard_dir), write_graph=False),
        EpochBackup(run, validation, clock),  # last: marks the epoch complete
    ]
    done = fit_phases(cfg, fitted, strategy, feed.batches, callbacks, state,
                      finished=lambda: validation.stopped or clock.expired)
    return TrainResult(run.best_model, validation.best_epoch, float(validation.best_f1), done, clock.seconds)


def fit_phases(cfg: Config, model: keras.Model, strategy: tf.distribute.Strategy,
               batches: tf.data.Dataset | keras.utils.PyDataset, callbacks: list[keras.callbacks.Callback],
               state: RunState, finished: Callable[[], bool]) -> int:
    """Run the recipe's phases that `state` has not done, until `finished()` after an epoch. Each phase sets
    the trainable layers and compiles its optimizer; a backup restores the weights at a phase boundary,
    and the optimizer state too inside a phase. Returns the number of completed epochs."""
    done, backup, start = state.epochs_done, state.backup, 0
    for phase in phases(cfg):
        end = start + phase.epochs
        if done < end and not (done > 0 and finished()):
            first = max(start, done)
            with strategy.scope():
                if backup is not None and done == start:  # at a phase boundary: weights only
                    model.load_weights(backup)
                    backup = None
                trainable = set_trainable(model, phase.policy, cfg.unfreeze_from)
                log.info("phase %s: %d layers with weights trainable, %s lr %g, epochs %d-%d", phase.policy,
                         trainable, phase.optimizer, phase.learning_rate, first + 1, end)
                compile_model(model, phase.learning_rate, cfg.momentum, cfg.jit_compile, phase.optimizer)
                if backup is not None:  # inside this phase: weights and optimizer state
                    model.optimizer.build(model.trainable_variables)
                    model.load_weights(backup)
                    backup = None
                if is_multiworker(strategy):
                    ran = fit_multiworker(model, strategy, batches, first, end, callbacks)
                else:
                    ran = fit_keras(model, batches, first, end, callbacks)
            done = first + ran
        start = end
    return done


def fit_keras(model: keras.Model, batches: tf.data.Dataset | keras.utils.PyDataset, initial_epoch: int,
              epochs: int, callbacks: list[keras.callbacks.Callback]) -> int:
    """Keras' own fit, without `validation_data`: the `Validation` callback is the epoch's one validation
    pass. No shuffling: the feed orders each epoch by (seed, epoch). Returns the number of epochs run."""
    history = model.fit(batches, initial_epoch=initial_epoch, epochs=epochs, callbacks=callbacks, shuffle=False,
                        verbose=2)
    return len(history.epoch)


def fit_multiworker(model: keras.Model, strategy: tf.distribute.Strategy, dataset: tf.data.Dataset,
                    initial_epoch: int, epochs: int, callbacks: list[keras.callbacks.Callback]) -> int:
    """`Model.fit` for MultiWorkerMirroredStrategy, which Keras 3's own fit does not support
    (keras-team/keras#20585): a tf.function step under `strategy.run`, the global batch split across
    workers, the loss averaged over the global batch and gradients all-reduced by the optimizer.
    It logs the epoch's loss and accuracy; the callbacks (the same as with `fit_keras`) add the rest.
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
        loss_sum, hits, seen = 0.0, 0.0, 0.0
        for x, y in distributed:
            loss, batch_hits, batch_seen = train_step(x, y)
            # the replica losses are means over the global batch: weight by its size, as Keras' fit does
            loss_sum += float(loss) * float(batch_seen)
            hits, seen = hits + float(batch_hits), seen + float(batch_seen)
        logs = {"accuracy": hits / max(seen, 1.0), "loss": loss_sum / max(seen, 1.0)}
        callback_list.on_epoch_end(epoch, logs)
        ran += 1
        log.info("epoch %d/%d: loss %.4f, accuracy %.4f", epoch + 1, epochs, logs["loss"], logs["accuracy"])
        if float(any_worker(tf.constant(float(model.stop_training)))) > 0:
            break
    callback_list.on_train_end()
    return ran
