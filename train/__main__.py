"""`python -m train` from the checkout root: train the transformer on preprocessed records.

The same parser and code as `fingerspell train` (see `fingerspell.cli`).
"""
import sys

from fingerspell import cli

sys.exit(cli.run_command("train", sys.argv[1:], prog="python -m train"))
