"""The feature cache on disk (`tumorclf.utils.array_cache`), the stem outputs it keeps (`tumorclf.models.stem`) and
`tumorclf cache`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from tumorclf.cli.main import main
from tumorclf.models.factory import build_model
from tumorclf.models.stem import split_model, stem_key, stem_outputs
from tumorclf.transforms.pipeline import augmenter
from tumorclf.utils.array_cache import ArrayCache, cache_key


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8", "bfloat16"])
def test_round_trip_and_missing_key(tmp_path: Path, dtype: str):
    """bfloat16 (ml_dtypes, the features of a mixed_bfloat16 run) comes back as bfloat16, not as raw bytes."""
    import ml_dtypes

    cache = ArrayCache(tmp_path)
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4).astype(getattr(ml_dtypes, dtype, dtype))
    assert cache.get("k") is None
    cache.put("k", array)
    got = cache.get("k")
    assert got.dtype == array.dtype and np.array_equal(got, array)
    assert cache.info()["entries"] == 1 and cache.info()["bytes"] > array.nbytes


def test_keys_name_their_parts_exactly():
    assert cache_key({"a": 1, "b": [2, 3]}) == cache_key({"b": [2, 3], "a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2})


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "empty"])
def test_a_damaged_entry_is_logged_removed_and_recomputed(tmp_path: Path, caplog, damage: str):
    cache = ArrayCache(tmp_path)
    cache.put("k", np.ones((50, 50), np.float32))
    path = cache.path("k")
    blob = path.read_bytes()
    path.write_bytes({"truncated": blob[: len(blob) // 2], "empty": b"",
                      "flipped byte": blob[:-5] + bytes([blob[-5] ^ 1]) + blob[-4:]}[damage])
    assert cache.get("k") is None
    assert "is damaged" in caplog.text and not path.exists()
    cache.put("k", np.ones((50, 50), np.float32))
    assert np.array_equal(cache.get("k"), np.ones((50, 50), np.float32))


def test_a_writer_killed_before_its_rename_leaves_no_entry(tmp_path: Path):
    """A process killed with SIGKILL while it writes an entry (here: held just before the atomic rename) leaves a
    temporary file only; the next run finds no entry, computes it again and stores it."""
    code = ("import os, sys, time\nimport numpy as np\nfrom tumorclf.utils.array_cache import ArrayCache\n"
            "def hang(*args):\n    print('writing', flush=True)\n    time.sleep(120)\n"
            "os.replace = hang\nArrayCache(sys.argv[1]).put('k', np.ones((256, 256), np.float32))\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    cache = ArrayCache(tmp_path)
    assert list(tmp_path.glob(".tmp_*")) and cache.get("k") is None and cache.info()["entries"] == 0
    cache.put("k", np.full((256, 256), 2, np.float32))
    assert cache.get("k")[0, 0] == 2
    assert cache.clear() == 1 and not list(tmp_path.iterdir())  # the killed writer's temporary file too


def test_least_recently_used_entries_go_first(tmp_path: Path):
    one = np.zeros(1000, np.float64)  # about 8 kB an entry
    cache = ArrayCache(tmp_path, limit=3 * 8300)
    for i, key in enumerate(("a", "b", "c")):
        cache.put(key, one)
        os.utime(cache.path(key), (time.time() - 100 + i, time.time() - 100 + i))  # a, then b, then c
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", one)
    assert [p.stem for p, _, _ in cache.entries()] == ["c", "a", "d"]  # b, the least recently used, went


def test_an_entry_larger_than_the_limit_is_not_stored(tmp_path: Path):
    cache = ArrayCache(tmp_path, limit=100)
    cache.put("big", np.zeros(1000))
    assert cache.get("big") is None


def test_stem_outputs_are_computed_once_and_keyed_by_what_makes_them(tmp_path: Path, caplog):
    cache = ArrayCache(tmp_path)
    model = build_model("simplecnn", 32)
    stem, _ = split_model(model, model.layers[-3].name)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    first, ran = stem_outputs(stem, images, 4, "features", cache)
    assert ran
    with caplog.at_level("INFO", logger="tumorclf"):
        again, ran = stem_outputs(stem, images, 4, "features", cache)
    assert not ran and np.array_equal(first, again) and "feature cache hit" in caplog.text
    # a stem rebuilt elsewhere (other automatic layer names) with the same weights has the same key
    rebuilt = build_model("simplecnn", 32)
    rebuilt.set_weights(model.get_weights())
    rebuilt_stem, _ = split_model(rebuilt, rebuilt.layers[-3].name)
    assert stem_key(rebuilt_stem, images, 4, None, None) == stem_key(stem, images, 4, None, None)
    # anything that changes the outputs changes the key
    key = stem_key(stem, images, 4, None, None)
    other_images = images.copy()
    other_images[0, 0, 0, 0] ^= 1
    assert stem_key(stem, other_images, 4, None, None) != key
    assert stem_key(stem, images, 4, augmenter(1, 32), 1) != stem_key(stem, images, 4, augmenter(2, 32), 2) != key
    # an augmentation built again in this process (other automatic layer names) has the same key; another
    # augmentation setting changes it
    assert stem_key(stem, images, 4, augmenter(1, 32), 1) == stem_key(stem, images, 4, augmenter(1, 32), 1)
    elastic = augmenter(1, 32, elastic=True)
    assert stem_key(stem, images, 4, augmenter(1, 32), 1) != stem_key(stem, images, 4, elastic, 1)
    other_weights = build_model("simplecnn", 32)
    other_stem, _ = split_model(other_weights, other_weights.layers[-3].name)
    assert stem_key(other_stem, images, 4, None, None) != key
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        bf16 = build_model("simplecnn", 32)
        bf16.set_weights(model.get_weights())
        bf16_stem, _ = split_model(bf16, bf16.layers[-3].name)
        assert stem_key(bf16_stem, images, 4, None, None) != key  # another precision
    finally:
        keras.config.set_dtype_policy("float32")


def test_cache_command_reports_and_clears(tmp_path: Path, capsys):
    cache = ArrayCache(tmp_path / "features")
    cache.put("k", np.zeros(1000))
    (tmp_path / "64px-abc").mkdir()
    (tmp_path / "64px-abc" / "images.npy").write_bytes(b"x" * 100)
    assert main(["cache", "info", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "decoded images  1 entries" in out and "features        1 entries" in out
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert "removed 1 decoded-image entries and 1 feature entries" in capsys.readouterr().out
    assert cache.info()["entries"] == 0 and not (tmp_path / "64px-abc").exists()
