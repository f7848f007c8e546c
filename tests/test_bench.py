from __future__ import annotations

import functools
import json
from pathlib import Path

import keras
import pytest

from tumorclf.studies import bench
from tumorclf.models.flops import forward_flops
from tumorclf.cli.main import main


@pytest.fixture(autouse=True)
def quick_matmul_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark measures the machine's matmul limit on 1024 x 1024 matrices here (a tenth of a second, within
    ~30% of the limit of its 4096 x 4096 default, which takes 10 s per precision on this CPU): the same code at a
    size these tests do not check."""
    monkeypatch.setattr(bench, "matmul_gflops", functools.partial(bench.matmul_gflops, n=1024))


def test_forward_flops_counts_conv_and_dense():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8*8*3*3*3*4 MACs
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2)(x)  # 4*2 MACs
    assert forward_flops(keras.Model(inputs, outputs)) == 2 * (8 * 8 * 9 * 3 * 4 + 4 * 2)


def test_vgg16_flops_match_the_published_figure():
    # VGG16's convolutions cost about 15.3 GMACs... at 224 px: 30.7 GFLOPs forward
    from tumorclf.models.factory import build_model

    assert forward_flops(build_model("vgg16", 224)) / 1e9 == pytest.approx(30.7, rel=0.01)


def test_bench_writes_json_with_the_fields(blob_dataset: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert main(["bench", "--model", "simplecnn", "--image-size", "32", "--batch-size", "8", "--steps", "2",
                 "--data", str(blob_dataset), "--out", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    row = result["models"][0]
    assert {"train_img_per_s", "infer_img_per_s", "efficiency"} <= set(row)
    assert row["train_img_per_s"] > 0 and 0 < row["efficiency"] < 1.5
    assert result["matmul_gflop_per_s"]["float32"] > 0 and result["pipeline"]["images"] == 80
    assert result["fit"][0]["model"] == "simplecnn" and result["fit"][0]["real_over_synthetic"] > 0
    assert result["peak_rss_mib"] > 0 and row["jit_compile"] is False


@pytest.mark.parametrize("args", [["--model", "simplecnn", "alexnet"], ["--model", "alexnet"]])
def test_bench_rejects_unknown_models(capsys, args):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown models alexnet" in err and len(err.splitlines()) == 1


def test_bench_models_comma_separated_still_work_with_a_notice(capsys):
    assert main(["bench", "--models", "simplecnn,alexnet"]) == 2
    err = capsys.readouterr().err
    assert "tumorclf: deprecated: --models will be removed; use --model" in err
    assert "tumorclf: deprecated: comma-separated lists" in err
    assert "unknown models alexnet" in err  # simplecnn was taken as a model of its own


def test_bench_refuses_an_out_that_is_a_file(tmp_path: Path, capsys):
    (tmp_path / "results").write_text("")
    assert main(["bench", "--model", "simplecnn", "--out", str(tmp_path / "results")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_bench_measures_xla_when_asked(tmp_path: Path):
    assert main(["bench", "--model", "simplecnn", "--image-size", "32", "--batch-size", "4", "--steps", "1",
                 "--jit-compile", "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "bench.json").read_text())["models"][0]
    assert row["jit_compile"] is True and row["train_img_per_s"] > 0


def test_bench_out_file_json_still_names_the_file_with_a_notice(tmp_path: Path, capsys):
    out = tmp_path / "old.json"
    assert main(["bench", "--model", "simplecnn", "--image-size", "32", "--batch-size", "4", "--steps", "1",
                 "--out", str(out)]) == 0
    assert "tumorclf: deprecated: --out names the output folder" in capsys.readouterr().err
    assert json.loads(out.read_text())["models"][0]["model"] == "simplecnn"
