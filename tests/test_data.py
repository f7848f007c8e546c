from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import one_error_line
from tumorclf.data import dataset as data

from tumorclf.data import decoder
from tumorclf.data.dataset import DataError, find_class_folders, load_dataset
from tumorclf.data.decoder import DecodeError, decode_image


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


GRADIENT = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))


@pytest.mark.parametrize(
    "make",
    [
        lambda: encoded(Image.fromarray(GRADIENT, "L"), "PNG"),
        lambda: encoded(Image.fromarray(np.dstack([GRADIENT] * 3 + [np.full_like(GRADIENT, 255)]), "RGBA"), "PNG"),
        lambda: encoded(Image.fromarray(np.dstack([GRADIENT] * 3)).convert("P"), "PNG"),
        lambda: encoded(Image.fromarray(np.dstack([GRADIENT] * 3)).convert("CMYK"), "JPEG"),
        lambda: encoded(Image.fromarray(np.dstack([GRADIENT] * 3)), "TIFF"),
        lambda: encoded(Image.fromarray(GRADIENT.astype(np.uint16) * 257), "TIFF"),
        lambda: encoded(Image.fromarray(GRADIENT.astype(np.uint16) * 16), "PNG"),
    ],
    ids=["gray", "rgba", "palette", "cmyk-jpeg", "tiff", "tiff-16bit", "png-12bit-in-16"],
)
def test_decode_modes_give_rgb_uint8(make):
    out = decode_image(make(), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    # the horizontal gradient survives every conversion: dark left, bright right
    assert out[:, :4].mean() < 40 and out[:, -4:].mean() > 200


def test_palette_transparency_is_composited_on_black():
    image = Image.new("P", (20, 20), 1)
    image.putpalette([255, 255, 255, 200, 0, 0] + [0] * 762)
    image.info["transparency"] = 1  # index 1 (red) is fully transparent
    out = decode_image(encoded(image, "PNG", transparency=1), 20)
    assert out.max() == 0


def test_exif_orientation_is_applied():
    array = np.zeros((40, 80, 3), np.uint8)
    array[:, :40] = 255  # bright left half, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    raw = encoded(Image.fromarray(array), "JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(raw, 40).astype(float)
    # after the rotation the bright half is at the top
    assert out[:15].mean() > 200 and out[-15:].mean() < 50


def test_extension_does_not_matter(tmp_path: Path):
    lying = tmp_path / "scan.jpg"
    lying.write_bytes(encoded(Image.fromarray(GRADIENT, "L"), "PNG"))
    assert decode_image(lying, 16).shape == (16, 16, 3)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "not an image"),
        (b"<html><body>404</body></html>", "not an image"),
        (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "not an image"),
        (encoded(Image.fromarray(np.dstack([GRADIENT] * 3)), "JPEG")[:300], "unreadable"),
    ],
    ids=["empty", "html", "random", "truncated"],
)
def test_bad_content_raises_decode_error(content, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_image(content, 32)


def test_too_large_image_is_refused(monkeypatch):
    monkeypatch.setattr(decoder, "MAX_PIXELS", 100)
    with pytest.raises(DecodeError, match="too large"):
        decode_image(encoded(Image.new("L", (20, 20)), "PNG"), 8)


@pytest.mark.parametrize(
    "names, healthy",
    [(("Brain Tumor", "Healthy"), "Healthy"), (("yes", "no"), "no"), (("tumor", "Not Cancer"), "Not Cancer"),
     (("glioma", "normal_scans"), "normal_scans")],
)
def test_class_folders_from_names(tmp_path: Path, names, healthy):
    for name in names:
        (tmp_path / name).mkdir()
    folders = find_class_folders(tmp_path)
    assert folders.healthy.name == healthy and folders.tumor.name != healthy


def test_ambiguous_class_folders_need_classes_option(tmp_path: Path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with pytest.raises(DataError, match="--classes"):
        find_class_folders(tmp_path)
    folders = find_class_folders(tmp_path, ("b", "a"))
    assert (folders.healthy.name, folders.tumor.name) == ("b", "a")
    assert "given by --classes" in folders.how


@pytest.mark.parametrize("folders", [(), ("only",), ("a", "b", "c")])
def test_wrong_number_of_class_folders(tmp_path: Path, folders):
    for name in folders:
        (tmp_path / name).mkdir()
    with pytest.raises(DataError, match="expected exactly two class folders"):
        find_class_folders(tmp_path)


@pytest.mark.parametrize("keep, label", [("tumor", 1), ("healthy", 0)])
def test_one_class_folder_loads_only_for_evaluation(blob_dataset: Path, keep: str, label: int):
    for path in (blob_dataset / ("healthy" if label else "tumor")).iterdir():
        path.unlink()
    (blob_dataset / ("healthy" if label else "tumor")).rmdir()
    with pytest.raises(DataError, match="expected exactly two class folders"):  # training needs both classes
        load_dataset(blob_dataset, 24)
    ds = load_dataset(blob_dataset, 24, one_class=True)
    assert len(ds) == 40 and set(ds.labels.tolist()) == {label} and ds.skipped == []
    assert all(path.startswith(f"{keep}/") for path in ds.paths)
    assert (ds.folders.healthy is None) == bool(label) and (ds.folders.tumor is None) == (not label)
    assert f"{data.CLASS_NAMES[label].lower()}={keep!r} only" in ds.folders.how


def test_one_class_folder_by_classes_or_beside_an_empty_one(blob_dataset: Path):
    (blob_dataset / "tumor").rename(blob_dataset / "lesion")
    for path in (blob_dataset / "healthy").iterdir():
        path.unlink()
    with pytest.raises(DataError, match="holds no files"):
        load_dataset(blob_dataset, 24)
    assert set(load_dataset(blob_dataset, 24, one_class=True).labels.tolist()) == {1}  # an empty healthy/ beside
    (blob_dataset / "healthy").rmdir()
    with pytest.raises(DataError, match="cannot tell whether 'lesion' .* --classes"):
        load_dataset(blob_dataset, 24, one_class=True)
    ds = load_dataset(blob_dataset, 24, ("normal", "lesion"), one_class=True)  # normal/ absent: one class
    assert len(ds) == 40 and ds.folders.healthy is None and ds.labels.min() == 1
    with pytest.raises(DataError, match="class folder named by --classes not found: .*normal"):
        load_dataset(blob_dataset, 24, ("normal", "lesion"))
    with pytest.raises(DataError, match="class folder named by --classes not found"):
        load_dataset(blob_dataset, 24, ("normal", "other"), one_class=True)


def test_one_class_loading_still_refuses_a_folder_without_images(tmp_path: Path):
    with pytest.raises(DataError, match=r"expected one or two class folders in .*, found 0 \(none\)"):
        load_dataset(tmp_path, 24, one_class=True)
    (tmp_path / "tumor").mkdir()
    with pytest.raises(DataError, match="class folder .*tumor \\(Tumor\\) holds no files"):
        load_dataset(tmp_path, 24, one_class=True)
    (tmp_path / "tumor" / "a.png").write_bytes(b"not an image")
    (tmp_path / "tumor" / "b.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match=r"no readable images in .* \(2 files skipped\)"):
        load_dataset(tmp_path, 24, one_class=True)
    for name in ("healthy", "x", "y"):
        (tmp_path / name).mkdir()
    with pytest.raises(DataError, match="expected one or two class folders .* found 4"):
        load_dataset(tmp_path, 24, one_class=True)


def test_training_refuses_a_one_class_folder(blob_dataset: Path, tmp_path: Path, capsys):
    """Only evaluation relaxes the two-class rule: a model cannot learn from one class."""
    from tumorclf.cli.main import main

    for path in (blob_dataset / "healthy").iterdir():
        path.unlink()
    (blob_dataset / "healthy").rmdir()
    assert main(["train", "--data", str(blob_dataset), "--out", str(tmp_path / "runs"), "--epochs", "1",
                 "--image-size", "32"]) == 2
    assert "expected exactly two class folders" in one_error_line(capsys)
    assert not any((tmp_path / "runs").rglob("best.keras"))


def test_missing_folder_and_empty_class(tmp_path: Path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope", 32)
    (tmp_path / "healthy").mkdir()
    (tmp_path / "tumor").mkdir()
    (tmp_path / "tumor" / "x.png").write_bytes(encoded(Image.new("L", (8, 8)), "PNG"))
    with pytest.raises(DataError, match="holds no files"):
        load_dataset(tmp_path, 32)


def test_class_with_only_unreadable_files_is_an_error(blob_dataset: Path):
    for path in (blob_dataset / "healthy").iterdir():
        path.write_bytes(b"not an image")
    with pytest.raises(DataError, match="no readable Healthy images"):
        load_dataset(blob_dataset, 32)


def test_load_dataset_skips_bad_files_and_shares_duplicates(blob_dataset: Path):
    (blob_dataset / "tumor" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (blob_dataset / "healthy" / "notes.txt").write_text("not an image")
    (blob_dataset / "healthy" / ".DS_Store").write_bytes(b"\0")
    copy = blob_dataset / "tumor" / "copy_of_img000.jpg"
    copy.write_bytes((blob_dataset / "tumor" / "img000.jpg").read_bytes())

    ds = load_dataset(blob_dataset, 32)
    assert sorted(p for p, _ in ds.skipped) == ["healthy/notes.txt", "tumor/broken.jpg"]
    assert all(reason for _, reason in ds.skipped)
    assert len(ds) == 81 and ds.unique_images.shape == (80, 32, 32, 3)
    i, j = ds.paths.index("tumor/img000.jpg"), ds.paths.index("tumor/copy_of_img000.jpg")
    assert ds.image_index[i] == ds.image_index[j]
    assert np.bincount(ds.labels).tolist() == [40, 41]
    assert ds.images(np.array([i])).shape == (1, 32, 32, 3)


def test_second_load_uses_cache_and_decodes_nothing(blob_dataset: Path, monkeypatch):
    first = load_dataset(blob_dataset, 24)
    calls = []
    monkeypatch.setattr(data, "decode_image", lambda *a: calls.append(a))
    second = load_dataset(blob_dataset, 24)
    assert calls == []
    np.testing.assert_array_equal(first.images(), second.images())
    # a different size is a different cache entry
    monkeypatch.undo()
    assert load_dataset(blob_dataset, 16).unique_images.shape[1:] == (16, 16, 3)


def test_cache_follows_content_not_names(blob_dataset: Path):
    load_dataset(blob_dataset, 24)
    os.rename(blob_dataset / "tumor" / "img001.png", blob_dataset / "tumor" / "renamed.png")
    cache = Path(os.environ["TUMORCLF_CACHE"])
    before = sorted(cache.iterdir())
    load_dataset(blob_dataset, 24)
    assert sorted(cache.iterdir()) == before


@pytest.mark.dataset
def test_real_dataset_reads_every_file(real_data: Path):
    ds = load_dataset(real_data, 64)  # the size test_splits reads it at: one decode in the shared cache
    assert len(ds) + len(ds.skipped) == 4600
    assert ds.skipped == []
    assert np.bincount(ds.labels).tolist() == [2087, 2513]
    assert len(ds) - ds.unique_images.shape[0] == 544  # byte-identical copies


def test_scan_reports_entries_that_are_not_usable_files(tmp_path: Path):
    folder = tmp_path / "tumor"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(b"x")
    (folder / "sub" / "b.png").write_bytes(b"x")
    (folder / "link_to_a.png").symlink_to(folder / "a.png")
    (folder / "gone.png").symlink_to(tmp_path / "missing.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "folder_link").symlink_to(folder / "sub")
    (folder / ".hidden_gone.png").symlink_to(tmp_path / "missing.png")
    os.mkfifo(folder / "pipe.png")
    listing = data.scan_below(folder)
    assert [p.relative_to(folder).as_posix() for p in listing.files] == ["a.png", "link_to_a.png", "sub/b.png"]
    assert {p.name: reason for p, reason in listing.problems} == {
        "gone.png": "dangling symbolic link",
        "loop.png": "unreadable: Too many levels of symbolic links",
        "folder_link": "symbolic link to a folder (not followed)",
        "pipe.png": "not a regular file",
    }
    assert data.files_below(folder) == listing.files


def test_unusable_entries_are_skipped_with_a_reason_and_logged_once(blob_dataset: Path, monkeypatch, caplog):
    (blob_dataset / "tumor" / "gone.png").symlink_to(blob_dataset / "nowhere.png")
    denied = blob_dataset / "healthy" / "img003.png"
    real_sha256 = data.file_sha256

    def refuse(path: Path) -> str:  # permission denied even for root, who may read a chmod 000 file
        if path == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real_sha256(path)

    monkeypatch.setattr(data, "file_sha256", refuse)
    with caplog.at_level("INFO", logger="tumorclf"):
        ds = load_dataset(blob_dataset, 24)
    assert ds.skipped == [("healthy/img003.png", "unreadable: Permission denied"),
                          ("tumor/gone.png", "dangling symbolic link")]
    assert len(ds) == 79 and "healthy/img003.png" not in ds.paths
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["skipped healthy/img003.png: unreadable: Permission denied",
                        "skipped tumor/gone.png: dangling symbolic link"]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("hashing: 80/80 files") for m in messages)
    assert any(m.startswith("decoding: 79/79 images") for m in messages)


def test_class_folder_of_only_dangling_links_is_not_called_empty(blob_dataset: Path):
    for path in (blob_dataset / "healthy").iterdir():
        path.unlink()
        path.symlink_to(blob_dataset / "nowhere.png")
    with pytest.raises(DataError, match=r"no readable Healthy images .*\(40 files skipped\)"):
        load_dataset(blob_dataset, 32)


def train_quickly(data_dir: Path, out: Path) -> Path:
    from tumorclf.cli.main import main

    assert main(["train", "--data", str(data_dir), "--out", str(out), "--name", "run", "--epochs", "1",
                 "--image-size", "32", "--batch-size", "8", "--learning-rate", "0.01"]) == 0
    return out / "run"


def skipped_csv(run: Path) -> dict[str, str]:
    with open(run / "skipped.csv", newline="") as handle:
        return {row["path"]: row["reason"] for row in csv.DictReader(handle)}


def test_training_run_lists_a_dangling_link_in_skipped_csv(blob_dataset: Path, tmp_path: Path, capsys):
    (blob_dataset / "tumor" / "moved_away.jpg").symlink_to(tmp_path / "elsewhere" / "scan.jpg")
    run = train_quickly(blob_dataset, tmp_path / "runs")
    assert skipped_csv(run) == {"tumor/moved_away.jpg": "dangling symbolic link"}
    assert json.loads((run / "config.json").read_text())["skipped_files"] == 1
    assert "skipped tumor/moved_away.jpg: dangling symbolic link" in (run / "run.log").read_text()
    assert "Traceback" not in capsys.readouterr().err


def test_training_run_lists_an_unreadable_file_in_skipped_csv(blob_dataset: Path, tmp_path: Path, capsys):
    locked = blob_dataset / "healthy" / "img004.jpg"
    locked.chmod(0)
    try:
        try:
            locked.read_bytes()
        except PermissionError:
            pass
        else:
            pytest.skip("a chmod 000 file stays readable for this user (root)")
        run = train_quickly(blob_dataset, tmp_path / "runs")
    finally:
        locked.chmod(0o644)
    assert skipped_csv(run) == {"healthy/img004.jpg": "unreadable: Permission denied"}
    assert "skipped healthy/img004.jpg: unreadable: Permission denied" in (run / "run.log").read_text()
    assert "Traceback" not in capsys.readouterr().err
