from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import blob_image, copy_with_operating_point, shared_once
from PIL import Image

from tumorclf.cli.main import main
from tumorclf.data import decoder
from tumorclf.data.dataset import CLASS_NAMES
from tumorclf.errors import UsageError
from tumorclf.gate.quality_gate import GATE_ARRAYS, GATE_JSON
from tumorclf.metrics.calibration import apply_temperature
from tumorclf.metrics.classification import decide
from tumorclf.runs.folder import RunDir, RunExistsError
from tumorclf.serving import export
from tumorclf.serving.export import (
    KNOWN_LIMITATIONS,
    LEAVE_SOURCE_OUT_LIMITATION,
    VALIDATION_REUSE_LIMITATION,
    card_markdown,
    export_run,
    export_saved_model,
    model_card,
    replace_folder,
)
from tumorclf.serving.graph import OperatingPointHead

TEMPERATURE = 2.5  # clearly not 1: calibrated and raw P(Tumor) differ


VALIDATION = {"ece_before": 0.12, "ece_after": 0.03, "sensitivity_at_threshold": 0.96, "specificity_at_threshold": 0.81,
              "sensitivity_at_youden": 0.96, "specificity_at_youden": 0.81}


def with_operating_point(run: Path, dest: Path, temperature: float | None, threshold: float = 0.5) -> Path:
    """A copy of `run` with this operating point and without a quality gate (should training fit one): these
    tests are about the operating point, their exports decide every image (the gate: test_gate_serving.py)."""
    copy = copy_with_operating_point(run, dest, temperature, threshold, VALIDATION)
    for name in (GATE_ARRAYS, GATE_JSON):
        (copy / name).unlink(missing_ok=True)
    return copy


@pytest.fixture(scope="module")
def probe_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Sixteen slices written as JPEG and PNG (RGB and grayscale) at the model's size and others."""
    folder = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(11)
    files = []
    for i in range(16):
        size = (48, 64, 100, 37)[i % 4]
        image = Image.fromarray(blob_image(rng, size, tumor=bool(i % 2)))
        if i % 3 == 0:
            image = image.convert("L")
        files.append(folder / f"probe{i:02d}{'.png' if i % 4 < 2 else '.jpg'}")
        image.save(files[-1])
    return files


def probe_threshold(trained_run: Path, files: list[Path]) -> float:
    """A threshold on calibrated P(Tumor) (at `TEMPERATURE`) that decides otherwise than 0.5 for some probe
    files and gives both classes, in the widest such gap between their probabilities (so 1e-5 noise between
    serving paths cannot flip a decision)."""
    model = keras.saving.load_model(trained_run / "best.keras")
    raw = model.predict(np.stack([decoder.decode_image(f, 48) for f in files]).astype("float32"), verbose=0)[:, 1]
    calibrated = np.sort(apply_temperature(raw, TEMPERATURE))
    candidates = [(hi - lo, lo + (hi - lo) / 3) for lo, hi in zip(calibrated, calibrated[1:])]
    candidates = [(width, t) for width, t in candidates if 0 < decide(calibrated, t).sum() < len(files)
                  and (decide(calibrated, t) != decide(calibrated, 0.5)).any()]
    assert candidates, f"no threshold other than 0.5 separates the probe files: {calibrated}"
    width, threshold = max(candidates)
    assert width > 1e-3, calibrated
    return float(threshold)


def write_evaluations(run: Path) -> None:
    """evaluation.json files as `tumorclf evaluate` writes them: with intervals, from before intervals, and
    an unreadable one (left out of the card)."""
    for name, report in {
        "evaluation": {"threshold": 0.6, "temperature": TEMPERATURE, "datasets": {
            "test": {"n": 18, "contaminated": 0, "groups": 15, "precision": {"value": 0.9, "ci95": [0.7, 1.0]},
                     **{m: {"value": 0.8 + k / 100, "ci95": [0.6, 0.95]}
                        for k, m in enumerate(export.EVALUATION_METRICS)}},
            "pooled": {"n": 18, "contaminated": 2, "auc": {"value": None, "ci95": None}}}},
        "evaluation_external": {"threshold": 0.5, "datasets": {"other": {"n": 40, "accuracy": 0.75, "auc": 0.8}}},
        "evaluation_broken": None,
    }.items():
        (run / name).mkdir()
        (run / name / "evaluation.json").write_text("{not json" if report is None else json.dumps(report))


@pytest.fixture(scope="module")
def calibrated_run(trained_run: Path, probe_files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained run with an operating point (temperature 2.5, a threshold not 0.5) and
    evaluations."""
    def write(folder: Path) -> None:
        write_evaluations(with_operating_point(trained_run, folder / "run", TEMPERATURE,
                                               probe_threshold(trained_run, probe_files)))

    return shared_once(tmp_path_factory, "export_calibrated", write) / "run"


@pytest.fixture(scope="module")
def exported(calibrated_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_once(tmp_path_factory, "export_exported",
                       lambda folder: export_run(calibrated_run, folder / "model", measure=64)) / "model"


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def serve_bytes_outputs(saved_model: Path, blobs: list[bytes]) -> dict[str, np.ndarray]:
    outputs = tf.saved_model.load(str(saved_model)).signatures["serve_bytes"](image_bytes=tf.constant(blobs))
    return {name: value.numpy() for name, value in outputs.items()}


def serve_bytes(saved_model: Path, blobs: list[bytes]) -> np.ndarray:
    """The raw softmax [N, 2] of the `serve_bytes` signature."""
    return serve_bytes_outputs(saved_model, blobs)["probabilities"]


def test_both_signatures_match_the_keras_model(exported: Path, trained_run: Path):
    model = keras.saving.load_model(trained_run / "best.keras")
    loaded = tf.saved_model.load(str(exported))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    expected = model.predict(images.astype("float32"), verbose=0)

    out = loaded.signatures["serve"](images=tf.constant(images.astype("float32")))["probabilities"]
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
    from tumorclf.models.factory import build_model

    keras.utils.set_random_seed(3)
    model = build_model("simplecnn", 48)
    folder = tmp_path_factory.mktemp("untrained")
    model.save(folder / "model.keras")
    export_saved_model(model, folder / "saved")
    return folder / "model.keras", folder / "saved"


@pytest.mark.parametrize("which", ["trained", "untrained"])
def test_serve_bytes_matches_tumorclf_predict(which: str, exported: Path, calibrated_run: Path, tmp_path: Path,
                                             request: pytest.FixtureRequest):
    """The parity of the two serving paths: encoded bytes decoded in the graph give the P(tumour) that
    `tumorclf predict` gives on the same files, for every format and size."""
    # `untrained` only where it is used: under pytest-xdist the [trained] case often runs on the other worker,
    # which then built and exported an untrained model for nothing
    keras_file, saved = ((calibrated_run / "best.keras", exported) if which == "trained"
                         else request.getfixturevalue("untrained"))
    files = write_inputs(tmp_path / "inputs")
    out = tmp_path / "preds.json"
    served = serve_bytes_outputs(saved, [f.read_bytes() for f in files])
    for model in (keras_file, saved):  # predict with the .keras model and with the SavedModel's `serve`
        assert main(["predict", "--model", str(model), str(tmp_path / "inputs"), "--out", str(out)]) == 0
        rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
        assert len(rows) == len(files) and not any(r["error"] for r in rows.values())
        # the raw softmax, and the calibrated P(Tumor) (temperature 2.5; untrained: none, so equal)
        for column, output in (("prob_tumor_raw", served["probabilities"][:, 1]),
                               ("prob_tumor", served["prob_tumor"])):
            predicted = np.array([rows[f.name][column] for f in files])
            worst = int(np.argmax(np.abs(output - predicted)))
            assert abs(output[worst] - predicted[worst]) <= 1e-3, (column, files[worst].name, output[worst],
                                                                    predicted[worst])


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


def test_model_card_and_files(exported: Path, calibrated_run: Path):
    card = json.loads((exported / "model_card.json").read_text())
    metrics = json.loads((calibrated_run / "metrics.json").read_text())
    assert card["test_metrics"]["accuracy"] == metrics["accuracy"]
    assert card["split_protocol"] == "grouped" and card["threshold"] == RunDir(calibrated_run).threshold()
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
    card = json.loads((out / "model_card.json").read_text())
    # --threshold replaces the threshold only: the temperature stays the run's, in the card and the graph
    assert card["threshold"] == 0.25 and card["threshold_source"].startswith("--threshold")
    assert card["temperature"] == RunDir(trained_run).temperature()
    saved = [v.numpy() for v in tf.saved_model.load(str(out)).operating_point]
    assert saved[:2] == [card["temperature"], 0.25]
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



# --- the operating point in both signatures, predict and the model card -------------------------------------

def signature_outputs(saved_model: Path, files: list[Path]) -> dict[str, dict[str, np.ndarray]]:
    """Both signatures' outputs on the same files: `serve` on decode_image's pixels, `serve_bytes` on the bytes."""
    signatures = tf.saved_model.load(str(saved_model)).signatures
    pixels = np.stack([decoder.decode_image(f, 48) for f in files]).astype("float32")
    outputs = {"serve": signatures["serve"](images=tf.constant(pixels)),
               "serve_bytes": signatures["serve_bytes"](image_bytes=tf.constant([f.read_bytes() for f in files]))}
    return {name: {key: value.numpy() for key, value in out.items()} for name, out in outputs.items()}


def predict_rows(model: Path, files: list[Path], out: Path) -> list[dict]:
    assert main(["predict", "--model", str(model), *map(str, files), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["path"] for r in rows] == list(map(str, files)) and not any(r["error"] for r in rows)
    return rows


def test_calibrated_probabilities_come_out_of_both_signatures_as_from_predict(
        exported: Path, calibrated_run: Path, probe_files: list[Path], tmp_path: Path, caplog):
    """The issue's done-when: the SavedModel's calibrated P(Tumor) and decision equal `tumorclf predict`'s,
    whether predict reads the SavedModel, its model.keras (with the card) or the run's best.keras (with the
    run's operating_point.json)."""
    threshold = RunDir(calibrated_run).threshold()
    assert RunDir(calibrated_run).temperature() == TEMPERATURE and threshold != 0.5
    expected_raw = keras.saving.load_model(calibrated_run / "best.keras").predict(
        np.stack([decoder.decode_image(f, 48) for f in probe_files]).astype("float32"), verbose=0)
    sources = {exported: exported / "model_card.json", exported / "model.keras": exported / "model_card.json",
               calibrated_run / "best.keras": calibrated_run / "operating_point.json"}
    rows = {}
    for i, (model, source) in enumerate(sources.items()):
        caplog.clear()
        with caplog.at_level("INFO", logger="tumorclf"):
            rows[model] = predict_rows(model, probe_files, tmp_path / f"p{i}.json")
        assert f"temperature 2.5 and threshold {threshold:g} (from {source})" in caplog.text

    n = len(probe_files)
    for name, out in signature_outputs(exported, probe_files).items():
        assert out["probabilities"].dtype == np.float32 and out["probabilities"].shape == (n, 2)
        assert out["prob_tumor"].dtype == np.float32 and out["prob_tumor"].shape == (n,)
        assert out["decision"].dtype == np.int64 and out["decision"].shape == (n,)
        np.testing.assert_allclose(out["probabilities"], expected_raw, atol=1e-5, err_msg=name)
        raw = out["probabilities"][:, 1]
        # calibrated in the graph as tumorclf.metrics.calibration does it, decided at the run's threshold
        np.testing.assert_allclose(out["prob_tumor"], apply_temperature(raw, TEMPERATURE), atol=1e-7, rtol=0)
        np.testing.assert_array_equal(out["decision"], decide(apply_temperature(raw, TEMPERATURE), threshold))
        for model, predicted in rows.items():
            what = f"{name} vs predict --model {model}"
            np.testing.assert_allclose(out["prob_tumor"], [r["prob_tumor"] for r in predicted], atol=1e-5,
                                       rtol=0, err_msg=what)
            np.testing.assert_allclose(raw, [r["prob_tumor_raw"] for r in predicted], atol=1e-5, rtol=0,
                                       err_msg=what)
            assert [CLASS_NAMES[d] for d in out["decision"]] == [r["predicted"] for r in predicted], what
        # not vacuous: the temperature moves P(Tumor), and the threshold decides otherwise than 0.5 would
        assert np.max(np.abs(out["prob_tumor"] - raw)) > 0.05
        assert set(out["decision"].tolist()) == {0, 1}
        assert (out["decision"] != decide(out["prob_tumor"], 0.5)).any()


def test_a_run_without_operating_point_exports_and_predicts_as_before(trained_run: Path, probe_files: list[Path],
                                                                      tmp_path: Path):
    """No operating_point.json (runs from before it): temperature 1, P(Tumor) unchanged, the metrics.json
    threshold."""
    run = with_operating_point(trained_run, tmp_path / "run", None)
    metrics = json.loads((run / "metrics.json").read_text())
    assert RunDir(run).temperature() == 1.0 and RunDir(run).threshold() == metrics.get("threshold", 0.5)
    out = export_run(run, tmp_path / "export")
    card = json.loads((out / "model_card.json").read_text())
    assert card["temperature"] == 1.0 and card["operating_point"] is None
    assert card["threshold"] == RunDir(run).threshold() and card["threshold_source"] == "metrics.json"
    assert "the run has no operating_point.json" in (out / "MODEL_CARD.md").read_text()

    predicted = [predict_rows(model, probe_files, tmp_path / f"p{i}.json")  # the same rows for both signatures
                 for i, model in enumerate((out, run / "best.keras"))]
    for name, served in signature_outputs(out, probe_files).items():
        raw = served["probabilities"][:, 1]
        np.testing.assert_array_equal(served["prob_tumor"], raw, err_msg=name)
        np.testing.assert_array_equal(served["decision"], decide(raw, card["threshold"]), err_msg=name)
        for rows in predicted:
            assert all(r["prob_tumor"] == r["prob_tumor_raw"] for r in rows)
            np.testing.assert_allclose(raw, [r["prob_tumor"] for r in rows], atol=1e-5, rtol=0)
            assert [CLASS_NAMES[d] for d in served["decision"]] == [r["predicted"] for r in rows]


@pytest.mark.parametrize("temperature", [TEMPERATURE, 0.4, 1.0])
def test_in_graph_operating_point_decides_as_predict_to_the_bit(temperature: float):
    """`OperatingPointHead` (the graph part of both signatures) against predict's NumPy calibration and
    `decide`, also at thresholds equal to a calibrated value (a fitted threshold is one), including values
    where TensorFlow's float64 log/exp differ from NumPy's in the last bit, so that a float64 comparison
    in the graph would decide otherwise."""
    rng = np.random.default_rng(1)
    raw = np.concatenate([rng.uniform(0, 1, 20000), 10.0 ** rng.uniform(-9, 0, 3000),
                          1 - 10.0 ** rng.uniform(-7, 0, 3000), [0, 1e-8, 1e-7, 0.5, 1 - 1e-7, 1]]).astype(np.float32)
    calibrated = apply_temperature(raw, temperature)
    p = tf.clip_by_value(tf.cast(raw, tf.float64), 1e-7, 1 - 1e-7)
    in_graph = (1.0 / (1.0 + tf.exp(-(tf.math.log(p) - tf.math.log1p(-p)) / temperature))).numpy()
    flip_prone = np.flatnonzero(in_graph < calibrated)[:4] if temperature != 1 else []
    thresholds = [0.0, 0.5, 1.0, float(np.float32(0.7)), 0.7, *calibrated[[7, 99, 5000, -3]], *calibrated[flip_prone]]
    for threshold in thresholds:
        out = OperatingPointHead(temperature, threshold)(tf.constant(np.stack([1 - raw, raw], axis=1)))
        np.testing.assert_array_equal(out["decision"].numpy(), decide(calibrated, threshold), err_msg=str(threshold))
        if temperature == 1:
            np.testing.assert_array_equal(out["prob_tumor"].numpy(), raw)
        else:
            assert np.max(np.abs(out["prob_tumor"].numpy() - calibrated)) < 1e-7
    for k in flip_prone:  # the image the threshold was fitted on is Tumor, as predict says
        assert OperatingPointHead(temperature, calibrated[k])(tf.constant([[1 - raw[k], raw[k]]]))["decision"][0] == 1


def test_model_card_states_use_operating_point_evaluations_and_limitations(exported: Path, calibrated_run: Path):
    card = json.loads((exported / "model_card.json").read_text())
    point = RunDir(calibrated_run).operating_point()
    assert card["temperature"] == TEMPERATURE == point.temperature
    assert card["threshold"] == point.threshold and card["threshold_source"] == "operating_point.json"
    assert card["operating_point"] == point.to_dict()
    assert {"ece_before", "ece_after", "sensitivity_at_threshold", "specificity_at_threshold"} <= set(
        card["operating_point"]["validation"])
    assert "research" in card["intended_use"].lower() and "teaching" in card["intended_use"].lower()
    assert any("not a diagnostic device" in item.lower() for item in card["out_of_scope"])
    assert any("clinical decisions" in item.lower() for item in card["out_of_scope"])
    assert card["known_limitations"] == list(KNOWN_LIMITATIONS)
    assert LEAVE_SOURCE_OUT_LIMITATION in card["known_limitations"]
    assert all(f in LEAVE_SOURCE_OUT_LIMITATION for f in ("0.648", "0.674", "sartaj", "figshare", "not calibrated"))
    # the numbers are attributed to the recipe measured, with pages and a section that exist
    docs = Path(__file__).parents[1] / "docs"
    assert LEAVE_SOURCE_OUT_LIMITATION.startswith(
        "This project's leave-source-out measurement of the fast VGG16 recipe (docs/evaluation.md, 'Leave-source-out')")
    assert "\n### Leave-source-out\n" in (docs / "evaluation.md").read_text()
    assert "The robust recipe (docs/robustness.md)" in LEAVE_SOURCE_OUT_LIMITATION and (docs / "robustness.md").is_file()
    assert "sagittal" in LEAVE_SOURCE_OUT_LIMITATION
    # and its numbers are those of the committed ablation (each run's first evaluation), as rounded there
    first: dict[str, dict] = {}
    with open(Path(__file__).parents[1] / "experiments" / "results" / "robust" / "ablation.csv") as f:
        for row in csv.DictReader(f):
            first.setdefault(row["run_name"], row)

    def quoted(run: str, metric: str, with_interval: bool = True, digits: int = 3) -> bool:
        split, recipe = run.split()
        row = first[f"vgg16_imagenet_{split}_224px_seed42_{recipe}"]

        def number(key: str) -> str:
            return f"{float(row[key]):.{digits}f}"

        return number(metric) in LEAVE_SOURCE_OUT_LIMITATION and (
            not with_interval or f"{number(metric + '_lo')}, {number(metric + '_hi')}]" in LEAVE_SOURCE_OUT_LIMITATION)

    for metric in ("balanced_accuracy", "sensitivity", "specificity", "auc"):
        assert quoted("lso-figshare+sartaj fast", metric), ("fast", metric)
    assert quoted("lso-figshare+sartaj fast", "ece", with_interval=False, digits=2)
    for metric in ("balanced_accuracy", "specificity", "auc"):
        assert quoted("lso-figshare+sartaj robust", metric), ("robust", metric)
    assert quoted("lso-figshare+sartaj robust", "sensitivity", with_interval=False)
    assert quoted("grouped fast", "balanced_accuracy") and quoted("grouped fast", "auc", with_interval=False)
    assert quoted("grouped robust", "balanced_accuracy", with_interval=False)
    assert "other models were not measured this way and should be assumed to degrade similarly" in \
        LEAVE_SOURCE_OUT_LIMITATION
    assert VALIDATION_REUSE_LIMITATION in card["known_limitations"]
    assert all(f in VALIDATION_REUSE_LIMITATION for f in ("best epoch", "temperature and threshold", "optimistic"))
    assert card["leave_source_out"] is None  # a grouped run
    saved = [v.numpy() for v in tf.saved_model.load(str(exported)).operating_point]
    assert saved[:2] == [TEMPERATURE, card["threshold"]] and saved[2] == np.float32(card["raw_cutoff"])

    evaluations = card["evaluations"]
    assert sorted(evaluations) == ["evaluation", "evaluation_external"]  # the unreadable one is left out
    test = evaluations["evaluation"]["datasets"]["test"]
    assert test["n"] == 18 and test["contaminated"] == 0 and "precision" not in test and "groups" not in test
    assert [test[m] for m in export.EVALUATION_METRICS] == [{"value": 0.8 + k / 100, "ci95": [0.6, 0.95]}
                                                            for k in range(len(export.EVALUATION_METRICS))]
    assert evaluations["evaluation"]["datasets"]["pooled"]["auc"] == {"value": None, "ci95": None}
    other = evaluations["evaluation_external"]["datasets"]["other"]  # before intervals: plain numbers
    assert other["accuracy"] == {"value": 0.75, "ci95": None} and other["contaminated"] is None

    markdown = (exported / "MODEL_CARD.md").read_text()
    for section in ("## Intended use", "## Out of scope", "## Operating point", "## Quality gate", "## Evaluations",
                    "## Known limitations"):
        assert section in markdown
    # a run without a quality gate: the card says so, and does not claim out-of-distribution detection
    assert card["quality_gate"] is None and card["out_of_scope"][-1] == export.UNGATED_SCOPE
    assert "## Quality gate\n\nNone: predictions are not gated." in markdown
    assert "not a diagnostic device" in markdown.lower() and LEAVE_SOURCE_OUT_LIMITATION in markdown
    assert f"Calibration temperature: 2.5; decision threshold on calibrated P(Tumor): {card['threshold']:g}" in markdown
    assert "| test | 18 | 0 | 0.800 [0.600, 0.950] | 0.810 [0.600, 0.950] |" in markdown
    assert "| other | 40 | None | 0.750 | - |" in markdown and "\n\n\n" not in markdown
    assert "specificity 0.8100 (optimistic: the same split chose the epoch and fitted the threshold)" in markdown
    assert VALIDATION_REUSE_LIMITATION in markdown


def test_model_card_of_a_leave_source_out_run_names_its_held_out_sources(trained_run: Path, tmp_path: Path):
    run = tmp_path / "lso"
    run.mkdir()
    for name in ("config.json", "metrics.json"):
        shutil.copy(trained_run / name, run / name)
    record = json.loads((run / "config.json").read_text())
    record["config"].update(split="source", sources="provenance.csv", holdout_sources="sartaj,figshare")
    record["split"].update(source_br35h=70, source_figshare=30, source_sartaj=10, source_unattributed=10)
    (run / "config.json").write_text(json.dumps(record))
    card = model_card(RunDir(run))
    assert card["split_protocol"] == "source"
    assert card["leave_source_out"]["held_out_sources"] == ["figshare", "sartaj"]
    assert card["leave_source_out"]["sources"] == {"br35h": 70, "figshare": 30, "sartaj": 10, "unattributed": 10}
    assert card["evaluations"] == {} and card["operating_point"] is None and card["temperature"] == 1.0
    markdown = card_markdown(card)
    assert "## Leave-source-out run" in markdown and "held out the source(s) figshare, sartaj" in markdown


def write_evaluation(folder: Path, run: Path | str, accuracy: float = 0.7) -> Path:
    """An evaluation.json of `run` in `folder`, as `tumorclf evaluate --run RUN --out folder` writes it."""
    folder.mkdir(parents=True)
    (folder / "evaluation.json").write_text(json.dumps({"run": str(run), "threshold": 0.55, "temperature": 1.5,
        "datasets": {"ext": {"n": 12, "contaminated": 1, "accuracy": {"value": accuracy, "ci95": [0.5, 0.9]},
                             "auc": {"value": 0.8, "ci95": ["low", 0.9]}}}}))
    return folder


def test_evaluations_outside_the_run_folder_join_the_card(calibrated_run: Path, tmp_path: Path, monkeypatch):
    results = tmp_path / "results"
    elsewhere = write_evaluation(results / "evaluate_x", calibrated_run)
    monkeypatch.chdir(calibrated_run.parent)  # evaluate records the run as given: relative to where it ran
    relative = write_evaluation(results / "relative", Path(calibrated_run.name))
    own = calibrated_run / "evaluation"  # the run's own subfolder, named again: once in the card
    card = model_card(RunDir(calibrated_run), evaluations=[elsewhere, relative, own, elsewhere])
    evaluations = card["evaluations"]
    assert sorted(evaluations) == ["evaluate_x", "evaluation", "evaluation_external", "relative"]
    assert evaluations["evaluate_x"]["folder"] == str(elsewhere) and "folder" not in evaluations["evaluation"]
    ext = evaluations["evaluate_x"]["datasets"]["ext"]
    assert (evaluations["evaluate_x"]["threshold"], evaluations["evaluate_x"]["temperature"]) == (0.55, 1.5)
    assert ext["n"] == 12 and ext["contaminated"] == 1 and ext["accuracy"] == {"value": 0.7, "ci95": [0.5, 0.9]}
    assert ext["auc"] == {"value": 0.8, "ci95": None}  # a malformed interval is dropped, the value kept
    markdown = card_markdown(card)
    assert f"`{elsewhere}/evaluation.json`, threshold 0.55, temperature 1.5" in markdown
    assert "| ext | 12 | 1 | 0.700 [0.500, 0.900] | - | - | - | 0.800 | - |" in markdown


def test_evaluation_folders_must_hold_an_evaluation_of_the_run(calibrated_run: Path, trained_run: Path,
                                                               tmp_path: Path, capsys):
    results = tmp_path / "results"
    other_run = write_evaluation(results / "of_another_run", trained_run)
    (results / "empty").mkdir()
    broken = results / "broken"
    broken.mkdir()
    (broken / "evaluation.json").write_text("{not json")
    no_run = results / "no_run"
    no_run.mkdir()
    (no_run / "evaluation.json").write_text(json.dumps({"datasets": {}}))
    clash = write_evaluation(results / "evaluation", calibrated_run)  # named as the run's own subfolder
    twin_a = write_evaluation(results / "a" / "twin", calibrated_run)
    twin_b = write_evaluation(results / "b" / "twin", calibrated_run)
    out = tmp_path / "model"
    for folders, says in (([other_run], f"is an evaluation of the run {trained_run}, not of {calibrated_run}"),
                          ([results / "empty"], "holds no evaluation.json"),
                          ([results / "missing"], "holds no evaluation.json"),
                          ([broken], "unreadable evaluation.json"),
                          ([no_run], "unreadable evaluation.json (it names no run)"),
                          ([clash], "the card already has an evaluation named 'evaluation'"),
                          ([twin_a, twin_b], "the card already has an evaluation named 'twin'")):
        with pytest.raises(UsageError, match=re.escape(says)):
            model_card(RunDir(calibrated_run), evaluations=folders)
        args = ["export", "--run", str(calibrated_run), "--out", str(out), "--evaluation", *map(str, folders)]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("tumorclf: error: export: --evaluation") and says in err and err.count("\n") == 1, err
    assert not out.exists()


def test_export_cli_adds_evaluations_written_elsewhere(calibrated_run: Path, tmp_path: Path, capsys):
    elsewhere = write_evaluation(tmp_path / "results" / "evaluate_x", calibrated_run, accuracy=0.625)
    out = tmp_path / "model"
    assert main(["export", "--run", str(calibrated_run), "--out", str(out), "--evaluation", str(elsewhere)]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert sorted(card["evaluations"]) == ["evaluate_x", "evaluation", "evaluation_external"]
    assert card["evaluations"]["evaluate_x"]["datasets"]["ext"]["accuracy"]["value"] == 0.625
    assert "| ext | 12 | 1 | 0.625 [0.500, 0.900] |" in (out / "MODEL_CARD.md").read_text()


def test_framing_and_intensity_run_inside_the_saved_model(trained_run: Path, tmp_path: Path):
    """A model with the robust recipe's in-model framing and intensity exports with them: both signatures give
    the .keras model's output on plain images (an off-centre dim blob, as a source with other framing sends)."""
    from tumorclf.models.factory import build_model

    run = tmp_path / "framed"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("evaluation*"))
    plain = keras.saving.load_model(run / "best.keras")
    framed = build_model("simplecnn", 48, intensity="percentile", framing="foreground")
    framed.set_weights(plain.get_weights())  # the two layers have no weights of their own
    framed.save(run / "best.keras")
    out = tmp_path / "saved"
    export_run(RunDir(run), out)
    images = np.zeros((3, 48, 48, 3), np.uint8)
    for i, (top, left, size, level) in enumerate([(2, 3, 12, 70), (20, 25, 20, 250), (8, 8, 30, 140)]):
        images[i, top:top + size, left:left + size] = level
    expected = framed.predict(images.astype("float32"), verbose=0)
    assert not np.allclose(expected, plain.predict(images.astype("float32"), verbose=0), atol=1e-3)
    signatures = tf.saved_model.load(str(out)).signatures
    served = signatures["serve"](images=tf.constant(images.astype("float32")))["probabilities"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    png = [encoded(Image.fromarray(i), "PNG") for i in images]
    np.testing.assert_allclose(signatures["serve_bytes"](image_bytes=tf.constant(png))["probabilities"].numpy(),
                               expected, atol=1e-5)
