"""`python -m train --data PREPROCESSED_DIR --out RUN_DIR [--config FILE] [--epochs N] [--batch-size B] [--resume] [key=value ...]`"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import fingerspell  # noqa: F401  (pins Keras to TensorFlow)
from fingerspell.config import Config, ConfigError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train", description="Train the fingerspelling transformer on preprocessed records.",
        epilog="Any config field can be overridden as key=value, e.g. num_hid=256 aug_affine=false. "
               "The resolved config is saved as RUN_DIR/config.json.")
    parser.add_argument("--data", required=True, type=Path, help="directory written by `python -m preprocess`")
    parser.add_argument("--out", required=True, type=Path, help="run directory (config, checkpoints, metrics)")
    parser.add_argument("--config", type=Path, help="JSON file of config keys")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> Config:
    cfg = Config.load(args.config) if args.config else Config()
    return cfg.override(cli_overrides(args))


def cli_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"epochs={args.epochs}")
    if args.batch_size is not None:
        overrides.append(f"batch_size={args.batch_size}")
    return overrides


def resume_changes(args: argparse.Namespace) -> dict:
    """What a --resume asks to change (only more epochs or more time are allowed)."""
    if args.config:
        raise ConfigError("--resume continues with the run's saved config.json; --config cannot be given")
    changed = Config().override(cli_overrides(args)).to_dict()
    keys = {item.partition("=")[0].strip().replace("-", "_") for item in cli_overrides(args)}
    return {key: changed[key] for key in keys}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fingerspell.records import RecordFormatError
    from fingerspell.training import TrainingError, resume, train

    try:
        if args.resume:
            summary = resume(args.data, args.out, resume_changes(args))
        else:
            summary = train(args.data, args.out, resolve_config(args))
    except (ConfigError, TrainingError, RecordFormatError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
