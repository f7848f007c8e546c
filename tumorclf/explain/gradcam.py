"""Grad-CAM explanations (tf-keras-vis): per-image overlays (`explain_images`) and a side-by-side comparison of
runs (`compare_runs`); `tumorclf explain` is their command line.

Slices (``slices``) are picked as `tumorclf.data.medical.Slices` picks them, as predict does. The default
``middle`` explains each file once, as training reads it, under the file's name. With ``all`` or ``K`` each
chosen slice is its own image, titled with its slice and named with it, e.g. ``FOLDER_STEM_slice012_METHOD.png``
and ``compare_FOLDER_STEM_slice012_METHOD.png``. A 2-D image is explained once under its plain name whatever
``slices`` says; a file that cannot be decoded, or has no slice K, is logged and skipped.

The explained layer is the registry's Grad-CAM layer of the run's model (`layer` overrides it); the
predicted class, where it is the target, is taken at the run's operating threshold on P(Tumor). With the
run's quality gate (`tumorclf.gate.quality_gate`), an image the model cannot assess is titled so
("cannot assess: blank") instead of with a prediction.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tumorclf.utils.files import atomic_write_bytes, figure_png  # noqa: E402
from tumorclf.metrics.calibration import apply_temperature  # noqa: E402
from tumorclf.data.dataset import CLASS_NAMES, label_from_folder  # noqa: E402
from tumorclf.data.decoder import DecodeError, decode_slices  # noqa: E402
from tumorclf.errors import UserError  # noqa: E402
from tumorclf.metrics.classification import decide  # noqa: E402
from tumorclf.gate.quality_gate import REASONS, Gate, gated_model, reasons, with_size  # noqa: E402
from tumorclf.data.medical import MIDDLE, Slices  # noqa: E402
from tumorclf.explain.methods import METHODS  # noqa: E402
from tumorclf.utils.progress import Progress, track  # noqa: E402
from tumorclf.models.registry import MODELS  # noqa: E402
from tumorclf.runs.folder import DEFAULT_THRESHOLD, RunDir  # noqa: E402

log = logging.getLogger(__name__)

CHUNK = 32  # images per heatmap call: bounds memory (Score-CAM) and paces the progress report
OVERLAY_CMAP, OVERLAY_ALPHA = "jet", 0.45  # the heatmap's colours and opacity over the slice


class Explained(NamedTuple):
    """One explained image: a file, or the slice `slice` of a volume that --slices all or K chose. `slice` is
    None for a 2-D image and for the default middle slice, which stands for its file as training reads it.
    `name` is its output files' stem (`_decode_all`): ``FOLDER_STEM``, or ``FOLDER_STEM_slice012``."""

    path: Path
    name: str
    slice: int | None

    @property
    def label(self) -> str:
        """How titles name it: the file name, with the slice when one was chosen."""
        return self.path.name if self.slice is None else f"{self.path.name}, slice {self.slice}"


class LayerError(UserError, ValueError):
    """The layer to explain does not exist in the model, or the model has no registry entry."""


def target_layer(model, name: str | None = None) -> str:
    """The layer whose activations Grad-CAM weighs: `name` if given, else the registry's `gradcam_layer`
    of the model (the last spatial feature map before the head: VGG16 block5_conv3, ResNet
    conv5_block3_out, DenseNet relu, SimpleCNN relu3)."""
    if name is None:
        entry = MODELS.get(model.name)
        if entry is None:
            raise LayerError(f"model {model.name!r} is not one of tumorclf's models ({', '.join(MODELS)}), so its "
                             "Grad-CAM layer is unknown; name one with --layer")
        name = entry.gradcam_layer
    try:
        layer = model.get_layer(name)
    except ValueError:
        default = MODELS[model.name].gradcam_layer if model.name in MODELS else None
        raise LayerError(f"model {model.name} has no layer {name!r}"
                         + (f" (its Grad-CAM layer is {default!r})" if default else "")) from None
    if len(layer.output.shape) != 4:
        raise LayerError(f"layer {name!r} of {model.name} is not a spatial feature map "
                         f"(output shape {tuple(layer.output.shape)}); Grad-CAM needs one")
    return name


def heatmaps(model, images: np.ndarray, classes: np.ndarray, method: str = "gradcam",
             layer: str | None = None) -> np.ndarray:
    """Class activation maps, shape (n, H, W) at the input size, each normalised to [0, 1].

    `model` is modified in place for gradient methods (softmax replaced by linear), so pass a copy
    that is not used for anything else.
    """
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    from tumorclf.models.factory import to_float32

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    model = to_float32(model)
    layer = target_layer(model, layer)
    seed = np.asarray(images, dtype="float32")
    if method == "scorecam":  # masks the input and reads the softmax: the class probability is its score
        cams = Scorecam(model, clone=False)(CategoricalScore([int(c) for c in classes]), seed, penultimate_layer=layer,
                                             seek_penultimate_conv_layer=False, max_N=16)
    else:
        explainer = (Gradcam if method == "gradcam" else GradcamPlusPlus)(
            model, model_modifier=ReplaceToLinear(), clone=False)
        cams = explainer(log_odds(classes), seed, penultimate_layer=layer, seek_penultimate_conv_layer=False)
    cams = np.nan_to_num(np.asarray(cams, dtype="float32").reshape(len(seed), *seed.shape[1:3]))
    low = cams.min(axis=(1, 2), keepdims=True)
    span = cams.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (cams - low) / np.where(span > 0, span, 1), 0.0)


def log_odds(classes: np.ndarray):
    """The gradient methods' score: the class's logit minus the other's, its log-odds. With two softmax outputs
    only the difference of the logits decides, so one logit alone can rise or fall with the evidence and give
    maps of either sign for the same model."""
    sign = np.where(np.asarray(classes) == 1, 1.0, -1.0).astype("float32")

    def score(logits):
        return (logits[:, 1] - logits[:, 0]) * sign

    return score


def _run(run_dir: Path | RunDir) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)


def load_run_model(run_dir: Path | RunDir):
    """A fresh copy of a finished run's best model (explanations modify the model they are given)."""
    return _run(run_dir).require_finished().load_model()


def run_title(run_dir: Path | RunDir) -> str:
    """`vgg16 (ImageNet)`, with the recipe when it is not the paper's: `vgg16 (ImageNet, robust recipe)`."""
    config = _run(run_dir).config()
    recipe = "" if config.recipe == "paper" else f", {config.recipe} recipe"
    return f"{config.model} ({'ImageNet' if config.imagenet else 'scratch'}{recipe})"


def as_seen(model, images: np.ndarray) -> np.ndarray:
    """`images` in the frame the model's convolutions see: cropped by its `framing` layer when it has one
    (`framing.ForegroundCrop`), so that a heatmap lies over the anatomy it refers to."""
    try:
        framing = model.get_layer("framing")
    except ValueError:
        return images
    return np.clip(np.asarray(framing(images.astype("float32"))), 0, 255).astype(images.dtype)


def overlay(ax, image: np.ndarray, cam: np.ndarray) -> None:
    ax.imshow(image)
    ax.imshow(cam, cmap=OVERLAY_CMAP, alpha=OVERLAY_ALPHA, vmin=0, vmax=1)
    ax.axis("off")


def overlay_pixels(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The `overlay` of one image as uint8 RGB pixels at the image's size (for `tumorclf serve`, which needs
    no figure around it)."""
    heat = matplotlib.colormaps[OVERLAY_CMAP](np.clip(cam, 0, 1))[..., :3] * 255
    blended = (1 - OVERLAY_ALPHA) * np.asarray(image, dtype="float32") + OVERLAY_ALPHA * heat
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def explain_image_png(image: np.ndarray, cam: np.ndarray, prob_tumor: float, true_label: int | None,
                      caption: str, threshold: float, quality: str = REASONS[0]) -> bytes:
    """A two-panel PNG: the slice, and the heatmap overlay titled with truth, prediction (at `threshold`
    on P(Tumor)) and the probability of the predicted class, or, for an image the gate rejects (`quality`
    not ok), why the model cannot assess it."""
    predicted = int(decide(prob_tumor, threshold))
    truth = CLASS_NAMES[true_label] if true_label is not None else "unknown"
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.8))
    axes[0].imshow(image)
    axes[0].set_title(f"true: {truth}")
    axes[0].axis("off")
    overlay(axes[1], image, cam)
    probability = prob_tumor if predicted else 1 - prob_tumor
    axes[1].set_title(f"predicted: {CLASS_NAMES[predicted]} ({probability:.1%})" if quality == REASONS[0]
                      else f"cannot assess: {quality}")
    fig.suptitle(caption, fontsize=9)
    return figure_png(fig)


def class_to_explain(target: str, prob_tumor: np.ndarray, threshold: float) -> np.ndarray:
    """The class whose evidence is shown, per image: the prediction at `threshold`, or a fixed class."""
    if target == "predicted":
        return decide(prob_tumor, threshold)
    return np.full(len(prob_tumor), 1 if target == "tumor" else 0)


def assess(model, gate: Gate | None, images: np.ndarray, sides: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Raw P(Tumor) of each image and its quality (too_small from `sides`, each image's short side before the
    resize): one pass through the gated model when the run has a gate, else every image is "ok". The float32
    copy is made `CHUNK` images at a time: `--slices all` over a folder of volumes can give thousands."""
    scorer = model if gate is None else gated_model(model, gate)
    outs = [scorer.predict(images[start:start + CHUNK].astype("float32"), verbose=0)
            for start in range(0, len(images), CHUNK)]
    if gate is None:
        return np.concatenate([out[:, 1] for out in outs]), [REASONS[0]] * len(images)
    codes = np.concatenate([out["quality_code"] for out in outs])
    return (np.concatenate([out["probabilities"][:, 1] for out in outs]),
            reasons(with_size(codes, sides, gate.min_side)))


def explain_run(run_dir: Path | RunDir, files: list[Path], method: str, target: str, layer: str | None = None,
                slices: str = MIDDLE):
    """Decode the chosen `slices` of `files` at the run's size, predict, and compute heatmaps: (what was kept
    (`Explained`), decoded images, the images as the model frames them (`as_seen`, what the maps lie over),
    P(tumor), maps, qualities (`assess`)). P(tumor) is calibrated with the run's temperature and the predicted
    class taken at its operating threshold, as `predict` does."""
    run = _run(run_dir)
    model = load_run_model(run)
    gate = Gate.load(run.path)
    if gate is not None:
        gate.check(model, run.path)
    threshold = run.threshold()
    target_layer(model, layer)  # a bad --layer fails before any decoding
    images, kept, sides = _decode_all(files, int(model.input_shape[1]), slices)
    if not kept:
        return [], images, images, np.empty(0), np.empty((0, *images.shape[1:3])), []
    raw, quality = assess(model, gate, images, sides)
    prob_tumor = apply_temperature(raw, run.temperature())
    classes = class_to_explain(target, prob_tumor, threshold)
    with Progress(len(kept), f"{method} {run.name}", unit="images") as progress:
        cams, seen = [], []
        for start in range(0, len(kept), CHUNK):
            cams.append(heatmaps(model, images[start:start + CHUNK], classes[start:start + CHUNK], method, layer))
            seen.append(as_seen(model, images[start:start + CHUNK]))
            progress.update(len(cams[-1]))
    return kept, images, np.concatenate(seen), prob_tumor, np.concatenate(cams), quality


def explain_images(run_dir: Path | RunDir, files: list[Path], out: Path, method: str = "gradcam",
                   target: str = "predicted", layer: str | None = None, slices: str = MIDDLE) -> list[Path]:
    """One overlay PNG per readable file, or per chosen slice of a volume (`slices`), in `out`, named
    ``FOLDER_STEM[_sliceK]_METHOD.png`` (`Explained.name`); unreadable files are logged and skipped."""
    run = _run(run_dir)
    kept, _, seen, prob_tumor, cams, quality = explain_run(run, files, method, target, layer, slices)
    threshold = run.threshold()
    written = []
    caption = f"{run_title(run)}, {method} on {target} class"
    for item, image, cam, p, q in zip(kept, seen, cams, prob_tumor, quality):
        target_path = out / f"{item.name}_{method}.png"
        title = caption if item.slice is None else f"{item.label}: {caption}"
        atomic_write_bytes(target_path, explain_image_png(image, cam, float(p), label_from_folder(item.path), title,
                                                          threshold, q))
        written.append(target_path)
    return written


def compare_runs(run_dirs: list[Path | RunDir], files: list[Path], out: Path, method: str = "gradcam",
                 target: str = "predicted", layer: str | None = None, slices: str = MIDDLE) -> list[Path]:
    """For each file, or chosen slice of a volume (`slices`), one figure: the slice, then each run's overlay side
    by side (the paper's Figs. 5-8), named ``compare_FOLDER_STEM[_sliceK]_METHOD.png``."""
    columns = []
    for run_dir in run_dirs:
        kept, images, seen, prob_tumor, cams, quality = explain_run(run_dir, files, method, target, layer, slices)
        columns.append((run_title(run_dir), dict(zip(kept, zip(images, seen, cams, prob_tumor, quality)))))
    written = []
    for item in columns[0][1]:
        if not all(item in entries for _, entries in columns):
            continue
        fig, axes = plt.subplots(1, len(columns) + 1, figsize=(3.2 * (len(columns) + 1), 3.6))
        first_image = columns[0][1][item][0]  # the decoded slice, whatever the runs' framing
        truth = label_from_folder(item.path)
        axes[0].imshow(first_image)
        axes[0].set_title(f"{item.label}\ntrue: {CLASS_NAMES[truth] if truth is not None else 'unknown'}", fontsize=8)
        axes[0].axis("off")
        for ax, (title, entries) in zip(axes[1:], columns):
            _, image, cam, p, quality = entries[item]
            overlay(ax, image, cam)
            verdict = f"P(tumor) = {p:.3f}" if quality == REASONS[0] else f"cannot assess: {quality}"
            ax.set_title(f"{title}\n{verdict}", fontsize=8)
        target_path = out / f"compare_{item.name}_{method}.png"
        atomic_write_bytes(target_path, figure_png(fig))
        written.append(target_path)
    return written


def output_stems(paths) -> list[str]:
    """A distinct file-name stem per path, the same for the same list: ``FOLDER_STEM`` (the parent folder's
    name keeps ``healthy/img001.png`` and ``tumor/img001.png`` apart), and where that still collides
    (same folder name elsewhere, or a file listed twice) ``-2``, ``-3``... in list order. Names are
    compared ignoring case, so they stay distinct on case-insensitive file systems."""
    used: set[str] = set()
    return [_distinct(f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem, used)
            for path in map(Path, paths)]


def _distinct(base: str, used: set[str]) -> str:
    """`base`, or `base-2`, `base-3`... the first not in `used` (compared ignoring case), added to it."""
    name, k = base, 1
    while name.casefold() in used:
        k += 1
        name = f"{base}-{k}"
    used.add(name.casefold())
    return name


def _decode_all(files: list[Path], size: int, slices: str) -> tuple[np.ndarray, list[Explained], np.ndarray]:
    """The chosen `slices` of `files` at `size` (`decode_slices`), what each image is (`Explained`) and its
    short side before the resize (the gate's too_small). A file's stem comes from `output_stems` over all of
    `files`, so it does not depend on which others were readable; a slice's name that meets another image's
    (``scan.nii.gz`` slice 1 and a ``scan.nii_slice001.png`` beside it) gets ``-2``, as `output_stems` does.
    A file that cannot be decoded, or has no slice K, is logged and skipped (predict gives it an error row)."""
    images, kept, sides = [], [], []
    by_slice = Slices.parse(slices).which != MIDDLE
    stems = output_stems(files)
    used = {stem.casefold() for stem in stems}
    for path, stem in track(zip(files, stems), len(files), "decoding images", unit="files"):
        try:
            decoded = decode_slices(path, size, slices)
        except (DecodeError, OSError) as exc:
            log.warning("skipped %s: %s", path, exc)
            continue
        for index, pixels, side in decoded:
            name = _distinct(f"{stem}_slice{index:03d}", used) if by_slice and index is not None else stem
            images.append(pixels)
            kept.append(Explained(path, name, index if by_slice else None))
            sides.append(side)
    return (np.stack(images) if images else np.empty((0, size, size, 3), np.uint8)), kept, np.array(sides)


def save_outcome_overlays(model_path: Path, images: np.ndarray, labels: np.ndarray, prob_tumor: np.ndarray,
                          paths: list[str], per_outcome: int, out: Path, threshold: float = DEFAULT_THRESHOLD) -> int:
    """Overlays for up to `per_outcome` test images of each outcome (TP, FP, FN, TN), the prediction taken
    at `threshold` on P(Tumor); returns how many."""
    from tumorclf.models.factory import load_model

    predicted = decide(prob_tumor, threshold)
    outcomes = {"TP": (1, 1), "FP": (0, 1), "FN": (1, 0), "TN": (0, 0)}
    picks = {name: np.flatnonzero((labels == t) & (predicted == p))[:per_outcome] for name, (t, p) in outcomes.items()}
    rows = np.concatenate(list(picks.values())).astype(int)
    if not len(rows):
        return 0
    model = load_model(model_path)
    cams = heatmaps(model, images[rows], predicted[rows])
    seen = dict(zip(rows, as_seen(model, images[rows])))
    names = [name for name, chosen in picks.items() for _ in chosen]
    stems = output_stems([paths[row] for row in rows])
    for name, row, cam, stem in zip(names, rows, cams, stems):
        png = explain_image_png(seen[row], cam, float(prob_tumor[row]), int(labels[row]), f"{name}: {paths[row]}",
                                threshold)
        atomic_write_bytes(out / f"{name}_{stem}.png", png)
    return len(rows)
