"""Heatmaps scored against tumour boxes: does the model's evidence for a tumour lie on the tumour?

A box file has one row per box, ``path,x0,y0,x1,y1`` (more columns allowed), the corners as fractions of the
image's width and height (`read_boxes`). Its paths are matched to image files by their trailing folders and
file name (`match_boxes`), so ``Brain Tumor/x.jpg`` finds the file whether the dataset folder or its parent
was given.

Every score is computed in the frame of the model's convolutions, where the heatmap lies (`frame_boxes`):
the decoder resizes the whole image to the model's square input (fractions of width and height stay
fractions), and a model with a `framing` layer (`transforms.framing.ForegroundCrop`, the robust recipe)
crops and rescales it before the backbone, so the boxes are cropped and rescaled alike. Per image
(`localisation_scores`):

- ``pointing``: the heatmap's maximum lies in a box (the pointing game);
- ``energy_share``: the share of the heatmap's sum inside the boxes, beside ``area_share``, the boxes' share
  of the frame: a map that ignores the tumour scores about its area share;
- ``top_iou``: intersection over union of the boxes and the heatmap's top region of the same area.

`summarise` gives each score's mean with a 95% interval over duplicate groups (near-copies of one scan are
not independent evidence), as the metrics do (`metrics.bootstrap`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tumorclf.errors import UserError
from tumorclf.metrics import DEFAULT_RESAMPLES
from tumorclf.metrics.bootstrap import group_multiplicities

BOX_COLUMNS = ("path", "x0", "y0", "x1", "y1")
SCORES = ("pointing", "energy_share", "area_share", "top_iou")


class BoxError(UserError, ValueError):
    """A box file that cannot be used: missing, without the columns, with coordinates outside [0, 1] or
    inverted, or naming none of the images."""


class Boxes(NamedTuple):
    """The boxes of one image: (k, 4) corners as fractions (x0, y0, x1, y1), and where they came from (the
    file's ``box_source`` column, e.g. the collection that annotated them; empty when it has none)."""

    corners: np.ndarray
    source: str = ""


def read_boxes(path: Path) -> dict[tuple[str, ...], Boxes]:
    """{path parts: its `Boxes`} of a box file; a `BoxError` naming the first bad line otherwise."""
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in BOX_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise BoxError(f"box file {path} has no {', '.join(missing)} column (expected "
                               f"{','.join(BOX_COLUMNS)}, corners as fractions of width and height)")
            rows = list(enumerate(reader, start=2))
    except (OSError, UnicodeDecodeError) as exc:
        raise BoxError(f"cannot read box file {path}: {exc}") from None
    boxes: dict[tuple[str, ...], list[list[float]]] = {}
    sources: dict[tuple[str, ...], str] = {}
    for line, row in rows:
        try:
            corners = [float(row[column]) for column in BOX_COLUMNS[1:]]
        except (TypeError, ValueError):
            raise BoxError(f"box file {path} line {line}: corners {[row.get(c) for c in BOX_COLUMNS[1:]]} "
                           "are not numbers") from None
        x0, y0, x1, y1 = corners
        if not all(0 <= value <= 1 for value in corners):
            raise BoxError(f"box file {path} line {line}: corners {corners} are outside [0, 1] (they are fractions "
                           "of the image's width and height)")
        if not (x0 < x1 and y0 < y1):
            raise BoxError(f"box file {path} line {line}: box {corners} is inverted or empty (x0 < x1 and y0 < y1 "
                           "are required)")
        if not row["path"]:
            raise BoxError(f"box file {path} line {line}: no path")
        parts = Path(row["path"]).parts
        boxes.setdefault(parts, []).append(corners)
        sources.setdefault(parts, row.get("box_source") or "")
    if not boxes:
        raise BoxError(f"box file {path} holds no boxes")
    return {parts: Boxes(np.array(rows_, dtype="float64"), sources[parts]) for parts, rows_ in boxes.items()}


def match_boxes(boxes: dict[tuple[str, ...], Boxes], files: Sequence[Path],
                source: str = "the box file") -> list[Boxes | None]:
    """Each file's boxes (None: it has none), matched by the longest trailing run of path parts that names a
    box file entry; a `BoxError` when no file has a box (the wrong box file or folder, most likely)."""
    longest = max(len(parts) for parts in boxes)
    matched: list[Boxes | None] = []
    for file in files:
        parts = Path(file).parts
        found = None
        for n in range(min(longest, len(parts)), 0, -1):
            found = boxes.get(parts[-n:])
            if found is not None:
                break
        matched.append(found)
    if files and all(found is None for found in matched):
        example = "/".join(next(iter(boxes)))
        raise BoxError(f"none of the {len(boxes)} paths of {source} (e.g. {example!r}) names one of the "
                       f"{len(files)} images; give the folder the box file's paths are relative to")
    return matched


def frame_boxes(model, images: np.ndarray, boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`boxes` (fractions, one (k, 4) array per image) in pixels of the frame the model's convolutions see:
    the decoded square image, cropped and rescaled as the model's `framing` layer does when it has one.
    Pixel i covers [i, i + 1)."""
    height, width = images.shape[1:3]
    pixels = [np.asarray(b, dtype="float64") * [width, height, width, height] for b in boxes]
    try:
        framing = model.get_layer("framing")
    except ValueError:
        return pixels
    centre_x, centre_y, side = (np.asarray(value, dtype="float64") for value in framing.boxes(images))
    scale_x, scale_y = side / width, side / height
    # the crop's output pixel (index x) samples the input at index scale * x + offset (ForegroundCrop.call);
    # an edge at u covers index u - 0.5, so it lands at (u - 0.5 - offset) / scale + 0.5
    offset_x = centre_x - scale_x * (width - 1) / 2
    offset_y = centre_y - scale_y * (height - 1) / 2
    framed = []
    for i, b in enumerate(pixels):
        x = (b[:, [0, 2]] - 0.5 - offset_x[i]) / scale_x[i] + 0.5
        y = (b[:, [1, 3]] - 0.5 - offset_y[i]) / scale_y[i] + 0.5
        framed.append(np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1))
    return framed


def box_mask(height: int, width: int, boxes: np.ndarray) -> np.ndarray:
    """(height, width) bool: pixels whose centre lies in a box (pixel boxes, `frame_boxes`); a box thinner than a
    pixel still marks the pixel that holds its centre. Parts outside the frame are dropped."""
    mask = np.zeros((height, width), dtype=bool)
    centres_x, centres_y = np.arange(width) + 0.5, np.arange(height) + 0.5
    for x0, y0, x1, y1 in boxes:
        columns = (centres_x >= x0) & (centres_x < x1)
        rows = (centres_y >= y0) & (centres_y < y1)
        if not columns.any() and 0 <= (x0 + x1) / 2 < width:
            columns[int((x0 + x1) / 2)] = True
        if not rows.any() and 0 <= (y0 + y1) / 2 < height:
            rows[int((y0 + y1) / 2)] = True
        mask |= rows[:, None] & columns[None, :]
    return mask


def localisation_scores(cam: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The scores of one heatmap (>= 0) against its box mask. A flat map points nowhere (pointing 0) and
    spreads its energy evenly (energy share = area share)."""
    area = float(mask.mean())
    if not mask.any():  # the boxes fell outside the model's frame (cropped away)
        return {"pointing": 0.0, "energy_share": 0.0, "area_share": 0.0, "top_iou": 0.0}
    cam = np.asarray(cam, dtype="float64")
    flat = not cam.max() > cam.min()
    total = cam.sum()
    energy = area if flat or total <= 0 else float(cam[mask].sum() / total)
    pointing = 0.0 if flat else float(mask.flat[int(np.argmax(cam))])
    k = int(mask.sum())
    top = np.zeros(cam.size, dtype=bool)
    top[np.argsort(-cam, axis=None, kind="stable")[:k]] = True
    overlap = np.count_nonzero(top & mask.ravel())
    return {"pointing": pointing, "energy_share": energy, "area_share": area, "top_iou": overlap / (2 * k - overlap)}


def summarise(rows: Sequence[dict[str, float]], groups: Sequence, names: Sequence[str] = SCORES,
              n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """The mean of each of `names` over `rows` with a 95% interval over duplicate `groups` (a cluster
    bootstrap), and how many rows and groups there were."""
    if not rows:
        return {"n": 0, "groups": 0}
    values = np.array([[row[name] for name in names] for row in rows], dtype="float64")
    draws = np.concatenate([weights @ values / weights.sum(axis=1, keepdims=True)
                            for weights in group_multiplicities(groups, n_resamples, seed)])
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    summary: dict[str, dict] = {"n": len(rows), "groups": len(set(groups))}
    for j, name in enumerate(names):
        summary[name] = {"value": round(float(values[:, j].mean()), 4),
                         "ci95": [round(float(low[j]), 4), round(float(high[j]), 4)]}
    return summary
