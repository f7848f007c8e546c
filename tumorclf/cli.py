"""Command line of `python -m tumorclf.run` and the `tumorclf` console command."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tumorclf.config import FINE_TUNE, MODELS, PRECISIONS, RECIPES, SPLITS, STRATEGIES, Config, ConfigError, build_config


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tumorclf",
        description="Train a brain-MRI Healthy/Tumor classifier, keep the best epoch by validation F1, "
        "and evaluate it on the test split. Flags override --config; unset flags keep the paper's defaults.",
    )
    p.add_argument("--config", help="YAML file of config keys (flags given here override it)")
    p.add_argument("--model", choices=MODELS)
    p.add_argument("--imagenet", action="store_const", const=True, help="start from ImageNet weights")
    p.add_argument("--recipe", choices=RECIPES,
                   help="paper (default: the study's SGD recipe) or fast (with --imagenet: cached frozen features, "
                   "then the last stage and head; see README)")
    p.add_argument("--feature-views", type=int, help="with --recipe fast: cached views per training image (default 3)")
    p.add_argument("--weights-dir", help="folder holding Keras' ImageNet weight files (also TUMORCLF_WEIGHTS_DIR)")
    p.add_argument("--fine-tune", choices=FINE_TUNE, help="full (default), frozen, from_layer or two_phase")
    p.add_argument("--unfreeze-from", help="with --fine-tune from_layer: first layer/block to train, e.g. block5")
    p.add_argument("--head-epochs", type=int, help="with --fine-tune two_phase: epochs of head-only training")
    p.add_argument("--data", help="folder with two class folders (default: $TUMORCLF_DATA)")
    p.add_argument("--classes", nargs=2, metavar=("HEALTHY", "TUMOR"), help="name the two class folders")
    p.add_argument("--epochs", type=int)
    p.add_argument("--patience", type=int, help="stop after this many epochs without a better validation F1")
    p.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this much training time")
    p.add_argument("--track-test", action="store_const", const=True,
                   help="log test accuracy each epoch for time-to-accuracy curves (never used to choose the epoch)")
    p.add_argument("--image-size", type=int, help="square input size in px (default 224)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--no-augment", dest="augment", action="store_const", const=False)
    p.add_argument("--split", choices=SPLITS, help="grouped (leak-free, default) or paper (over files)")
    p.add_argument("--seed", type=int)
    p.add_argument("--near-duplicate-bits", type=int, help="pHash distance that counts as a near-duplicate")
    p.add_argument("--max-files", type=int, help="use a random subset of this many files (quick trials)")
    p.add_argument("--cache-dir", help="decoded-image cache (default $TUMORCLF_CACHE or ~/.cache/tumorclf)")
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--strategy", choices=STRATEGIES)
    p.add_argument("--jit-compile", action="store_const", const=True,
                   help="compile the train step with XLA (measure first: python -m tumorclf.bench --jit-compile)")
    p.add_argument("--gradcam", dest="gradcam_per_outcome", type=int, metavar="N",
                   help="after testing, save Grad-CAM overlays of N test images per outcome (TP/FP/FN/TN)")
    p.add_argument("--output", help="parent folder of run folders (default runs/)")
    p.add_argument("--name", help="run folder name (default derived from the config)")
    p.add_argument("--overwrite", action="store_const", const=True, help="replace an existing run folder")
    p.add_argument("--resume", action="store_const", const=True,
                   help="continue an interrupted run from its last completed epoch (a finished run is left as is)")
    p.add_argument("--deterministic", action="store_const", const=True,
                   help="TensorFlow op determinism and sequential augmentation: same seed, same result")
    return p


def config_from_args(argv: list[str] | None = None) -> Config:
    args = vars(parser().parse_args(argv))
    yaml_path = args.pop("config")
    return build_config(yaml_path, **args)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tumorclf.artifacts import RunExistsError
    from tumorclf.data import DataError
    from tumorclf.models import WeightsError

    try:
        cfg = config_from_args(argv)
        from tumorclf.run import run_experiment

        run_dir = run_experiment(cfg)
    except (ConfigError, DataError, WeightsError, RunExistsError) as exc:
        print(f"tumorclf: error: {exc}", file=sys.stderr)
        return 2
    print(run_dir)
    return 0
