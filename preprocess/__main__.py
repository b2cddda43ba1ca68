"""`python -m preprocess`: Kaggle landmark parquet files -> TFRecord shards + manifest.

A thin command line over `fingerspell.preprocessing`; see that module for the
output layout. Exit status: 0 when every file was read, 1 when some file could
not be (the others are still written, the errors are printed and listed in the
manifest), 2 when nothing could run (bad arguments, missing or malformed CSV).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fingerspell.preprocessing import PreprocessConfig, PreprocessError, preprocess, report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m preprocess", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, type=Path,
                   help="Kaggle dataset folder (train.csv, train_landmarks/, ...); only read")
    p.add_argument("--out", required=True, type=Path, help="output folder for shards and manifest.json")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    p.add_argument("--split", choices=["train", "supplemental", "all"], default="train",
                   help="which metadata CSV to process (default: train)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo files whose shard an earlier run already finished")
    p.add_argument("--min-hand-frames-factor", type=float, default=2.0,
                   help="keep a sequence when FACTOR * len(phrase) < frames with a fully visible hand "
                        "(default 2.0, the seed notebook's rule)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = PreprocessConfig(
        data_dir=args.data_dir, out_dir=args.out, split=args.split, workers=args.workers,
        overwrite=args.overwrite, min_hand_frames_factor=args.min_hand_frames_factor,
        progress=not args.no_progress,
    )
    try:
        manifest = preprocess(config)
    except PreprocessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report(manifest, args.out)
    return 1 if manifest["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
