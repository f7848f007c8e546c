"""`tumorclf export --format onnx`: model.onnx gives the SavedModel's and the Keras model's outputs (calibrated
P(Tumor), decision at the operating point, the quality gate) on the same 0-255 RGB input, and `tumorclf
predict --model-file model.onnx` gives the rows `predict --model-file EXPORT` gives."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf
from PIL import Image

from conftest import blob_image, copy_with_operating_point, one_error_line, shared_once
from tumorclf.data import decoder
from tumorclf.metrics.calibration import CLIP, apply_temperature
from tumorclf.cli.main import main
from tumorclf.metrics.classification import decide
from tumorclf.serving.export import export_run
from tumorclf.gate.quality_gate import GATE_ARRAYS, GATE_JSON, REASONS, Gate, gated_model
from tumorclf.serving.onnx_export import INSTALL, ONNX_FILE, OPSET
from tumorclf.serving.predictors import OnnxPredictor
from tumorclf.runs.folder import RunDir

SIZE = 48  # the trained run's input
TEMPERATURE = 2.5  # clearly not 1: calibrated and raw P(Tumor) differ
TOLERANCE = 1e-4  # the issue's: onnxruntime against Keras and the SavedModel
PARITY: dict[str, float] = {}  # largest differences seen, printed at the end of the module (pytest -s)


@pytest.fixture(scope="module")
def probes(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's training files (PNG and JPEG, both classes) and files the gate refuses: blank, colour, noise
    and a slice too small for the model."""
    def write(folder: Path) -> None:
        data = trained_run.parents[1] / "data"
        for label in ("healthy", "tumor"):
            for source in sorted((data / label).iterdir())[:10]:
                shutil.copy(source, folder / f"{label}-{source.name}")
        rng = np.random.default_rng(5)
        images = {"blank.png": np.full((SIZE, SIZE, 3), 1, np.uint8),
                  "colour.png": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                  "noise.png": np.repeat((rng.integers(0, 2, (SIZE, SIZE)) * 255).astype(np.uint8)[..., None], 3, -1),
                  "tiny.png": blob_image(rng, 16, tumor=True)}
        for name, pixels in images.items():
            Image.fromarray(pixels).save(folder / name)

    return shared_once(tmp_path_factory, "onnx_probes", write)


def pixels(folder: Path) -> tuple[list[Path], np.ndarray]:
    files = sorted(folder.iterdir())
    return files, np.stack([decoder.decode_image(f, SIZE) for f in files]).astype("float32")


def wide_gap_threshold(calibrated: np.ndarray) -> float:
    """A threshold on calibrated P(Tumor) in the widest gap between the images' values (so 1e-6 noise between
    runtimes cannot flip a decision) that gives both classes."""
    values = np.sort(calibrated)
    width, threshold = max((hi - lo, (lo + hi) / 2) for lo, hi in zip(values, values[1:]))
    assert width > 1e-3 and 0 < decide(calibrated, threshold).sum() < len(calibrated), values
    return float(threshold)


@pytest.fixture(scope="module")
def run(trained_run: Path, probes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained run (which has a quality gate) with an operating point: temperature 2.5 and a
    threshold that is neither 0.5 nor near any probe's calibrated P(Tumor), chosen among the dataset slices
    (which the gate accepts), so that accepted images get both decisions."""
    assert (trained_run / GATE_ARRAYS).is_file()

    def write(folder: Path) -> None:
        files, images = pixels(probes)
        slices = [i for i, f in enumerate(files) if f.name.startswith(("healthy-", "tumor-"))]
        raw = keras.saving.load_model(trained_run / "best.keras").predict(images[slices], verbose=0)[:, 1]
        copy_with_operating_point(trained_run, folder / "run", TEMPERATURE,
                                  wide_gap_threshold(apply_temperature(raw, TEMPERATURE)))

    return shared_once(tmp_path_factory, "onnx_run", write) / "run"


@pytest.fixture(scope="module")
def exported(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both formats, timed side by side."""
    def write(folder: Path) -> None:
        export_run(run, folder / "model", formats=("savedmodel", "onnx"), measure=64)

    return shared_once(tmp_path_factory, "onnx_export", write) / "model"


@pytest.fixture(scope="module", autouse=True)
def report_parity():
    yield
    if PARITY:
        print("\nONNX parity, max abs diff: " + ", ".join(f"{k} {v:.3g}" for k, v in PARITY.items()))


def close(name: str, actual: np.ndarray, expected: np.ndarray, raw: tuple[np.ndarray, np.ndarray] | None = None
          ) -> None:
    """Equal within TOLERANCE; for calibrated P(Tumor), `raw` = the two runtimes' softmax P(Tumor) they came from:
    the temperature magnifies their float32 differences near 0 and 1 (d cal / d p = cal (1 - cal) / (T p (1 - p))),
    so those differences, propagated, are allowed on top."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    allowed = np.full(actual.shape, TOLERANCE)
    if raw is not None:
        a, b = (np.clip(np.asarray(r, np.float64), CLIP, 1 - CLIP) for r in raw)
        slope = max_slope(a, b)
        allowed += slope * (np.abs(a - b) + np.spacing(np.float32(1.0)))
    excess = np.abs(actual - expected) - allowed
    PARITY[name] = max(PARITY.get(name, 0.0), float(np.max(np.abs(actual - expected))))
    assert np.all(excess <= 0), (name, float(np.max(np.abs(actual - expected))), float(np.max(excess)))


def max_slope(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The largest d apply_temperature / d p between a and b (its slope is monotone on each side of 1/2)."""
    def slope(p):
        cal = apply_temperature(p, TEMPERATURE)
        return cal * (1 - cal) / (TEMPERATURE * p * (1 - p))
    return np.maximum(slope(a), slope(b))


def run_onnx(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": images})))


def test_onnx_graph_gives_the_keras_model_and_saved_model_outputs(exported: Path, run: Path, probes: Path):
    files, images = pixels(probes)
    onnx = run_onnx(exported / ONNX_FILE, images)
    assert set(onnx) == {"probabilities", "prob_tumor", "decision", "quality_code", "quality", "ood_score"}
    assert (onnx["probabilities"].dtype, onnx["prob_tumor"].dtype, onnx["decision"].dtype,
            onnx["quality_code"].dtype, onnx["ood_score"].dtype) == (np.float32, np.float32, np.int64, np.int32,
                                                                     np.float32)
    served = {k: v.numpy() for k, v in
              tf.saved_model.load(str(exported)).signatures["serve"](images=tf.constant(images)).items()}
    point, gate = RunDir(run).operating_point(), Gate.load(run)
    keras_out = gated_model(keras.saving.load_model(run / "best.keras"), gate).predict(images, verbose=0)
    raw = keras_out["probabilities"][:, 1]

    close("probabilities vs Keras", onnx["probabilities"], keras_out["probabilities"])
    close("prob_tumor vs Keras + apply_temperature", onnx["prob_tumor"], apply_temperature(raw, TEMPERATURE),
          (onnx["probabilities"][:, 1], raw))
    close("ood_score vs Keras", onnx["ood_score"], keras_out["ood_score"])
    for name in ("probabilities", "ood_score"):
        close(f"{name} vs SavedModel", onnx[name], served[name])
    close("prob_tumor vs SavedModel", onnx["prob_tumor"], served["prob_tumor"],
          (onnx["probabilities"][:, 1], served["probabilities"][:, 1]))
    for name in ("decision", "quality_code"):
        np.testing.assert_array_equal(onnx[name], served[name], err_msg=name)
    np.testing.assert_array_equal(onnx["quality_code"], keras_out["quality_code"])
    assert list(onnx["quality"]) == [q.decode() for q in served["quality"]] == [REASONS[c] for c in
                                                                                onnx["quality_code"]]
    ok = onnx["quality_code"] == 0
    expected = np.where(ok, decide(apply_temperature(onnx["probabilities"][:, 1], TEMPERATURE), point.threshold), -1)
    np.testing.assert_array_equal(onnx["decision"], expected)
    # not vacuous: both classes decided, images refused, and the temperature and threshold matter
    assert set(onnx["decision"].tolist()) == {-1, 0, 1}
    assert {REASONS[c] for c in onnx["quality_code"]} >= {"ok", "blank", "not_grayscale_mri"}
    assert np.max(np.abs(onnx["prob_tumor"] - raw)) > 0.05 and point.threshold != 0.5


def test_onnx_metadata_and_model_card(exported: Path, run: Path):
    card = json.loads((exported / "model_card.json").read_text())
    gate = Gate.load(run)
    assert card["formats"] == ["savedmodel", "onnx"] and card["signatures"]["serve_bytes"]
    facts = card["onnx"]
    assert facts["file"] == ONNX_FILE and facts["opset"] == OPSET and facts["converter"].startswith("tf2onnx ")
    assert "serve_bytes" in facts["not_included"] and "quality" in facts["outputs"]
    session = ort.InferenceSession(str(exported / ONNX_FILE), providers=["CPUExecutionProvider"])
    [image_input] = session.get_inputs()
    assert image_input.name == "images" and image_input.type == "tensor(float)" and image_input.shape[1:] == [48, 48, 3]
    props = session.get_modelmeta().custom_metadata_map
    assert props == facts["metadata_props"]
    assert (float(props["temperature"]), float(props["threshold"])) == (card["temperature"], card["threshold"])
    assert float(props["raw_cutoff"]) == card["raw_cutoff"] and int(props["image_size"]) == SIZE
    assert int(props["min_side"]) == gate.min_side and json.loads(props["quality_reasons"]) == list(REASONS)
    speed = card["inference_speed"]
    assert speed["images"] == 64 and all(speed[k] > 0 for k in ("keras_predict_img_per_s", "saved_model_img_per_s",
                                                                   "onnx_runtime_img_per_s"))
    markdown = (exported / "MODEL_CARD.md").read_text()
    assert f"- ONNX `model.onnx` (opset {OPSET}, tf2onnx" in markdown and "SavedModel `serve_bytes`" in markdown
    assert (exported / "saved_model.pb").is_file() and (exported / "model.keras").is_file()
    assert (exported / GATE_ARRAYS).is_file() and (exported / GATE_JSON).is_file()


def predict_rows(model: Path, inputs: Path, out: Path, *extra: str) -> dict[str, dict]:
    """The rows `tumorclf predict` writes into the folder `out` as predictions.json, by file name."""
    assert main(["predict", "--model-file", str(model), "--inputs", str(inputs), "--out", str(out),
                 "--format", "json", *extra]) == 0
    rows = json.loads((out / "predictions.json").read_text())
    assert rows and not any(r["error"] for r in rows)
    return {Path(r["path"]).name: r for r in rows}


def test_predict_with_model_onnx_gives_the_saved_model_rows(exported: Path, probes: Path, tmp_path: Path, caplog):
    saved = predict_rows(exported, probes, tmp_path / "saved")
    with caplog.at_level("INFO", logger="tumorclf"):
        onnx = predict_rows(exported / ONNX_FILE, probes, tmp_path / "onnx")
    card = json.loads((exported / "model_card.json").read_text())
    assert f"temperature 2.5 and threshold {card['threshold']:g} (from {exported / 'model_card.json'})" in caplog.text
    assert onnx.keys() == saved.keys()
    raw = ([r["prob_tumor_raw"] for r in onnx.values()], [saved[name]["prob_tumor_raw"] for name in onnx])
    close("predict prob_tumor_raw vs predict --model-file SavedModel", *raw)  # rounded to 6 decimals
    close("predict prob_tumor vs predict --model-file SavedModel", [r["prob_tumor"] for r in onnx.values()],
          [saved[name]["prob_tumor"] for name in onnx], raw)
    np.testing.assert_allclose([r["ood_score"] for r in onnx.values()], [saved[n]["ood_score"] for n in onnx],
                               atol=1.01e-4, rtol=0)  # rounded to 4 decimals: one step apart at most
    assert {n: (r["predicted"], r["quality"]) for n, r in onnx.items()} == \
        {n: (r["predicted"], r["quality"]) for n, r in saved.items()}
    assert onnx["tiny.png"]["quality"] == "too_small"  # predict knows the file's size; the graph does not
    assert {r["predicted"] for r in onnx.values()} == {None, "Healthy", "Tumor"}

    ungated = predict_rows(exported / ONNX_FILE, probes, tmp_path / "ungated", "--no-gate")
    assert all(r["quality"] is None and r["predicted"] in ("Healthy", "Tumor") for r in ungated.values())
    assert all(ungated[n]["prob_tumor"] == r["prob_tumor"] for n, r in onnx.items())


def test_onnx_only_export_of_an_uncalibrated_ungated_run(trained_run: Path, probes: Path, tmp_path: Path, capsys):
    """--format onnx alone: no SavedModel files; temperature 1 keeps P(Tumor) as is and decides it in float64
    at the metrics.json threshold; no gate outputs, every image decided."""
    run = copy_with_operating_point(trained_run, tmp_path / "run", None)
    for name in (GATE_ARRAYS, GATE_JSON):
        (run / name).unlink()
    out = tmp_path / "export"
    assert main(["export", "--run", str(run), "--out", str(out), "--format", "onnx"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "model.keras", ONNX_FILE, "model_card.json"]
    card = json.loads((out / "model_card.json").read_text())
    assert card["formats"] == ["onnx"] and card["signatures"] is None and card["temperature"] == 1.0
    assert "SavedModel" not in (out / "MODEL_CARD.md").read_text().split("## Intended use")[0]

    files, images = pixels(probes)
    onnx = run_onnx(out / ONNX_FILE, images)
    assert set(onnx) == {"probabilities", "prob_tumor", "decision"}
    raw = onnx["probabilities"][:, 1]
    np.testing.assert_array_equal(onnx["prob_tumor"], raw)
    np.testing.assert_array_equal(onnx["decision"], decide(raw, card["threshold"]))
    close("probabilities (uncalibrated) vs Keras", onnx["probabilities"],
          keras.saving.load_model(run / "best.keras").predict(images, verbose=0))
    predictor = OnnxPredictor(out / ONNX_FILE)
    assert predictor.min_side is None and predictor.operating_point == (1.0, card["threshold"])
    rows = predict_rows(out / ONNX_FILE, probes, tmp_path / "p")
    assert [rows[f.name]["predicted"] for f in files] == [("Healthy", "Tumor")[d] for d in onnx["decision"]]


def test_bad_format_and_broken_onnx_file_are_one_line(trained_run: Path, probes: Path, tmp_path: Path, capsys):
    out = tmp_path / "export"
    for formats in (["tflite"], ["onnx", "savedmodel", "torchscript"]):
        assert main(["export", "--run", str(trained_run), "--out", str(out), "--format", *formats]) == 2
        assert "export: --format takes one or more of savedmodel, onnx" in one_error_line(capsys)
    assert not out.exists()
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not a model")
    assert main(["predict", "--model-file", str(broken), "--inputs", str(probes / "blank.png")]) == 2
    assert f"cannot load model {broken}" in one_error_line(capsys)


@pytest.mark.parametrize("missing", ["tf2onnx", "onnx", "onnxruntime"])
def test_without_the_onnx_packages_export_is_one_line(missing: str, trained_run: Path, tmp_path: Path, monkeypatch,
                                                      capsys):
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
    out = tmp_path / "export"
    assert main(["export", "--run", str(trained_run), "--out", str(out), "--format", "savedmodel", "onnx"]) == 2
    line = one_error_line(capsys)
    assert missing in line and INSTALL in line
    assert not out.exists() and not list(tmp_path.iterdir())


def test_without_onnxruntime_predict_is_one_line(exported: Path, probes: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["predict", "--model-file", str(exported / ONNX_FILE), "--inputs", str(probes / "blank.png")]) == 2
    assert INSTALL in one_error_line(capsys)


def test_framing_and_intensity_convert(trained_run: Path, tmp_path: Path):
    """The robust recipe's in-model framing (`ForegroundCrop`: ImageProjectiveTransformV3, as GridSample) and
    percentile intensity convert: model.onnx gives the .keras model's output on images it crops."""
    from tumorclf.models.factory import build_model
    from tumorclf.serving.onnx_export import export_onnx

    plain = keras.saving.load_model(trained_run / "best.keras")
    framed = build_model("simplecnn", SIZE, intensity="percentile", framing="foreground")
    framed.set_weights(plain.get_weights())  # the two layers have no weights of their own
    facts = export_onnx(framed, tmp_path / ONNX_FILE, TEMPERATURE, 0.5)
    assert facts["outputs"] == ["decision", "prob_tumor", "probabilities"]
    rng = np.random.default_rng(3)
    images = np.zeros((8, SIZE, SIZE, 3), np.float32)
    for i in range(len(images)):  # slices of several sizes, off centre and dimmed: the crop moves them
        side = 20 + 3 * i
        top, left = rng.integers(0, SIZE - side + 1, 2)
        images[i, top:top + side, left:left + side] = blob_image(rng, side, tumor=bool(i % 2)) * rng.uniform(0.3, 1)
    expected = framed.predict(images, verbose=0)
    assert not np.allclose(expected, plain.predict(images, verbose=0), atol=1e-3)  # the layers matter
    onnx = run_onnx(tmp_path / ONNX_FILE, images)
    close("probabilities, framing + intensity, vs Keras", onnx["probabilities"], expected)
    close("prob_tumor, framing + intensity, vs Keras + apply_temperature", onnx["prob_tumor"],
          apply_temperature(expected[:, 1], TEMPERATURE), (onnx["probabilities"][:, 1], expected[:, 1]))


def test_bfloat16_model_exports_in_float32(trained_run: Path, tmp_path: Path):
    """A model trained under mixed_bfloat16 (what `--precision auto` picks on this CPU) converts to a graph
    onnxruntime loads, computing in float32: the float32 copy's outputs, within bfloat16's distance of the
    model's own."""
    from tumorclf.models.factory import build_model, to_float32
    from tumorclf.serving.onnx_export import export_onnx

    plain = keras.saving.load_model(trained_run / "best.keras")
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = build_model("simplecnn", SIZE, intensity="percentile")
    finally:
        keras.config.set_dtype_policy("float32")
    mixed.set_weights(plain.get_weights())
    assert any(layer.dtype_policy.compute_dtype == "bfloat16" for layer in mixed.layers)
    facts = export_onnx(mixed, tmp_path / ONNX_FILE, TEMPERATURE, 0.5)
    assert facts["precision"] == "float32"
    images = np.stack([blob_image(np.random.default_rng(i), SIZE, tumor=bool(i % 2)) for i in range(6)])
    images = images.astype(np.float32)
    onnx = run_onnx(tmp_path / ONNX_FILE, images)
    close("probabilities, bfloat16 model, vs its float32 copy", onnx["probabilities"],
          to_float32(mixed).predict(images, verbose=0))
    assert np.abs(onnx["probabilities"] - mixed.predict(images, verbose=0)).max() < 0.05
