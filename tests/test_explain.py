from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BLOB_CENTRE, BLOB_RADIUS, blob_image
from tumorclf.cli import main as run_main
from tumorclf.explain import heatmaps, load_run_model, main, target_layer
from tumorclf.models import build_model

EXPECTED_LAYER = {"simplecnn": "relu3", "vgg16": "block5_conv3", "resnet50": "conv5_block3_out",
                  "resnet101": "conv5_block3_out", "resnet152": "conv5_block3_out", "densenet121": "relu"}


@pytest.mark.parametrize("name, method", [("simplecnn", "gradcam"), ("simplecnn", "gradcam++"),
                                          ("simplecnn", "scorecam"), ("vgg16", "gradcam"),
                                          ("resnet50", "gradcam"), ("densenet121", "gradcam++")])
def test_heatmap_shape_and_range_for_every_family(name, method):
    model = build_model(name, 64)
    assert target_layer(model) == EXPECTED_LAYER[name]
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    cams = heatmaps(model, images, np.array([1, 0, 1]), method)
    assert cams.shape == (3, 64, 64) and np.isfinite(cams).all()
    assert cams.min() >= 0 and cams.max() <= 1


def test_named_layer_and_bad_layer():
    model = build_model("simplecnn", 32)
    assert target_layer(model, "relu2") == "relu2"
    with pytest.raises(ValueError):
        target_layer(model, "nope")


def test_gradcam_of_a_trained_model_points_at_the_tumour(trained_run: Path):
    model = load_run_model(trained_run)
    rng = np.random.default_rng(123)
    images = np.stack([blob_image(rng, 48, True) for _ in range(12)])
    assert (model.predict(images.astype("float32"), verbose=0)[:, 1] >= 0.5).mean() >= 0.75
    cams = heatmaps(model, images, np.ones(12, int))
    yy, xx = np.mgrid[:48, :48] / 48
    inside = (yy - BLOB_CENTRE[0]) ** 2 + (xx - BLOB_CENTRE[1]) ** 2 < BLOB_RADIUS**2
    mass_inside = cams[:, inside].sum() / cams.sum()
    # a uniform map puts inside.mean() (about 4.5%) of its mass in the blob
    assert mass_inside > 3 * inside.mean(), (mass_inside, inside.mean())


def test_explain_command_writes_overlays_and_comparison(trained_run: Path, tmp_path: Path):
    images = trained_run.parents[1] / "data"
    files = sorted((images / "tumor").iterdir())[:2] + [tmp_path / "broken.png"]
    files[-1].write_bytes(b"nope")
    assert main(["--run", str(trained_run), "--images", *map(str, files), "--out", str(tmp_path / "one")]) == 0
    written = sorted((tmp_path / "one").glob("*.png"))
    assert len(written) == 2 and Image.open(written[0]).size[0] > 300
    assert main(["--runs", str(trained_run), str(trained_run), "--images", str(images / "healthy"), "--limit", "1",
                 "--method", "gradcam++", "--out", str(tmp_path / "cmp")]) == 0
    assert len(list((tmp_path / "cmp").glob("compare_*_gradcam++.png"))) == 1
    assert main(["--run", str(tmp_path), "--images", str(files[0]), "--out", str(tmp_path / "x")]) == 2


def test_run_saves_outcome_overlays_when_asked(blob_dataset: Path, tmp_path: Path):
    args = ["--data", str(blob_dataset), "--output", str(tmp_path), "--name", "g", "--epochs", "1",
            "--image-size", "32", "--batch-size", "8", "--gradcam", "1"]
    assert run_main(args) == 0
    names = [p.name.split("_")[0] for p in (tmp_path / "g" / "gradcam").glob("*.png")]
    assert 1 <= len(names) <= 4 and set(names) <= {"TP", "FP", "FN", "TN"}


def test_mixed_precision_models_are_explained_in_float32():
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model("vgg16", 32)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    cams = heatmaps(model, images, np.array([1, 0]))
    assert cams.dtype == np.float32 and cams.shape == (2, 32, 32) and 0 <= cams.min() <= cams.max() <= 1
    assert model.get_layer("block1_conv1").compute_dtype == "bfloat16"  # the caller's model is untouched
