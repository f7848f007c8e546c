"""The fast recipe: the cut model, cached-feature batches, and a whole run on blob images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from tumorclf.cli.main import main
from tumorclf.runs.config import Config, ConfigError
from tumorclf.models.stem import split_model
from tumorclf.training.feature_cache import CachedFeatures, predict_from_features
from tumorclf.transforms.pipeline import predict_images
from tumorclf.utils.array_cache import ArrayCache
from tumorclf.models.factory import build_model
from tumorclf.models.registry import MODELS

VGG16_FILE = (Path(__file__).resolve().parents[1].parent / "shared" / "weights"
              / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "densenet121"])
def test_stem_then_top_is_the_whole_model(name):
    model = build_model(name, 32)
    stem, top = split_model(model, MODELS[name].fast_cut)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(top(stem(x)), model(x), atol=1e-5)
    # the top trains the model's own layers, and none of the stem's
    assert all(layer is model.get_layer(layer.name) for layer in top.layers[1:])
    assert not {layer.name for layer in stem.layers[1:]} & {layer.name for layer in top.layers[1:]}


def test_predictions_from_cached_features_equal_the_whole_models_and_run_the_stem_once(tmp_path: Path, caplog):
    model = build_model("vgg16", 32)
    images = np.random.default_rng(1).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    whole = predict_images(model, images, np.zeros(11, np.int64), 4, "whole")
    cache = ArrayCache(tmp_path)
    first, gflop = predict_from_features(model, MODELS["vgg16"].fast_cut, images, 4, "val", cache)
    with caplog.at_level("INFO", logger="tumorclf"):
        again, gflop_again = predict_from_features(model, MODELS["vgg16"].fast_cut, images, 4, "val", cache)
    np.testing.assert_allclose(first, whole, atol=1e-6)
    np.testing.assert_array_equal(again, first)
    assert "feature cache hit" in caplog.text and 0 < gflop_again < gflop / 10  # the second: only the top ran
    empty, none = predict_from_features(model, MODELS["vgg16"].fast_cut, images[:0], 4, "val", cache)
    assert empty.shape == (0, 2) and none == 0


def test_cached_features_shuffle_by_epoch_and_cycle_views():
    views = [np.arange(10, dtype="float32")[:, None] + 100 * v for v in range(2)]
    labels = np.array([0, 1] * 5)
    data = CachedFeatures(views, labels, batch_size=4, seed=3)
    assert len(data) == 3
    epochs = []
    for epoch in range(3):
        data.epoch.assign(epoch)
        x = np.concatenate([data[i][0] for i in range(len(data))])[:, 0]
        y = np.concatenate([data[i][1] for i in range(len(data))])
        assert sorted(x % 100) == list(range(10))  # every image once per epoch
        assert np.all(x // 100 == epoch % 2)  # the epoch's view
        np.testing.assert_array_equal(y.argmax(1), labels[(x % 100).astype(int)])  # labels follow the rows
        epochs.append((x % 100).tolist())
    assert epochs[0] != epochs[2]  # reshuffled
    data.epoch.assign(0)
    again = np.concatenate([data[i][0] for i in range(len(data))])[:, 0]
    assert again.tolist() == epochs[0]  # keyed by (seed, epoch), not by what ran before


def test_fast_recipe_needs_a_pretrained_backbone():
    with pytest.raises(ConfigError, match="add --imagenet"):
        Config(model="vgg16", recipe="fast")
    with pytest.raises(ConfigError, match="simplecnn has none"):
        Config(model="simplecnn", recipe="fast")
    with pytest.raises(ConfigError, match="drop --fine-tune"):
        Config(model="vgg16", imagenet=True, recipe="fast", fine_tune="frozen")
    assert Config(model="vgg16", imagenet=True, recipe="fast").run_name.endswith("_fast")
    with pytest.raises(ConfigError, match="recipe robust fine-tunes a pretrained backbone: add --imagenet"):
        Config(model="vgg16", recipe="robust")


@pytest.mark.skipif(not VGG16_FILE.is_file(), reason="shared VGG16 ImageNet weights not found")
def test_fast_run_trains_only_the_top_and_saves_the_whole_model(blob_dataset: Path, tmp_path: Path, caplog):
    args = ["train", "--data", str(blob_dataset), "--out", str(tmp_path / "runs"), "--name", "fast",
            "--model", "vgg16", "--imagenet", "--weights-dir", str(VGG16_FILE.parent), "--recipe", "fast",
            "--feature-views", "2", "--epochs", "2", "--image-size", "32", "--batch-size", "8",
            "--learning-rate", "0.001", "--track-test", "--deterministic"]
    assert main(args) == 0
    run = tmp_path / "runs" / "fast"
    with open(run / "history.csv") as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == 2
    minutes = [float(row["elapsed_minutes"]) for row in history]
    assert minutes == sorted(minutes) and minutes[0] > 0
    assert all(0 <= float(row["test_accuracy"]) <= 1 and 0 <= float(row["val_f1"]) <= 1 for row in history)

    model = keras.saving.load_model(run / "best.keras")
    assert model.input_shape == (None, 32, 32, 3) and len(model.layers) == len(build_model("vgg16", 32).layers)
    with h5py.File(VGG16_FILE, "r") as f:
        def file_kernel(layer: str) -> np.ndarray:
            return f[layer][f[layer].attrs["weight_names"][0]][()]

        np.testing.assert_array_equal(model.get_layer("block4_conv3").kernel.numpy(), file_kernel("block4_conv3"))
        assert not np.array_equal(model.get_layer("block5_conv3").kernel.numpy(), file_kernel("block5_conv3"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] in (1, 2) and metrics["train_minutes"] >= minutes[metrics["best_epoch"] - 1]
    assert json.loads((run / "config.json").read_text())["config"]["recipe"] == "fast"

    # the phase table, and a rerun (another run folder) that reads every feature back and gives the same run
    timing = json.loads((run / "timing.json").read_text())
    names = [phase["name"] for phase in timing["phases"]]
    assert names == ["decode", "feature cache", "epoch 1", "epoch 2", "calibration", "gate", "test"]
    assert timing["peak_gflops"] > 0 and all(0 < p["share_of_peak"] < 2 for p in timing["phases"] if p["gflop"])
    with caplog.at_level("INFO", logger="tumorclf"):
        assert main([*args[:6], "fast_again", *args[7:]]) == 0
    # the first run's calibration (val), test and gate (train) hits, then the rerun's two train views, val, test,
    # and its own calibration, test and gate hits: the frozen part never ran twice over the same images
    assert caplog.text.count("feature cache hit") == 10
    again = tmp_path / "runs" / "fast_again"
    assert (again / "test_predictions.csv").read_text() == (run / "test_predictions.csv").read_text()
    assert json.loads((again / "metrics.json").read_text())["f1"] == metrics["f1"]
    cached = {p["name"]: p for p in json.loads((again / "timing.json").read_text())["phases"]}["feature cache"]
    assert not cached["gflop"]  # the stem ran on no image (its seconds are noise at this size: not compared)
    assert {p["name"]: p for p in timing["phases"]}["feature cache"]["gflop"] > 0


def test_cached_feature_training_resumes_from_its_backup_as_if_uninterrupted(tmp_path: Path, caplog):
    """A cached-feature recipe (here the robust one: in-model framing and intensity, acquisition-augmented
    views) resumes from its backup and stays deterministic: one epoch, then a resume to two, gives the same
    history and model as two epochs straight (which reads the features the first run cached)."""
    import tensorflow as tf
    from conftest import blob_image

    from tumorclf.runs.folder import RunDir
    from tumorclf.training.loop import select_strategy, train

    tf.config.experimental.enable_op_determinism()  # as `train --deterministic` does
    rng = np.random.default_rng(3)
    labels = {name: np.arange(n) % 2 for name, n in (("train", 24), ("val", 8), ("test", 8))}
    images = {name: np.stack([blob_image(rng, 32, bool(y)) for y in y_all]) for name, y_all in labels.items()}

    def config(epochs: int) -> Config:
        return Config(model="vgg16", imagenet=True, recipe="robust", feature_views=2, epochs=epochs, image_size=32,
                      batch_size=8, learning_rate=1e-3, deterministic=True)

    def build() -> keras.Model:
        keras.utils.set_random_seed(0)
        cfg = config(1)
        return build_model("vgg16", 32, intensity=cfg.intensity, framing=cfg.framing)

    strategy = select_strategy("default")
    with caplog.at_level("INFO", logger="tumorclf"):
        first = train(config(1), RunDir(tmp_path / "resumed"), build, strategy, images, labels)
    # feature caching reports each view and its progress (a batch count when it ends)
    assert "caching view 1/2 of 24 training images" in caplog.text and "caching view 2/2" in caplog.text
    assert "features, train view 2: 3/3 batches" in caplog.text and "features, val: 1/1 batches" in caplog.text
    assert "features, test" not in caplog.text  # test features only with --track-test
    assert first.epochs_run == 1 and (tmp_path / "resumed" / "backup" / "epoch_0001.weights.h5").is_file()
    caplog.clear()
    with caplog.at_level("INFO", logger="tumorclf"):
        second = train(config(2), RunDir(tmp_path / "resumed"), build, strategy, images, labels, resume=True)
    assert "resuming after epoch 1" in caplog.text
    assert second.epochs_run == 2 and second.train_seconds > first.train_seconds
    assert json.loads((tmp_path / "resumed" / "progress.json").read_text())["epochs_done"] == 2
    train(config(2), RunDir(tmp_path / "straight"), build, strategy, images, labels)

    def history(run: str) -> list[dict]:
        with open(tmp_path / run / "history.csv") as handle:
            return [{k: v for k, v in row.items() if k != "elapsed_minutes"} for row in csv.DictReader(handle)]

    assert len(history("straight")) == 2 and history("resumed") == history("straight")
    straight, resumed = (keras.saving.load_model(tmp_path / run / "best.keras") for run in ("straight", "resumed"))
    assert {"framing", "intensity"} <= {layer.name for layer in straight.layers}
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
