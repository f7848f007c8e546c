from __future__ import annotations

import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tumorclf.export import export_run, main


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_run(trained_run, tmp_path_factory.mktemp("export") / "model", measure=64)


def test_both_signatures_match_the_keras_model(exported: Path, trained_run: Path):
    model = keras.saving.load_model(trained_run / "best.keras")
    loaded = tf.saved_model.load(str(exported))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    expected = model.predict(images.astype("float32"), verbose=0)

    serve = loaded.signatures["serve"]
    (out,) = serve(images=tf.constant(images.astype("float32"))).values()
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)

    pngs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    (out,) = loaded.signatures["serve_bytes"](image_bytes=tf.constant(pngs)).values()
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_bytes_signature_resizes_other_sizes(exported: Path):
    buffer = io.BytesIO()
    Image.new("L", (100, 70), 128).save(buffer, format="JPEG")
    (out,) = tf.saved_model.load(str(exported)).signatures["serve_bytes"](
        image_bytes=tf.constant([buffer.getvalue()])).values()
    assert out.shape == (1, 2) and np.isclose(out.numpy().sum(), 1, atol=1e-5)


def test_model_card_and_files(exported: Path, trained_run: Path):
    card = json.loads((exported / "model_card.json").read_text())
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert card["test_metrics"]["accuracy"] == metrics["accuracy"]
    assert card["split_protocol"] == "grouped" and card["threshold"] == 0.5
    assert card["weights_origin"].startswith("random") and "keras" in card["versions"]
    assert card["inference_speed"]["saved_model_img_per_s"] > 0
    assert (exported / "MODEL_CARD.md").read_text().startswith("# Model card: simplecnn")
    assert (exported / "model.keras").is_file() and (exported / "saved_model.pb").is_file()


def test_export_refuses_to_overwrite_and_unfinished_runs(exported: Path, trained_run: Path, tmp_path: Path, capsys):
    assert main(["--run", str(trained_run), "--out", str(exported)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["--run", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a finished run" in capsys.readouterr().err
