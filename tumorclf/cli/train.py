"""`tumorclf train`: train one configuration, keep the best epoch by validation F1, fit the operating point and the
quality gate on validation, test, and write the run folder.

Usage: ``tumorclf train --data DIR [--preset auto|robust|fast|scratch|paper] [--model NAME] [--out DIR]
[--config FILE.yaml] [...]`` (see ``--help``); ``python -m tumorclf.run ...`` is an alias. Settings are the
defaults, then the preset's (`tumorclf.training.presets`), then ``--config``'s YAML file, then the flags given: a
bare ``tumorclf train --data DIR`` trains the best recipe the weights on this machine allow, with early stopping.
The run folder is ``OUT/NAME``; its path is printed last.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields

from tumorclf.cli import flags
from tumorclf.runs.config import (
    Config,
    add_config_flags,
    flag_of,
    load_yaml,
)
from tumorclf.training.presets import PRESET_NAMES, PRESETS, describe, resolve

log = logging.getLogger("tumorclf.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    renamed = ", ".join(f"{flag_of(f)}: {f.name}" for f in fields(Config) if f.metadata["flag"])
    parser.add_argument("--config", metavar="FILE.yaml",
                        help=f"YAML file of settings, one key per flag, named as the flag without -- "
                             f"(except {renamed}); flags given here override it")
    parser.add_argument("--preset", choices=PRESET_NAMES, default="auto",
                        help="the recipe beneath --config and the flags given: auto (default) trains the best one "
                             "the weights on this machine allow, with early stopping (robust with the VGG16 "
                             "ImageNet file, else scratch; with --model, --imagenet or --recipe given, early "
                             "stopping only); "
                             + "; ".join(f"{name}: {preset.about}" for name, preset in PRESETS.items()))
    add_config_flags(parser)
    flags.deprecated(parser, "--output", "--out", "output", metavar="DIR")


def config_from_args(args: argparse.Namespace) -> tuple[str, Config]:
    """(the preset applied, the Config): defaults, then the preset's values, then --config's YAML, then the flags
    that were given (a list flag's names joined with commas, as the Config holds them)."""
    given = load_yaml(args.config) if args.config else {}
    for f in fields(Config):
        value = getattr(args, f.name)
        if f.metadata["many"]:
            names = flags.space_separated(value, flag_of(f))
            value = None if names is None else ",".join(names)
        if value is not None:
            given[f.name] = value
    preset, values = resolve(args.preset, given, given.get("weights_dir"))
    return preset, Config.from_dict({**values, **given})


def configs_from_args(args: argparse.Namespace) -> tuple[str, list[Config]]:
    """(the preset, one Config per `--seed` given): several seeds train one run each, in their own folders
    (with `--name`, the seed is appended to it)."""
    from tumorclf.studies.seeds import seed_list

    seeds = seed_list(args.seed, "--seed")
    configs = []
    for seed in seeds:
        one = argparse.Namespace(**{**vars(args), "seed": seed})
        if len(seeds) > 1 and args.name:
            one.name = f"{args.name}_seed{seed}"
        preset, cfg = config_from_args(one)
        configs.append(cfg)
    return preset, configs


def run(args: argparse.Namespace) -> int:
    preset, configs = configs_from_args(args)
    log.info("%s", describe(preset, configs[0]))
    from tumorclf.training.experiment import run_experiment

    folders = []
    for cfg in configs:
        folders.append(run_experiment(cfg))
        print(folders[-1])
    if len(folders) > 1:
        from tumorclf.runs.folder import RunDir
        from tumorclf.studies.seeds import format_summary, summary

        for metric in ("accuracy", "f1", "auc"):
            values = [RunDir(folder).metrics()[metric] for folder in folders]
            print(f"{metric} over {len(values)} seeds: {format_summary(summary(values), 4)}")
    return 0
