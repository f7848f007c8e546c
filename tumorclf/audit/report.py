"""The human side of `tumorclf audit`: a self-contained HTML report and PNG contact sheets of the findings.

`findings.csv` is the complete record; the report is for reading it: what was found, how much of it,
what the training split already does about each finding, and a look at the images behind the file-level
findings. The report opens offline (sheets embedded as data URIs, no external CSS or fonts), and the same
`AuditResult` writes the same bytes (two audits differ only in the time they took, the last line).
"""

from __future__ import annotations

import base64
import functools
import html
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from tumorclf.utils.files import atomic_write_bytes, atomic_write_text
from tumorclf.data.dataset import CLASS_NAMES, label_from_folder
from tumorclf.audit.findings import FINDINGS, SHORTCUT_ACCURACY, Collection, Finding

Thumbnail = Callable[[str], np.ndarray | None]

# Findings whose rows name a grouping (`KIND`) or a cluster (`KIND:NAME`) rather than a file: no images.
GROUP_FINDINGS = frozenset({"shortcut_grouping", "shortcut_cluster"})
TABLE_ROWS = 50  # rows of each finding shown in the report; findings.csv has them all
TOP = 4  # tiles of each finding in top_findings.png

# Sheet geometry in pixels: a title bar, then rows of cells (a TILE square and CAPTION_LINES lines of text).
TILE = 128
PAD = 8
LINE = 13
CAPTION_LINES = 2
TITLE_H = 28
HEADING_H = 18  # a row heading of top_findings.png
CELL_W = TILE + PAD
CELL_H = TILE + 2 + CAPTION_LINES * LINE + PAD

BACKGROUND = (255, 255, 255)
TEXT = (30, 30, 30)
FRAME = (200, 200, 200)


@dataclass
class AuditResult:
    """Everything the report shows about one audit; `tumorclf audit` fills it."""

    root: str  # the data folder as given
    files: int  # usable files
    unique: int  # distinct contents (byte-identical files counted once)
    per_class: tuple[int, int]  # usable files per class (Healthy, Tumor)
    skipped: list[tuple[str, str]]  # (path, reason): files that could not be read or decoded
    findings: list[Finding]  # already sorted by findings.sort_findings
    collections: list[Collection]  # clusters of each grouping with class balance
    grouping_accuracy: dict[str, float]  # grouping kind -> out-of-fold balanced accuracy of its majority label
    duplicates_per_class: dict[str, tuple[int, int]]  # "exact"/"near" -> files in such groups per class
    settings: dict[str, object]  # the command's settings, shown at the end
    seconds: float  # how long the audit took


# --- contact sheets ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Tile:
    image: Image.Image  # fits in TILE x TILE
    caption: tuple[str, ...]  # CAPTION_LINES lines


def _font(size: int | None = None) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font, so a sheet needs no font on the system and renders the same everywhere."""
    return ImageFont.load_default(size)


def _fit(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float, keep_end: bool) -> str:
    """`text` cut with "..." until it fits `width` px; a path keeps its end (the file name), a title its start."""
    if font.getlength(text) <= width:
        return text
    for keep in range(len(text) - 1, 0, -1):
        cut = "..." + text[-keep:] if keep_end else text[:keep] + "..."
        if font.getlength(cut) <= width:
            return cut
    return "..."


def score_text(score: float) -> str:
    """Three significant digits, never in exponent notation (a count of 1500 copies stays 1500)."""
    return f"{score:#.3g}" if abs(score) < 1000 else f"{score:.0f}"


def label_folder(path: str) -> str | None:
    """The class folder a file lies in (the first component of its path relative to the data folder), with
    the class its name implies when it says another word for it; None for a file directly in the data folder."""
    parts = Path(path).parts
    if len(parts) < 2:
        return None
    label = label_from_folder(Path(parts[0]) / parts[-1])
    return parts[0] if label is None or parts[0] == CLASS_NAMES[label] else f"{parts[0]} ({CLASS_NAMES[label]})"


def _tiles(findings: list[Finding], thumbnail: Thumbnail, limit: int) -> list[_Tile]:
    """Tiles of the first `limit` findings that have a thumbnail, captioned with path, folder and score."""
    font, tiles = _font(), []
    for finding in findings:
        if len(tiles) == limit:
            break
        pixels = thumbnail(finding.path)
        if pixels is None:
            continue
        image = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB")
        image = ImageOps.contain(image, (TILE, TILE), Image.Resampling.BILINEAR)
        folder = label_folder(finding.path)
        second = f"{folder or 'score'}  {score_text(finding.score)}"
        caption = (_fit(finding.path, font, TILE, keep_end=True), _fit(second, font, TILE, keep_end=False))
        tiles.append(_Tile(image, caption))
    return tiles


def sheet_size(rows: list[int], headings: int = 0) -> tuple[int, int]:
    """(width, height) of a sheet with `rows[i]` tiles in row i and `headings` row headings."""
    return PAD + max(rows) * CELL_W, TITLE_H + len(rows) * CELL_H + headings * HEADING_H


def _draw_sheet(title: str, rows: list[tuple[str | None, list[_Tile]]]) -> bytes:
    """PNG bytes of a title over rows of tiles, each row with an optional heading."""
    width, height = sheet_size([len(tiles) for _, tiles in rows], sum(heading is not None for heading, _ in rows))
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font, title_font = _font(), _font(14)
    draw.text((PAD, 7), _fit(title, title_font, width - 2 * PAD, keep_end=False), fill=TEXT, font=title_font)
    y = TITLE_H
    for heading, tiles in rows:
        if heading is not None:
            draw.text((PAD, y + 2), _fit(heading, font, width - 2 * PAD, keep_end=False), fill=TEXT, font=font)
            y += HEADING_H
        for column, tile in enumerate(tiles):
            x = PAD + column * CELL_W
            draw.rectangle((x - 1, y - 1, x + TILE, y + TILE), outline=FRAME)
            sheet.paste(tile.image, (x + (TILE - tile.image.width) // 2, y + (TILE - tile.image.height) // 2))
            for line, text in enumerate(tile.caption):
                draw.text((x, y + TILE + 2 + line * LINE), text, fill=TEXT, font=font)
        y += CELL_H
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def contact_sheet(findings: list[Finding], thumbnail: Thumbnail, title: str,
                  limit: int = 24, columns: int = 6) -> bytes | None:
    """PNG bytes of a grid of the first `limit` findings that have a thumbnail (thumbnail(path) returns
    uint8 RGB HxWx3 or None for group findings named KIND:NAME); each tile captioned with a shortened
    path, the label folder if the path's first component names one, and the score; title on top.
    None when no finding has a thumbnail. The grid is as wide as its fullest row (at most `columns`)."""
    tiles = _tiles(findings, thumbnail, limit)
    if not tiles:
        return None
    return _draw_sheet(title, [(None, tiles[start:start + columns]) for start in range(0, len(tiles), columns)])


def _top_sheet(by_name: dict[str, list[Finding]], thumbnail: Thumbnail) -> bytes | None:
    """One row per file-level finding with its TOP strongest cases: the whole audit in one picture."""
    rows = [(f"{name}: {FINDINGS[name][0]}", _tiles(found, thumbnail, TOP))
            for name, found in by_name.items() if name not in GROUP_FINDINGS]
    rows = [(heading, tiles) for heading, tiles in rows if tiles]
    return _draw_sheet("Data audit: the strongest cases of each finding", rows) if rows else None


# --- report.html ------------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #222;
       max-width: 1240px; margin: 1em auto; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.5em; word-break: break-all; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.path { font-family: ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
.warning { border: 2px solid #c60; background: #fff4e5; padding: 0.6em 1em; margin: 0.6em 0; }
.note { color: #555; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list[tuple[str, str]]]) -> str:
    """An HTML table; each cell is (css class, already escaped HTML)."""
    head = "".join(f"<th>{_e(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(f'<td class="{cls}">{cell}</td>' if cls else f"<td>{cell}</td>"
                                    for cls, cell in row) + "</tr>\n" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}</table>\n"


def _summary(result: AuditResult, by_name: dict[str, list[Finding]]) -> list[str]:
    per_class = ", ".join(f"{n} {name}" for n, name in zip(result.per_class, CLASS_NAMES))
    parts = [f"<ul>\n<li>{result.files} usable files, {result.unique} distinct contents</li>\n",
             f"<li>per class: {_e(per_class)}</li>\n<li>skipped (unreadable or undecodable): {len(result.skipped)}</li>\n</ul>\n",
             "<table>\n<tr><th>finding</th><th>what it is</th><th>rows</th>",
             "<th>what the training split does</th></tr>\n"]
    for name, (title, does) in FINDINGS.items():
        count = len(by_name.get(name, []))
        label = f'<a href="#finding-{name}"><code>{name}</code></a>' if count else f"<code>{name}</code>"
        parts.append(f'<tr id="summary-{name}"><td>{label}</td><td>{_e(title)}</td>'
                     f'<td class="n">{count}</td><td>{_e(does)}</td></tr>\n')
    parts.append("</table>\n")
    remedy = FINDINGS["shortcut_grouping"][1]
    for kind, accuracy in result.grouping_accuracy.items():
        if accuracy >= SHORTCUT_ACCURACY:
            parts.append(f'<div class="warning"><strong>{_e(kind)}</strong> alone predicts the label at out-of-fold '
                         f"balanced accuracy {accuracy:.3f}. {_e(remedy[0].upper() + remedy[1:])}.</div>\n")
    return parts


DUPLICATE_KINDS = {"exact": "byte-identical copies", "near": "near copies (perceptual hash)"}


def _duplicates(result: AuditResult) -> list[str]:
    rows = [[("", _e(f"{kind}: {DUPLICATE_KINDS.get(kind, kind)}"))] + [("n", str(n)) for n in counts]
            for kind, counts in result.duplicates_per_class.items()]
    return ["<h2>Files in duplicate groups, per class</h2>\n", _table(["kind", *CLASS_NAMES], rows)]


def _finding_section(name: str, found: list[Finding], sheet: bytes | None) -> list[str]:
    title, does = FINDINGS[name]
    parts = [f'<h2 id="finding-{name}">{_e(title)} (<code>{name}</code>): {len(found)}</h2>\n',
             f'<p class="note">What the training split does: {_e(does)}.</p>\n']
    if sheet is not None:
        parts.append(f'<img src="data:image/png;base64,{base64.b64encode(sheet).decode("ascii")}" '
                     f'alt="{_e(name)} contact sheet">\n')
    rows = [[("path", _e(f.path)), ("n", score_text(f.score)), ("", _e(f.details))] for f in found[:TABLE_ROWS]]
    parts.append(_table(["path", "score", "details"], rows))
    if len(found) > TABLE_ROWS:
        parts.append(f'<p class="note">{len(found) - TABLE_ROWS} more in findings.csv</p>\n')
    return parts


def _collections(result: AuditResult) -> list[str]:
    parts = ["<h2>Collections</h2>\n",
             '<p class="note">Clusters of each grouping with their class balance. A grouping whose clusters are ',
             "mostly one class lets a model tell the label from the cluster instead of the anatomy. Appearance ",
             "clusters may also follow the tumour itself; size/format and source clusters cannot, so a high ",
             "accuracy there is a shortcut.</p>\n"]
    for kind in dict.fromkeys(c.kind for c in result.collections):
        accuracy = result.grouping_accuracy.get(kind)
        heading = _e(kind) if accuracy is None else f"{_e(kind)}: out-of-fold balanced accuracy {accuracy:.3f}"
        parts.append(f"<h3>{heading}</h3>\n")
        rows = [[("", _e(c.kind)), ("path", _e(c.name)), ("n", str(c.files)), *(("n", str(n)) for n in c.per_class),
                 ("n", f"{c.purity:.1%} {c.majority}")] for c in result.collections if c.kind == kind]
        parts.append(_table(["kind", "name", "files", *CLASS_NAMES, "share of majority class"], rows))
    return parts


def _html(result: AuditResult, by_name: dict[str, list[Finding]], sheets: dict[str, bytes]) -> str:
    parts = ['<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
             f"<title>Data audit: {_e(result.root)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
             f"<h1>Data audit: {_e(result.root)}</h1>\n",
             *_summary(result, by_name), *_duplicates(result)]
    for name, found in by_name.items():
        parts.extend(_finding_section(name, found, sheets.get(name)))
    parts.extend(_collections(result))
    parts.append(f"<h2>Skipped files: {len(result.skipped)}</h2>\n")
    skipped = [[("path", _e(path)), ("", _e(reason))] for path, reason in result.skipped]
    parts.append(_table(["path", "reason"], skipped) if skipped else "<p>None.</p>\n")
    settings = [[("", _e(key)), ("", _e(value))] for key, value in result.settings.items()]
    parts.append("<h2>Settings</h2>\n" + _table(["setting", "value"], settings))
    parts.append(f"<p>The audit took {result.seconds:.1f} s.</p>\n</body>\n</html>\n")
    return "".join(parts)


def write_report(out: Path, result: AuditResult, thumbnail: Thumbnail) -> list[Path]:
    """Write out/sheet_<finding>.png for each file-level finding with a thumbnail, out/top_findings.png (the
    top 4 of each file-level finding in one sheet, for the README) and, last, out/report.html, so a report
    on disk means its sheets are there too. Returns the paths written, in that order."""
    out = Path(out)
    thumbnail = functools.lru_cache(maxsize=None)(thumbnail)  # the top sheet reuses the per-finding tiles
    by_name = {name: found for name in FINDINGS if (found := [f for f in result.findings if f.finding == name])}
    written, sheets = [], {}
    for name, found in by_name.items():
        if name in GROUP_FINDINGS:
            continue
        png = contact_sheet(found, thumbnail, f"{name}: {FINDINGS[name][0]}, strongest first ({len(found)} in all)")
        if png is not None:
            sheets[name] = png
            written.append(out / f"sheet_{name}.png")
            atomic_write_bytes(written[-1], png)
    top = _top_sheet(by_name, thumbnail)
    if top is not None:
        written.append(out / "top_findings.png")
        atomic_write_bytes(written[-1], top)
    written.append(out / "report.html")
    atomic_write_text(written[-1], _html(result, by_name, sheets))
    return written
