"""The study's models as flat functional graphs that take plain 0-255 RGB images."""

from __future__ import annotations

import os

import keras
from keras import layers, ops

from tumorclf.errors import ConfigError
from tumorclf.errors import UserError
from tumorclf.transforms.framing import ForegroundCrop
from tumorclf.transforms.intensity import PercentileScaling
from tumorclf.models.registry import HEAD_LAYERS, local_weights, spec, weights_folders

class WeightsError(UserError, RuntimeError):
    """ImageNet weights were asked for but cannot be found or downloaded."""


_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="tumorclf")
class ImageNetPreprocessing(layers.Layer):
    """keras.applications' `preprocess_input` as a layer, so saved models take 0-255 RGB.

    `mode="caffe"`: RGB to BGR, minus the ImageNet channel means (VGG16, ResNet).
    `mode="torch"`: scaled to 0-1, minus mean, divided by std, per channel (DenseNet).
    """

    def __init__(self, mode: str, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in ("caffe", "torch"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR, self.compute_dtype)
        mean = ops.convert_to_tensor(_TORCH_MEAN, self.compute_dtype)
        std = ops.convert_to_tensor(_TORCH_STD, self.compute_dtype)
        return (x / 255.0 - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a `.keras` model saved by tumorclf; this module registers its custom layers."""
    return keras.saving.load_model(path)


def to_float32(model: keras.Model) -> keras.Model:
    """A float32 copy of a mixed-precision model (same weights), e.g. for gradient-based explanations."""
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers):
        return model

    def float32_policies(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy":
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {key: float32_policies(value) for key, value in node.items()}
        if isinstance(node, list):
            return [float32_policies(item) for item in node]
        return node

    copy = keras.Model.from_config(float32_policies(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def resolve_weights(model: str, imagenet: bool, weights_dir: str | None = None) -> tuple[str | None, str]:
    """Where the backbone's initial weights come from: (path or None, a description for the config).

    Order: `weights_dir`, then `$TUMORCLF_WEIGHTS_DIR`, then Keras' cache and download.
    Raises `WeightsError` naming the file to place when none of these has it.
    """
    if not imagenet:
        return None, "random initialisation (from scratch)"
    entry = spec(model)
    if not entry.pretrainable:
        raise WeightsError(f"{model} has no ImageNet weights")
    file_name = entry.weights_file
    local = local_weights(model, weights_dir, keras_cache=False)
    if local is not None:
        return str(local), f"local file {local}"
    url = entry.weights_url
    try:
        path = keras.utils.get_file(file_name, url, cache_subdir="models")
    except Exception as exc:  # any network or file-system failure of the download
        looked = ", ".join(map(str, weights_folders(weights_dir))) or "no local folder given"
        raise WeightsError(
            f"ImageNet weights for {model} not found: place {file_name} in a folder given by "
            f"--weights-dir or TUMORCLF_WEIGHTS_DIR (looked in: {looked}), or allow Keras to "
            f"download it from {url} ({type(exc).__name__})"
        ) from None
    return str(path), f"keras download/cache {path}"


def build_model(
    name: str,
    image_size: int,
    weights: str | None = None,
    dropout: float = 0.5,
    intensity: str = "raw",
    framing: str = "full",
) -> keras.Model:
    """One flat functional model: 0-255 RGB in, softmax over (Healthy, Tumor) out, in float32.

    `framing="foreground"` crops each image to its head first (`framing.ForegroundCrop`, layer "framing"),
    `intensity="percentile"` then rescales it by its own percentiles (`intensity.PercentileScaling`, layer
    "intensity"): both inside the model, so every use of it, exported ones included, standardises alike."""
    entry = spec(name)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    if framing == "foreground":
        x = ForegroundCrop(name="framing")(x)
    elif framing != "full":
        raise ValueError(f"unknown framing {framing!r}")
    if intensity == "percentile":
        x = PercentileScaling(name="intensity")(x)
    elif intensity != "raw":
        raise ValueError(f"unknown intensity {intensity!r}")
    if entry.pretrainable:
        x = ImageNetPreprocessing(entry.preprocessing, name="preprocess")(x)
        base = getattr(keras.applications, entry.application)(include_top=False, weights=None, input_tensor=x)
        if weights is not None:
            base.load_weights(weights)
        features = base.output
    else:
        features = _simple_cnn_features(x)
    if entry.head_input == "flatten":
        x = layers.Flatten(name="flatten")(features)
        x = layers.Dense(128, activation="relu", name="fc1")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(2, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def _simple_cnn_features(inputs):
    """The study's baseline body: three conv blocks (conv, batch norm, ReLU, max-pool)."""
    x = layers.Rescaling(1.0 / 255, name="normalise")(inputs)
    for i, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    return x



def set_trainable(model: keras.Model, policy: str, unfreeze_from: str | None = None) -> int:
    """Apply a fine-tuning policy; returns how many layers with weights are trainable.

    `full`: everything trains. `frozen`: only the head trains. `from_layer`: the head and
    every layer from the first whose name starts with `unfreeze_from` (e.g. "block5" or "conv5").
    """
    if policy == "full":
        start = 0
    elif policy == "frozen":
        start = len(model.layers)
    elif policy == "from_layer":
        matches = [i for i, layer in enumerate(model.layers) if layer.name.startswith(unfreeze_from or "\0")]
        if not matches:
            raise ConfigError(f"unfreeze_from: no layer of {model.name} is named {unfreeze_from!r} or starts with it")
        start = matches[0]
    else:
        raise ValueError(f"unknown fine-tuning policy {policy!r}")
    for i, layer in enumerate(model.layers):
        layer.trainable = i >= start or layer.name in HEAD_LAYERS
    return sum(1 for layer in model.layers if layer.trainable and layer.weights)
