from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tumorclf.training.callbacks import HISTORY_COLUMNS, Clock, HeldOutCurve, HistoryWriter, Validation, keep_history
from tumorclf.runs.config import Config
from tumorclf.metrics.classification import classification_metrics
from tumorclf.models.factory import build_model
from tumorclf.runs.folder import RunDir
from tumorclf.training.loop import Phase, phases, select_precision, select_strategy, train


def tiny_classifier() -> keras.Model:
    inputs = keras.Input((1,))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))


def set_behaviour(model: keras.Model, kind: str) -> None:
    """'tumor': always predicts Tumor; 'right': predicts the sign of x; 'wrong': the opposite."""
    kernel = {"tumor": [[0, 0]], "right": [[-5, 5]], "wrong": [[5, -5]]}[kind]
    bias = [0, 1] if kind == "tumor" else [0, 0]
    model.layers[-1].set_weights([np.array(kernel, "float32"), np.array(bias, "float32")])


def read_history(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_validation_logs_one_pass_of_scores_and_saves_only_on_improvement(tmp_path: Path):
    x = np.array([[-1], [1], [-1], [1]], "float32")
    labels = np.array([0, 1, 0, 1])
    model = tiny_classifier()
    callback = Validation(tf.data.Dataset.from_tensor_slices(x).batch(2), labels, tmp_path / "best.keras", model)
    callback.set_model(model)
    seen = []
    for epoch, kind in enumerate(["tumor", "right", "wrong", "tumor"]):
        set_behaviour(model, kind)
        logs: dict = {}
        callback.on_epoch_end(epoch, logs)
        assert set(logs) == {"val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1"}
        expected = classification_metrics(labels, model.predict(x, verbose=0))
        assert logs["val_loss"] == pytest.approx(expected["test_loss"])
        assert logs["val_accuracy"] == expected["accuracy"]
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


def test_recipes_as_phases():
    assert phases(Config(epochs=5)) == [Phase("full", 5, 1e-4)]
    assert phases(Config(epochs=5, fine_tune="from_layer", unfreeze_from="conv3")) == [Phase("from_layer", 5, 1e-4)]
    assert phases(Config(model="vgg16", epochs=5, fine_tune="two_phase", head_epochs=2, learning_rate=1e-3)) == [
        Phase("frozen", 2, 1e-3), Phase("full", 3, pytest.approx(1e-4))]
    assert phases(Config(model="vgg16", imagenet=True, recipe="fast", epochs=4, learning_rate=1e-3)) == [
        Phase("full", 4, 1e-3, "adam")]


def blob_arrays(n: int, size: int = 32, seed: int = 0):
    from conftest import blob_image

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    return np.stack([blob_image(rng, size, bool(y)) for y in labels]), labels


def subsets(images: np.ndarray, labels: np.ndarray, train: int, val: int) -> tuple[dict, dict]:
    """train/val/test dicts of consecutive rows."""
    bounds = {"train": slice(0, train), "val": slice(train, train + val), "test": slice(train + val, None)}
    return {k: images[s] for k, s in bounds.items()}, {k: labels[s] for k, s in bounds.items()}


@pytest.mark.parametrize("strategy, fine_tune", [("mirrored", "full"), ("default", "two_phase")])
def test_train_writes_history_and_best_checkpoint(tmp_path: Path, strategy: str, fine_tune: str):
    images, labels = subsets(*blob_arrays(48), 32, 16)
    cfg = Config(epochs=3, image_size=32, batch_size=8, learning_rate=1e-2, fine_tune=fine_tune, head_epochs=1)
    result = train(cfg, RunDir(tmp_path), lambda: build_model("simplecnn", 32), select_strategy(strategy), images,
                   labels)
    assert result.epochs_run == 3 and result.best_checkpoint == tmp_path / "best.keras"
    assert result.best_checkpoint.is_file()
    header, rows = read_history(tmp_path / "history.csv")
    assert header == list(HISTORY_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert max(float(r["val_f1"]) for r in rows) == pytest.approx(result.best_val_f1)
    assert all(r["val_loss"] and r["val_accuracy"] and not r["test_accuracy"] for r in rows)  # no --track-test
    assert any((tmp_path / "tensorboard").rglob("events.out.tfevents*"))


def test_patience_stops_training_early(tmp_path: Path):
    images, labels = subsets(*blob_arrays(40), 16, 16)
    cfg = Config(epochs=6, image_size=32, batch_size=8, learning_rate=1e-12, patience=2, augment=False)

    def frozen_in_place() -> keras.Model:  # no batch norm, negligible steps: val F1 cannot change
        inputs = keras.Input((32, 32, 3))
        pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(inputs)
        return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="predictions")(pooled))

    result = train(cfg, RunDir(tmp_path), frozen_in_place, select_strategy("default"), images, labels)
    assert result.best_epoch == 1 and result.epochs_run == 3
    assert json.loads((tmp_path / "progress.json").read_text())["stopped_early"] is True


def test_time_limit_stops_training_and_holds_on_resume(tmp_path: Path):
    images, labels = subsets(*blob_arrays(40), 16, 16)
    cfg = Config(epochs=5, image_size=32, batch_size=8, max_minutes=1e-6, track_test=True)
    args = (cfg, RunDir(tmp_path), lambda: build_model("simplecnn", 32), select_strategy("default"), images, labels)
    result = train(*args)
    assert result.epochs_run == 1 and result.train_seconds > 0
    _, rows = read_history(tmp_path / "history.csv")
    assert float(rows[0]["elapsed_minutes"]) > 0 and 0 <= float(rows[0]["test_accuracy"]) <= 1
    assert train(*args, resume=True).epochs_run == 1  # the spent budget is remembered


def test_history_keeps_the_completed_epochs_under_the_fixed_columns(tmp_path: Path):
    path = tmp_path / "history.csv"
    writer = HistoryWriter(path)
    for epoch in range(3):
        writer.on_epoch_end(epoch, {"loss": 0.5, "accuracy": 0.75, "val_f1": 0.8, "elapsed_minutes": epoch,
                                    "not_a_column": 1.0})
    with open(path, "a") as handle:
        handle.write("3,0.4,0.")  # a row cut short by a crash
    keep_history(path, 2)
    header, rows = read_history(path)
    assert header == list(HISTORY_COLUMNS) and [r["epoch"] for r in rows] == ["0", "1"]
    assert rows[1]["loss"] == "0.5" and rows[1]["val_loss"] == "" and rows[1]["elapsed_minutes"] == "1.0"

    # a history written by Keras' CSVLogger (an older tumorclf): its columns in alphabetical order
    path.write_text("epoch,accuracy,elapsed_minutes,loss,val_accuracy,val_f1\n0,0.5,1.0,0.7,0.6,0.5\n"
                    "1,0.6,2.0,0.6,0.7,0.6\n")
    keep_history(path, 1)
    writer.on_epoch_end(1, {"loss": 0.5})
    header, rows = read_history(path)
    assert header == list(HISTORY_COLUMNS) and [r["epoch"] for r in rows] == ["0", "1"]
    assert (rows[0]["loss"], rows[0]["val_accuracy"], rows[1]["loss"]) == ("0.7", "0.6", "0.5")


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
