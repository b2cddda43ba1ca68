"""`python -m export` from the checkout root: a training run -> Kaggle submission.

The same parser and code as `fingerspell export` (see `fingerspell.cli`).
"""
import sys

from fingerspell import cli

sys.exit(cli.run_command("export", sys.argv[1:], prog="python -m export"))
