"""`python -m fingerspell COMMAND ...`: the same as the `fingerspell` console command."""
import sys

from fingerspell.cli import main

sys.exit(main(prog="python -m fingerspell"))
