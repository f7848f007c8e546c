"""Box-guided training (tumorclf.training.attention_prior): the outside weights on the Grad-CAM grid, the
penalty against a closed-form CAM, that it moves a model's evidence into the box, and a run with the flags."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import BLOB_CENTRE, BLOB_RADIUS, one_error_line
from tumorclf.cli.main import main
from tumorclf.errors import ConfigError
from tumorclf.explain.boxes import Boxes
from tumorclf.runs.config import Config
from tumorclf.training.attention_prior import AttentionPrior, GuidedFeatures, outside_weights
from test_fast import VGG16_FILE


def box(*corners: float) -> Boxes:
    return Boxes(np.array([corners], dtype="float64"), "test")


def plain_model(size: int) -> keras.Model:
    """A model without a `framing` layer: boxes stay fractions of the resized image."""
    inputs = keras.Input((size, size, 3))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))


def test_outside_weights_are_the_share_of_each_grid_cell_outside_the_box():
    images = np.zeros((4, 64, 64, 3), dtype="uint8")
    labels = np.array([1, 1, 0, 1])
    boxes = [box(0.0, 0.0, 0.5, 1.0), box(0.0, 0.0, 0.125, 0.25), box(0.0, 0.0, 1.0, 1.0), None]
    outside, guided = outside_weights(plain_model(64), images, labels, boxes, (4, 4))
    assert guided.tolist() == [True, True, False, False]  # a healthy slice or one without a box is not guided
    np.testing.assert_array_equal(outside[0], np.tile([0.0, 0.0, 1.0, 1.0], (4, 1)))
    expected = np.ones((4, 4))
    expected[0, 0] = 0.5  # the box covers half of the first 16-px cell
    np.testing.assert_array_equal(outside[1], expected)
    assert not outside[2:].any()


def tiny_top(channels: int = 4, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, channels))
    maps = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(maps)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="predictions")(pooled))


def test_outside_share_is_the_share_of_the_closed_form_cam_outside_the_box():
    top = tiny_top()
    guided_model = AttentionPrior(top, top.layers[0].name, "conv", 1.0)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 8, 8, 4)).astype("float32")
    outside = np.ones((3, 8, 8), dtype="float32")
    outside[:, 2:5, 2:6] = 0.0
    guided = np.array([1.0, 1.0, 0.0], dtype="float32")
    share = float(guided_model.outside_share(features, outside, guided))
    # conv -> global average pooling -> dense: Grad-CAM on the log-odds is CAM, relu(sum_k (w_k1 - w_k0) A_k)
    maps = keras.Model(top.input, top.get_layer("conv").output)(features).numpy()
    kernel = top.get_layer("predictions").kernel.numpy()
    cam = np.maximum(maps @ (kernel[:, 1] - kernel[:, 0]), 0)
    shares = (cam * outside).sum(axis=(1, 2)) / cam.sum(axis=(1, 2))
    assert share == pytest.approx(shares[:2].mean(), rel=1e-4)  # the unguided image does not count
    assert float(guided_model.outside_share(features, outside, np.zeros(3, "float32"))) == 0.0


def shortcut_features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, outside): tumour images carry a signal in the box (rows/columns 2-5 of channel 0)
    and a stronger one outside it (the top-left corner of channel 1), a shortcut."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    features = rng.normal(0, 0.3, size=(n, 8, 8, 2)).astype("float32")
    features[labels == 1, 2:6, 2:6, 0] += 1.0
    features[labels == 1, 0:2, 0:2, 1] += 3.0
    outside = np.ones((n, 8, 8), dtype="float32")
    outside[:, 2:6, 2:6] = 0.0
    return features, labels, outside


def train_top(weight: float, epochs: int = 10) -> tuple[AttentionPrior, keras.callbacks.History]:
    features, labels, outside = shortcut_features(128, seed=1)
    top = tiny_top(channels=2, seed=3)
    model = AttentionPrior(top, top.layers[0].name, "conv", weight)
    feed = GuidedFeatures([features], labels, 16, seed=0, outside=outside, guided=labels == 1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(feed, epochs=epochs, shuffle=False, verbose=0)
    return model, history


def test_the_prior_moves_the_evidence_for_a_tumour_into_its_box():
    free, _ = train_top(0.0)
    guided, guided_history = train_top(0.5)
    features, labels, outside = shortcut_features(64, seed=2)
    tumour = (labels == 1).astype("float32")
    free_share = float(free.outside_share(features, outside, tumour))
    guided_share = float(guided.outside_share(features, outside, tumour))
    assert guided_share < free_share - 0.2, (free_share, guided_share)
    assert len(guided_history.history["outside_share"]) == 10
    assert guided_history.history["outside_share"][-1] < guided_history.history["outside_share"][0]
    probs = guided.predict(features, verbose=0)  # predicting takes the features alone
    assert ((probs[:, 1] > 0.5) == labels).mean() > 0.9


def test_the_flags_are_checked_together():
    with pytest.raises(ConfigError, match="needs --boxes"):
        Config(model="vgg16", imagenet=True, recipe="fast", attention_prior=1.0)
    with pytest.raises(ConfigError, match="needs --boxes FILE.csv and a cached-feature recipe"):
        Config(model="simplecnn", attention_prior=1.0, boxes="b.csv")
    with pytest.raises(ConfigError, match="read by --attention-prior and --lesion-zoom only"):
        Config(model="vgg16", imagenet=True, recipe="fast", boxes="b.csv")
    with pytest.raises(ConfigError, match=">= 0"):
        Config(model="vgg16", imagenet=True, recipe="fast", boxes="b.csv", attention_prior=-1)
    cfg = Config(model="vgg16", imagenet=True, recipe="robust", boxes="b.csv", attention_prior=0.5)
    assert cfg.run_name.endswith("_robust_attention0.5")
    assert cfg.measures == "percentile+foreground+acquisition+attention0.5"


def write_blob_boxes(data: Path, path: Path) -> Path:
    """The blob of every tumour image as its box, as `conftest.blob_image` draws it."""
    (y, x), r = BLOB_CENTRE, BLOB_RADIUS
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "box_source", "x0", "y0", "x1", "y1"])
        for image in sorted((data / "tumor").iterdir()):
            writer.writerow([f"tumor/{image.name}", "blob", x - r, y - r, x + r, y + r])
    return path


@pytest.mark.skipif(not VGG16_FILE.is_file(), reason="shared VGG16 ImageNet weights not found")
def test_a_guided_run_logs_its_outside_share_and_records_its_box_file(blob_dataset: Path, tmp_path: Path, caplog,
                                                                      capsys):
    boxes = write_blob_boxes(blob_dataset, tmp_path / "boxes.csv")
    args = ["train", "--data", str(blob_dataset), "--out", str(tmp_path / "runs"), "--model", "vgg16",
            "--imagenet", "--weights-dir", str(VGG16_FILE.parent), "--recipe", "fast", "--feature-views", "2",
            "--epochs", "2", "--image-size", "32", "--batch-size", "8", "--boxes", str(boxes),
            "--attention-prior", "1"]
    with caplog.at_level("INFO", logger="tumorclf"):
        assert main(args) == 0
    run = tmp_path / "runs" / "vgg16_imagenet_grouped_32px_seed42_fast_attention1"
    assert "training tumour slices have a box (" in caplog.text and "Grad-CAM at block5_conv3, 2x2" in caplog.text
    with open(run / "history.csv") as handle:
        shares = [float(row["outside_share"]) for row in csv.DictReader(handle)]
    assert len(shares) == 2 and all(0 <= share <= 1 for share in shares)
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["boxes_sha256"] and resolved["boxes"] == str(boxes.resolve())
    assert keras.saving.load_model(run / "best.keras").name == "vgg16"  # the whole model, as without the prior

    # a resume with another box file is refused (the run records its box file's SHA-256)
    changed = tmp_path / "changed.csv"
    changed.write_text(boxes.read_text().replace("blob", "other", 1))
    capsys.readouterr()
    assert main([*args[:-3], str(changed), "--attention-prior", "1", "--resume"]) != 0
    assert "was started with another --boxes file" in one_error_line(capsys)

    # a box file that names no training image: one line, before any run folder is made
    other = tmp_path / "other.csv"
    other.write_text("path,x0,y0,x1,y1\nelsewhere/a.png,0.1,0.1,0.2,0.2\n")
    capsys.readouterr()
    assert main([*args[:-3], str(other), "--attention-prior", "2"]) != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "names one of the" in error
    assert not (tmp_path / "runs" / "vgg16_imagenet_grouped_32px_seed42_fast_attention2").exists()
