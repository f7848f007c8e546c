"""Tumour boxes: reading and refusing box files, matching them to images, following the model's frame (plain
resize and the foreground crop), the localisation scores, and the randomisation check's parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from tumorclf.data.decoder import decode_image
from tumorclf.explain.boxes import (
    Boxes,
    BoxError,
    box_mask,
    frame_boxes,
    localisation_scores,
    match_boxes,
    read_boxes,
    summarise,
)
from tumorclf.explain.gradcam import as_seen
from tumorclf.explain.randomisation import randomise_top, rank_correlation
from tumorclf.models.factory import build_model

HEADER = "path,box_source,x0,y0,x1,y1\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_boxes_are_read_per_path(tmp_path: Path):
    boxes = read_boxes(write(tmp_path / "b.csv", HEADER + "Brain Tumor/a.jpg,x,0.1,0.2,0.3,0.4\n"
                                                           "Brain Tumor/a.jpg,x,0.5,0.5,0.6,0.7\nb.png,y,0,0,1,1\n"))
    assert set(boxes) == {("Brain Tumor", "a.jpg"), ("b.png",)}
    np.testing.assert_array_equal(boxes[("Brain Tumor", "a.jpg")].corners,
                                  [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.6, 0.7]])
    assert boxes[("Brain Tumor", "a.jpg")].source == "x" and boxes[("b.png",)].source == "y"


@pytest.mark.parametrize("row, message", [
    ("a.jpg,x,0.1,0.2,1.3,0.4", "line 2: corners [0.1, 0.2, 1.3, 0.4] are outside [0, 1]"),
    ("a.jpg,x,-0.1,0.2,0.3,0.4", "outside [0, 1]"),
    ("a.jpg,x,0.3,0.2,0.1,0.4", "line 2: box [0.3, 0.2, 0.1, 0.4] is inverted or empty"),
    ("a.jpg,x,0.1,0.4,0.3,0.4", "inverted or empty"),
    ("a.jpg,x,0.1,zero,0.3,0.4", "line 2: corners"),
])
def test_bad_coordinates_are_refused_with_their_line(tmp_path: Path, row: str, message: str):
    with pytest.raises(BoxError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_boxes(write(tmp_path / "b.csv", HEADER + row + "\n"))


def test_a_file_without_the_columns_or_rows_is_refused(tmp_path: Path):
    with pytest.raises(BoxError, match="has no x1, y1 column"):
        read_boxes(write(tmp_path / "b.csv", "path,x0,y0\na.jpg,0.1,0.2\n"))
    with pytest.raises(BoxError, match="holds no boxes"):
        read_boxes(write(tmp_path / "c.csv", HEADER))
    with pytest.raises(BoxError, match="cannot read box file"):
        read_boxes(tmp_path / "missing.csv")


def test_paths_match_by_their_trailing_parts_and_a_file_of_no_match_is_refused():
    boxes = {("Brain Tumor", "a.jpg"): Boxes(np.ones((1, 4))), ("b.jpg",): Boxes(np.zeros((1, 4)))}
    files = [Path("/data/set/Brain Tumor/a.jpg"), Path("/data/set/Healthy/a.jpg"), Path("/x/b.jpg")]
    matched = match_boxes(boxes, files)
    assert matched[0] is boxes[("Brain Tumor", "a.jpg")] and matched[1] is None and matched[2] is boxes[("b.jpg",)]
    with pytest.raises(BoxError, match="none of the 2 paths of boxes.csv"):
        match_boxes(boxes, [Path("/data/Healthy/c.jpg")], "boxes.csv")


def scan_with_square(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 90 x 150 slice: a grey head off centre on black (so the foreground crop moves and scales it) holding
    a bright square, saved as PNG; and the square's box as fractions of width and height."""
    height, width = 90, 150
    yy, xx = np.mgrid[:height, :width]
    image = np.zeros((height, width), np.uint8)
    image[((yy - 45) / 38) ** 2 + ((xx - 100) / 40) ** 2 < 1] = 90
    image[30:48, 95:118] = 250  # rows 30-47, columns 95-117
    path = tmp_path / "scan.png"
    Image.fromarray(np.repeat(image[..., None], 3, -1)).save(path)
    return path, np.array([[95 / width, 30 / height, 118 / width, 48 / height]])


@pytest.mark.parametrize("framing", ["full", "foreground"])
def test_boxes_follow_the_models_frame(tmp_path: Path, framing: str):
    """The box of a known bright square, carried through the decoder's resize and (robust recipe) the model's
    foreground crop, covers the square where the model sees it; left in the decoded frame, it would not."""
    path, box = scan_with_square(tmp_path)
    size = 64
    model = build_model("simplecnn", size, framing=framing)
    images = decode_image(path, size)[None]
    seen = as_seen(model, images)[0]
    bright = seen.mean(axis=-1) > 170
    mask = box_mask(size, size, frame_boxes(model, images, [box])[0])
    iou = (bright & mask).sum() / (bright | mask).sum()
    assert iou > 0.75, iou
    scores = localisation_scores(seen.mean(axis=-1) * (seen.mean(axis=-1) > 170), mask)
    assert scores["pointing"] == 1 and scores["energy_share"] > 0.9 and scores["top_iou"] > 0.75
    unmoved = box_mask(size, size, box[0:1] * size)
    moved_iou = (bright & unmoved).sum() / (bright | unmoved).sum()
    if framing == "foreground":  # the crop moved and enlarged the square: the decoded frame's box misses it
        assert moved_iou < 0.4 and seen.shape == images[0].shape
    else:
        assert moved_iou == iou


def test_a_box_thinner_than_a_pixel_marks_the_pixel_that_holds_it_and_outside_parts_are_dropped():
    mask = box_mask(8, 8, np.array([[2.2, 3.1, 2.4, 3.3], [6.0, 6.0, 12.0, 12.0]]))
    assert mask[3, 2] and mask[6:, 6:].all() and mask.sum() == 1 + 4


def test_localisation_scores_on_known_maps():
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:7] = True  # 10 pixels, area share 0.1
    perfect = localisation_scores(mask.astype(float), mask)
    assert perfect == {"pointing": 1.0, "energy_share": 1.0, "area_share": 0.1, "top_iou": 1.0}
    flat = localisation_scores(np.ones((10, 10)), mask)
    assert flat["pointing"] == 0 and flat["energy_share"] == pytest.approx(0.1)
    elsewhere = np.zeros((10, 10))
    elsewhere[8, 8] = 1.0
    elsewhere[3, 3] = 0.5
    scores = localisation_scores(elsewhere, mask)
    assert scores["pointing"] == 0 and scores["energy_share"] == pytest.approx(0.5 / 1.5)
    rng = np.random.default_rng(0)
    cam = rng.random((10, 10))
    top = cam >= np.sort(cam, axis=None)[-10]
    expected_iou = (top & mask).sum() / (top | mask).sum()
    assert localisation_scores(cam, mask)["top_iou"] == pytest.approx(expected_iou)
    assert localisation_scores(cam, mask)["energy_share"] == pytest.approx(cam[mask].sum() / cam.sum())


def test_summaries_are_means_with_group_intervals():
    rows = [{"pointing": float(i % 2), "energy_share": i / 10, "area_share": 0.1, "top_iou": 0.5} for i in range(10)]
    alone = summarise(rows, list(range(10)))
    assert alone["n"] == 10 and alone["groups"] == 10
    assert alone["pointing"]["value"] == 0.5 and alone["energy_share"]["value"] == pytest.approx(0.45)
    low, high = alone["energy_share"]["ci95"]
    assert low < 0.45 < high and alone["area_share"]["ci95"] == [0.1, 0.1]
    # five pairs of copies: as many rows, half the independent evidence, wider intervals
    paired = summarise(rows, [i // 2 for i in range(10)])
    assert paired["groups"] == 5
    assert np.diff(paired["energy_share"]["ci95"])[0] > np.diff(alone["energy_share"]["ci95"])[0]


def test_randomise_top_redraws_the_layers_above_the_explained_one_only():
    model = build_model("simplecnn", 32)
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers}
    randomise_top(model, "relu3", seed=1)
    above = {"fc1", "predictions"}  # the layers with weights after relu3
    for item in model.layers:
        changed = [not np.array_equal(old, new) for old, new in zip(before[item.name], item.get_weights())]
        if item.name in above:
            assert all(changed), item.name
        else:
            assert not any(changed), item.name
    with pytest.raises(ValueError, match="no layer 'nowhere'"):
        randomise_top(model, "nowhere")


def test_rank_correlation_is_spearmans():
    rng = np.random.default_rng(2)
    a, b = rng.random((3, 6, 6)), rng.random((3, 6, 6))
    b[1] = a[1] ** 2  # same order
    ours = rank_correlation(a, b)
    for i in range(3):
        assert ours[i] == pytest.approx(spearmanr(a[i].ravel(), b[i].ravel()).statistic)
    assert ours[1] == pytest.approx(1.0)
    assert rank_correlation(np.ones((1, 4, 4)), a[:1, :4, :4])[0] == 0.0
