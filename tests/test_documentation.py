"""README.md and docs/: generated tables that match their results files, links that resolve, a README a newcomer
reads in five minutes (`tumorclf.documentation`, `tumorclf docs`)."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tumorclf.cli.main import main
from tumorclf.documentation.blocks import blocks, drifted, pages, rendered
from tumorclf.documentation.tables import all_tables, body_of
from tumorclf.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PAGES = pages(ROOT)
CODE_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def outside_blocks_and_code(text: str) -> str:
    text = re.sub(r"^<!-- generated: [\w.-]+ -->\n.*?^<!-- end generated -->$", "", text,
                  flags=re.MULTILINE | re.DOTALL)
    return CODE_FENCE.sub("", text)


# --- the block mechanism -------------------------------------------------------------------------------------


def test_rendered_replaces_only_the_bodies_of_blocks():
    text = ("intro 1.5\n<!-- generated: a -->\nold a\n<!-- end generated -->\nmiddle\n"
            "<!-- generated: b -->\n<!-- end generated -->\nend\n")
    assert [block.name for block in blocks(text)] == ["a", "b"]
    new = rendered(text, lambda name: f"table {name}\n")
    assert new == ("intro 1.5\n<!-- generated: a -->\ntable a\n<!-- end generated -->\nmiddle\n"
                   "<!-- generated: b -->\ntable b\n<!-- end generated -->\nend\n")
    assert rendered(new, lambda name: f"table {name}\n") == new


def test_markers_in_fenced_code_are_examples_not_blocks():
    text = "```\n<!-- generated: NAME -->\n<!-- end generated -->\n```\n<!-- generated: a -->\nx\n<!-- end generated -->\n"
    assert [block.name for block in blocks(text)] == ["a"]
    assert rendered(text, lambda name: "y\n") == text.replace("\nx\n", "\ny\n")


def test_a_block_without_its_end_is_an_error():
    with pytest.raises(UserError, match="no `<!-- end generated -->`"):
        blocks("<!-- generated: a -->\nbody\n")


def test_an_unknown_table_or_a_missing_results_file_is_one_line(tmp_path: Path):
    (tmp_path / "README.md").write_text("<!-- generated: no-such-table -->\n<!-- end generated -->\n")
    with pytest.raises(UserError, match="no generated table named 'no-such-table'"):
        drifted(pages(tmp_path), body_of(tmp_path))
    (tmp_path / "README.md").write_text("<!-- generated: headline -->\n<!-- end generated -->\n")
    with pytest.raises(UserError, match="results file .*headline_recipe/results.csv is missing"):
        drifted(pages(tmp_path), body_of(tmp_path))


# --- the pages as committed ------------------------------------------------------------------------------------


def test_every_generated_block_matches_its_results_files():
    assert drifted(PAGES, body_of(ROOT)) == []


def test_every_table_is_used_by_a_page():
    used = {block.name for page in PAGES for block in blocks(page.read_text())}
    assert set(all_tables()) <= used


def test_a_changed_results_file_is_caught_and_docs_rewrites_the_table(tmp_path: Path, capsys):
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copytree(ROOT / "experiments" / "results", tmp_path / "experiments" / "results")
    assert main(["docs", "--check", "--project", str(tmp_path)]) == 0
    study = tmp_path / "experiments" / "results" / "headline_recipe" / "results.csv"
    rows = list(csv.DictReader(study.open()))
    row = next(r for r in rows if r["protocol"] == "grouped" and r["recipe"] == "robust" and r["seed"] == "42"
               and r["measures"] == "percentile+foreground+acquisition")
    row["auc"] = "0.5123"
    with study.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    assert main(["docs", "--check", "--project", str(tmp_path)]) == 1
    assert "README.md: table 'headline' differs from its results files" in capsys.readouterr().err
    assert (tmp_path / "README.md").read_text() == (ROOT / "README.md").read_text()  # --check writes nothing
    assert main(["docs", "--project", str(tmp_path)]) == 0
    assert "0.512 [" in (tmp_path / "README.md").read_text()
    assert main(["docs", "--check", "--project", str(tmp_path)]) == 0


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_table_of_numbers_outside_a_generated_block(page: Path):
    rows = [line for line in outside_blocks_and_code(page.read_text()).splitlines()
            if line.startswith("|") and re.search(r"\d\.\d", line)]
    assert rows == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_internal_issue_numbers(page: Path):
    assert re.findall(r"\bissues? ?#?\d+", page.read_text(), flags=re.IGNORECASE) == []


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in CODE_FENCE.sub("", page.read_text()).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match[1])
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(page: Path) -> list[str]:
    text = CODE_FENCE.sub("", page.read_text())
    found = [angled or plain for angled, plain in re.findall(r"\]\((?:<([^>]+)>|([^)\s]+))", text)]
    return [target for target in found if not re.match(r"[a-z]+:", target)]  # http:, https:, mailto:


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path):
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to missing {target}"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.name}: no heading for #{anchor} in {file.name}"


def test_slug_follows_github():
    assert slug("Leave-source-out and the operating point") == "leave-source-out-and-the-operating-point"
    assert slug("`tumorclf evaluate`: scoring (fast, robust)") == "tumorclf-evaluate-scoring-fast-robust"


# --- the README -------------------------------------------------------------------------------------------------


README = (ROOT / "README.md").read_text()


def test_readme_is_short():
    assert len(README.splitlines()) <= 250


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "explain", "export", "serve"])
def test_readme_shows_each_main_command_early_with_an_example(command: str):
    first = "\n".join(README.splitlines()[:120])
    examples = "\n".join(CODE_FENCE.findall(first))
    assert re.search(rf"^tumorclf {command} --", examples, flags=re.MULTILINE), command


def test_readme_headline_numbers_are_those_of_the_results_file():
    """Independently of the generator: each headline run's cells against results.csv's columns, and each
    protocol's mean ± sd row against numpy over its runs."""
    block = next(b for b in blocks(README) if b.name == "headline")
    runs = [r for r in csv.DictReader((ROOT / "experiments/results/headline_recipe/results.csv").open())
            if r["recipe"] == "robust" and r["measures"] == "percentile+foreground+acquisition"
            and r["status"].startswith("finished")]
    table = [[c.strip() for c in line.strip("|").split(" | ")] for line in block.body.splitlines()
             if line.startswith("| ")][1:]
    metrics = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc",
               "external_figshare_meningioma_sensitivity")
    per_run = [cells for cells in table if not cells[1].startswith("mean")]
    assert len(per_run) == len(runs) >= 7  # 3 seeds grouped, 3 leave-source-out, 1 on the paper's split
    by_key = {(r["protocol"], r["seed"]): r for r in runs}
    labels = {"in-source, grouped split": "grouped", "the paper's split (duplicates leak)": "paper",
              "leave-source-out: figshare and sartaj never seen": "leave-source-out:figshare+sartaj"}
    for cells in per_run:
        row = by_key[(labels[cells[0]], cells[1])]
        assert cells[2] == row["n_test"]
        for cell, metric in zip(cells[3:], metrics, strict=True):
            lo, hi = float(row[f"{metric}_lo"]), float(row[f"{metric}_hi"])
            assert cell == f"{float(row[metric]):.3f} [{lo:.3f}, {hi:.3f}]", (cells[:2], metric)
    for cells in (c for c in table if c[1].startswith("mean")):
        values = [[float(r[m]) for r in runs if r["protocol"] == labels[cells[0]]] for m in metrics]
        assert cells[1] == f"mean ± sd of {len(values[0])}"
        for cell, v in zip(cells[3:], values, strict=True):
            assert cell == f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}"


def test_the_box_guidance_table_compares_configurations_over_seeds(tmp_path: Path):
    from tumorclf.documentation.tables.cells import Results
    from tumorclf.documentation.tables.explanations import box_guidance

    def row(seed: int, measure: str, auc: float | None) -> dict[str, str]:
        name = f"vgg16_imagenet_lso-a_128px_seed{seed}_fast{measure}"
        done = auc is not None
        return {"run_name": name, "protocol": "leave-source-out:a", "status": "finished" if done else "",
                **{m: str(auc) if done else "" for m in ("accuracy", "balanced_accuracy", "auc")},
                **{f"{m}_{end}": str(auc + d) if done else "" for m in ("accuracy", "balanced_accuracy", "auc")
                   for end, d in (("lo", -0.05), ("hi", 0.05))}}

    folder = tmp_path / "experiments" / "results" / "box_guidance"
    folder.mkdir(parents=True)
    prior, zoom = "_attention0.5", "_lesionzoom0.5"
    rows = [row(42, "", 0.60), row(42, prior, 0.70), row(43, "", 0.62), row(43, prior, 0.72),
            row(44, "", None), row(44, prior, None), row(42, zoom, 0.61)]
    with open(folder / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = box_guidance(Results(tmp_path))
    assert [r[:2] for r in table.rows][:3] == [["baseline (fast recipe)", "seed 42"],
                                               ["baseline (fast recipe)", "seed 43"],
                                               ["**baseline (fast recipe)**", "**across seeds**"]]
    assert table.rows[0][4] == "0.600 [0.550, 0.650]"
    assert table.rows[5][4].startswith("0.710 ± 0.014 (0.700-0.720, 2 seeds)")
    assert "auc +0.100 (beyond the seed spread)" in table.note
    assert "baseline (fast recipe) has 2; attention prior 0.5 has 2; lesion zoom 0.5 has 1 of 3" in table.note
    assert table.rows[-1][:2] == ["**lesion zoom 0.5**", "**across seeds**"]
    assert "lesion zoom 0.5 minus the baseline: accuracy +0.000 (no seed spread to compare with yet)" in table.note
