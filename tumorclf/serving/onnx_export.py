"""An export's `serve` signature as an ONNX model (``model.onnx``); `tumorclf.serving.predictors.OnnxPredictor` scores with it.

`export_onnx` converts the same Python function as the SavedModel's ``serve`` signature
(`tumorclf.serving.graph.serving_functions`: the model, `OperatingPointHead` and, for a run with a quality gate,
`gated_model` and `QualityHead`) with tf2onnx (`tf2onnx.convert.from_function`). Keras 3's own
``model.export(format="onnx")`` exports the model alone, not the operating point or the gate, which are
TensorFlow code.

The graph (ONNX opset `OPSET`):

- input ``images`` float32 [N, S, S, 3], 0-255 RGB already decoded and resized (`tumorclf.data.decoder.decode_image`);
  there is no encoded-bytes input (``serve_bytes``): ONNX has no image decoders, decoding stays in
  `tumorclf.data.decoder` (`tumorclf predict --model-file model.onnx` does it);
- outputs as ``serve``'s: ``probabilities`` float32 [N, 2] (raw softmax), ``prob_tumor`` float32 [N]
  (calibrated), ``decision`` int64 [N] (the run's operating point; -1 where the gate refused the image),
  and with a gate ``quality_code`` int32 [N], ``quality`` string [N] and ``ood_score`` float32 [N]. As in
  ``serve``, the file's size is unknown, so the graph never says too_small (`OnnxPredictor` users apply
  ``min_side`` themselves, as `tumorclf.serving.predictors` does).

Two TensorFlow ops have no tf2onnx conversion and get one here (`HANDLERS`):

- Log1p, in the float64 calibration (which otherwise converts as it is: Cast, Clip, Log, Exp, Div in
  float64), becomes Log(1 + x) (`_log1p_as_log`). With P(Tumor) a float32 value clipped to
  [1e-7, 1 - 1e-7] in float64, 1 - P is exact or within 2^-53, so ``prob_tumor`` stays within a float32
  ulp of the SavedModel's. ``decision`` compares the raw float32 P(Tumor) with the same float32 cutoff
  (`tumorclf.serving.graph.decision_cutoff`), or, at temperature 1, its float64 value with the threshold, so it
  equals the SavedModel's decision for the same softmax;
- ImageProjectiveTransformV3, the crop of the robust recipe's framing layer, becomes GridSample
  (`_projective_transform_as_grid_sample`): the same bilinear samples up to float32 rounding (at most
  0.002 of 255 per pixel measured at 224 px).

Any other op tf2onnx cannot convert makes the export a one-line `OnnxConversionError`.

The model's ``metadata_props`` (`metadata`) hold the temperature, threshold, raw cutoff, image size and,
with a gate, its min side and reasons, so a reader without the model card knows them.

tf2onnx, onnx and onnxruntime are the ``onnx`` extra: without them, exporting or predicting with ONNX is a
one-line `OnnxUnavailableError` naming ``pip install -e ".[onnx]"``; they are imported only here, inside
functions, so ``tumorclf --help`` and the other commands never load them.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tumorclf.utils.files import atomic_write_bytes
from tumorclf.errors import UserError, one_line
from tumorclf.runs.folder import DEFAULT_THRESHOLD
from tumorclf.serving.graph import (EnsembleMean, OperatingPointHead, QualityHead, decision_cutoff, pixel_spec,
                                    serving_functions)

if TYPE_CHECKING:
    import keras

    from tumorclf.gate.quality_gate import Gate

ONNX_FILE = "model.onnx"
OPSET = 17  # tf2onnx 1.17 converts up to 18; 17 runs on onnxruntime >= 1.13
INPUT = "images"
PACKAGES = ("tf2onnx", "onnx", "onnxruntime")
INSTALL = 'pip install -e ".[onnx]"'


class OnnxUnavailableError(UserError, ImportError):
    """tf2onnx, onnx or onnxruntime cannot be imported."""


class OnnxConversionError(UserError, ValueError):
    """The model holds TensorFlow ops that tf2onnx cannot express in ONNX."""


def require(*packages: str) -> list:
    """The modules `packages` (default: all of `PACKAGES`), or a one-line `OnnxUnavailableError`."""
    modules = []
    for name in packages or PACKAGES:
        try:
            modules.append(importlib.import_module(name))
        except ImportError as exc:
            raise OnnxUnavailableError(f"ONNX needs the packages {', '.join(PACKAGES)} ({name}: {exc}); install "
                                       f"them with {INSTALL}") from None
    return modules


def metadata(size: int, temperature: float, threshold: float, cutoff: float, gate: "Gate | None") -> dict[str, str]:
    """The ONNX model's metadata_props: the operating point, the input size and the gate's min side (strings,
    as ONNX stores them; numbers as JSON)."""
    props = {"temperature": repr(float(temperature)), "threshold": repr(float(threshold)),
             "raw_cutoff": repr(float(cutoff)) if math.isfinite(cutoff) else "null", "image_size": str(size),
             "input": f"{INPUT} float32 [N, {size}, {size}, 3] 0-255 RGB, decoded and resized by "
                      "tumorclf.data.decoder.decode_image"}
    if gate is not None:
        from tumorclf.gate.quality_gate import REASONS

        props.update(min_side=str(int(gate.min_side)), quality_reasons=json.dumps(list(REASONS)),
                     ood_threshold=repr(float(gate.ood_threshold)))
    return props


def _log1p_as_log(ctx, node, name, args) -> None:
    """tf2onnx handler for TensorFlow's Log1p, which ONNX lacks: Log(x + 1) (the node becomes Log)."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype))
    ctx.insert_new_node_on_input(node, "Add", [node.input[0], one.output[0]], input_index=0)


def _projective_transform_as_grid_sample(ctx, node, name, args) -> None:
    """tf2onnx handler for ImageProjectiveTransformV3 (`keras.ops.image.affine_transform`, used by the robust
    recipe's `tumorclf.transforms.framing.ForegroundCrop`), which tf2onnx lacks: ONNX GridSample (opset 16+) on the
    same sampling points. Output pixel (x, y) of image n reads the input at ((t0 x + t1 y + t2) / k,
    (t3 x + t4 y + t5) / k), k = t6 x + t7 y + 1, bilinearly, with zeros outside: TensorFlow's bilinear
    CONSTANT mode with fill 0, which is GridSample's bilinear, zeros padding, align_corners=1 once the points
    are scaled to [-1, 1] (float32 rounding of that scaling moves a point by about 1e-5 px). Other modes,
    fills or an output size other than the input's (Keras' affine_transform keeps it) are refused."""
    from onnx import TensorProto
    from tf2onnx import utils

    images, transforms = node.input[0], node.input[1]
    shape = ctx.get_shape(images) or []
    fill = node.inputs[3]
    if (node.get_attr_str("interpolation") != "BILINEAR" or node.get_attr_str("fill_mode") != "CONSTANT"
            or not fill.is_const() or float(fill.get_tensor_value()) != 0 or len(shape) != 4
            or not all(isinstance(d, int) and d > 1 for d in shape[1:3]) or ctx.get_dtype(images) != TensorProto.FLOAT):
        raise ValueError(f"{node.name}: only bilinear, constant 0 fill on float32 images of a known size convert")
    height, width = shape[1], shape[2]
    output_size = node.inputs[2]
    if output_size.is_const() and list(output_size.get_tensor_value()) != [height, width]:
        raise ValueError(f"{node.name}: the output size differs from the input's")

    def const(value, dtype=np.float32) -> str:
        return ctx.make_const(utils.make_name(f"{name}_c"), np.asarray(value, dtype)).output[0]

    def op(kind: str, *inputs: str, **attr) -> str:
        return ctx.make_node(kind, list(inputs), attr=attr, op_name_scope=name).output[0]

    t = ctx.make_node("Split", [op("Reshape", transforms, const([-1, 8, 1], np.int64))], attr={"axis": 1},
                      output_count=8, op_name_scope=name).output  # eight [N, 1, 1]
    x = const(np.arange(width, dtype=np.float32).reshape(1, 1, width))
    y = const(np.arange(height, dtype=np.float32).reshape(1, height, 1))

    def line(a: str, b: str, c: str) -> str:  # a x + b y + c, [N, H, W], summed in TensorFlow's order
        return op("Add", op("Add", op("Mul", a, x), op("Mul", b, y)), c)

    k = line(t[6], t[7], const(1.0))
    last = const([-1], np.int64)
    grid = [op("Unsqueeze", op("Sub", op("Mul", op("Div", line(*t[i : i + 3]), k), const(2.0 / (size - 1))),
                                const(1.0)), last) for i, size in ((0, width), (3, height))]
    sampled = op("GridSample", op("Transpose", images, perm=[0, 3, 1, 2]), op("Concat", *grid, axis=-1),
                 mode="bilinear", padding_mode="zeros", align_corners=1)
    node.type = "Transpose"
    ctx.replace_inputs(node, [sampled])
    node.set_attr("perm", [0, 2, 3, 1])


# TensorFlow ops tf2onnx 1.17 cannot convert, as ONNX ops (tf2onnx's handler signature: ctx, node, name, args)
HANDLERS = {"Log1p": (_log1p_as_log, ["Log"]), "ImageProjectiveTransformV3": (_projective_transform_as_grid_sample, [])}


def export_onnx(model: "keras.Model | EnsembleMean", path: Path, temperature: float = 1.0,
                threshold: float = DEFAULT_THRESHOLD, gate: "Gate | None" = None, opset: int = OPSET) -> dict:
    """Write the `serve` signature of `model` (a run's model, or an ensemble's `EnsembleMean`) at `temperature`,
    `threshold` (and `gate`) as an ONNX model at `path`; returns the model card's facts about it.
    `OnnxConversionError` when an op does not convert or onnxruntime cannot load the result.

    The graph computes in float32 whatever the model was trained in: tf2onnx turns a mixed_bfloat16 model's
    casts into a graph onnxruntime refuses (float16 and bfloat16 bound to one Mul), and onnxruntime has no
    CPU kernels for most bfloat16 ops anyway."""
    tf2onnx, onnx, ort = require("tf2onnx", "onnx", "onnxruntime")
    import tensorflow as tf

    from tumorclf.gate.quality_gate import gated_model
    from tumorclf.models.factory import to_float32

    model = model.float32() if isinstance(model, EnsembleMean) else to_float32(model)
    size = int(model.input_shape[1])
    gated = (gated_model(model, gate), QualityHead(gate)) if gate is not None else None
    serve, _ = serving_functions(model, OperatingPointHead(temperature, threshold), gated)
    function = tf.function(serve, input_signature=[pixel_spec(size)])
    converter = logging.getLogger("tf2onnx")
    level = converter.level
    converter.setLevel(logging.WARNING)  # its INFO lines describe every optimisation pass
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=opset,
                                                 custom_op_handlers=HANDLERS)
    finally:
        converter.setLevel(level)
    unknown = sorted({node.op_type for node in proto.graph.node
                      if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)})
    if unknown:  # tf2onnx leaves ops it cannot convert in the graph, and onnxruntime would refuse the file
        raise OnnxConversionError(f"export: the model {model.name} has TensorFlow ops that tf2onnx "
                                  f"{tf2onnx.__version__} cannot convert to ONNX: {', '.join(unknown)}; export it "
                                  "with --format savedmodel")
    props = metadata(size, temperature, threshold, decision_cutoff(temperature, threshold), gate)
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    try:  # the checker does not bind type parameters across nodes; onnxruntime does, so load it once here
        ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except session_errors(ort) as exc:
        raise OnnxConversionError(f"export: onnxruntime cannot load the converted {model.name}: "
                                  f"{one_line(exc)[:300]}; export it with --format savedmodel") from None
    atomic_write_bytes(path, data)
    return {"file": Path(path).name, "opset": opset, "converter": f"tf2onnx {tf2onnx.__version__}",
            "input": props["input"], "outputs": [output.name for output in proto.graph.output],
            "metadata_props": props,
            "precision": "float32",
            "not_included": "serve_bytes (no encoded-bytes input: decode with tumorclf.data.decoder or tumorclf "
                            "predict); too_small (the graph receives resized pixels, as serve)"}


def session_errors(ort) -> tuple[type[BaseException], ...]:
    """onnxruntime's exception classes (plain Exception subclasses) for a file it cannot load or run."""
    state = ort.capi.onnxruntime_pybind11_state
    names = ("Fail", "InvalidArgument", "InvalidProtobuf", "InvalidGraph", "NoSuchFile", "NotImplemented",
             "RuntimeException")
    return tuple(getattr(state, name) for name in names if hasattr(state, name))
