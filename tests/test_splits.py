from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tumorclf.data import DataError, load_dataset
from tumorclf.splits import (
    SPLIT_NAMES,
    group_duplicates,
    grouped_split,
    make_split,
    manifest_csv,
    near_duplicate_pairs,
    paper_split,
    perceptual_hash,
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
