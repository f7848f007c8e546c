"""The input quality gate: "cannot assess" instead of a probability for a blank, tiny, colour or
out-of-distribution image.

A classifier scores anything it is given: a blank slice comes back near 0.5 and a photo as
confidently as a scan. The gate answers first whether the model may answer at all. Each image gets a
`quality`: `ok`, or the first reason that applies, in this order:

- `too_small`: the file's short side is under half the model's input (upscaled more than 2x). Known
  only where the file is (predict, evaluate, serve_bytes); the pixel signature `serve` cannot tell;
- `blank`: the 1st-99th percentile gray range is at most 20 of 255 (the audit's `blank`);
- `not_grayscale_mri`: mean per-pixel channel spread above 8 of 255 (the audit's `colour`);
- `out_of_distribution`: the class-conditional Mahalanobis distance (Lee et al., 2018; one covariance
  shared by both classes, Ledoit-Wolf shrunk) of the model's own intermediate features (`feature_layer`,
  pooled) to the training images' is above a threshold set on the validation split so that at most 1%
  of it is rejected.

The statistics (class means, precision matrix, thresholds) are weights of a registered Keras layer,
`QualityGate`, so predict, evaluate and both SavedModel signatures compute the same score with the
same ops. A run keeps them in `gate.npz` and `gate.json` (`RunDir`), written at the end of training or
by `tumorclf gate --run RUN`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
from keras import ops

from tumorclf.data.pixel_statistics import (  # the audit's thresholds too
    BLANK_SPREAD,
    COLOUR_CHROMA,
)
from tumorclf.errors import UserError
from tumorclf.models.registry import spec
from tumorclf.models.stem import stem_outputs
from tumorclf.utils.array_cache import ArrayCache
from tumorclf.utils.files import atomic_write_bytes, atomic_write_json

REASONS = ("ok", "too_small", "blank", "not_grayscale_mri", "out_of_distribution")
OK, TOO_SMALL, BLANK, NOT_GRAYSCALE, OUT_OF_DISTRIBUTION = range(len(REASONS))
VALIDATION_REJECTION = 0.01  # at most this share of the validation split is rejected as out of distribution
FEATURE_LAYERS = ("fc1", "avg_pool")  # without a registry cut: SimpleCNN's first dense layer, a pooled backbone
GATE_ARRAYS = "gate.npz"
GATE_JSON = "gate.json"


class GateError(UserError, ValueError):
    """A run's gate files are missing or unreadable; the message says which and what to do."""


def feature_layer(model: keras.Model) -> str:
    """The layer whose (pooled) output the gate compares: the stage where the registry's fast recipe cuts
    the backbone (VGG16's block4_pool), else SimpleCNN's first dense layer. Not the fine-tuned last stage:
    on the robust VGG16 its pooled features put uniform noise, blank and colour images within the training
    distribution (0 of 20 noise images above the 1%-of-validation threshold), block4's put all of them out
    (docs/quality-gate.md)."""
    names = {layer.name for layer in model.layers}
    try:
        cut = spec(model.name).fast_cut
    except ValueError:  # a model not built from the registry
        cut = None
    for name in (cut, *FEATURE_LAYERS):
        if name in names:
            return name
    raise ValueError(f"model {model.name} has none of the feature layers {', '.join(FEATURE_LAYERS)}")


def pooled(model: keras.Model, layer: str):
    """The output of `layer`, global-average pooled when it is a feature map."""
    tensor = model.get_layer(layer).output
    if len(tensor.shape) != 4:
        return tensor
    # float32 whatever the global policy: a gate fitted at the end of a bfloat16 training run must score as the
    # float32 predict and evaluate do
    return keras.layers.GlobalAveragePooling2D(name="gate_pool", dtype="float32")(tensor)


@keras.saving.register_keras_serializable(package="tumorclf")
class PixelStatistics(keras.layers.Layer):
    """(spread, chroma) of 0-255 RGB images: the 1st-99th percentile range of the channel mean, and the
    mean over pixels of max minus min channel. In float32 under any policy."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, images):
        images = ops.cast(images, "float32")
        gray = ops.reshape(ops.mean(images, axis=-1), (ops.shape(images)[0], -1))
        bounds = ops.quantile(gray, [0.01, 0.99], axis=1)
        chroma = ops.mean(ops.max(images, axis=-1) - ops.min(images, axis=-1), axis=(1, 2))
        return ops.stack([bounds[1] - bounds[0], chroma], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2)


@keras.saving.register_keras_serializable(package="tumorclf")
class QualityGate(keras.layers.Layer):
    """From (images, pooled features) to (quality code without `too_small`, OOD score, spread, chroma).

    The OOD score is min over classes of sqrt((f - mean_k)^T P (f - mean_k)); the code is the first of
    BLANK, NOT_GRAYSCALE, OUT_OF_DISTRIBUTION whose test fails, else OK. The statistics are weights (not
    trained), so a saved model carries them."""

    def __init__(self, features: int, classes: int = 2, ood_threshold: float = float("inf"),
                 blank_spread: float = BLANK_SPREAD, colour_chroma: float = COLOUR_CHROMA, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.features, self.classes = int(features), int(classes)
        self.ood_threshold, self.blank_spread, self.colour_chroma = float(ood_threshold), float(blank_spread), \
            float(colour_chroma)
        self.pixels = PixelStatistics(name="pixel_statistics")
        self.means = self.add_weight(shape=(self.classes, self.features), initializer="zeros", trainable=False,
                                     name="means")
        self.precision = self.add_weight(shape=(self.features, self.features), initializer="identity",
                                         trainable=False, name="precision")

    def build(self, images_shape, features_shape=None):
        self.pixels.build(images_shape)

    def call(self, images, features):
        stats = self.pixels(images)
        spread, chroma = stats[:, 0], stats[:, 1]
        diff = ops.expand_dims(ops.cast(features, "float32"), 1) - ops.expand_dims(self.means, 0)  # (n, k, d)
        squared = ops.sum(ops.matmul(diff, self.precision) * diff, axis=-1)
        score = ops.sqrt(ops.maximum(ops.min(squared, axis=1), 0.0))
        code = ops.where(spread <= self.blank_spread, BLANK,
                         ops.where(chroma > self.colour_chroma, NOT_GRAYSCALE,
                                   ops.where(ops.logical_not(score <= self.ood_threshold),  # NaN: refused
                                             OUT_OF_DISTRIBUTION, OK)))
        return {"quality_code": ops.cast(code, "int32"), "ood_score": score, "spread": spread, "chroma": chroma}

    def get_config(self):
        return {**super().get_config(), "features": self.features, "classes": self.classes,
                "ood_threshold": self.ood_threshold, "blank_spread": self.blank_spread,
                "colour_chroma": self.colour_chroma}


@dataclass
class Gate:
    """A fitted gate: the statistics of QualityGate, its thresholds, and what it did on validation."""

    means: np.ndarray  # (classes, features)
    precision: np.ndarray  # (features, features)
    ood_threshold: float
    layer: str  # the model layer whose output is compared
    min_side: int  # `too_small` below this short side, in px of the original file
    blank_spread: float = BLANK_SPREAD
    colour_chroma: float = COLOUR_CHROMA
    validation: dict = field(default_factory=dict)  # n, rejected per reason, rejection rate

    def check(self, model: keras.Model, folder: Path) -> None:
        """Refuse a gate fitted to another model (its feature layer missing or of another width), which would
        otherwise fail deep inside the first batch."""
        names = {layer.name for layer in model.layers}
        width = model.get_layer(self.layer).output.shape[-1] if self.layer in names else None
        if width != self.means.shape[1]:
            raise GateError(f"the quality gate in {folder} does not fit the model beside it (layer {self.layer} "
                            f"with {self.means.shape[1]} features); refit it with `tumorclf gate --run RUN`")

    def layer_for(self) -> QualityGate:
        gate = QualityGate(self.means.shape[1], self.means.shape[0], self.ood_threshold, self.blank_spread,
                           self.colour_chroma, name="quality_gate")
        gate.means.assign(self.means.astype("float32"))
        gate.precision.assign(self.precision.astype("float32"))
        return gate

    def summary(self) -> dict:
        """The gate as JSON-ready facts (no arrays): for gate.json and the model card."""
        facts = {k: v for k, v in asdict(self).items() if k not in ("means", "precision")}
        return {**facts, "features": int(self.means.shape[1]), "reasons": list(REASONS),
                "validation_rejection_target": VALIDATION_REJECTION}

    def save(self, folder: Path) -> None:
        """gate.npz, then gate.json naming the arrays' SHA-256: a refit interrupted between the two writes
        leaves a pair that `load` refuses rather than new statistics under an old threshold."""
        import hashlib
        import io

        buffer = io.BytesIO()
        np.savez(buffer, means=self.means, precision=self.precision)
        atomic_write_bytes(Path(folder) / GATE_ARRAYS, buffer.getvalue())
        atomic_write_json(Path(folder) / GATE_JSON,
                          {**self.summary(), "arrays_sha256": hashlib.sha256(buffer.getvalue()).hexdigest()})

    @classmethod
    def load(cls, folder: Path) -> "Gate | None":
        """The gate saved in `folder`, or None when it has none. `GateError` when it is unreadable."""
        import hashlib
        import zipfile

        folder = Path(folder)
        if not (folder / GATE_JSON).is_file() and not (folder / GATE_ARRAYS).is_file():
            return None
        try:
            facts = json.loads((folder / GATE_JSON).read_text())
            written = facts.get("arrays_sha256")  # absent in gates saved before it was recorded
            if written and written != hashlib.sha256((folder / GATE_ARRAYS).read_bytes()).hexdigest():
                raise ValueError(f"{GATE_ARRAYS} is not the one {GATE_JSON} was written with")
            with np.load(folder / GATE_ARRAYS) as arrays:
                means, precision = arrays["means"], arrays["precision"]
            gate = cls(means, precision, float(facts["ood_threshold"]), str(facts["layer"]), int(facts["min_side"]),
                       float(facts["blank_spread"]), float(facts["colour_chroma"]), dict(facts.get("validation", {})))
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise GateError(f"the quality gate in {folder} is unreadable ({' '.join(str(exc).split())}); "
                            f"refit it with `tumorclf gate --run {folder}`") from None
        if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
            raise GateError(f"the quality gate in {folder} has inconsistent shapes {means.shape}, {precision.shape}; "
                            f"refit it with `tumorclf gate --run {folder}`")
        return gate


def gated_model(model: keras.Model, gate: Gate) -> keras.Model:
    """`model` with the gate's outputs beside its own: a dict of probabilities, quality_code (without
    too_small), ood_score, spread and chroma. Shares `model`'s layers (no copy of the weights)."""
    images = model.input
    outputs = gate.layer_for()(images, pooled(model, gate.layer))
    return keras.Model(images, {"probabilities": model.output, **outputs}, name=f"{model.name}_gated")


def with_size(codes: np.ndarray, short_sides: np.ndarray | None, min_side: int) -> np.ndarray:
    """The codes with TOO_SMALL first where the file's short side is known and under `min_side`."""
    codes = np.asarray(codes)
    if short_sides is None:
        return codes
    return np.where(np.asarray(short_sides) < min_side, TOO_SMALL, codes)


def reasons(codes: np.ndarray) -> list[str]:
    return [REASONS[int(c)] for c in np.asarray(codes)]


def fit_gate(model: keras.Model, train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray,
             batch_size: int, min_side: int, cache: ArrayCache | None = None) -> Gate:
    """Fit the gate's statistics on the training images (as they are, not augmented) and its OOD threshold
    on the validation images: the smallest value that rejects at most VALIDATION_REJECTION of them. With a
    feature `cache`, the training features are the ones a cached-feature recipe already computed for its
    unaugmented view (the gate's layer is where that recipe cuts the backbone), so no second pass runs."""
    from sklearn.covariance import LedoitWolf

    layer = feature_layer(model)
    if cache is None:  # pooled in the graph: one vector an image comes back, not the feature map
        probe = keras.Model(model.input, pooled(model, layer))
        features = _predict(probe, train_images, batch_size, "gate: training features")
    else:  # the feature maps a cached-feature recipe stored, pooled here as `pooled` does, in float32
        stem = keras.Model(model.input, model.get_layer(layer).output)
        features, _ = stem_outputs(stem, train_images, batch_size, "gate: training features", cache)
        if features.ndim == 4:
            features = np.asarray(features, dtype=np.float32).mean(axis=(1, 2), dtype=np.float32)
    train = np.asarray(features, dtype=np.float64)
    labels = np.asarray(train_labels)
    classes = sorted(set(labels.tolist()))
    means = np.stack([train[labels == k].mean(axis=0) for k in classes])
    centred = train - means[np.searchsorted(classes, labels)]
    precision = np.linalg.pinv(LedoitWolf(assume_centered=True).fit(centred).covariance_)
    gate = Gate(means, precision, float("inf"), layer, int(min_side))
    scored = _predict(gated_model(model, gate), val_images, batch_size, "gate: validation scores")
    scores = np.sort(np.asarray(scored["ood_score"], dtype=np.float64))
    allowed = int(np.floor(VALIDATION_REJECTION * len(scores)))
    if not len(scores):
        gate.ood_threshold = float("inf")
    elif allowed:  # halfway between the last kept and the first refused score: no validation image on the edge
        kept = len(scores) - 1 - allowed
        gate.ood_threshold = float(np.float32((scores[kept] + scores[kept + 1]) / 2))
    else:
        gate.ood_threshold = float(scores[-1])
    # the validation codes under the threshold: out_of_distribution is the layer's last rule, so the pass without
    # a threshold already holds every other code, and its scores compared as the layer compares them (float32,
    # NaN refused) add the rest; no second pass over validation
    score = np.asarray(scored["ood_score"], dtype=np.float32)
    codes = np.asarray(scored["quality_code"])
    codes = np.where((codes == OK) & ~(score <= np.float32(gate.ood_threshold)), OUT_OF_DISTRIBUTION, codes)
    gate.validation = {"n": int(len(codes)), "rejected": {REASONS[c]: int(np.sum(codes == c)) for c in
                                                           range(1, len(REASONS)) if c != TOO_SMALL},
                       "rejection_rate": float(np.mean(codes != OK)) if len(codes) else 0.0}
    return gate


def _predict(model: keras.Model, images: np.ndarray, batch_size: int, desc: str):
    """`model`'s outputs over uint8 images in evaluation batches, with progress (a pass over the training
    split of a VGG16 takes minutes on 2 cores)."""
    from tumorclf.transforms.pipeline import make_dataset
    from tumorclf.utils.progress import keras_progress

    batches = make_dataset(images, np.zeros(len(images), np.int64), batch_size).map(lambda x, y: x)
    return model.predict(batches, verbose=0, callbacks=[keras_progress(-(-len(images) // batch_size), desc)])
