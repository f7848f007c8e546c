from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import blob_image
from tumorclf import decoder, export
from tumorclf.cli import main
from tumorclf.export import export_run, export_saved_model, replace_folder
from tumorclf.rundir import RunDir, RunExistsError


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_run(trained_run, tmp_path_factory.mktemp("export") / "model", measure=64)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def serve_bytes(saved_model: Path, blobs: list[bytes]) -> np.ndarray:
    (out,) = tf.saved_model.load(str(saved_model)).signatures["serve_bytes"](image_bytes=tf.constant(blobs)).values()
    return out.numpy()


def test_both_signatures_match_the_keras_model(exported: Path, trained_run: Path):
    model = keras.saving.load_model(trained_run / "best.keras")
    loaded = tf.saved_model.load(str(exported))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    expected = model.predict(images.astype("float32"), verbose=0)

    (out,) = loaded.signatures["serve"](images=tf.constant(images.astype("float32"))).values()
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    # model-sized lossless files: the resize is an identity, so serve_bytes sees the same pixels
    np.testing.assert_allclose(serve_bytes(exported, [encoded(Image.fromarray(i), "PNG") for i in images]),
                               expected, atol=1e-5)


# (height, width): smaller and larger than the model's 48 px, square and not
SHAPES = [(20, 28), (48, 48), (37, 100), (64, 64), (160, 120), (300, 700), (512, 384)]
FORMATS = {  # name: (extension, Pillow format, how the pixels are stored)
    "jpeg-rgb": (".jpg", "JPEG", "RGB"),
    "jpeg-gray": (".jpg", "JPEG", "L"),
    "png-rgb": (".png", "PNG", "RGB"),
    "png-gray": (".png", "PNG", "L"),
    "png-rgba": (".png", "PNG", "RGBA"),
    "gif": (".gif", "GIF", "P"),
    "bmp": (".bmp", "BMP", "RGB"),
}


def write_inputs(folder: Path) -> list[Path]:
    """Slices of every format and shape: tumour and healthy, tinted so RGB differs from gray, RGBA with a
    partly transparent ramp."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    files = []
    for i, (height, width) in enumerate(SHAPES):
        for j, (name, (suffix, fmt, mode)) in enumerate(FORMATS.items()):
            square = blob_image(rng, max(height, width), tumor=bool((i + j) % 2))
            tinted = (square * np.array([1.0, 0.85, 0.7])).astype(np.uint8)
            image = Image.fromarray(tinted).resize((width, height), Image.Resampling.BICUBIC)
            if mode == "RGBA":
                alpha = np.tile(np.linspace(60, 255, width, dtype=np.uint8), (height, 1))
                image = Image.fromarray(np.dstack([np.asarray(image), alpha]))
            elif mode == "P":
                image = image.quantize(128)
            else:
                image = image.convert(mode)
            path = folder / f"{height}x{width}-{name}{suffix}"
            path.write_bytes(encoded(image, fmt))
            files.append(path)
    return files


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A freshly initialised SimpleCNN (probabilities far from 0 and 1): its .keras file and SavedModel."""
    from tumorclf.models import build_model

    keras.utils.set_random_seed(3)
    model = build_model("simplecnn", 48)
    folder = tmp_path_factory.mktemp("untrained")
    model.save(folder / "model.keras")
    export_saved_model(model, folder / "saved")
    return folder / "model.keras", folder / "saved"


@pytest.mark.parametrize("which", ["trained", "untrained"])
def test_serve_bytes_matches_tumorclf_predict(which: str, exported: Path, trained_run: Path, untrained, tmp_path: Path):
    """The parity of the two serving paths: encoded bytes decoded in the graph give the P(tumour) that
    `tumorclf predict` gives on the same files, for every format and size."""
    keras_file, saved = (trained_run / "best.keras", exported) if which == "trained" else untrained
    files = write_inputs(tmp_path / "inputs")
    out = tmp_path / "preds.json"
    for model in (keras_file, saved):  # predict with the .keras model and with the SavedModel's `serve`
        assert main(["predict", "--model", str(model), str(tmp_path / "inputs"), "--out", str(out)]) == 0
        rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
        assert len(rows) == len(files) and not any(r["error"] for r in rows.values())
        predicted = np.array([rows[f.name]["prob_tumor"] for f in files])
        served = serve_bytes(saved, [f.read_bytes() for f in files])[:, 1]
        worst = int(np.argmax(np.abs(served - predicted)))
        assert abs(served[worst] - predicted[worst]) <= 1e-3, (files[worst].name, served[worst], predicted[worst])


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda a: encoded(Image.fromarray(a), "TIFF"), "TIFF is not supported"),
        (lambda a: encoded(Image.fromarray(a[..., 0].astype(np.uint16) * 250), "PNG"), "16-bit PNG is not supported"),
    ],
    ids=["tiff", "png-16bit"],
)
def test_serve_bytes_refuses_formats_it_cannot_decode_like_predict(make, named: str, exported: Path):
    image = blob_image(np.random.default_rng(0), 64, tumor=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{decoder.GRAPH_ERROR_PREFIX} {named}"):
        serve_bytes(exported, [encoded(Image.fromarray(image), "PNG"), make(image)])


def test_model_card_and_files(exported: Path, trained_run: Path):
    card = json.loads((exported / "model_card.json").read_text())
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert card["test_metrics"]["accuracy"] == metrics["accuracy"]
    assert card["split_protocol"] == "grouped" and card["threshold"] == RunDir(trained_run).threshold()
    assert card["decoder"]["version"] == decoder.DECODER_VERSION == card["decoder"]["trained_with"]
    assert card["decoder"]["serve_bytes_accepts"] == decoder.GRAPH_FORMATS
    assert "TIFF" in card["decoder"]["serve_bytes_refuses"] and "16-bit PNG" in card["decoder"]["serve_bytes_refuses"]
    assert card["weights_origin"].startswith("random") and "keras" in card["versions"]
    assert card["inference_speed"]["saved_model_img_per_s"] > 0
    markdown = (exported / "MODEL_CARD.md").read_text()
    assert markdown.startswith("# Model card: simplecnn") and "serve_bytes" in markdown
    assert (exported / "model.keras").is_file() and (exported / "saved_model.pb").is_file()


def test_export_errors_are_one_line(exported: Path, trained_run: Path, tmp_path: Path, capsys):
    assert main(["export", "--run", str(trained_run), "--out", str(exported)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tumorclf: error:") and "already exists" in err and err.count("\n") == 1
    assert main(["export", "--run", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a finished run" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path / "missing")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert main(["export", "--run", str(trained_run), "--threshold", "1.5"]) == 2
    assert "--threshold must be in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_overwrite_never_replaces_a_run_folder_or_other_files(exported: Path, trained_run: Path, tmp_path: Path,
                                                              capsys):
    before = sorted(p.name for p in trained_run.iterdir())
    for out, says in ((trained_run, "is a run folder"), (trained_run.parent, "holds the run"),
                      (trained_run.parents[1], "holds the run")):
        assert main(["export", "--run", str(trained_run), "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tumorclf: error:") and says in err and err.count("\n") == 1, err
    other_run = tmp_path / "other_run"
    other_run.mkdir()
    (other_run / "config.json").write_text("{}")
    with pytest.raises(RunExistsError, match="is a run folder"):
        export_run(trained_run, other_run, overwrite=True)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    with pytest.raises(RunExistsError, match="not a tumorclf export"):
        export_run(trained_run, notes, overwrite=True)
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(RunExistsError, match="not a tumorclf export"):
        export_run(trained_run, tmp_path / "a_file", overwrite=True)
    assert sorted(p.name for p in trained_run.iterdir()) == before and (trained_run / "best.keras").is_file()
    assert (other_run / "config.json").is_file() and (notes / "keep.txt").read_text() == "mine"
    assert (tmp_path / "a_file").read_text() == "mine"


def test_overwrite_replaces_an_earlier_export(exported: Path, trained_run: Path, tmp_path: Path):
    out = tmp_path / "model"
    shutil.copytree(exported, out)
    (out / "stale.txt").write_text("from the earlier export")
    assert export_run(trained_run, out, threshold=0.25, overwrite=True) == out
    assert json.loads((out / "model_card.json").read_text())["threshold"] == 0.25
    assert not (out / "stale.txt").exists() and (out / "saved_model.pb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing left aside or staged


def test_replace_folder_keeps_the_old_one_when_the_new_cannot_be_moved_in(tmp_path: Path, monkeypatch):
    old, new = tmp_path / "out", tmp_path / ".out.partial"
    for folder, text in ((old, "old"), (new, "new")):
        folder.mkdir()
        (folder / "model_card.json").write_text(text)
    (tmp_path / ".out.old").mkdir()  # a name already taken beside it: another is chosen
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(src) == new:
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(export.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        replace_folder(new, old)
    assert (old / "model_card.json").read_text() == "old"  # renamed aside, then back
    monkeypatch.setattr(export.os, "replace", real_replace)
    replace_folder(new, old)
    assert (old / "model_card.json").read_text() == "new" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old", "out"]  # only the pre-existing one

