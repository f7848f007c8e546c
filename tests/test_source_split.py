"""`tumorclf train --split source`: leave-source-out end to end, and its one-line refusals."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import one_error_line, read_csv, write_blob_dataset
from tumorclf.cli.main import main
from tumorclf.data.dataset import load_dataset
from tumorclf.data.splits import perceptual_hash

FAST = ["--image-size", "48", "--batch-size", "8", "--learning-rate", "0.01", "--deterministic", "--precision",
        "float32", "--strategy", "default"]


def write_sources(path: Path, data: Path, assign, header: tuple[str, ...] = ("path", "source", "scanner")) -> dict:
    """A sources CSV (with an extra column) giving each file of `data` the source `assign(class, i)`, or leaving
    it out where that is None; returns path -> source."""
    sources = {}
    for folder in ("healthy", "tumor"):
        for i, file in enumerate(sorted((data / folder).iterdir())):
            source = assign(folder, i)
            if source is not None:
                sources[f"{folder}/{file.name}"] = source
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows((p, s, "mr-1")[:len(header)] for p, s in sources.items())
    return sources


def test_leave_source_out_run_never_trains_on_a_held_out_file_or_a_copy_of_one(tmp_path: Path, capsys):
    data = write_blob_dataset(tmp_path / "data", per_class=50, size=48, seed=3)
    sources = write_sources(tmp_path / "sources.csv", data, lambda folder, i: f"s{i % 5}")
    held = {path for path, source in sources.items() if source in ("s1", "s3")}
    # copies of held-out files under other sources: one byte for byte (not in the CSV: --unlisted-source names
    # its source), one re-encoded as JPEG (source s0)
    shutil.copyfile(data / "tumor" / "img001.png", data / "tumor" / "copy_of_img001.png")
    Image.open(data / "healthy" / "img003.png").convert("RGB").save(data / "healthy" / "near_img003.jpg", quality=90)
    with open(tmp_path / "sources.csv", "a", newline="") as handle:
        csv.writer(handle).writerow(["healthy/near_img003.jpg", "s0", "mr-2"])
    assert "tumor/img001.png" in held and "healthy/img003.png" in held

    args = ["train", "--data", str(data), "--out", str(tmp_path / "runs"), "--epochs", "2", *FAST,
            "--split", "source", "--sources", str(tmp_path / "sources.csv"), "--holdout-sources", "s3", "s1"]
    assert main(args) == 2  # the copy is not in the CSV
    assert "1 of 102 files are not in" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()
    assert main([*args, "--unlisted-source", "extra"]) == 0
    run = tmp_path / "runs" / "simplecnn_scratch_lso-s1+s3_48px_seed42"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run)

    rows = read_csv(run / "split.csv")
    where = {row["path"]: row["split"] for row in rows}
    assert len(rows) == 102
    assert {path for path, split in where.items() if split == "test"} == held  # all of them, and nothing else
    excluded = {path for path, split in where.items() if split == "excluded"}
    assert {"tumor/copy_of_img001.png", "healthy/near_img003.jpg"} <= excluded
    test_groups = {row["group"] for row in rows if row["split"] == "test"}
    assert all(row["group"] in test_groups for row in rows if row["split"] == "excluded")
    used = [row for row in rows if row["split"] in ("train", "val")]
    assert not {row["group"] for row in used} & test_groups
    # independently of the grouping: no train/val file is a byte copy or a near copy of a held-out file
    assert not {row["sha256"] for row in used} & {row["sha256"] for row in rows if row["split"] == "test"}
    assert all(hashlib.sha256((data / row["path"]).read_bytes()).hexdigest() == row["sha256"] for row in rows)
    decoded = load_dataset(data, 48)
    hashes = dict(zip(decoded.paths, perceptual_hash(decoded.images())))
    distance = np.bitwise_count(np.array([hashes[row["path"]] for row in used])[:, None]
                                ^ np.array([hashes[path] for path in held])[None, :])
    assert distance.min() > 4

    record = json.loads((run / "config.json").read_text())
    report = record["split"]
    assert record["config"]["split"] == "source" and record["config"]["holdout_sources"] == "s1,s3"
    assert record["config"]["unlisted_source"] == "extra"
    assert record["resolved"]["sources_sha256"] == hashlib.sha256((tmp_path / "sources.csv").read_bytes()).hexdigest()
    assert report["protocol"] == "source" and report["holdout_sources"] == "s1,s3"
    assert report["excluded_duplicates_of_holdout"] == len(excluded)
    assert report["excluded_groups"] == len({row["group"] for row in rows if row["split"] == "excluded"})
    assert report["groups_spanning_splits"] == 0 and report["source_extra"] == 1
    assert report["source_s0"] == 21 and report["source_s1"] == report["source_s3"] == 20
    for split in ("train", "val", "test"):
        assert report[f"{split}_healthy"] + report[f"{split}_tumor"] == sum(s == split for s in where.values())
        assert report[f"{split}_healthy"] > 0 and report[f"{split}_tumor"] > 0
    # the operating point comes from the validation split
    assert [row["path"] for row in read_csv(run / "val_predictions.csv")] == \
        [row["path"] for row in rows if row["split"] == "val"]
    assert json.loads((run / "operating_point.json").read_text())["n"] == sum(s == "val" for s in where.values())
    assert len(read_csv(run / "test_predictions.csv")) == len(held)

    # resuming with another sources file (same name, other content) is refused before anything is read from the run
    with open(tmp_path / "sources.csv", "a", newline="") as handle:
        csv.writer(handle).writerow(["healthy/not_there.png", "s9", ""])
    capsys.readouterr()
    assert main([*args, "--unlisted-source", "extra", "--resume"]) == 2
    assert "another --sources file" in one_error_line(capsys)


def test_source_split_refusals_are_one_line(tmp_path: Path, capsys):
    data = write_blob_dataset(tmp_path / "data", per_class=12, size=32, seed=4)
    table = tmp_path / "sources.csv"
    base = ["train", "--data", str(data), "--out", str(tmp_path / "runs"), *FAST]

    def refused(*argv: str) -> str:
        assert main([*base, *argv]) == 2
        return one_error_line(capsys)

    write_sources(table, data, lambda folder, i: None if (folder, i) == ("tumor", 5) else f"s{i % 3}")
    source = ["--split", "source", "--sources", str(table)]
    assert "1 of 24 files are not in" in refused(*source, "--holdout-sources", "s1")
    assert "'tumor/img005.png'" in refused(*source, "--holdout-sources", "s1")
    # --unlisted-source fixes it: what stops the run now is the next check
    assert "unknown held-out source(s) nope; the files' sources are other, s0, s1, s2" in \
        refused(*source, "--holdout-sources", "nope", "--unlisted-source", "other")
    assert "holding out every source (other, s0, s1, s2)" in \
        refused(*source, "--holdout-sources", "s0", "s1", "s2", "other", "--unlisted-source", "other")
    write_sources(table, data, lambda folder, i: "s0" if folder == "healthy" else f"s{i % 2}")
    assert "the test split has no healthy images (held out: s1)" in refused(*source, "--holdout-sources", "s1")
    assert "belong to --split source" in refused("--holdout-sources", "s1")
    assert "belong to --split source" in refused("--unlisted-source", "s1")
    assert "needs --sources FILE.csv and --holdout-sources" in refused("--split", "source", "--sources", str(table))
    assert "needs --sources FILE.csv and --holdout-sources" in refused("--split", "source", "--holdout-sources", "s1")
    write_sources(table, data, lambda folder, i: f"s{i % 3}", header=("path", "site"))
    assert f"sources file {table} has no source column (columns: path, site)" in \
        refused(*source, "--holdout-sources", "s1")
    assert "sources file not found" in refused("--split", "source", "--sources", str(tmp_path / "missing.csv"),
                                               "--holdout-sources", "s1")
    assert not (tmp_path / "runs").exists()
