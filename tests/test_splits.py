from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tumorclf.data.dataset import DataError, load_dataset
from tumorclf.data.splits import (
    EXCLUDED,
    SPLIT_NAMES,
    check_holdout,
    group_duplicates,
    grouped_split,
    make_split,
    manifest_csv,
    near_duplicate_pairs,
    paper_split,
    perceptual_hash,
    read_sources,
)

FRACTIONS = (0.7, 0.15, 0.15)


def test_paper_split_is_stratified_and_reproducible():
    labels = np.array([0] * 2087 + [1] * 2513)
    a = paper_split(labels, FRACTIONS, seed=42)
    assert np.array_equal(a, paper_split(labels, FRACTIONS, seed=42))
    assert not np.array_equal(a, paper_split(labels, FRACTIONS, seed=7))
    for label, total in ((0, 2087), (1, 2513)):
        counts = np.bincount(a[labels == label], minlength=3)
        assert counts.sum() == total
        np.testing.assert_allclose(counts / total, FRACTIONS, atol=1 / total)


def test_grouped_split_keeps_groups_together_and_is_stratified():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 6, 500)
    groups = np.repeat(np.arange(500), sizes)
    labels = np.repeat(rng.integers(0, 2, 500), sizes)
    a = grouped_split(labels, groups, FRACTIONS, seed=42)
    assert np.array_equal(a, grouped_split(labels, groups, FRACTIONS, seed=42))
    for g in range(500):
        assert len(np.unique(a[groups == g])) == 1
    for label in (0, 1):
        shares = np.bincount(a[labels == label], minlength=3) / np.sum(labels == label)
        np.testing.assert_allclose(shares, FRACTIONS, atol=0.02)


def test_perceptual_hash_matches_near_copies_not_different_images():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    brighter = np.clip(base.astype(int) * 1.1 + 5, 0, 255).astype(np.uint8)
    other = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    h = perceptual_hash(np.stack([base, brighter, other]))
    assert h.dtype == np.uint64
    assert np.bitwise_count(h[0] ^ h[1]) <= 4
    assert np.bitwise_count(h[0] ^ h[2]) > 16
    pairs = near_duplicate_pairs(h, 4).tolist()
    assert pairs == [[0, 1]]


def test_group_duplicates_joins_byte_copies_and_near_copies():
    rng = np.random.default_rng(2)
    unique = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    unique[1] = np.clip(unique[0].astype(int) + 3, 0, 255)  # near copy of 0
    image_index = np.array([0, 1, 2, 2, 3])  # files 2 and 3 are byte-identical
    groups, merges = group_duplicates(image_index, unique, max_bits=4)
    assert merges == 1
    assert groups[0] == groups[1] and groups[2] == groups[3]
    assert len({groups[0], groups[2], groups[4]}) == 3
    byte_only, merges = group_duplicates(image_index, unique, max_bits=-1)
    assert merges == 0 and len(np.unique(byte_only)) == 4


def test_make_split_rejects_too_small_data():
    labels = np.array([0, 0, 1, 1])
    images = np.random.default_rng(3).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(DataError, match="too small"):
        make_split("paper", labels, np.arange(4), images, FRACTIONS, 42, 4)


def test_manifest_lists_every_file(blob_dataset: Path):
    ds = load_dataset(blob_dataset, 32)
    split = make_split("grouped", ds.labels, ds.image_index, ds.unique_images, FRACTIONS, 42, 4)
    lines = manifest_csv(ds.paths, ds.labels, ds.sha256, split).splitlines()
    assert lines[0] == "path,label,split,group,sha256"
    assert len(lines) == len(ds) + 1
    assert {line.split(",")[2] for line in lines[1:]} == set(SPLIT_NAMES)


def leave_source_out_data():
    """Files of sources a, b and c (b to be held out). Some files of a and c copy a file of b: byte for byte
    (the same content) or nearly (brightened), one of them twice over (a byte copy of the near copy)."""
    rng = np.random.default_rng(4)
    unique = list(rng.integers(0, 256, (150, 32, 32, 3), dtype=np.uint8))
    sources = ["a"] * 60 + ["b"] * 30 + ["c"] * 60
    labels = [i % 2 for i in range(150)]
    image_index = list(range(150))
    copies = {}  # file -> the held-out file it copies
    for copy_of, source in ((60, "a"), (61, "c"), (62, "c")):  # byte-identical copies of held-out files
        copies[len(image_index)] = copy_of
        image_index.append(copy_of), sources.append(source), labels.append(labels[copy_of])
    for copy_of, source in ((70, "a"), (71, "c")):  # near copies (+3 brightness: a few pHash bits at most)
        unique.append(np.clip(unique[copy_of].astype(int) + 3, 0, 255).astype(np.uint8))
        copies[len(image_index)] = copy_of
        image_index.append(len(unique) - 1), sources.append(source), labels.append(labels[copy_of])
    copies[len(image_index)] = 70  # a byte copy (in a) of the near copy of 70
    image_index.append(len(unique) - 2), sources.append("a"), labels.append(labels[70])
    image_index.append(5), sources.append("c"), labels.append(labels[5])  # a copy between two training sources
    return (np.array(labels), np.array(image_index), np.stack(unique), np.array(sources), copies)


def test_source_split_keeps_held_out_files_and_their_copies_out_of_train_and_val():
    labels, image_index, unique, sources, copies = leave_source_out_data()
    split = make_split("source", labels, image_index, unique, FRACTIONS, 42, 4, sources, ("b",))
    a = split.assignment
    assert np.array_equal(a, make_split("source", labels, image_index, unique, FRACTIONS, 42, 4, sources,
                                        ("b",)).assignment)
    held = sources == "b"
    assert np.all(a[held] == 2) and not np.any(a[~held] == 2)  # test is the held-out source, all of it
    assert sorted(np.flatnonzero(a == EXCLUDED).tolist()) == sorted(copies)  # exactly the copies of it
    used = np.flatnonzero((a == 0) | (a == 1))
    assert len(used) == len(labels) - 30 - len(copies)
    # independently of the grouping: no train/val file shares content with, or hashes near, a held-out file
    assert not set(image_index[used]) & set(image_index[held])
    hashes = perceptual_hash(unique)
    distance = np.bitwise_count(hashes[image_index[used]][:, None] ^ hashes[image_index[held]][None, :])
    assert distance.min() > 4
    near = np.bitwise_count(hashes[image_index[list(copies)]] ^ hashes[image_index[list(copies.values())]])
    assert near.max() <= 4  # the planted copies really are copies
    assert a[-1] == a[5] and a[5] in (0, 1)  # a copy between training sources stays with its original
    assert split.groups[-1] == split.groups[5]
    report = split.report
    assert report["protocol"] == "source" and report["holdout_sources"] == "b"
    assert report["excluded_duplicates_of_holdout"] == len(copies) == 6
    assert report["excluded_groups"] == 5 and report["groups_spanning_splits"] == 0
    assert (report["source_a"], report["source_b"], report["source_c"]) == (63, 30, 64)
    assert report["test_healthy"] + report["test_tumor"] == 30
    assert report["train_healthy"] + report["train_tumor"] + report["val_healthy"] + report["val_tumor"] == len(used)
    train, val = report["train_healthy"] + report["train_tumor"], report["val_healthy"] + report["val_tumor"]
    assert train / (train + val) == pytest.approx(0.7 / 0.85, abs=0.05)  # train:val as in FRACTIONS

    lines = manifest_csv([f"f{i}.png" for i in range(len(labels))], labels, ["x"] * len(labels), split).splitlines()
    assert {int(line.split(",")[0][1:-4]) for line in lines[1:] if line.split(",")[2] == "excluded"} == set(copies)

    # byte identity only: the near copies are no longer duplicates, and train on
    split = make_split("source", labels, image_index, unique, FRACTIONS, 42, -1, sources, ("b",))
    assert sorted(np.flatnonzero(split.assignment == EXCLUDED).tolist()) == [150, 151, 152]

    # two held-out sources
    split = make_split("source", labels, image_index, unique, FRACTIONS, 42, 4, sources, ("a", "b"))
    assert np.all(split.assignment[np.isin(sources, ["a", "b"])] == 2)
    assert not np.any(split.assignment[sources == "c"] == 2) and split.report["holdout_sources"] == "a,b"
    assert sorted(np.flatnonzero(split.assignment == EXCLUDED).tolist()) == [151, 152, 154, 156]

    with pytest.raises(ValueError, match="source protocol needs"):
        make_split("source", labels, image_index, unique, FRACTIONS, 42, 4)
    one_class = sources.copy()
    one_class[(sources == "b") & (labels == 0)] = "a"
    with pytest.raises(DataError, match="the test split has no healthy images \\(held out: b\\)"):
        make_split("source", labels, image_index, unique, FRACTIONS, 42, 4, one_class, ("b",))


def test_read_sources(tmp_path: Path):
    table = tmp_path / "sources.csv"
    table.write_text("site,path,source\nx,healthy/a.png,s1\ny,./tumor/b.png, s2 \nz,tumor/unused.png,s3\n")
    assert read_sources(table, ["healthy/a.png", "tumor/b.png"]).tolist() == ["s1", "s2"]
    with pytest.raises(DataError, match="1 of 3 files are not in .*'healthy/c.png'.*--unlisted-source"):
        read_sources(table, ["healthy/a.png", "healthy/c.png", "tumor/b.png"])
    assert read_sources(table, ["healthy/a.png", "healthy/c.png"], "other").tolist() == ["s1", "other"]
    table.write_text("path,site\nhealthy/a.png,s1\n")
    with pytest.raises(DataError, match="has no source column \\(columns: path, site\\)"):
        read_sources(table, ["healthy/a.png"])
    table.write_text("path,source\nhealthy/a.png,\n")
    with pytest.raises(DataError, match="gives no source for 1 paths"):
        read_sources(table, ["healthy/a.png"])
    with pytest.raises(DataError, match="sources file not found"):
        read_sources(tmp_path / "missing.csv", ["healthy/a.png"])

    sources = np.array(["s1", "s2", "s2"])
    check_holdout(sources, ("s2",))
    with pytest.raises(DataError, match="unknown held-out source\\(s\\) s9; the files' sources are s1, s2"):
        check_holdout(sources, ("s2", "s9"))
    with pytest.raises(DataError, match="holding out every source"):
        check_holdout(sources, ("s1", "s2"))


@pytest.mark.dataset
@pytest.mark.parametrize("protocol", ["grouped", "paper"])
def test_real_dataset_split_properties(real_data: Path, protocol: str):
    ds = load_dataset(real_data, 64)
    split = make_split(protocol, ds.labels, ds.image_index, ds.unique_images, FRACTIONS, 42, 4)
    report = split.report
    assert report["byte_identical_copies"] == 544 and report["files"] == 4600
    contents = {name: set(np.asarray(ds.sha256)[split.indices(name)]) for name in SPLIT_NAMES}
    shared = len(contents["train"] & contents["test"]) + len(contents["val"] & contents["test"])
    if protocol == "grouped":
        # no test image has a byte-identical or near-identical copy in train or val
        assert shared == 0 and report["groups_spanning_splits"] == 0
        test_hashes = perceptual_hash(ds.images(split.indices("test")))
        train_hashes = perceptual_hash(ds.images(split.indices("train")))
        distances = np.bitwise_count(test_hashes[:, None] ^ train_hashes[None, :])
        assert distances.min() > 4
    else:
        assert shared > 0  # the paper's protocol leaks duplicates into the test split
        assert report["groups_spanning_splits"] > 0
