"""`tumorclf bench`: this machine's matmul limit, per-model training/inference speed and, with a dataset, the
input pipeline and fit() on real vs synthetic data.

Usage: ``tumorclf bench [--model simplecnn vgg16] [--image-size 224] [--batch-size 32] [--data DIR]
[--jit-compile] [--conv-input-gradient tensorflow|forward] [--out DIR]``

Prints each result as it is measured; with `--out DIR`, writes them all to `DIR/bench.json`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tumorclf.cli import flags
from tumorclf.errors import UsageError
from tumorclf.models.registry import MODELS
from tumorclf.runs.config import PRECISIONS

BENCH_FILE = "bench.json"
DEFAULT_MODELS = ("simplecnn", "vgg16")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", nargs="+", default=DEFAULT_MODELS, metavar="NAME",
                   help=f"architectures to measure, from: {', '.join(MODELS)} (default: {' '.join(DEFAULT_MODELS)})")
    flags.deprecated(p, "--models", "--model", "model", nargs="+")
    p.add_argument("--image-size", type=int, default=224, metavar="PX", help="input size in px (default: 224)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="training and inference batch size (default: 32)")
    p.add_argument("--steps", type=int, default=5, metavar="N",
                   help="timed steps per measurement, after one warm-up (default: 5)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="Keras dtype policy, as in training; auto: bf16 on bf16 CPUs, float16 on GPUs (default: auto)")
    p.add_argument("--data", type=Path, default=os.environ.get("TUMORCLF_DATA") or None, metavar="DIR",
                   help="real dataset for the pipeline and fit() measurements (default: $TUMORCLF_DATA; skipped "
                        "when neither is given)")
    p.add_argument("--jit-compile", action="store_true", help="XLA-compile the synthetic train steps")
    p.add_argument("--conv-input-gradient", choices=("tensorflow", "forward"), default="forward",
                   help="convolutions' input gradients: as forward convolutions, as training computes them, or "
                        "TensorFlow's own kernel (slower on CPU) (default: forward)")
    flags.add_out(p, f"write the results to DIR/{BENCH_FILE} (default: print them only)")


def run(args: argparse.Namespace) -> int:
    from tumorclf.studies.bench import benchmark
    from tumorclf.utils.files import atomic_write_json

    models = flags.space_separated(args.model, "--model")
    unknown = [m for m in models if m not in MODELS]
    if not models:
        raise UsageError("--model needs at least one architecture")
    if unknown:
        raise UsageError(f"unknown models {', '.join(unknown)}; choose from: {', '.join(MODELS)}")
    if args.steps < 1 or args.batch_size < 1 or args.image_size < 32:
        raise UsageError("--steps and --batch-size must be positive and --image-size at least 32")
    if args.data is not None and not args.data.is_dir():
        raise UsageError(f"data folder not found: {args.data}")
    out = flags.out_file(args.out, BENCH_FILE, (".json",))
    if out is not None and out.parent.exists() and not out.parent.is_dir():  # found now, not after the benchmark
        raise UsageError(f"--out {out.parent} exists and is not a folder")

    results = benchmark(models, args.image_size, args.batch_size, args.steps, args.precision, args.data,
                        args.jit_compile, args.conv_input_gradient)
    if out is not None:
        atomic_write_json(out, results)
        print(out)
    return 0
