from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from tumorclf.models.factory import (
    ImageNetPreprocessing,
    WeightsError,
    build_model,
    resolve_weights,
    set_trainable,
)
from tumorclf.models.registry import HEAD_LAYERS, MODELS
from tumorclf.training.loop import compile_model

BACKBONES = {name: entry for name, entry in MODELS.items() if entry.pretrainable}

SHARED_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights"
VGG16_FILE = SHARED_WEIGHTS / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
CONFIGURATIONS = [("simplecnn", False)] + [(name, pretrained) for name in BACKBONES for pretrained in (False, True)]


# How each configuration runs its train step and its forward pass. SimpleCNN and VGG16 trace and run a compiled (graph)
# train step, as `fit` does: between them the project's own layers (ImageNetPreprocessing, batch norm, the head)
# train in a traced step. The other backbones (`build_model`'s one path for every `keras.applications` model) take
# theirs eagerly: the same loss, gradients and optimizer update, without the 15-60 s Keras takes to trace a
# 170-500 layer train step here. Every backbone's pretrained configuration runs a traced forward pass (predict)
# where that is cheap, and ResNet101/152 (ResNet50's graph, deeper) call the model eagerly.
GRAPH_STEP = {"simplecnn", "vgg16"}
GRAPH_FORWARD = {"vgg16", "densenet121", "resnet50"}
DEEPER = {"resnet101", "resnet152"}  # ResNet50 trains the family's step


@pytest.fixture(scope="session")
def fake_imagenet(tmp_path_factory: pytest.TempPathFactory):
    """Weight files in Keras' names and no-top layout, with random values, for backbones without real ones here:
    one per backbone and session. `make(name, model)` writes it from the backbone layers of `model`, a fresh
    scratch build of `name` (the scratch configuration's, so no model is built for the file alone), unless it is
    written already; `make(name)` builds one."""
    folder = tmp_path_factory.mktemp("fake_imagenet")

    def make(name: str, model: keras.Model | None = None) -> Path:
        path = folder / BACKBONES[name].weights_file
        if path.is_file():
            return path
        model = model or build_model(name, 32)
        # the keras.applications model inside: every layer but the input, the preprocessing and the head
        backbone = [layer for layer in model.layers[1:] if layer.name not in ("preprocess", *HEAD_LAYERS)]
        with h5py.File(path, "w") as f:  # Keras' legacy no-top layout, as in the published files
            f.attrs["layer_names"] = [layer.name.encode() for layer in backbone]
            for layer in backbone:
                group = f.create_group(layer.name)
                group.attrs["weight_names"] = [f"{layer.name}/{w.name}".encode() for w in layer.weights]
                for w in layer.weights:
                    group[f"{layer.name}/{w.name}"] = w.numpy()
        return path

    return make


def imagenet_file(name: str, fake_imagenet, model: keras.Model | None = None) -> str:
    """The ImageNet weights a pretrained configuration of `name` loads here: the shared VGG16 file, else a fake."""
    return str(VGG16_FILE) if name == "vgg16" and VGG16_FILE.is_file() else str(fake_imagenet(name, model))


def first_kernel_in_file(path: str) -> tuple[str, np.ndarray]:
    """The name and the values of the first layer with weights in a Keras no-top weights file."""
    with h5py.File(path, "r") as f:
        for name in f.attrs["layer_names"]:
            name = name.decode() if isinstance(name, bytes) else name
            if len(f[name].attrs["weight_names"]):
                return name, np.asarray(f[name][f[name].attrs["weight_names"][0]])
    raise AssertionError(f"no weights in {path}")


def test_eleven_configurations():
    assert len(CONFIGURATIONS) == 11
    # every backbone runs in a traced graph below, by a train step or by predict
    assert GRAPH_STEP | GRAPH_FORWARD | DEEPER == {name for name, _ in CONFIGURATIONS}


@pytest.mark.parametrize("name, pretrained", CONFIGURATIONS, ids=[f"{n}-{'imagenet' if p else 'scratch'}" for n, p in CONFIGURATIONS])
def test_every_configuration_builds_and_trains_one_step(name, pretrained, fake_imagenet):
    """Every configuration builds as a flat graph with a float32 head; pretrained ones load their weights and
    predict, and every family (its scratch configuration) trains one step that changes its weights; the deeper
    variants of a family (`DEEPER`) run forward only, since their step is ResNet50's with more blocks."""
    weights = imagenet_file(name, fake_imagenet) if pretrained else None
    model = build_model(name, 32, weights)
    if name in BACKBONES and not pretrained:  # this random model is the pretrained configuration's weight file
        imagenet_file(name, fake_imagenet, model)
    assert model.output_shape == (None, 2)
    assert model.layers[-1].dtype_policy.compute_dtype == "float32"
    # flat graph: no nested Functional sub-model, so Grad-CAM tools can reach the last conv layer
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    if pretrained:  # the same graph as the scratch configuration, which trains a step below: the file's values
        layer, kernel = first_kernel_in_file(weights)  # are in the model, and a forward pass
        np.testing.assert_array_equal(model.get_layer(layer).get_weights()[0], kernel)
        out = model.predict(x, verbose=0) if name in GRAPH_FORWARD else np.asarray(model(x, training=False))
        assert np.isfinite(out).all()
        return
    if name in DEEPER:
        assert np.isfinite(np.asarray(model(x, training=True))).all()
        return
    compile_model(model, 1e-3, 0.9)
    model.run_eagerly = name not in GRAPH_STEP
    y = np.eye(2, dtype="float32")[[0, 1, 0, 1]]
    before = [w.numpy().copy() for w in model.trainable_weights[:2]]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss).all()
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights[:2]))


@pytest.mark.skipif(not VGG16_FILE.is_file(), reason="shared VGG16 weights not present")
def test_vgg16_imagenet_loads_exactly_the_files_values():
    path, origin = resolve_weights("vgg16", True, str(SHARED_WEIGHTS))
    assert path == str(VGG16_FILE) and "local file" in origin
    model = build_model("vgg16", 64, path)
    checked = 0
    with h5py.File(path, "r") as f:
        for name in f.attrs["layer_names"]:
            name = name.decode() if isinstance(name, bytes) else name
            stored = [np.asarray(f[name][w]) for w in f[name].attrs["weight_names"]]
            if stored:
                for kept, expected in zip(model.get_layer(name).get_weights(), stored):
                    np.testing.assert_array_equal(kept, expected)
                    checked += 1
    assert checked == 26  # 13 conv layers, kernel and bias each


def test_local_weights_dir_beats_env_and_download(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / BACKBONES["resnet50"].weights_file).write_bytes(b"x")
    monkeypatch.setenv("TUMORCLF_WEIGHTS_DIR", str(second))
    assert resolve_weights("resnet50", True, str(first))[0] == str(first / BACKBONES["resnet50"].weights_file)
    assert resolve_weights("resnet50", True, None)[0] == str(second / BACKBONES["resnet50"].weights_file)
    assert resolve_weights("resnet50", False, str(first)) == (None, "random initialisation (from scratch)")


def test_missing_weights_error_names_the_file(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    monkeypatch.delenv("TUMORCLF_WEIGHTS_DIR", raising=False)
    with pytest.raises(WeightsError) as info:
        resolve_weights("densenet121", True, str(tmp_path))
    message = str(info.value)
    assert "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path) in message and "--weights-dir" in message


@pytest.mark.parametrize("mode, application", [
    ("caffe", keras.applications.vgg16.preprocess_input),
    ("caffe", keras.applications.resnet.preprocess_input),
    ("torch", keras.applications.densenet.preprocess_input),
])
def test_preprocessing_layer_equals_keras_applications(mode, application):
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = application(x.copy())
    np.testing.assert_allclose(np.asarray(ImageNetPreprocessing(mode)(x)), expected, rtol=1e-5, atol=1e-4)


def test_saved_model_round_trip_takes_raw_rgb(tmp_path):
    model = build_model("resnet50", 32)
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    # eager forward passes: the same outputs as predict's, without tracing ResNet50 twice
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)), atol=1e-6)


def test_fine_tuning_policies():
    model = build_model("vgg16", 32)
    with_weights = sum(1 for layer in model.layers if layer.weights)
    assert set_trainable(model, "full") == with_weights
    assert set_trainable(model, "frozen") == 1  # the softmax layer
    assert set_trainable(model, "from_layer", "block5") == 4  # block5_conv1-3 and the head
    assert not model.get_layer("block4_conv3").trainable and model.get_layer("block5_conv1").trainable
    with pytest.raises(ValueError, match="no layer"):
        set_trainable(model, "from_layer", "block9")


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("alexnet", 32)


@pytest.mark.parametrize("name", ["vgg16", "simplecnn"])
def test_framing_and_intensity_are_layers_that_saved_models_keep(name, tmp_path):
    """`framing`/`intensity` put ForegroundCrop and PercentileScaling first in the model, in the stem the fast
    recipe caches, and in the saved file: the saved model takes plain images and standardises them itself."""
    from tumorclf.models.stem import split_model

    model = build_model(name, 32, intensity="percentile", framing="foreground")
    names = [layer.name for layer in model.layers]
    assert names[1:3] == ["framing", "intensity"]
    assert not {"framing", "intensity"} & {layer.name for layer in build_model(name, 32).layers}
    if MODELS[name].fast_cut:
        stem, _ = split_model(model, MODELS[name].fast_cut)
        assert {"framing", "intensity"} <= {layer.name for layer in stem.layers}
    x = np.zeros((2, 32, 32, 3), "float32")
    x[0, 4:12, 6:14] = 80.0  # a small dim square, and the same square larger, brighter and elsewhere
    x[1, 10:26, 12:28] = 240.0
    seen = np.asarray(keras.Model(model.input, model.get_layer("intensity").output)(x))
    # what the backbone sees is the same image (up to resampling blur at the edges), though the inputs differ
    assert np.abs(seen[0] - seen[1]).mean() < 20 < 60 < np.abs(x[0] - x[1]).mean()
    out = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "m.keras").predict(x, verbose=0), out, atol=1e-6)
    with pytest.raises(ValueError, match="unknown intensity"):
        build_model(name, 32, intensity="zscore")
    with pytest.raises(ValueError, match="unknown framing"):
        build_model(name, 32, framing="tight")
