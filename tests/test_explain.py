from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BLOB_CENTRE, BLOB_RADIUS, blob_image, nifti_bytes, one_error_line
import tumorclf.explain.gradcam as explain
from tumorclf.metrics.calibration import OperatingPoint
from tumorclf.cli.main import main
from tumorclf.explain.gradcam import class_to_explain, heatmaps, load_run_model, log_odds, output_stems, target_layer
from tumorclf.models.factory import build_model
from tumorclf.models.registry import MODELS
from tumorclf.runs.folder import RunDir

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


@pytest.mark.parametrize("name", list(MODELS))
def test_target_layer_is_the_registry_gradcam_layer(name):
    model = build_model(name, 32)
    layer = target_layer(model)
    assert layer == MODELS[name].gradcam_layer == EXPECTED_LAYER[name]
    assert len(model.get_layer(layer).output.shape) == 4  # a spatial feature map, as Grad-CAM needs


def test_named_layer_and_bad_layer():
    import keras

    model = build_model("simplecnn", 32)
    assert target_layer(model, "relu2") == "relu2"
    with pytest.raises(ValueError, match="no layer 'nope'.*'relu3'"):
        target_layer(model, "nope")
    with pytest.raises(ValueError, match="not a spatial feature map"):
        target_layer(model, "fc1")
    inputs = keras.Input((8, 8, 3))
    stranger = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv")(inputs), name="stranger")
    with pytest.raises(ValueError, match="--layer"):
        target_layer(stranger)
    assert target_layer(stranger, "conv") == "conv"


def test_predicted_class_is_taken_at_the_threshold():
    prob = np.array([0.2, 0.45, 0.55, 0.9])
    assert class_to_explain("predicted", prob, 0.5).tolist() == [0, 0, 1, 1]
    assert class_to_explain("predicted", prob, 0.4).tolist() == [0, 1, 1, 1]
    assert class_to_explain("tumor", prob, 0.4).tolist() == [1, 1, 1, 1]
    assert class_to_explain("healthy", prob, 0.4).tolist() == [0, 0, 0, 0]


def test_gradcam_of_a_trained_model_points_at_the_tumour(trained_run: Path):
    model = load_run_model(trained_run)
    rng = np.random.default_rng(123)
    images = np.stack([blob_image(rng, 48, True) for _ in range(12)])
    assert (model.predict(images.astype("float32"), verbose=0)[:, 1] >= 0.5).mean() >= 0.75
    yy, xx = np.mgrid[:48, :48] / 48
    near = (yy - BLOB_CENTRE[0]) ** 2 + (xx - BLOB_CENTRE[1]) ** 2 < (2 * BLOB_RADIUS) ** 2  # the blob and its rim
    for method in ("gradcam", "gradcam++"):
        cams = heatmaps(load_run_model(trained_run), images, np.ones(12, int), method)
        # pointing game: a map's maximum falls near the blob by chance for near.mean() (18%) of the images
        hits = sum(bool(near.flat[np.argmax(cam)]) for cam in cams)
        assert hits >= 9, (method, hits)
        assert cams[:, near].sum() / cams.sum() > 1.2 * near.mean(), method


def test_explain_command_writes_overlays_and_comparison(trained_run: Path, tmp_path: Path, capsys):
    """One --run: an overlay per readable image; several: one comparison figure per image."""
    images = trained_run.parents[1] / "data"
    files = sorted((images / "tumor").iterdir())[:2] + [tmp_path / "broken.png"]
    files[-1].write_bytes(b"nope")
    assert main(["explain", "--run", str(trained_run), "--inputs", *map(str, files),
                 "--out", str(tmp_path / "one")]) == 0
    written = sorted((tmp_path / "one").glob("*.png"))
    assert len(written) == 2 and Image.open(written[0]).size[0] > 300
    assert capsys.readouterr().out.split() == list(map(str, written))
    assert main(["explain", "--run", str(trained_run), str(trained_run), "--inputs", str(images / "healthy"),
                 "--limit", "1", "--method", "gradcam++", "--out", str(tmp_path / "cmp")]) == 0
    assert [p.name.startswith("compare_") for p in (tmp_path / "cmp").glob("*_gradcam++.png")] == [True]
    assert main(["explain", "--run", str(tmp_path), "--inputs", str(files[0]), "--out", str(tmp_path / "x")]) == 2


def test_explain_earlier_flags_still_work_with_a_notice(trained_run: Path, tmp_path: Path, capsys):
    """--images (now --inputs) and --runs (now --run) still work, each with a `tumorclf: deprecated:` line."""
    image = sorted((trained_run.parents[1] / "data" / "tumor").iterdir())[0]
    assert main(["explain", "--run", str(trained_run), "--images", str(image), "--out", str(tmp_path / "one")]) == 0
    assert [p.name for p in (tmp_path / "one").iterdir()] == [f"tumor_{image.stem}_gradcam.png"]
    assert "tumorclf: deprecated: --images will be removed; use --inputs" in capsys.readouterr().err
    assert main(["explain", "--runs", str(trained_run), str(trained_run), "--inputs", str(image),
                 "--out", str(tmp_path / "cmp")]) == 0
    assert [p.name for p in (tmp_path / "cmp").iterdir()] == [f"compare_tumor_{image.stem}_gradcam.png"]
    assert "tumorclf: deprecated: --runs will be removed; use --run" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--layer", "nope"], "has no layer 'nope'"),
    (["--limit", "0"], "--limit"),
    (["--method", "lime"], "invalid choice"),
    (["--runs", "x"], "argument --runs: not allowed with argument --run"),
    (["--slices", "foo"], "--slices: slices must be middle, all or a 0-based slice index K, got 'foo'"),
])
def test_explain_bad_input_is_one_line(trained_run: Path, tmp_path: Path, capsys, args, message):
    image = sorted((trained_run.parents[1] / "data" / "tumor").iterdir())[0]
    capsys.readouterr()
    assert main(["explain", "--run", str(trained_run), "--inputs", str(image), "--out", str(tmp_path), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tumorclf: error: ") and message in lines[0], lines
    assert main(["explain", "--run", str(trained_run), "--inputs", str(tmp_path / "missing.png"),
                 "--out", str(tmp_path)]) == 2
    assert "inputs not found" in one_error_line(capsys)
    assert main(["explain", "--inputs", str(image), "--out", str(tmp_path)]) == 2
    assert "one of the arguments --run is required" in one_error_line(capsys)
    assert main(["explain", "--run", str(trained_run), "--out", str(tmp_path)]) == 2
    assert "--inputs is required (or --boxes" in one_error_line(capsys)


def test_predicted_class_follows_the_run_threshold(trained_run: Path, tmp_path: Path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("gate.*"))  # no gate: model.predict answers
    files = sorted((trained_run.parents[1] / "data" / "tumor").iterdir())[:3]
    explained = []

    def fake_heatmaps(model, images, classes, method="gradcam", layer=None):
        explained.append(list(classes))
        return np.zeros(images.shape[:3], "float32")

    class KnownProbabilities:  # the run's model, answering P(tumor) = 0.2, 0.5, 0.7 (float32, like Keras)
        def __init__(self, model):
            self.model = model

        def __getattr__(self, name):
            return getattr(self.model, name)

        def predict(self, images, verbose=0):
            p = np.array([0.2, 0.5, 0.7], "float32")[: len(images)]
            return np.stack([1 - p, p], axis=1)

    real_load = explain.load_run_model
    monkeypatch.setattr(explain, "heatmaps", fake_heatmaps)
    monkeypatch.setattr(explain, "load_run_model", lambda run_dir: KnownProbabilities(real_load(run_dir)))
    metrics = json.loads((run / "metrics.json").read_text())
    for threshold, expected in ((0.0, [1, 1, 1]), (0.5, [0, 1, 1]), (0.69, [0, 0, 1]), (0.7, [0, 0, 0]),
                                (1.0, [0, 0, 0])):  # float32(0.7) < 0.7: Healthy at 0.7, as classification_metrics
        (run / "operating_point.json").unlink(missing_ok=True)  # a run without one: metrics.json's threshold
        (run / "metrics.json").write_text(json.dumps({**metrics, "threshold": threshold}))
        explained.clear()
        explain.explain_run(run, files, "gradcam", "predicted")
        assert explained == [expected]
        # with an operating point (temperature 1 keeps P): its threshold, not metrics.json's
        (run / "metrics.json").write_text(json.dumps({**metrics, "threshold": 1.0 - threshold}))
        RunDir(run).write_operating_point(OperatingPoint(1.0, threshold, 0.95, threshold, "validation", 1, {}))
        explained.clear()
        explain.explain_run(run, files, "gradcam", "predicted")
        assert explained == [expected]
    # a temperature moves P(tumor) before the threshold: T = 0.5 sharpens 0.7 to 0.845, 0.2 to 0.059
    RunDir(run).write_operating_point(OperatingPoint(0.5, 0.8, 0.95, 0.8, "validation", 1, {}))
    explained.clear()
    explain.explain_run(run, files, "gradcam", "predicted")
    assert explained == [[0, 0, 1]]


def test_outcome_overlays_take_the_prediction_at_the_threshold(trained_run: Path, tmp_path: Path, monkeypatch):
    from tumorclf.data.decoder import decode_image

    monkeypatch.setattr(explain, "heatmaps", lambda model, images, classes, *a, **k: np.zeros(images.shape[:3]))
    data = trained_run.parents[1] / "data"
    paths = [sorted((data / folder).iterdir())[0] for folder in ("healthy", "tumor")]
    images = np.stack([decode_image(p, 48) for p in paths])
    labels, prob = np.array([0, 1]), np.array([0.3, 0.6])
    for threshold, outcomes in ((0.5, {"TN", "TP"}), (0.2, {"FP", "TP"}), (0.7, {"TN", "FN"})):
        out = tmp_path / str(threshold)
        assert explain.save_outcome_overlays(trained_run / "best.keras", images, labels, prob, list(map(str, paths)),
                                             1, out, threshold=threshold) == 2
        assert {p.name.split("_")[0] for p in out.glob("*.png")} == outcomes


def test_run_saves_outcome_overlays_when_asked(blob_dataset: Path, tmp_path: Path):
    args = ["train", "--data", str(blob_dataset), "--output", str(tmp_path), "--name", "g", "--epochs", "1",
            "--image-size", "32", "--batch-size", "8", "--gradcam", "1"]
    assert main(args) == 0
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


def test_output_stems_are_distinct_and_stable():
    paths = [Path("d/healthy/img001.png"), Path("d/tumor/img001.png"), Path("e/tumor/img001.jpg"),
             Path("d/tumor/img001.png"), Path("d/Tumor/IMG001.png"), Path("img001.png")]
    stems = output_stems(paths)
    assert stems == ["healthy_img001", "tumor_img001", "tumor_img001-2", "tumor_img001-3", "Tumor_IMG001-4",
                     "img001"]
    assert output_stems(paths) == stems  # the same list, the same names
    assert len({s.casefold() for s in output_stems(paths + [Path("x/tumor_img001-2.png").name])}) == len(paths) + 1


def test_same_file_name_in_two_class_folders_gives_two_outputs(trained_run: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(explain, "heatmaps", lambda model, images, classes, *a, **k: np.zeros(images.shape[:3]))
    data = trained_run.parents[1] / "data"
    name = sorted((data / "healthy").iterdir())[0].name
    files = [data / "healthy" / name, data / "tumor" / name]
    assert files[1].is_file()
    one = explain.explain_images(trained_run, files, tmp_path / "one")
    assert [p.name for p in one] == [f"healthy_{Path(name).stem}_gradcam.png", f"tumor_{Path(name).stem}_gradcam.png"]
    assert sorted((tmp_path / "one").glob("*.png")) == sorted(one)
    # names are given over the whole list, readable or not: a broken tumor/<name> keeps its own name
    broken = tmp_path / "tumor" / name
    broken.parent.mkdir()
    broken.write_bytes(b"nope")
    again = explain.explain_images(trained_run, [files[0], broken, files[1]], tmp_path / "again")
    assert [p.name for p in again] == [f"healthy_{Path(name).stem}_gradcam.png",
                                       f"tumor_{Path(name).stem}-2_gradcam.png"]
    compared = explain.compare_runs([trained_run, trained_run], files, tmp_path / "cmp")
    assert len(compared) == 2 and len(set(compared)) == 2
    assert sorted((tmp_path / "cmp").glob("*.png")) == sorted(compared)
    labels, prob = np.array([1, 1]), np.array([0.9, 0.8])
    images = np.zeros((2, 48, 48, 3), np.uint8)
    assert explain.save_outcome_overlays(trained_run / "best.keras", images, labels, prob, list(map(str, files)),
                                         2, tmp_path / "outcomes") == 2
    assert len(list((tmp_path / "outcomes").glob("TP_*.png"))) == 2


def test_a_framed_model_is_explained_over_the_image_it_frames():
    """With a `framing` layer, heatmaps are computed and the overlay image is the crop the convolutions see
    (the off-centre square comes back centred); a model without one shows the images as given."""
    model = build_model("vgg16", 64, intensity="percentile", framing="foreground")
    images = np.zeros((1, 64, 64, 3), "uint8")
    images[0, 4:20, 8:24] = 200
    cams = heatmaps(model, images.astype("float32"), np.array([1]))
    assert cams.shape == (1, 64, 64) and np.isfinite(cams).all()
    seen = explain.as_seen(model, images)
    assert seen.shape == images.shape and seen.dtype == np.uint8
    rows, cols = np.nonzero(seen[0, :, :, 0] > 100)
    assert abs(rows.mean() - 31.5) < 1 and abs(cols.mean() - 31.5) < 1
    assert len(rows) > 8 * np.count_nonzero(images[0, :, :, 0])  # magnified about 3.6x per side
    assert explain.as_seen(build_model("vgg16", 64), images) is images


def test_run_titles_name_the_recipe_when_it_is_not_the_papers(trained_run: Path, tmp_path: Path):
    """Side-by-side comparisons of two recipes of one model must tell them apart."""
    assert explain.run_title(trained_run) == "simplecnn (scratch)"
    run = tmp_path / "fast"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("evaluation*"))
    record = json.loads((run / "config.json").read_text())
    record["config"].update(model="vgg16", imagenet=True, recipe="robust")
    (run / "config.json").write_text(json.dumps(record))
    assert explain.run_title(run) == "vgg16 (ImageNet, robust recipe)"


def test_images_the_gate_rejects_are_titled_cannot_assess(trained_run: Path, tmp_path: Path, monkeypatch):
    import matplotlib.axes

    monkeypatch.setattr(explain, "heatmaps", lambda model, images, classes, *a, **k: np.zeros(images.shape[:3]))
    titles: list[str] = []
    real_title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda ax, text, *a, **k: titles.append(text) or real_title(ax, text, *a, **k))
    slice_file = sorted((trained_run.parents[1] / "data" / "tumor").iterdir())[0]
    blank, tiny = tmp_path / "blank.png", tmp_path / "tiny.png"
    Image.new("RGB", (48, 48), (1, 1, 1)).save(blank)
    Image.open(slice_file).convert("RGB").resize((16, 16)).save(tiny)  # a slice, but under half the input size
    explain.explain_images(trained_run, [slice_file, blank, tiny], tmp_path / "out")
    overlays = [text for text in titles if not text.startswith("true:")]
    assert len(overlays) == 3 and overlays[0].startswith("predicted: ")
    assert overlays[1:] == ["cannot assess: blank", "cannot assess: too_small"]
    titles.clear()
    explain.compare_runs([trained_run], [slice_file, blank], tmp_path / "cmp")
    assert "\nP(tumor) = " in titles[1] and titles[3].endswith("\ncannot assess: blank")  # slice, run; slice, run
    # without a gate, every image gets a prediction
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("gate.*", "evaluation*"))
    titles.clear()
    explain.explain_images(run, [blank], tmp_path / "plain")
    assert titles[-1].startswith("predicted: ")


def write_volume(path: Path, size: int = 48) -> Path:
    """A NIfTI volume of six `size` px slices: 0 and 5 empty (--slices all drops them), 1-4 blob slices with the
    tumour in 1 and 3."""
    rng = np.random.default_rng(7)
    volume = np.zeros((size, size, 6), np.int16)
    for k in range(1, 5):
        volume[:, :, k] = blob_image(rng, size, k % 2 == 1)[..., 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(nifti_bytes(volume, gz=True))
    return path


def recorded_heatmaps(monkeypatch) -> list[tuple[np.ndarray, np.ndarray]]:
    """(images, maps) of each heatmaps call, the real maps."""
    real, calls = explain.heatmaps, []

    def recording(model, images, *args, **kwargs):
        calls.append((images, real(model, images, *args, **kwargs)))
        return calls[-1][1]

    monkeypatch.setattr(explain, "heatmaps", recording)
    return calls


def test_explain_slices_all_gives_one_image_per_brain_slice(trained_run: Path, tmp_path: Path, monkeypatch):
    import matplotlib.axes

    from tumorclf.data.decoder import decode_image, read_slices, resize

    volume = write_volume(tmp_path / "incoming" / "scan.nii.gz")
    photo = tmp_path / "incoming" / "b_slice.png"
    Image.fromarray(blob_image(np.random.default_rng(8), 48, True)).save(photo)
    calls = recorded_heatmaps(monkeypatch)
    assert main(["explain", "--run", str(trained_run), "--inputs", str(volume.parent), "--slices", "all",
                 "--out", str(tmp_path / "all")]) == 0
    assert sorted(p.name for p in (tmp_path / "all").glob("*.png")) == [
        "incoming_b_slice_gradcam.png", *(f"incoming_scan.nii_slice{k:03d}_gradcam.png" for k in range(1, 5))]
    slices = [resize(pixels, 48) for _, pixels in read_slices(volume, "all")]
    np.testing.assert_array_equal(np.concatenate([images for images, _ in calls]),
                                  np.stack([decode_image(photo, 48), *slices]))
    # side by side: one figure per slice, titled with it; the 2-D image once, under its own name
    titles: list[str] = []
    real_title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda ax, text, *a, **k: titles.append(text) or real_title(ax, text, *a, **k))
    assert main(["explain", "--run", str(trained_run), str(trained_run), "--inputs", str(photo), str(volume),
                 "--slices", "all", "--out", str(tmp_path / "cmp")]) == 0
    assert sorted(p.name for p in (tmp_path / "cmp").glob("*.png")) == [
        "compare_incoming_b_slice_gradcam.png", *(f"compare_incoming_scan.nii_slice{k:03d}_gradcam.png"
                                                  for k in range(1, 5))]
    assert [t.split("\n")[0] for t in titles[::3]] == ["b_slice.png", *(f"scan.nii.gz, slice {k}" for k in range(1, 5))]


def test_explain_slice_k_explains_that_slice(trained_run: Path, tmp_path: Path, monkeypatch):
    from tumorclf.data.decoder import read_slices, resize

    volume = write_volume(tmp_path / "incoming" / "scan.nii.gz")
    calls = recorded_heatmaps(monkeypatch)
    for k in (2, 3):
        written = explain.explain_images(trained_run, [volume], tmp_path / str(k), slices=str(k))
        assert [p.name for p in written] == [f"incoming_scan.nii_slice{k:03d}_gradcam.png"]
        np.testing.assert_array_equal(calls[-1][0][0], resize(read_slices(volume, k)[0][1], 48))
    (_, two), (_, three) = calls
    captions = []
    real_png = explain.explain_image_png
    monkeypatch.setattr(explain, "explain_image_png", lambda *a: captions.append(a[4]) or real_png(*a))
    explain.explain_images(trained_run, [volume], tmp_path / "titled", slices="2")
    assert captions == [f"scan.nii.gz, slice 2: {explain.run_title(trained_run)}, gradcam on predicted class"]
    assert np.abs(two - three).mean() > 0.05  # another slice, another map
    assert (tmp_path / "2").joinpath(written[0].name.replace("003", "002")).read_bytes() != written[0].read_bytes()
    # the default: the middle slice (6 // 2) under the file's own name, as before --slices
    written = explain.explain_images(trained_run, [volume], tmp_path / "middle")
    assert [p.name for p in written] == ["incoming_scan.nii_gradcam.png"]
    np.testing.assert_array_equal(calls[-1][0][0], resize(read_slices(volume, 3)[0][1], 48))


def test_explain_slice_out_of_range_is_a_one_line_skip(trained_run: Path, tmp_path: Path, capsys, caplog):
    volume = write_volume(tmp_path / "incoming" / "scan.nii.gz")
    photo = tmp_path / "incoming" / "b_slice.png"
    Image.fromarray(blob_image(np.random.default_rng(8), 48, True)).save(photo)
    out = tmp_path / "out"
    assert main(["explain", "--run", str(trained_run), "--inputs", str(volume), str(photo), "--slices", "9",
                 "--out", str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ["incoming_b_slice_gradcam.png"]  # nothing of the volume
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert skipped == [f"skipped {volume}: slice 9 out of range: the file has 6 slices (0-5)"]
    assert "Traceback" not in capsys.readouterr().err
    assert main(["explain", "--run", str(trained_run), str(trained_run), "--inputs", str(volume), "--slices", "6",
                 "--out", str(tmp_path / "cmp")]) == 0
    assert not list(tmp_path.glob("cmp/*"))
    capsys.readouterr()
    assert main(["explain", "--run", str(trained_run), "--inputs", str(volume), "--slices", "-1",
                 "--out", str(out)]) == 2
    assert "--slices: slices must be middle, all or a 0-based slice index K, got '-1'" in one_error_line(capsys)


def test_the_gate_sees_each_slices_own_size(trained_run: Path, tmp_path: Path, monkeypatch):
    """too_small comes from each chosen slice's size before the resize (a NIfTI volume's slices share one)."""
    monkeypatch.setattr(explain, "heatmaps", lambda model, images, classes, *a, **k: np.zeros(images.shape[:3]))
    small = write_volume(tmp_path / "incoming" / "small.nii.gz", size=16)  # under the gate's min side (24)
    large = write_volume(tmp_path / "incoming" / "large.nii.gz")
    kept, *_, quality = explain.explain_run(trained_run, [small, large], "gradcam", "predicted", slices="all")
    assert [(item.path.name, item.slice) for item in kept] == [(path.name, k) for path in (small, large)
                                                                for k in range(1, 5)]
    assert quality[:4] == ["too_small"] * 4 and "too_small" not in quality[4:]


def test_a_slice_name_that_meets_another_files_name_gets_a_suffix(trained_run: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(explain, "heatmaps", lambda model, images, classes, *a, **k: np.zeros(images.shape[:3]))
    volume = write_volume(tmp_path / "incoming" / "scan.nii.gz")
    namesake = tmp_path / "incoming" / "scan.nii_slice002.png"
    Image.fromarray(blob_image(np.random.default_rng(9), 48, False)).save(namesake)
    written = explain.explain_images(trained_run, [volume, namesake], tmp_path / "out", slices="2")
    assert [p.name for p in written] == ["incoming_scan.nii_slice002-2_gradcam.png",
                                         "incoming_scan.nii_slice002_gradcam.png"]
    assert written[0].read_bytes() != written[1].read_bytes()


def test_the_gradient_score_is_the_class_log_odds():
    """With two softmax outputs one logit alone says nothing: the score is the class's logit minus the other's."""
    logits = np.array([[2.0, -1.0], [0.5, 3.0]], dtype="float32")
    np.testing.assert_allclose(log_odds(np.array([1, 0]))(logits), [-3.0, -2.5])
    np.testing.assert_allclose(log_odds(np.array([0, 1]))(logits), [3.0, 2.5])
    shifted = logits + 10  # adding the same to both logits changes no probability, and no score
    np.testing.assert_allclose(log_odds(np.array([1, 1]))(shifted), log_odds(np.array([1, 1]))(logits))
