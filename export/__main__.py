"""`python -m export --run RUN_DIR --out SUB_DIR [--checkpoint best|last] [--quantize none|fp16|dynamic]`"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import fingerspell  # noqa: F401  (pins Keras to TensorFlow)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a training run as a Kaggle submission: model.tflite, inference_args.json, submission.zip.")
    parser.add_argument("--run", required=True, type=Path, help="run directory written by `python -m train`")
    parser.add_argument("--out", required=True, type=Path, help="submission directory to write")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--quantize", choices=("none", "fp16", "dynamic"), default="none")
    args = parser.parse_args(argv)
    from fingerspell.config import ConfigError
    from fingerspell.exporting import ExportError, export_run
    from fingerspell.training import TrainingError

    try:
        result = export_run(args.run, args.out, args.checkpoint, args.quantize)
    except (ExportError, TrainingError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
