"""The model registry: every fact about a model in one place.

Each entry says how the model is built (`keras.applications` constructor or the project's
SimpleCNN), how its input is normalised, which ImageNet file it loads, where the fast recipe cuts
it, and which layer Grad-CAM explains. This module imports no Keras, so the config and the CLI can
read it without loading TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    application: str | None  # keras.applications constructor name; None for SimpleCNN
    preprocessing: str  # "unit" (x / 255), "caffe" (BGR minus ImageNet means) or "torch" (ImageNet mean/std)
    head_input: str  # the first head layer: "avg_pool" after a backbone, "flatten" after SimpleCNN
    gradcam_layer: str  # the last spatial feature map before the head (taken before a final pooling layer)
    fast_cut: str | None = None  # the fast recipe freezes everything up to and including this layer
    url_folder: str | None = None  # folder of Keras' download server holding the ImageNet file

    @property
    def pretrainable(self) -> bool:
        return self.application is not None

    @property
    def weights_file(self) -> str:
        """Keras' own file name for the no-top ImageNet weights."""
        return f"{(self.application or self.name).lower()}_weights_tf_dim_ordering_tf_kernels_notop.h5"

    @property
    def weights_url(self) -> str:
        return f"{KERAS_WEIGHTS_URL}{self.url_folder}/{self.weights_file}"


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("simplecnn", None, "unit", "flatten", "relu3"),
    ModelSpec("vgg16", "VGG16", "caffe", "avg_pool", "block5_conv3", "block4_pool", "vgg16"),
    ModelSpec("densenet121", "DenseNet121", "torch", "avg_pool", "relu", "pool4_pool", "densenet"),
    ModelSpec("resnet50", "ResNet50", "caffe", "avg_pool", "conv5_block3_out", "conv4_block6_out", "resnet"),
    ModelSpec("resnet101", "ResNet101", "caffe", "avg_pool", "conv5_block3_out", "conv4_block23_out", "resnet"),
    ModelSpec("resnet152", "ResNet152", "caffe", "avg_pool", "conv5_block3_out", "conv4_block36_out", "resnet"),
)}

# The head every model shares (built by models.build_model); fine-tuning policies always train it.
HEAD_LAYERS = ("avg_pool", "flatten", "fc1", "head_dropout", "predictions")


def spec(name: str) -> ModelSpec:
    """The registry entry of `name`; ValueError naming the known models otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def weights_folders(weights_dir: str | None = None) -> list[Path]:
    """The folders searched for ImageNet weight files, in order: `weights_dir`, then `$TUMORCLF_WEIGHTS_DIR`."""
    return [Path(d).expanduser() for d in (weights_dir, os.environ.get("TUMORCLF_WEIGHTS_DIR")) if d]


def local_weights(name: str, weights_dir: str | None = None, keras_cache: bool = True) -> Path | None:
    """The ImageNet file of model `name` where it already lies (the weight folders, then Keras' download cache
    under $KERAS_HOME or ~/.keras), or None: what a run could start from without a download."""
    entry = spec(name)
    if not entry.pretrainable:
        return None
    folders = weights_folders(weights_dir)
    if keras_cache:
        folders.append(Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models")
    return next((folder / entry.weights_file for folder in folders if (folder / entry.weights_file).is_file()), None)
