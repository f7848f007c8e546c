"""The serving graph, one definition for the SavedModel (`tumorclf.serving.export`) and the ONNX graph
(`tumorclf.serving.onnx_export`): the operating point applied to the model's softmax (`OperatingPointHead`), the
quality gate's outputs (`QualityHead`), an ensemble of runs scored as one model (`EnsembleMean`), and the Python
functions of the `serve` and `serve_bytes` signatures (`serving_functions`)."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tumorclf.data import decoder
from tumorclf.metrics.calibration import CLIP, apply_temperature
from tumorclf.metrics.classification import decide
from tumorclf.gate.quality_gate import OK, REASONS, TOO_SMALL, Gate
from tumorclf.models.factory import to_float32


def decision_cutoff(temperature: float, threshold: float) -> float:
    """The smallest float32 raw P(Tumor) that `tumorclf predict` decides Tumor: the least p with
    decide(apply_temperature(p, temperature), threshold) == 1 (-inf if every p, +inf if none).

    The graph decides on the raw float32 P(Tumor) (`raw >= cutoff`), not on its own float64 calibration:
    TensorFlow's and NumPy's log/exp differ in the last bit for about one value in seven, and the fitted
    threshold *is* the calibrated value of a validation image, so a float64 comparison in the graph could
    flip that image. Calibration is monotonic, so this cutoff gives NumPy's decision exactly for every
    float32 input."""
    def tumor(bits: int) -> bool:
        p = np.array([bits], dtype=np.uint32).view(np.float32)
        return bool(decide(apply_temperature(p, temperature), threshold)[0])

    low, high = 0, int(np.array([1.0], dtype=np.float32).view(np.uint32)[0])  # positive float32 bits are ordered
    if tumor(low):
        return -math.inf
    if not tumor(high):
        return math.inf
    while high - low > 1:  # tumor(low) is False, tumor(high) True
        middle = (low + high) // 2
        low, high = (low, middle) if tumor(middle) else (middle, high)
    return float(np.array([high], dtype=np.uint32).view(np.float32)[0])


class OperatingPointHead(tf.Module):
    """The serving outputs from the model's softmax: `probabilities` (as is), `prob_tumor` (calibrated with
    `temperature`, float64 ops mirroring `tumorclf.metrics.calibration.apply_temperature`, returned as float32) and
    `decision` (int64, 1 where calibrated P(Tumor) >= `threshold`, as `tumorclf.metrics.classification.decide` decides on
    `tumorclf predict`'s probability). Temperature 1 leaves P(Tumor) unchanged (runs without an operating
    point): `prob_tumor` is the raw P(Tumor) and `decision` compares it with the threshold in float64."""

    def __init__(self, temperature: float, threshold: float):
        super().__init__(name="operating_point")
        temperature, threshold = float(temperature), float(threshold)
        if not (math.isfinite(temperature) and temperature > 0) or not 0 <= threshold <= 1:
            raise ValueError(f"temperature must be > 0 and threshold in [0, 1], got {temperature}, {threshold}")
        self.calibrated = temperature != 1.0
        self.temperature = tf.Variable(temperature, dtype=tf.float64, trainable=False, name="temperature")
        self.threshold = tf.Variable(threshold, dtype=tf.float64, trainable=False, name="threshold")
        self.raw_cutoff = tf.Variable(decision_cutoff(temperature, threshold), dtype=tf.float32, trainable=False,
                                      name="raw_cutoff")

    @property
    def variables_in_order(self) -> list[tf.Variable]:
        return [self.temperature, self.threshold, self.raw_cutoff]

    def __call__(self, probabilities: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = tf.cast(probabilities, tf.float32)
        raw = probabilities[:, 1]
        if not self.calibrated:
            prob_tumor = raw
            decision = tf.cast(tf.cast(raw, tf.float64) >= self.threshold, tf.int64)
        else:
            p = tf.clip_by_value(tf.cast(raw, tf.float64), CLIP, 1 - CLIP)
            logit = tf.math.log(p) - tf.math.log1p(-p)
            prob_tumor = tf.cast(1.0 / (1.0 + tf.exp(-logit / self.temperature)), tf.float32)
            decision = tf.cast(raw >= self.raw_cutoff, tf.int64)
        return {"probabilities": probabilities, "prob_tumor": prob_tumor, "decision": decision}


class QualityHead(tf.Module):
    """The quality gate's serving outputs beside `OperatingPointHead`'s: `quality_code` (int32, with too_small
    where the images' (height, width) before the resize are given and their short side is under `min_side`),
    `quality` (its name in `REASONS`), `ood_score`, and `decision` set to -1 wherever quality is not ok: a
    client that reads only `decision` cannot take a refused image's answer for a diagnosis.

    Its variables record the gate in the SavedModel (min_side is the one the graph compares with; the
    thresholds are those baked into the model's `QualityGate` layer), for readers without the card."""

    def __init__(self, gate: Gate):
        super().__init__(name="quality_gate")
        self.min_side = tf.Variable(int(gate.min_side), dtype=tf.int32, trainable=False, name="min_side")
        self.ood_threshold = tf.Variable(gate.ood_threshold, dtype=tf.float32, trainable=False, name="ood_threshold")
        self.blank_spread = tf.Variable(gate.blank_spread, dtype=tf.float32, trainable=False, name="blank_spread")
        self.colour_chroma = tf.Variable(gate.colour_chroma, dtype=tf.float32, trainable=False,
                                         name="colour_chroma")

    @property
    def variables_in_order(self) -> list[tf.Variable]:
        return [self.min_side, self.ood_threshold, self.blank_spread, self.colour_chroma]

    def __call__(self, served: dict[str, tf.Tensor], gated: dict[str, tf.Tensor],
                 shapes: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        code = tf.cast(gated["quality_code"], tf.int32)
        if shapes is not None:
            code = tf.where(tf.reduce_min(shapes, axis=1) < self.min_side, TOO_SMALL, code)
        ok = tf.equal(code, OK)
        return {**served, "decision": tf.where(ok, served["decision"], tf.constant(-1, tf.int64)),
                "quality_code": code, "quality": tf.gather(tf.constant(REASONS), code),
                "ood_score": tf.cast(gated["ood_score"], tf.float32)}


class EnsembleMean(tf.Module):
    """Called like a model on 0-255 RGB images: [1 - P, P] (float32) with P the mean over `models` of each
    one's P(Tumor) calibrated at its temperature, in float64 as `apply_temperature` (T = 1: unchanged)."""

    def __init__(self, models: Sequence[keras.Model], temperatures: Sequence[float]):
        super().__init__(name="ensemble")
        self.members = list(models)
        self.temperatures = [float(t) for t in temperatures]
        self.member_temperatures = tf.Variable(self.temperatures, dtype=tf.float64, trainable=False,
                                               name="member_temperatures")
        self.input_shape = self.members[0].input_shape

    def __call__(self, images, training: bool = False):
        calibrated = []
        for member, temperature in zip(self.members, self.temperatures):
            raw = tf.cast(tf.cast(member(images, training=False), tf.float32)[:, 1], tf.float64)
            if temperature != 1.0:
                p = tf.clip_by_value(raw, CLIP, 1 - CLIP)
                raw = 1.0 / (1.0 + tf.exp(-(tf.math.log(p) - tf.math.log1p(-p)) / temperature))
            calibrated.append(raw)
        mean = tf.cast(tf.reduce_mean(tf.stack(calibrated), axis=0), tf.float32)
        return tf.stack([1.0 - mean, mean], axis=1)

    def float32(self) -> "EnsembleMean":
        """The same ensemble with float32 copies of its members (`to_float32`), as the ONNX graph needs."""
        return EnsembleMean([to_float32(member) for member in self.members], self.temperatures)


def serving_functions(model: keras.Model, head: OperatingPointHead,
                      gated: tuple[keras.Model, QualityHead] | None = None) -> tuple[Callable, Callable]:
    """The Python functions of the `serve` (0-255 RGB pixels) and `serve_bytes` (encoded images) signatures:
    `head`'s outputs, and with `gated` (`gated_model` of `model` and the gate's `QualityHead`) the gate's,
    from one forward pass. One definition for the SavedModel and the ONNX graph (`tumorclf.serving.onnx_export`)."""
    size = int(model.input_shape[1])
    if gated is None:
        def serve(images):
            return head(model(images, training=False))

        def serve_bytes(image_bytes):
            return head(model(decoder.decode_bytes_graph(image_bytes, size), training=False))
    else:
        scored, quality = gated

        def serve(images):
            outputs = scored(images, training=False)
            return quality(head(outputs["probabilities"]), outputs)

        def serve_bytes(image_bytes):
            pixels, shapes = decoder.decode_bytes_graph_with_shape(image_bytes, size)
            outputs = scored(pixels, training=False)
            return quality(head(outputs["probabilities"]), outputs, shapes)
    return serve, serve_bytes


def pixel_spec(size: int) -> tf.TensorSpec:
    """The `serve` signature's input: `images` float32 [N, size, size, 3], 0-255 RGB."""
    return tf.TensorSpec((None, size, size, 3), tf.float32, name="images")
