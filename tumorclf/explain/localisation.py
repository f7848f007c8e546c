"""Localisation of a run's heatmaps against tumour boxes, with the randomisation sanity check:
`tumorclf explain --run RUN --boxes FILE`.

For every image that has a box (`explain.boxes.match_boxes`), each method's heatmap of the tumour class is
scored against the boxes in the model's own frame (`explain.boxes`), and again after the model's top was
randomised (`explain.randomisation`). Written to the output folder:

- ``localisation.csv``: one row per image and method (path, duplicate group, P(tumour), the scores, and the
  scores and rank correlation of the randomised model's map);
- ``localisation.json``: per method, each score's mean with a 95% interval over duplicate groups (also per
  ``box_source`` of the box file), the same for the randomised model, the rank correlation, and
  ``explains_model``: false when the method's localisation survives the randomisation (its pointing and energy
  share stay within the trained model's intervals or above them);
- ``localisation_METHOD.png``: the four best and four worst localised images by energy share.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from tumorclf.data.dataset import expand_inputs, file_sha256  # noqa: E402
from tumorclf.data.decoder import DecodeError, decode_image  # noqa: E402
from tumorclf.explain.boxes import SCORES, Boxes, box_mask, frame_boxes, localisation_scores, summarise  # noqa: E402
from tumorclf.explain.gradcam import CHUNK, as_seen, heatmaps, load_run_model, overlay, run_title, target_layer  # noqa: E402
from tumorclf.explain.randomisation import randomise_top, rank_correlation  # noqa: E402
from tumorclf.metrics.calibration import apply_temperature  # noqa: E402
from tumorclf.runs.folder import RunDir  # noqa: E402
from tumorclf.utils.files import atomic_write_bytes, atomic_write_json, atomic_write_text, csv_text, figure_png  # noqa: E402
from tumorclf.utils.progress import Progress, track  # noqa: E402

log = logging.getLogger(__name__)

OUTPUTS = ("localisation.csv", "localisation.json")
TUMOUR = 1  # the class whose evidence is scored: a box marks a tumour
RANDOM_SEED = 0


def inputs_and_groups(run: RunDir, inputs: list[Path] | None, split: str = "test") -> tuple[list[Path], list[str]]:
    """The images to score and their duplicate groups: the run's `split` with its groups (split.csv), or the
    files of `inputs`, byte-identical files sharing a group."""
    if inputs is None:
        root = run.data_root()
        rows = [row for row in run.split_rows() if row["split"] == split]
        return [root / row["path"] for row in rows], [row.get("group") or row["path"] for row in rows]
    files = expand_inputs(inputs)
    return files, [file_sha256(path) for path in files]


def decode_boxed(files: list[Path], boxes: list[Boxes | None], groups: list[str], size: int):
    """(images, the kept files, their boxes, their groups): the files that have boxes, decoded at `size`;
    a file that cannot be decoded is logged and skipped."""
    images, kept, kept_boxes, kept_groups = [], [], [], []
    for path, box, group in track(zip(files, boxes, groups), len(files), "decoding boxed images", unit="files"):
        if box is None:
            continue
        try:
            images.append(decode_image(path, size))
        except (DecodeError, OSError) as exc:
            log.warning("skipped %s: %s", path, exc)
            continue
        kept.append(path)
        kept_boxes.append(box)
        kept_groups.append(group)
    pixels = np.stack(images) if images else np.empty((0, size, size, 3), np.uint8)
    return pixels, kept, kept_boxes, kept_groups


def _maps(model, images: np.ndarray, method: str, layer: str, desc: str) -> np.ndarray:
    classes = np.full(len(images), TUMOUR)
    with Progress(len(images), desc, unit="images") as progress:
        maps = []
        for start in range(0, len(images), CHUNK):
            maps.append(heatmaps(model, images[start:start + CHUNK], classes[start:start + CHUNK], method, layer))
            progress.update(len(maps[-1]))
    return np.concatenate(maps)


def _figure(title: str, seen: np.ndarray, cams: np.ndarray, framed: list[np.ndarray], rows: list[dict],
            order: np.ndarray) -> bytes:
    picks = [("best", i) for i in order[::-1][:4]] + [("worst", i) for i in order[:4]]
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.6))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (kind, i) in zip([*axes[0], *axes[1]], picks):
        overlay(ax, seen[i], cams[i])
        for x0, y0, x1, y1 in framed[i]:  # pixel i covers [i, i + 1); imshow centres it on i
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white", lw=1.5))
        ax.set_title(f"{kind}: {Path(rows[i]['path']).name}\nenergy {rows[i]['energy_share']:.2f} "
                     f"(box {rows[i]['area_share']:.2f}), max in box: {'yes' if rows[i]['pointing'] else 'no'}",
                     fontsize=8)
    fig.suptitle(title, fontsize=10)
    return figure_png(fig)


def score_run(run: RunDir, files: list[Path], boxes: list[Boxes | None], groups: list[str],
              methods: list[str], out: Path, layer: str | None = None, source: str = "") -> dict:
    """Score the run's heatmaps of the tumour class against `boxes` (one per file, None: no box) with each of
    `methods`, before and after `randomise_top`; write the outputs into `out` and return the summary."""
    model = load_run_model(run)
    layer = target_layer(model, layer)
    size = int(model.input_shape[1])
    images, kept, kept_boxes, kept_groups = decode_boxed(files, boxes, groups, size)
    if not kept:
        raise ValueError("no image with a box could be decoded")
    raw = np.concatenate([model.predict(images[s:s + CHUNK].astype("float32"), verbose=0)[:, 1]
                          for s in range(0, len(images), CHUNK)])
    prob_tumor = apply_temperature(raw, run.temperature())
    framed = frame_boxes(model, images, [b.corners for b in kept_boxes])
    masks = np.stack([box_mask(size, size, b) for b in framed])
    seen = as_seen(model, images)
    randomised = randomise_top(load_run_model(run), layer, RANDOM_SEED)

    rows, summary = [], {"run": str(run.path), "model": run_title(run), "layer": layer, "boxes": source,
                         "images": len(kept), "groups": len(set(kept_groups)), "methods": {}}
    for method in methods:
        cams = _maps(model, images, method, layer, f"{method} {run.name}")
        random_cams = _maps(randomised, images, method, layer, f"{method} {run.name}, randomised top")
        trained = [localisation_scores(c, m) for c, m in zip(cams, masks)]
        random = [localisation_scores(c, m) for c, m in zip(random_cams, masks)]
        correlation = rank_correlation(cams, random_cams)
        method_rows = []
        for i, path in enumerate(kept):
            method_rows.append({"path": str(path), "group": kept_groups[i], "box_source": kept_boxes[i].source,
                                "method": method, "prob_tumor": round(float(prob_tumor[i]), 6),
                                "boxes": len(kept_boxes[i].corners),
                                **{k: round(v, 6) for k, v in trained[i].items()},
                                **{f"randomised_{k}": round(random[i][k], 6) for k in SCORES if k != "area_share"},
                                "rank_correlation": round(float(correlation[i]), 6)})
        rows += method_rows
        scored, control = summarise(trained, kept_groups), summarise(random, kept_groups)
        survives = all(control[k]["value"] >= scored[k]["ci95"][0] for k in ("pointing", "energy_share"))
        by_source = {name: summarise([t for t, b in zip(trained, kept_boxes) if b.source == name],
                                     [g for g, b in zip(kept_groups, kept_boxes) if b.source == name])
                     for name in sorted({b.source for b in kept_boxes})}
        summary["methods"][method] = {
            **scored, "by_box_source": by_source, "randomised": {k: control[k] for k in SCORES},
            "rank_correlation": summarise([{"r": float(c)} for c in correlation], kept_groups, ("r",))["r"],
            "explains_model": not survives}
        order = np.argsort([row["energy_share"] for row in method_rows], kind="stable")
        atomic_write_bytes(out / f"localisation_{method}.png", _figure(
            f"{run_title(run)}: {method} of the tumour class against the boxes ({source})", seen, cams, framed,
            method_rows, order))
        if survives:
            log.warning("%s: localisation survives randomising the model's top (%s): it does not explain the model",
                        method, layer)
    atomic_write_text(out / "localisation.csv", csv_text(list(rows[0]), [list(r.values()) for r in rows]))
    atomic_write_json(out / "localisation.json", summary)
    return summary
