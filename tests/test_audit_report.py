"""The audit's HTML report and contact sheets: self-contained, escaped, complete and deterministic."""

from __future__ import annotations

import base64
import html
import io
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tumorclf.audit import report as audit_report
from tumorclf.audit.report import AuditResult, contact_sheet, sheet_size, write_report
from tumorclf.audit.findings import FINDINGS, SHORTCUT_ACCURACY, Collection, Finding, sort_findings

NASTY = 'yes/<b>&".png'  # a file name that breaks HTML unless escaped


def thumbnail(path: str) -> np.ndarray | None:
    """Deterministic synthetic pixels for a file (a wide one for `wide` paths); None for a group `KIND:NAME`."""
    if ":" in path:
        return None
    rng = np.random.default_rng(zlib.crc32(path.encode()))
    shape = (20, 60, 3) if "wide" in path else (32, 32, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def make_result(accuracy: dict[str, float] | None = None, blanks: int = 3) -> AuditResult:
    found = [Finding(f"no/blank_{i:03d}.png", "blank", 1.0 - i / 1000, "gray range 3.0 of 255") for i in range(blanks)]
    found += [
        Finding(NASTY, "colour", 45.25, 'mean channel spread 45.2 <"&>'),
        Finding("yes/wide.png", "extreme_aspect", 3.0, "120x40 px"),
        Finding("no/a.png", "exact_duplicate", 2.0, "2 byte-identical files; with yes/a.png"),
        Finding("yes/a.png", "exact_duplicate", 2.0, "2 byte-identical files; with no/a.png"),
        Finding("yes/a.png", "duplicate_across_labels", 0.5, "group 1: 2 files"),
        Finding("source", "shortcut_grouping", 0.9, "predicts"),
        Finding("source:br35h", "shortcut_cluster", 0.99, "40 files: 97.5% Tumor"),
    ]
    return AuditResult(
        root="/data/<brain>", files=20 + blanks, unique=19 + blanks, per_class=(9, 11 + blanks),
        skipped=[("no/broken.jpg", "cannot decode: <truncated>")], findings=sort_findings(found),
        collections=[Collection("source", "br35h", 40, (1, 39)), Collection("source", "figshare", 10, (5, 5)),
                     Collection("appearance", "A1", 12, (6, 6))],
        grouping_accuracy=accuracy if accuracy is not None else {"source": 0.9, "appearance": 0.55},
        duplicates_per_class={"exact": (1, 1), "near": (0, 2)},
        settings={"image size": 224, "folds": 5, "backbone": "vgg16"}, seconds=12.5)


def summary_count(text: str, name: str) -> int:
    row = re.search(rf'<tr id="summary-{name}">(.*?)</tr>', text)
    assert row, name
    return int(re.search(r'<td class="n">(\d+)</td>', row.group(1)).group(1))


def test_files_written_and_listed(tmp_path: Path):
    written = write_report(tmp_path, make_result(), thumbnail)
    names = [p.name for p in written]
    assert names == ["sheet_duplicate_across_labels.png", "sheet_exact_duplicate.png", "sheet_blank.png",
                     "sheet_extreme_aspect.png", "sheet_colour.png", "top_findings.png", "report.html"]
    assert all(p.parent == tmp_path and p.is_file() for p in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporary files left, no group sheets


def test_report_is_self_contained_and_escaped(tmp_path: Path):
    write_report(tmp_path, make_result(), thumbnail)
    text = (tmp_path / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)
    assert "<link" not in text and "<script" not in text and "@import" not in text and "url(" not in text
    assert html.escape(NASTY) in text and NASTY not in text
    assert "&lt;brain&gt;" in text and "<brain>" not in text
    assert "cannot decode: &lt;truncated&gt;" in text
    # each sheet is embedded as it was written
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(embedded) == 5
    assert base64.b64decode(embedded[0]) == (tmp_path / "sheet_duplicate_across_labels.png").read_bytes()


def test_summary_table_lists_every_finding_with_its_count(tmp_path: Path):
    result = make_result()
    write_report(tmp_path, result, thumbnail)
    text = (tmp_path / "report.html").read_text()
    for name, (title, does) in FINDINGS.items():
        assert summary_count(text, name) == sum(f.finding == name for f in result.findings)
        assert html.escape(does) in text
    assert summary_count(text, "small_image") == 0 and summary_count(text, "exact_duplicate") == 2
    # layout order: summary, findings in FINDINGS order, collections, skipped, settings
    order = [text.index(marker) for marker in ('id="summary-blank"', 'id="finding-duplicate_across_labels"',
                                               'id="finding-blank"', 'id="finding-shortcut_cluster"',
                                               "<h2>Collections", "<h2>Skipped", "<h2>Settings", "took 12.5 s")]
    assert order == sorted(order)
    assert 'id="finding-small_image"' not in text


@pytest.mark.parametrize("accuracy, warned", [
    ({"source": 0.9, "appearance": 0.55}, ["source"]),
    ({"source": SHORTCUT_ACCURACY, "appearance": SHORTCUT_ACCURACY - 0.001}, ["source"]),
    ({"source": 0.79, "appearance": 0.5}, []),
    ({"source": 0.95, "appearance": 0.85}, ["source", "appearance"]),
])
def test_shortcut_warning_only_at_or_above_threshold(tmp_path: Path, accuracy: dict[str, float], warned: list[str]):
    write_report(tmp_path, make_result(accuracy), thumbnail)
    text = (tmp_path / "report.html").read_text()
    warnings = re.findall(r'<div class="warning"><strong>(.*?)</strong> alone predicts the label at out-of-fold '
                          r"balanced accuracy (\d\.\d{3})", text)
    assert warnings == [(kind, f"{accuracy[kind]:.3f}") for kind in warned]
    # the collections headings carry every kind's accuracy, warned or not
    for kind, value in accuracy.items():
        assert f"<h3>{kind}: out-of-fold balanced accuracy {value:.3f}</h3>" in text


@pytest.mark.parametrize("tiles, limit, columns, grid", [(7, 24, 3, [3, 3, 1]), (30, 24, 6, [6, 6, 6, 6]),
                                                        (2, 24, 6, [2])])
def test_contact_sheet_grid(tiles: int, limit: int, columns: int, grid: list[int]):
    found = [Finding(f"yes/f{i}.png", "blank", 1.0, "") for i in range(tiles)]
    found.insert(1, Finding("source:x", "shortcut_cluster", 1.0, ""))  # no thumbnail: skipped, not a hole
    png = contact_sheet(found, thumbnail, "title", limit=limit, columns=columns)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.size == sheet_size(grid) == (audit_report.PAD + max(grid) * audit_report.CELL_W,
                                              audit_report.TITLE_H + len(grid) * audit_report.CELL_H)
    pixels = np.asarray(image)
    assert (pixels[0, 0] == 255).all() and pixels.min() < 50  # white background, something dark drawn


def test_report_sheets_decode_with_expected_size(tmp_path: Path):
    write_report(tmp_path, make_result(blanks=9), thumbnail)
    assert Image.open(tmp_path / "sheet_blank.png").size == sheet_size([6, 3])
    assert Image.open(tmp_path / "sheet_colour.png").size == sheet_size([1])
    # top_findings: one row per file-level finding with thumbnails, at most 4 tiles each, each row with a heading
    assert Image.open(tmp_path / "top_findings.png").size == sheet_size([1, 2, 4, 1, 1], headings=5)


def test_contact_sheet_none_without_thumbnails():
    groups = [Finding("source:br35h", "shortcut_cluster", 0.99, ""), Finding("appearance:A1", "shortcut_cluster", 1, "")]
    assert contact_sheet(groups, thumbnail, "clusters") is None
    assert contact_sheet([], thumbnail, "nothing") is None


def test_no_findings_writes_only_the_report(tmp_path: Path):
    result = make_result()
    result.findings, result.skipped = [], []
    assert write_report(tmp_path, result, thumbnail) == [tmp_path / "report.html"]
    text = (tmp_path / "report.html").read_text()
    assert all(summary_count(text, name) == 0 for name in FINDINGS)
    assert "data:image/png" not in text and "<h2>Skipped files: 0</h2>\n<p>None.</p>" in text


def test_table_truncated_after_50_rows(tmp_path: Path):
    write_report(tmp_path, make_result(blanks=53), thumbnail)
    text = (tmp_path / "report.html").read_text()
    section = text[text.index('id="finding-blank"'):text.index('id="finding-extreme_aspect"')]
    assert section.count('<td class="path">no/blank_') == 50
    assert "no/blank_049.png" in section and "no/blank_050.png" not in section
    assert "3 more in findings.csv" in section
    assert "more in findings.csv" not in text.replace(section, "")
    assert summary_count(text, "blank") == 53


def test_tile_captions():
    assert audit_report.label_folder("yes/sub/a.png") == "yes (Tumor)"
    assert audit_report.label_folder("no/a.png") == "no (Healthy)"
    assert audit_report.label_folder("scans_a/a.png") == "scans_a"  # named by --classes: the folder, no class
    assert audit_report.label_folder("a.png") is None
    assert audit_report.label_folder("Healthy/a.png") == "Healthy"  # the class's own name is not repeated
    assert [audit_report.score_text(x) for x in (0.8734, 3.0, 45.25, 1500.0)] == ["0.873", "3.00", "45.2", "1500"]


def test_output_is_deterministic(tmp_path: Path):
    first = write_report(tmp_path / "a", make_result(blanks=30), thumbnail)
    second = write_report(tmp_path / "b", make_result(blanks=30), thumbnail)
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
