"""Benchmark this machine: matmul limit, per-model training/inference speed, input pipeline, fit on real data.

The numbers behind the project's defaults (precision, XLA off, the input pipeline): `benchmark` runs every
measurement and returns one JSON-ready dict that also records the machine and the library versions.
"""

from __future__ import annotations

import datetime
import functools
import resource
import time
from pathlib import Path
from typing import Callable

import numpy as np

from tumorclf.models.flops import forward_flops
from tumorclf.utils.files import versions
from tumorclf.utils.machine import machine, matmul_gflops


def peak_memory_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_model(name: str, image_size: int, batch_size: int, steps: int, precision: str, limits: dict,
                jit_compile: bool = False, conv_input_gradient: str = "forward") -> dict:
    """Training and inference images/s on synthetic data, FLOPs per image and efficiency vs the matmul limit;
    `conv_input_gradient`: "forward", as forward convolutions (`training.conv_gradient`), as training computes
    them, or "tensorflow", TensorFlow's own kernel."""
    import keras

    from tumorclf.models.factory import build_model
    from tumorclf.training.loop import compile_model, select_precision

    policy = select_precision(precision)
    keras.mixed_precision.set_global_policy(policy)
    model = build_model(name, image_size)
    compile_model(model, 1e-4, 0.9, jit_compile, forward_input_gradients=conv_input_gradient == "forward")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype("float32")
    y = np.eye(2, dtype="float32")[rng.integers(0, 2, batch_size)]
    model.train_on_batch(x, y)  # compile and warm up
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    train_rate = steps * batch_size / (time.perf_counter() - start)
    model.predict_on_batch(x)
    start = time.perf_counter()
    for _ in range(steps):
        model.predict_on_batch(x)
    infer_rate = steps * batch_size / (time.perf_counter() - start)
    flops = forward_flops(model)
    limit = limits["bfloat16" if policy == "mixed_bfloat16" else "float32"] * 1e9
    keras.mixed_precision.set_global_policy("float32")
    return {
        "model": name, "precision": policy, "jit_compile": jit_compile, "conv_input_gradient": conv_input_gradient,
        "image_size": image_size,
        "batch_size": batch_size,
        "train_img_per_s": round(train_rate, 2), "infer_img_per_s": round(infer_rate, 2),
        "forward_gflops_per_img": round(flops / 1e9, 3),
        # training ~ 3x the forward FLOPs (forward, input gradients, weight gradients)
        "train_gflop_per_s": round(3 * flops * train_rate / 1e9, 1),
        "efficiency": round(3 * flops * train_rate / limit, 3),
        "infer_efficiency": round(flops * infer_rate / limit, 3),
        "peak_rss_mib": round(peak_memory_mib(), 0),
    }


def bench_pipeline(data_dir: Path, image_size: int, batch_size: int) -> dict:
    """The input pipeline alone over the real dataset: cached decode, augmentation, batching."""
    from tumorclf.data.dataset import load_dataset
    from tumorclf.transforms.pipeline import make_train_dataset

    start = time.perf_counter()
    data = load_dataset(data_dir, image_size)
    load_s = time.perf_counter() - start
    train = make_train_dataset(data.images(), data.labels, batch_size, seed=0, augment=True)
    for _ in train.dataset.take(2):
        pass
    start = time.perf_counter()
    count = sum(int(x.shape[0]) for x, _ in train.dataset)
    rate = count / (time.perf_counter() - start)
    return {"images": count, "load_seconds_with_cache": round(load_s, 2), "pipeline_img_per_s": round(rate, 1)}


def bench_fit_real_vs_synthetic(name: str, data_dir: Path, image_size: int, batch_size: int, steps: int,
                                precision: str) -> dict:
    """fit() throughput on the real augmented pipeline against the same number of synthetic steps."""
    import keras
    import tensorflow as tf

    from tumorclf.data.dataset import load_dataset
    from tumorclf.models.factory import build_model
    from tumorclf.transforms.pipeline import make_train_dataset, untuned
    from tumorclf.training.loop import compile_model, select_precision

    keras.mixed_precision.set_global_policy(select_precision(precision))
    data = load_dataset(data_dir, image_size)
    n = (steps + 1) * batch_size
    real = make_train_dataset(data.images(np.arange(n)), data.labels[:n], batch_size, seed=0).dataset
    rng = np.random.default_rng(0)
    synthetic = untuned(tf.data.Dataset.from_tensors((
        rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype("float32"),
        np.eye(2, dtype="float32")[rng.integers(0, 2, batch_size)],
    )).repeat(steps + 1))
    rates = {}
    for label, dataset in (("synthetic", synthetic), ("real", real)):
        model = build_model(name, image_size)
        compile_model(model, 1e-4, 0.9)
        model.fit(dataset.take(1), shuffle=False, verbose=0)
        start = time.perf_counter()
        model.fit(dataset.skip(1).take(steps), shuffle=False, verbose=0)
        rates[label] = steps * batch_size / (time.perf_counter() - start)
    keras.mixed_precision.set_global_policy("float32")
    return {"model": name, "fit_real_img_per_s": round(rates["real"], 2),
            "fit_synthetic_img_per_s": round(rates["synthetic"], 2),
            "real_over_synthetic": round(rates["real"] / rates["synthetic"], 3)}


def benchmark(models: list[str], image_size: int = 224, batch_size: int = 32, steps: int = 5,
              precision: str = "auto", data_dir: Path | None = None, jit_compile: bool = False,
              conv_input_gradient: str = "forward",
              echo: Callable[[str], None] = functools.partial(print, flush=True)) -> dict:
    """The matmul limit, each of `models` on synthetic data and, with `data_dir`, the input pipeline and fit()
    on real vs synthetic data. `echo` gets each result as a line as soon as it is measured: a benchmark of
    several models takes minutes."""
    limits = {dtype: round(matmul_gflops(dtype), 1) for dtype in ("float32", "bfloat16")}
    echo(f"matmul limit: float32 {limits['float32']} GFLOP/s, bfloat16 {limits['bfloat16']} GFLOP/s")
    results = {"date": datetime.date.today().isoformat(), "machine": machine(), "versions": versions(),
               "matmul_gflop_per_s": limits, "models": []}
    echo(f"{'model':<12} {'precision':<15} {'train img/s':>11} {'infer img/s':>11} {'GFLOP/img':>9} "
         f"{'efficiency':>10} {'peak MiB':>9}")
    for name in models:
        row = bench_model(name, image_size, batch_size, steps, precision, limits, jit_compile, conv_input_gradient)
        results["models"].append(row)
        echo(f"{name:<12} {row['precision']:<15} {row['train_img_per_s']:>11} {row['infer_img_per_s']:>11} "
             f"{row['forward_gflops_per_img']:>9} {row['efficiency']:>10} {row['peak_rss_mib']:>9}")
    if data_dir is not None:
        results["pipeline"] = bench_pipeline(Path(data_dir), image_size, batch_size)
        echo(f"input pipeline: {results['pipeline']}")
        results["fit"] = []
        for name in models:
            row = bench_fit_real_vs_synthetic(name, Path(data_dir), image_size, batch_size, steps, precision)
            results["fit"].append(row)
            echo(f"fit on real data vs synthetic: {row}")
    results["peak_rss_mib"] = round(peak_memory_mib(), 0)
    return results
