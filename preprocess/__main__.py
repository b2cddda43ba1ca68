"""`python -m preprocess` from the checkout root: Kaggle landmark parquet files -> TFRecord shards + manifest.

The same parser and code as `fingerspell preprocess` (see `fingerspell.cli`).
"""
import sys

from fingerspell import cli

sys.exit(cli.run_command("preprocess", sys.argv[1:], prog="python -m preprocess"))
