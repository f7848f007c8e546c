from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tumorclf.config import Config
from tumorclf.models import build_model
from tumorclf.pipeline import make_dataset, make_train_dataset
from tumorclf.training import (
    Clock,
    F1Checkpoint,
    HeldOutCurve,
    _phases,
    select_precision,
    select_strategy,
    train,
)


def tiny_classifier() -> keras.Model:
    inputs = keras.Input((1,))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))


def set_behaviour(model: keras.Model, kind: str) -> None:
    """'tumor': always predicts Tumor; 'right': predicts the sign of x; 'wrong': the opposite."""
    kernel = {"tumor": [[0, 0]], "right": [[-5, 5]], "wrong": [[5, -5]]}[kind]
    bias = [0, 1] if kind == "tumor" else [0, 0]
    model.layers[-1].set_weights([np.array(kernel, "float32"), np.array(bias, "float32")])


def test_f1_checkpoint_saves_only_on_improvement(tmp_path: Path):
    x = np.array([[-1], [1], [-1], [1]], "float32")
    labels = np.array([0, 1, 0, 1])
    model = tiny_classifier()
    callback = F1Checkpoint(tf.data.Dataset.from_tensor_slices(x).batch(2), labels, tmp_path / "best.keras")
    callback.set_model(model)
    seen = []
    for epoch, kind in enumerate(["tumor", "right", "wrong", "tumor"]):
        set_behaviour(model, kind)
        logs: dict = {}
        callback.on_epoch_end(epoch, logs)
        seen.append((round(logs["val_f1"], 4), callback.best_epoch))
    # all-tumor: P=0.5 R=1 F1=2/3; right: 1.0; wrong: 0.0; all-tumor again: no save
    assert seen == [(0.6667, 1), (1.0, 2), (0.0, 2), (0.6667, 2)]
    saved = keras.saving.load_model(tmp_path / "best.keras")
    assert np.argmax(saved.predict(x, verbose=0), axis=1).tolist() == [0, 1, 0, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["best.keras"]  # no partial files left


def test_select_precision():
    assert select_precision("float32", gpus=1) == "float32"
    assert select_precision("auto", gpus=2) == "mixed_float16"
    assert select_precision("auto", gpus=0, bf16_cpu=True) == "mixed_bfloat16"
    assert select_precision("auto", gpus=0, bf16_cpu=False) == "float32"


def test_select_strategy(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert select_strategy("default") is tf.distribute.get_strategy()
    assert select_strategy("auto") is tf.distribute.get_strategy()  # no GPUs here
    assert select_strategy("mirrored").num_replicas_in_sync == 2  # two logical CPUs (conftest)
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        select_strategy("multiworker")


def test_phases():
    assert _phases(Config(epochs=5)) == [("full", 5, 1e-4)]
    assert _phases(Config(model="vgg16", epochs=5, fine_tune="two_phase", head_epochs=2, learning_rate=1e-3)) == [
        ("frozen", 2, 1e-3), ("full", 3, pytest.approx(1e-4))]


def blob_arrays(n: int, size: int = 32, seed: int = 0):
    from conftest import blob_image

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    return np.stack([blob_image(rng, size, bool(y)) for y in labels]), labels


@pytest.mark.parametrize("strategy, fine_tune", [("mirrored", "full"), ("default", "two_phase")])
def test_train_writes_history_and_best_checkpoint(tmp_path: Path, strategy: str, fine_tune: str):
    images, labels = blob_arrays(48)
    cfg = Config(epochs=3, image_size=32, batch_size=8, learning_rate=1e-2, fine_tune=fine_tune, head_epochs=1)
    train_ds = make_train_dataset(images[:32], labels[:32], 8, seed=0)
    val_ds = make_dataset(images[32:], labels[32:], 8)
    result = train(cfg, lambda: build_model("simplecnn", 32), select_strategy(strategy), train_ds, val_ds,
                   labels[32:], tmp_path)
    assert result.epochs_run == 3 and result.best_checkpoint.is_file()
    with open(tmp_path / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert max(float(r["val_f1"]) for r in rows) == pytest.approx(result.best_val_f1)
    assert any((tmp_path / "tensorboard").rglob("events.out.tfevents*"))


def test_patience_stops_training_early(tmp_path: Path):
    images, labels = blob_arrays(32)
    cfg = Config(epochs=6, image_size=32, batch_size=8, learning_rate=1e-12, patience=2, augment=False)

    def frozen_in_place() -> keras.Model:  # no batch norm, negligible steps: val F1 cannot change
        inputs = keras.Input((32, 32, 3))
        pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(inputs)
        return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="predictions")(pooled))

    result = train(cfg, frozen_in_place, select_strategy("default"),
                   make_train_dataset(images[:16], labels[:16], 8, seed=0), make_dataset(images[16:], labels[16:], 8),
                   labels[16:], tmp_path)
    assert result.best_epoch == 1 and result.epochs_run == 3
    assert json.loads((tmp_path / "progress.json").read_text())["stopped_early"] is True


def test_time_limit_stops_training_and_holds_on_resume(tmp_path: Path):
    images, labels = blob_arrays(32)
    cfg = Config(epochs=5, image_size=32, batch_size=8, max_minutes=1e-6, track_test=True)
    args = (lambda: build_model("simplecnn", 32), select_strategy("default"),
            make_train_dataset(images[:16], labels[:16], 8, seed=0), make_dataset(images[16:], labels[16:], 8),
            labels[16:], tmp_path)
    result = train(cfg, *args, test=(make_dataset(images[16:], labels[16:], 8), labels[16:]))
    assert result.epochs_run == 1 and result.train_seconds > 0
    with open(tmp_path / "history.csv") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["elapsed_minutes"]) > 0 and "test_accuracy" in row
    assert train(cfg, *args, resume=True).epochs_run == 1  # the spent budget is remembered


def test_clock_and_test_tracker_logs():
    clock = Clock(seconds_before=120.0, limit_minutes=3)
    clock.set_model(tiny_classifier())
    clock.model.stop_training = False
    logs: dict = {}
    clock.on_epoch_end(0, logs)
    assert 2.0 <= logs["elapsed_minutes"] < 2.1 and not clock.model.stop_training
    clock.seconds_before = 180.0
    clock.on_epoch_end(1, logs)
    assert clock.model.stop_training

    x = np.array([[-1], [1], [-1], [1]], "float32")
    model = tiny_classifier()
    set_behaviour(model, "right")
    tracker = HeldOutCurve(x, np.array([0, 1, 1, 1]))
    tracker.set_model(model)
    tracker.on_epoch_end(0, logs)
    assert logs["test_accuracy"] == 0.75 and logs["test_f1"] == pytest.approx(0.8)
