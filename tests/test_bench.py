from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest

from tumorclf.bench import forward_flops
from tumorclf.cli import main


def test_forward_flops_counts_conv_and_dense():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8*8*3*3*3*4 MACs
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2)(x)  # 4*2 MACs
    assert forward_flops(keras.Model(inputs, outputs)) == 2 * (8 * 8 * 9 * 3 * 4 + 4 * 2)


def test_vgg16_flops_match_the_published_figure():
    # VGG16's convolutions cost about 15.3 GMACs... at 224 px: 30.7 GFLOPs forward
    from tumorclf.models import build_model

    assert forward_flops(build_model("vgg16", 224)) / 1e9 == pytest.approx(30.7, rel=0.01)


def test_bench_writes_json_with_the_fields(blob_dataset: Path, tmp_path: Path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--models", "simplecnn", "--image-size", "32", "--batch-size", "8", "--steps", "2",
                 "--data", str(blob_dataset), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    row = result["models"][0]
    assert {"train_img_per_s", "infer_img_per_s", "efficiency"} <= set(row)
    assert row["train_img_per_s"] > 0 and 0 < row["efficiency"] < 1.5
    assert result["matmul_gflop_per_s"]["float32"] > 0 and result["pipeline"]["images"] == 80
    assert result["fit"][0]["model"] == "simplecnn" and result["fit"][0]["real_over_synthetic"] > 0
    assert result["peak_rss_mib"] > 0 and row["jit_compile"] is False


def test_bench_rejects_unknown_models():
    assert main(["bench", "--models", "alexnet"]) == 2


def test_bench_measures_xla_when_asked(tmp_path: Path):
    out = tmp_path / "xla.json"
    assert main(["bench", "--models", "simplecnn", "--image-size", "32", "--batch-size", "4", "--steps", "1", "--jit-compile",
                 "--out", str(out)]) == 0
    row = json.loads(out.read_text())["models"][0]
    assert row["jit_compile"] is True and row["train_img_per_s"] > 0
